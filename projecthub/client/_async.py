"""The asyncio client: ``AsyncClient(url, api_key)``, the same API as ``Client`` with ``await``
(and ``async for`` over ``job.stream()``)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import IO, Any, AsyncIterator, Callable

import httpx

from ._fast import AsyncFastHTTP, ConnectFailed, ReadTimedOut, SendFailed
from ._sync import (_CONNECT, _RETRY_STATUS, _TRANSIENT, CHUNK, _exec_body, _exec_outcome, _http_timeout,
                    _iso)
from ._types import (ApiKey, CellError, CellResult, ConnectionFailed, ExecResult, FileEntry, FileInfo,
                     JobSummary, Limits, Listing, Output, OutputChunk, Project, ProjectHubError, SessionInfo,
                     SSEParser, TimeoutExpired, error_for, project_id_of, quote_path)


class AsyncClient:
    """``Client`` for asyncio: every call is a coroutine; ``job.stream()`` is an async iterator."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 0.1) -> None:
        api_key = api_key or os.environ.get("PROJECTHUB_API_KEY")
        if not api_key:
            raise ValueError("an API key is required (api_key= or $PROJECTHUB_API_KEY)")
        self.url = url.rstrip("/")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._http = httpx.AsyncClient(base_url=self.url + "/api/v3",
                                       headers={"Authorization": f"Bearer {api_key}"},
                                       timeout=httpx.Timeout(timeout, connect=10.0))
        self._fast = AsyncFastHTTP(self.url, "/api/v3", {"Authorization": f"Bearer {api_key}"}, timeout)
        self.projects = AsyncProjects(self)
        self.files = AsyncFiles(self)
        self.keys = AsyncKeys(self)
        self.limits = AsyncLimitsAPI(self)

    async def aclose(self) -> None:
        await self._fast.aclose()
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _sleep(self, attempt: int) -> None:
        await asyncio.sleep(min(self.backoff * (2 ** attempt), 2.0))

    async def _call(self, method: str, path: str, *, idempotent: bool | None = None,
                    ok: tuple[int, ...] = (200, 201, 204, 206), **kwargs: Any) -> httpx.Response:
        if idempotent is None:
            idempotent = method in ("GET", "PUT", "DELETE", "HEAD")
        content = kwargs.get("content")
        fast = (content is None or isinstance(content, bytes)) and not isinstance(kwargs.get("timeout"), httpx.Timeout)
        attempt = 0
        while True:
            try:
                if fast:
                    response: Any = await self._fast.request(
                        method, path, json_body=kwargs.get("json"), content=content, params=kwargs.get("params"),
                        headers=kwargs.get("headers"), timeout=kwargs.get("timeout"))
                else:
                    response = await self._http.request(method, path, **kwargs)
            except (*_CONNECT, ConnectFailed) as exc:
                if attempt >= self.retries:
                    raise ConnectionFailed(f"cannot reach {self.url}: {exc}") from exc
            except (*_TRANSIENT, SendFailed) as exc:
                if not idempotent or attempt >= self.retries:
                    raise ConnectionFailed(f"connection to {self.url} failed: {exc!r}") from exc
            except (httpx.TimeoutException, ReadTimedOut) as exc:
                raise ConnectionFailed(f"no answer from {self.url}: {exc}") from exc
            else:
                if response.status_code in ok:
                    return response
                if not (idempotent and response.status_code in _RETRY_STATUS and attempt < self.retries):
                    raise error_for(response.status_code, response.content)
            await self._sleep(attempt)
            attempt += 1

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self._call(method, path, **kwargs)).json()

    # -- exec and jobs -----------------------------------------------------------------------

    async def exec(self, project: Any, command: str, *, args: list[str] | None = None,
                   bash: bool | None = None, cwd: str | None = None, env: dict[str, str] | None = None,
                   timeout: float | None = None, max_output: int | None = None, check: bool = False,
                   on_stdout: Callable[[str], Any] | None = None, on_stderr: Callable[[str], Any] | None = None,
                   idempotency_key: str | None = None) -> ExecResult:
        """See ``Client.exec``."""
        if on_stdout is not None or on_stderr is not None:
            job = await self.start(project, command, args=args, bash=bash, cwd=cwd, env=env, timeout=timeout,
                                   max_output=max_output, idempotency_key=idempotency_key)
            async for _ in job.stream(on_stdout=on_stdout, on_stderr=on_stderr):
                pass
            return _exec_outcome(job.result.raw if job.result else (await job.info()).raw, timeout, check)
        body = _exec_body(command, args, bash, cwd, env, timeout, max_output)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        response = await self._call("POST", f"/projects/{project_id_of(project)}/exec", json=body,
                                    headers=headers, idempotent=bool(idempotency_key),
                                    timeout=_http_timeout(timeout, self.timeout))
        return _exec_outcome(response.json(), timeout, check)

    async def start(self, project: Any, command: str, *, args: list[str] | None = None,
                    bash: bool | None = None, cwd: str | None = None, env: dict[str, str] | None = None,
                    timeout: float | None = None, max_output: int | None = None,
                    idempotency_key: str | None = None) -> "AsyncJob":
        body = _exec_body(command, args, bash, cwd, env, timeout, max_output)
        body["async"] = True
        pid = project_id_of(project)
        raw = await self._json("POST", f"/projects/{pid}/exec", json=body,
                               headers={"Idempotency-Key": idempotency_key or uuid.uuid4().hex}, idempotent=True)
        return AsyncJob(self, pid, raw["job_id"], ExecResult.from_json(raw))

    def job(self, project: Any, job_id: str) -> "AsyncJob":
        return AsyncJob(self, project_id_of(project), job_id)

    async def jobs(self, project: Any) -> list[JobSummary]:
        return [JobSummary.from_json(j) for j in await self._json("GET", f"/projects/{project_id_of(project)}/jobs")]

    # -- kernel sessions ---------------------------------------------------------------------

    def session(self, project: Any, kernel: str = "python3", *, name: str | None = None,
                cwd: str | None = None, env: dict[str, str] | None = None) -> "_SessionStart":
        """``s = await client.session(p)``, or ``async with client.session(p) as s:`` (deleted
        at the end)."""
        return _SessionStart(self._session(project, kernel, name, cwd, env))

    async def _session(self, project: Any, kernel: str, name: str | None, cwd: str | None,
                       env: dict[str, str] | None) -> "AsyncSession":
        body: dict[str, Any] = {"kernel": kernel}
        if name is not None:
            body["name"] = name
        if cwd is not None:
            body["cwd"] = cwd
        if env:
            body["env"] = env
        pid = project_id_of(project)
        raw = await self._json("POST", f"/projects/{pid}/sessions", json=body)
        return AsyncSession(self, pid, SessionInfo.from_json(raw))

    async def sessions(self, project: Any) -> list[SessionInfo]:
        rows = await self._json("GET", f"/projects/{project_id_of(project)}/sessions")
        return [SessionInfo.from_json(s) for s in rows]

    async def attach_session(self, project: Any, session_id: str) -> "AsyncSession":
        pid = project_id_of(project)
        raw = await self._json("GET", f"/projects/{pid}/sessions/{session_id}")
        return AsyncSession(self, pid, SessionInfo.from_json(raw))


class _SessionStart:
    """Awaitable (the session) and an async context manager (deletes it at the end)."""

    def __init__(self, coro: Any) -> None:
        self._coro, self._session = coro, None

    def __await__(self) -> Any:
        return self._coro.__await__()

    async def __aenter__(self) -> "AsyncSession":
        self._session = await self._coro
        return self._session

    async def __aexit__(self, *exc: Any) -> None:
        if self._session is not None:
            await self._session.close()


class AsyncJob:
    """See ``Job``."""

    def __init__(self, client: AsyncClient, project_id: str, job_id: str,
                 record: ExecResult | None = None) -> None:
        self.client, self.project_id, self.job_id = client, project_id, job_id
        self.last_event_id: str | None = None
        self.result: ExecResult | None = record if record is not None and not record.running else None
        self.stats: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"AsyncJob({self.job_id!r}, project_id={self.project_id!r})"

    @property
    def _path(self) -> str:
        return f"/projects/{self.project_id}/jobs/{self.job_id}"

    async def info(self, stats: bool = False) -> ExecResult:
        params = {"stats": "true"} if stats else None
        record = ExecResult.from_json(await self.client._json("GET", self._path, params=params))
        if not record.running:
            self.result = record
        return record

    async def wait(self, timeout: float | None = None) -> ExecResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 30.0 if deadline is None else max(0.0, min(30.0, deadline - time.monotonic()))
            raw = await self.client._json("GET", self._path, params={"wait": left}, timeout=left + 30.0)
            record = ExecResult.from_json(raw)
            if not record.running:
                self.result = record
                if record.timed_out:
                    raise TimeoutExpired("the job timed out", result=record, job_id=self.job_id)
                return record
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutExpired(f"job still running after {timeout} s", result=record, job_id=self.job_id)

    async def kill(self) -> bool:
        return bool((await self.client._json("DELETE", self._path)).get("killed"))

    async def output(self, stream: str = "stdout", offset: int = 0, length: int | None = None) -> str:
        parts: list[str] = []
        want = length
        while want is None or want > 0:
            params = {"stream": stream, "offset": offset, "length": min(CHUNK, want) if want else CHUNK}
            page = await self.client._json("GET", self._path + "/output", params=params)
            parts.append(page["data"])
            got = page["end"] - offset
            if got <= 0 or page["end"] >= page["total"]:
                break
            offset = page["end"]
            if want is not None:
                want -= got
        return "".join(parts)

    async def stream(self, on_stdout: Callable[[str], Any] | None = None,
                     on_stderr: Callable[[str], Any] | None = None, *, last_event_id: str | None = None,
                     from_start: bool = False) -> AsyncIterator[OutputChunk]:
        """See ``Job.stream`` (``async for chunk in job.stream()``)."""
        position = last_event_id or (None if from_start else self.last_event_id)
        failures = 0
        client = self.client
        path = self._path + "/events"
        timeout = httpx.Timeout(client.timeout, connect=10.0, read=60.0)
        while True:
            headers = {"Last-Event-ID": position} if position else None
            try:
                async with client._http.stream("GET", path, headers=headers, timeout=timeout) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise error_for(response.status_code, response.content)
                    parser = SSEParser()
                    async for raw in response.aiter_raw():
                        for event_id, kind, data in parser.feed(raw):
                            if event_id:
                                position = self.last_event_id = event_id
                            if kind == "stdout" or kind == "stderr":
                                failures = 0
                                event = json.loads(data)
                                text = event["data"]
                                if kind == "stdout":
                                    if on_stdout is not None:
                                        on_stdout(text)
                                elif on_stderr is not None:
                                    on_stderr(text)
                                yield OutputChunk(kind, text, event.get("offset", 0))
                            elif kind == "stats":
                                self.stats = json.loads(data)
                            elif kind == "done":
                                self.result = ExecResult.from_json(json.loads(data).get("record") or {})
                                return
                            elif kind == "error":
                                event = json.loads(data)
                                raise ProjectHubError(str(event.get("error", event)))
            except (*_CONNECT, *_TRANSIENT, httpx.ReadTimeout) as exc:
                if failures >= client.retries:
                    raise ConnectionFailed(f"job event stream failed: {exc!r}") from exc
            await client._sleep(failures)
            failures += 1


class AsyncSession:
    """See ``Session``."""

    def __init__(self, client: AsyncClient, project_id: str, info: SessionInfo) -> None:
        self.client, self.project_id, self.info = client, project_id, info
        self.session_id = info.session_id

    def __repr__(self) -> str:
        return f"AsyncSession({self.session_id!r}, kernel={self.info.kernel!r})"

    @property
    def _path(self) -> str:
        return f"/projects/{self.project_id}/sessions/{self.session_id}"

    async def run(self, code: str, *, timeout: float | None = None, max_output: int | None = None,
                  check: bool = False, on_output: Callable[[Output], Any] | None = None) -> CellResult:
        body: dict[str, Any] = {"code": code}
        if timeout is not None:
            body["timeout_s"] = timeout
        if max_output is not None:
            body["max_output"] = max_output
        http_timeout = _http_timeout(timeout if timeout is not None else 60.0, self.client.timeout)
        if on_output is None:
            raw = await self.client._json("POST", self._path + "/execute", json=body, timeout=http_timeout)
        else:
            raw = await self._stream(body, on_output, http_timeout)
        result = CellResult.from_json(raw)
        if result.timed_out:
            raise TimeoutExpired(f"cell timed out after {timeout if timeout is not None else 60} s", result=result)
        if check and result.error is not None:
            raise CellError(result)
        return result

    async def _stream(self, body: dict[str, Any], on_output: Callable[[Output], Any], http_timeout: float) -> Any:
        async with self.client._http.stream("POST", self._path + "/stream", json=body,
                                            timeout=httpx.Timeout(http_timeout, connect=10.0)) as response:
            if response.status_code != 200:
                await response.aread()
                raise error_for(response.status_code, response.content)
            parser = SSEParser()
            async for raw in response.aiter_raw():
                for _, kind, data in parser.feed(raw):
                    event = json.loads(data)
                    if kind == "output":
                        on_output(Output.from_json(event.get("item") or {}))
                    elif kind == "done":
                        return event.get("result") or {}
                    elif kind == "error":
                        raise ProjectHubError(str(event.get("error", event)))
        raise ProjectHubError("the cell's stream ended without a result")

    async def interrupt(self) -> None:
        await self.client._call("POST", self._path + "/interrupt")

    async def restart(self) -> None:
        await self.client._call("POST", self._path + "/restart", timeout=120.0)

    async def refresh(self) -> SessionInfo:
        self.info = SessionInfo.from_json(await self.client._json("GET", self._path))
        return self.info

    async def close(self) -> None:
        try:
            await self.client._call("DELETE", self._path)
        except ProjectHubError as exc:
            if exc.status != 404:
                raise

    async def __aenter__(self) -> "AsyncSession":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class AsyncProjects:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def list(self) -> list[Project]:
        return [Project.from_json(p) for p in await self._c._json("GET", "/projects")]

    async def create(self, title: str = "", description: str = "", *, start: bool = False,
                     limits: dict[str, Any] | None = None) -> Project:
        body: dict[str, Any] = {"title": title, "description": description}
        if start:
            body["start"] = True
        if limits:
            body["limits"] = limits
        created = await self._c._json("POST", "/projects", json=body, timeout=max(self._c.timeout, 120.0))
        return await self.get(created["project_id"])

    async def get(self, project: Any) -> Project:
        return Project.from_json(await self._c._json("GET", f"/projects/{project_id_of(project)}"))

    async def delete(self, project: Any) -> None:
        await self._c._call("DELETE", f"/projects/{project_id_of(project)}")

    async def start(self, project: Any) -> dict[str, Any]:
        return await self._c._json("POST", f"/projects/{project_id_of(project)}/start", idempotent=True,
                                   timeout=max(self._c.timeout, 120.0))

    async def stop(self, project: Any) -> dict[str, Any]:
        return await self._c._json("POST", f"/projects/{project_id_of(project)}/stop", idempotent=True,
                                   timeout=max(self._c.timeout, 120.0))


class AsyncLimitsAPI:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def get(self, project: Any) -> Limits:
        return Limits.from_json(await self._c._json("GET", f"/projects/{project_id_of(project)}/limits"))

    async def set(self, project: Any, **limits: Any) -> Limits:
        return Limits.from_json(await self._c._json("PUT", f"/projects/{project_id_of(project)}/limits",
                                                    json=limits))


class AsyncKeys:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def list(self, account_id: str | None = None) -> list[ApiKey]:
        params = {"account_id": account_id} if account_id else None
        return [ApiKey.from_json(k) for k in await self._c._json("GET", "/keys", params=params)]

    async def create(self, name: str = "", *, expire: datetime | str | None = None,
                     project: Any = None) -> ApiKey:
        body: dict[str, Any] = {"name": name}
        if expire is not None:
            body["expire"] = _iso(expire)
        if project is not None:
            body["project_id"] = project_id_of(project)
        return ApiKey.from_json(await self._c._json("POST", "/keys", json=body))

    async def revoke(self, key: ApiKey | int) -> None:
        key_id = key.id if isinstance(key, ApiKey) else int(key)
        await self._c._call("DELETE", f"/keys/{key_id}")


class AsyncFiles:
    """See ``Files``."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    @staticmethod
    def _p(project: Any, path: str) -> str:
        return f"/projects/{project_id_of(project)}/files/{quote_path(path)}"

    async def write_bytes(self, project: Any, path: str, data: bytes, *, if_match: str | None = None) -> FileInfo:
        headers = {"If-Match": if_match} if if_match else {}
        response = await self._c._call("PUT", self._p(project, path), content=bytes(data), headers=headers,
                                       timeout=max(self._c.timeout, 300.0))
        return FileInfo.from_json(response.json(), created=response.status_code == 201)

    async def write_text(self, project: Any, path: str, text: str, **kwargs: Any) -> FileInfo:
        return await self.write_bytes(project, path, text.encode(), **kwargs)

    async def upload(self, project: Any, source: str | os.PathLike[str] | IO[bytes], path: str, *,
                     if_match: str | None = None) -> FileInfo:
        """Upload a local path or binary file object (read in 1 MiB chunks, streamed)."""
        headers = {"If-Match": if_match} if if_match else {}
        opened = None
        if isinstance(source, (str, os.PathLike)):
            headers["Content-Length"] = str(Path(source).stat().st_size)
            opened = open(source, "rb")
            fh: IO[bytes] = opened
        else:
            fh = source
            try:
                headers["Content-Length"] = str(os.fstat(fh.fileno()).st_size - fh.tell())
            except (OSError, io.UnsupportedOperation, AttributeError):
                if isinstance(fh, io.BytesIO):
                    headers["Content-Length"] = str(len(fh.getbuffer()) - fh.tell())

        async def body() -> AsyncIterator[bytes]:
            while chunk := await asyncio.to_thread(fh.read, CHUNK):
                yield chunk
        try:
            response = await self._c._call("PUT", self._p(project, path), content=body(), headers=headers,
                                           idempotent=False, timeout=httpx.Timeout(600.0, connect=10.0))
        finally:
            if opened is not None:
                opened.close()
        return FileInfo.from_json(response.json(), created=response.status_code == 201)

    async def read_bytes(self, project: Any, path: str, *, range: tuple[int, int | None] | None = None) -> bytes:
        headers = {}
        if range is not None:
            first, last = range
            headers["Range"] = f"bytes={first}-{'' if last is None else last}"
        response = await self._c._call("GET", self._p(project, path), headers=headers,
                                       timeout=max(self._c.timeout, 300.0))
        return response.content

    async def read_text(self, project: Any, path: str, encoding: str = "utf-8") -> str:
        return (await self.read_bytes(project, path)).decode(encoding)

    async def download(self, project: Any, path: str, dest: str | os.PathLike[str] | IO[bytes]) -> FileInfo:
        size = 0
        async with self._c._http.stream("GET", self._p(project, path),
                                        timeout=httpx.Timeout(600.0, connect=10.0)) as response:
            if response.status_code != 200:
                await response.aread()
                raise error_for(response.status_code, response.content)
            fh = open(dest, "wb") if isinstance(dest, (str, os.PathLike)) else dest
            try:
                async for chunk in response.aiter_raw(CHUNK):
                    fh.write(chunk)
                    size += len(chunk)
            finally:
                if fh is not dest:
                    fh.close()
            return FileInfo(path=path, size=size, etag=response.headers.get("etag"))

    async def list(self, project: Any, path: str = "") -> Listing:
        raw = await self._c._json("GET", self._p(project, path), params={"list": ""})
        listing = Listing(FileEntry.from_json(e) for e in raw.get("entries") or [])
        listing.path, listing.truncated = raw.get("path", path), bool(raw.get("truncated"))
        return listing

    async def delete(self, project: Any, path: str, *, recursive: bool = False) -> None:
        params = {"recursive": "true"} if recursive else None
        await self._c._call("DELETE", self._p(project, path), params=params)

    async def move(self, project: Any, source: str, dest: str, *, overwrite: bool = False) -> str:
        body: dict[str, Any] = {"from": source, "to": dest}
        if overwrite:
            body["overwrite"] = True
        return (await self._c._json("POST", f"/projects/{project_id_of(project)}/files:move", json=body))["path"]
