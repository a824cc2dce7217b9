"""The blocking client: ``Client(url, api_key)``."""

from __future__ import annotations

import http.client
import io
import json
import os
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import httpx

from ._fast import ConnectFailed, FastHTTP, ReadTimedOut, SendFailed
from ._types import (ApiKey, CellError, CellResult, CommandFailed, ConnectionFailed, ExecResult, FileEntry,
                     FileInfo, JobSummary, Limits, Listing, Output, OutputChunk, Project, ProjectHubError,
                     SessionInfo, SSEParser, TimeoutExpired, error_for, project_id_of, quote_path)

CHUNK = 1 << 20
# connection failures worth retrying: ConnectError/ConnectTimeout (nothing was sent) for any
# call; the others (the request may have arrived) only for idempotent calls
_CONNECT = (httpx.ConnectError, httpx.ConnectTimeout)
_TRANSIENT = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.PoolTimeout)
_RETRY_STATUS = (502, 503)


def _error_body(response: http.client.HTTPResponse) -> bytes:
    """An error answer's body (a small JSON object; at most 64 KiB of anything else)."""
    try:
        return response.read(65536)
    except (OSError, http.client.HTTPException):
        return b""


def _copy_body(response: http.client.HTTPResponse, write: Callable[[memoryview], Any], url: str) -> int:
    """The rest of ``response``'s body into ``write``, through one reused 1 MiB buffer; its
    size.  A body cut short of its Content-Length raises ``ConnectionFailed`` (http.client
    itself would return the short read as the end)."""
    expected = response.length
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    size = 0
    while True:
        try:
            n = response.readinto(buffer)
        except TimeoutError as exc:
            raise ConnectionFailed(f"no data from {url} for 600 s after {size} bytes") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ConnectionFailed(f"the download from {url} broke after {size} bytes: {exc!r}") from exc
        if not n:
            break
        write(view[:n])
        size += n
    if expected is not None and size != expected:
        raise ConnectionFailed(f"the download from {url} ended after {size} of {expected} bytes")
    return size


def _exec_body(command: str, args: list[str] | None, bash: bool | None, cwd: str | None,
               env: dict[str, str] | None, timeout: float | None, max_output: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"command": command}
    if args is not None:
        body["args"] = list(args)
    if bash is not None:
        body["bash"] = bash
    if cwd is not None:
        body["cwd"] = cwd
    if env:
        body["env"] = env
    if timeout is not None:
        body["timeout"] = timeout
    if max_output is not None:
        body["max_output"] = max_output
    return body


def _http_timeout(seconds: float | None, default: float) -> float:
    """An HTTP read timeout comfortably above a server-side time budget."""
    if seconds is None:
        return default
    if seconds == 0:
        return 24 * 3600.0
    return max(default, seconds + 30.0)


def _exec_outcome(raw: Any, timeout: float | None, check: bool) -> ExecResult:
    result = ExecResult.from_json(raw)
    if result.timed_out:
        raise TimeoutExpired(f"command timed out after {timeout if timeout is not None else 60} s",
                             result=result, job_id=result.job_id)
    if check and not result.ok:
        why = f"exit code {result.exit_code}" if result.signal is None else f"signal {result.signal}"
        raise CommandFailed(f"command failed ({why}): {result.stderr[-500:]}", result)
    return result


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


class Client:
    """A projecthub server's native API (``/api/v3``).

    ``api_key`` defaults to ``$PROJECTHUB_API_KEY``.  Idempotent calls (GET, PUT, DELETE,
    and execs/jobs sent with an ``Idempotency-Key``, which the client generates) are retried
    ``retries`` times on connection errors with exponential backoff; others only when the
    connection could not be made at all.  Use it as a context manager or call ``close()``.
    """

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 0.1) -> None:
        api_key = api_key or os.environ.get("PROJECTHUB_API_KEY")
        if not api_key:
            raise ValueError("an API key is required (api_key= or $PROJECTHUB_API_KEY)")
        self.url = url.rstrip("/")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._http = httpx.Client(base_url=self.url + "/api/v3",
                                  headers={"Authorization": f"Bearer {api_key}"},
                                  timeout=httpx.Timeout(timeout, connect=10.0))
        # plain calls (JSON or bytes in, a buffered answer out): stdlib keep-alive, cheaper
        self._fast = FastHTTP(self.url, "/api/v3", {"Authorization": f"Bearer {api_key}"}, timeout)
        self.projects = Projects(self)
        self.files = Files(self)
        self.keys = Keys(self)
        self.limits = LimitsAPI(self)

    # -- plumbing ------------------------------------------------------------------------------

    def close(self) -> None:
        self._fast.close()
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _sleep(self, attempt: int) -> None:
        time.sleep(min(self.backoff * (2 ** attempt), 2.0))

    def _call(self, method: str, path: str, *, idempotent: bool | None = None,
              ok: tuple[int, ...] = (200, 201, 204, 206), **kwargs: Any) -> httpx.Response:
        """One API call with bounded retries; an error status raises its ProjectHubError."""
        if idempotent is None:
            idempotent = method in ("GET", "PUT", "DELETE", "HEAD")
        content = kwargs.get("content")
        fast = (content is None or isinstance(content, bytes)) and not isinstance(kwargs.get("timeout"), httpx.Timeout)
        attempt = 0
        while True:
            try:
                if fast:
                    response: Any = self._fast.request(method, path, json_body=kwargs.get("json"), content=content,
                                                       params=kwargs.get("params"), headers=kwargs.get("headers"),
                                                       timeout=kwargs.get("timeout"))
                else:
                    response = self._http.request(method, path, **kwargs)
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
            self._sleep(attempt)
            attempt += 1

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._call(method, path, **kwargs).json()

    # -- exec and jobs ---------------------------------------------------------------------

    def exec(self, project: Any, command: str, *, args: list[str] | None = None, bash: bool | None = None,
             cwd: str | None = None, env: dict[str, str] | None = None, timeout: float | None = None,
             max_output: int | None = None, check: bool = False,
             on_stdout: Callable[[str], Any] | None = None, on_stderr: Callable[[str], Any] | None = None,
             idempotency_key: str | None = None) -> ExecResult:
        """Run ``command`` (a program with ``args``, or a bash script) and wait for it.

        Raises ``TimeoutExpired`` (with the partial output) when ``timeout`` seconds pass,
        ``CommandFailed`` for a non-zero exit when ``check``.  With ``on_stdout``/``on_stderr``
        the command runs as a job and the callbacks get its output as it comes.
        ``idempotency_key`` makes a retried call run the command at most once.
        """
        if on_stdout is not None or on_stderr is not None:
            job = self.start(project, command, args=args, bash=bash, cwd=cwd, env=env, timeout=timeout,
                             max_output=max_output, idempotency_key=idempotency_key)
            for _ in job.stream(on_stdout=on_stdout, on_stderr=on_stderr):
                pass
            return _exec_outcome(job.result.raw if job.result else job.info().raw, timeout, check)
        body = _exec_body(command, args, bash, cwd, env, timeout, max_output)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        raw = self._call("POST", f"/projects/{project_id_of(project)}/exec", json=body, headers=headers,
                         idempotent=bool(idempotency_key),
                         timeout=_http_timeout(timeout, self.timeout)).json()
        return _exec_outcome(raw, timeout, check)

    def start(self, project: Any, command: str, *, args: list[str] | None = None, bash: bool | None = None,
              cwd: str | None = None, env: dict[str, str] | None = None, timeout: float | None = None,
              max_output: int | None = None, idempotency_key: str | None = None) -> "Job":
        """Start ``command`` as a durable job and return at once (``Job``).  ``timeout``
        defaults to the server's (60 s); 0 = no limit."""
        body = _exec_body(command, args, bash, cwd, env, timeout, max_output)
        body["async"] = True
        key = idempotency_key or uuid.uuid4().hex
        pid = project_id_of(project)
        raw = self._json("POST", f"/projects/{pid}/exec", json=body, headers={"Idempotency-Key": key},
                         idempotent=True)
        return Job(self, pid, raw["job_id"], ExecResult.from_json(raw))

    def job(self, project: Any, job_id: str) -> "Job":
        """A handle on an existing job (e.g. one started by another process)."""
        return Job(self, project_id_of(project), job_id)

    def jobs(self, project: Any) -> list[JobSummary]:
        return [JobSummary.from_json(j) for j in self._json("GET", f"/projects/{project_id_of(project)}/jobs")]

    # -- kernel sessions ---------------------------------------------------------------------

    def session(self, project: Any, kernel: str = "python3", *, name: str | None = None,
                cwd: str | None = None, env: dict[str, str] | None = None) -> "Session":
        """Start a persistent kernel (state survives between ``run`` calls).  As a context
        manager it is deleted at the end."""
        body: dict[str, Any] = {"kernel": kernel}
        if name is not None:
            body["name"] = name
        if cwd is not None:
            body["cwd"] = cwd
        if env:
            body["env"] = env
        pid = project_id_of(project)
        raw = self._json("POST", f"/projects/{pid}/sessions", json=body)
        return Session(self, pid, SessionInfo.from_json(raw))

    def sessions(self, project: Any) -> list[SessionInfo]:
        return [SessionInfo.from_json(s) for s in self._json("GET", f"/projects/{project_id_of(project)}/sessions")]

    def attach_session(self, project: Any, session_id: str) -> "Session":
        pid = project_id_of(project)
        return Session(self, pid, SessionInfo.from_json(self._json("GET", f"/projects/{pid}/sessions/{session_id}")))


class Job:
    """A job running in a project.  ``result`` is set once it has finished (``wait``, or the
    end of ``stream``); ``last_event_id`` is how far ``stream`` got, so a later ``stream()``
    (also after a dropped connection, which it resumes by itself) continues from there."""

    def __init__(self, client: Client, project_id: str, job_id: str, record: ExecResult | None = None) -> None:
        self.client, self.project_id, self.job_id = client, project_id, job_id
        self.last_event_id: str | None = None
        self.result: ExecResult | None = record if record is not None and not record.running else None
        self.stats: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"Job({self.job_id!r}, project_id={self.project_id!r})"

    @property
    def _path(self) -> str:
        return f"/projects/{self.project_id}/jobs/{self.job_id}"

    def info(self, stats: bool = False) -> ExecResult:
        """The job's record now (``status`` running/completed/error/killed)."""
        params = {"stats": "true"} if stats else None
        record = ExecResult.from_json(self.client._json("GET", self._path, params=params))
        if not record.running:
            self.result = record
        return record

    def wait(self, timeout: float | None = None) -> ExecResult:
        """Block until the job ends; ``TimeoutExpired`` (carrying the record so far) after
        ``timeout`` seconds, or when the job itself timed out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 30.0 if deadline is None else max(0.0, min(30.0, deadline - time.monotonic()))
            raw = self.client._json("GET", self._path, params={"wait": left}, timeout=left + 30.0)
            record = ExecResult.from_json(raw)
            if not record.running:
                self.result = record
                if record.timed_out:
                    raise TimeoutExpired("the job timed out", result=record, job_id=self.job_id)
                return record
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutExpired(f"job still running after {timeout} s", result=record, job_id=self.job_id)

    def kill(self) -> bool:
        """Kill the job's processes; False if it had already finished."""
        return bool(self.client._json("DELETE", self._path).get("killed"))

    def output(self, stream: str = "stdout", offset: int = 0, length: int | None = None) -> str:
        """The stored output of ``stream`` from byte ``offset`` (all of it by default, beyond
        the reply's ``max_output`` cap), read in 1 MiB pages."""
        parts: list[str] = []
        want = length
        while want is None or want > 0:
            params = {"stream": stream, "offset": offset, "length": min(CHUNK, want) if want else CHUNK}
            page = self.client._json("GET", self._path + "/output", params=params)
            parts.append(page["data"])
            got = page["end"] - offset
            if got <= 0 or page["end"] >= page["total"]:
                break
            offset = page["end"]
            if want is not None:
                want -= got
        return "".join(parts)

    def stream(self, on_stdout: Callable[[str], Any] | None = None,
               on_stderr: Callable[[str], Any] | None = None, *, last_event_id: str | None = None,
               from_start: bool = False) -> Iterator[OutputChunk]:
        """Yield the job's output as ``OutputChunk(stream, data, offset)`` until it ends
        (then ``result`` is set).  A dropped connection is resumed with ``Last-Event-ID``
        (bounded retries); a second call continues where the first stopped, unless
        ``from_start``; ``last_event_id`` (e.g. ``"1024:0"``) starts elsewhere."""
        position = last_event_id or (None if from_start else self.last_event_id)
        failures = 0
        client = self.client
        path = self._path + "/events"
        while True:
            headers = {"Last-Event-ID": position} if position else None
            try:
                # its own connection, read with http.client (heartbeats come every 15 s)
                response, sock = client._fast.open_stream("GET", path, headers=headers, timeout=60.0)
                try:
                    if response.status != 200:
                        raise error_for(response.status, response.read())
                    parser = SSEParser()
                    read = response.read1
                    while raw := read(65536):
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
                finally:
                    sock.close()
            except (ConnectFailed, SendFailed, ReadTimedOut, OSError, http.client.HTTPException) as exc:
                if failures >= client.retries:
                    raise ConnectionFailed(f"job event stream failed: {exc!r}") from exc
            client._sleep(failures)
            failures += 1


class Session:
    """A persistent Jupyter kernel in a project."""

    def __init__(self, client: Client, project_id: str, info: SessionInfo) -> None:
        self.client, self.project_id, self.info = client, project_id, info
        self.session_id = info.session_id

    def __repr__(self) -> str:
        return f"Session({self.session_id!r}, kernel={self.info.kernel!r})"

    @property
    def _path(self) -> str:
        return f"/projects/{self.project_id}/sessions/{self.session_id}"

    def run(self, code: str, *, timeout: float | None = None, max_output: int | None = None,
            check: bool = False, on_output: Callable[[Output], Any] | None = None) -> CellResult:
        """Run a cell.  ``TimeoutExpired`` (with ``result``: the outputs so far, whether the
        state survived) after ``timeout`` seconds (default 60); ``CellError`` when ``check``
        and the cell raised.  ``on_output`` gets each output item as it arrives."""
        body: dict[str, Any] = {"code": code}
        if timeout is not None:
            body["timeout_s"] = timeout
        if max_output is not None:
            body["max_output"] = max_output
        http_timeout = _http_timeout(timeout if timeout is not None else 60.0, self.client.timeout)
        if on_output is None:
            raw = self.client._json("POST", self._path + "/execute", json=body, timeout=http_timeout)
        else:
            raw = self._stream(body, on_output, http_timeout)
        result = CellResult.from_json(raw)
        if result.timed_out:
            raise TimeoutExpired(f"cell timed out after {timeout if timeout is not None else 60} s", result=result)
        if check and result.error is not None:
            raise CellError(result)
        return result

    def _stream(self, body: dict[str, Any], on_output: Callable[[Output], Any], http_timeout: float) -> Any:
        with self.client._http.stream("POST", self._path + "/stream", json=body,
                                      timeout=httpx.Timeout(http_timeout, connect=10.0)) as response:
            if response.status_code != 200:
                response.read()
                raise error_for(response.status_code, response.content)
            parser = SSEParser()
            for raw in response.iter_raw():
                for _, kind, data in parser.feed(raw):
                    event = json.loads(data)
                    if kind == "output":
                        on_output(Output.from_json(event.get("item") or {}))
                    elif kind == "done":
                        return event.get("result") or {}
                    elif kind == "error":
                        raise ProjectHubError(str(event.get("error", event)))
        raise ProjectHubError("the cell's stream ended without a result")

    def interrupt(self) -> None:
        self.client._call("POST", self._path + "/interrupt")

    def restart(self) -> None:
        """Restart the kernel (its state is lost)."""
        self.client._call("POST", self._path + "/restart", timeout=120.0)

    def refresh(self) -> SessionInfo:
        self.info = SessionInfo.from_json(self.client._json("GET", self._path))
        return self.info

    def close(self) -> None:
        """Stop the kernel and forget the session (a session already gone is fine)."""
        try:
            self.client._call("DELETE", self._path)
        except ProjectHubError as exc:
            if exc.status != 404:
                raise

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Projects:
    """``client.projects``: list, create, get, delete, start, stop."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def list(self) -> list[Project]:
        return [Project.from_json(p) for p in self._c._json("GET", "/projects")]

    def create(self, title: str = "", description: str = "", *, start: bool = False,
               limits: dict[str, Any] | None = None) -> Project:
        body: dict[str, Any] = {"title": title, "description": description}
        if start:
            body["start"] = True
        if limits:
            body["limits"] = limits
        created = self._c._json("POST", "/projects", json=body, timeout=max(self._c.timeout, 120.0))
        return self.get(created["project_id"])

    def get(self, project: Any) -> Project:
        return Project.from_json(self._c._json("GET", f"/projects/{project_id_of(project)}"))

    def delete(self, project: Any) -> None:
        self._c._call("DELETE", f"/projects/{project_id_of(project)}")

    def start(self, project: Any) -> dict[str, Any]:
        return self._c._json("POST", f"/projects/{project_id_of(project)}/start", idempotent=True,
                             timeout=max(self._c.timeout, 120.0))

    def stop(self, project: Any) -> dict[str, Any]:
        return self._c._json("POST", f"/projects/{project_id_of(project)}/stop", idempotent=True,
                             timeout=max(self._c.timeout, 120.0))


class LimitsAPI:
    """``client.limits``: ``get(project)``, ``set(project, pids=256, memory_bytes="1G", ...)``."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def get(self, project: Any) -> Limits:
        return Limits.from_json(self._c._json("GET", f"/projects/{project_id_of(project)}/limits"))

    def set(self, project: Any, **limits: Any) -> Limits:
        return Limits.from_json(self._c._json("PUT", f"/projects/{project_id_of(project)}/limits", json=limits))


class Keys:
    """``client.keys``: list, create (the secret is in the result, once), revoke."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def list(self, account_id: str | None = None) -> list[ApiKey]:
        params = {"account_id": account_id} if account_id else None
        return [ApiKey.from_json(k) for k in self._c._json("GET", "/keys", params=params)]

    def create(self, name: str = "", *, expire: datetime | str | None = None,
               project: Any = None) -> ApiKey:
        body: dict[str, Any] = {"name": name}
        if expire is not None:
            body["expire"] = _iso(expire)
        if project is not None:
            body["project_id"] = project_id_of(project)
        return ApiKey.from_json(self._c._json("POST", "/keys", json=body))

    def revoke(self, key: ApiKey | int) -> None:
        key_id = key.id if isinstance(key, ApiKey) else int(key)
        self._c._call("DELETE", f"/keys/{key_id}")


class Files:
    """``client.files``: a project's files (paths are relative to its home)."""

    def __init__(self, client: Client) -> None:
        self._c = client

    @staticmethod
    def _p(project: Any, path: str) -> str:
        return f"/projects/{project_id_of(project)}/files/{quote_path(path)}"

    def write_bytes(self, project: Any, path: str, data: bytes, *, if_match: str | None = None) -> FileInfo:
        """Create or replace the file; ``if_match`` (an ETag) refuses (``PreconditionFailed``)
        when it has changed since."""
        headers = {"If-Match": if_match} if if_match else {}
        response = self._c._call("PUT", self._p(project, path), content=bytes(data), headers=headers,
                                 timeout=max(self._c.timeout, 300.0))
        return FileInfo.from_json(response.json(), created=response.status_code == 201)

    def write_text(self, project: Any, path: str, text: str, **kwargs: Any) -> FileInfo:
        return self.write_bytes(project, path, text.encode(), **kwargs)

    def upload(self, project: Any, source: str | os.PathLike[str] | IO[bytes], path: str, *,
               if_match: str | None = None) -> FileInfo:
        """Upload a local file (a path, or a binary file object) to ``path``, streamed."""
        headers = {"If-Match": if_match} if if_match else {}
        if isinstance(source, (str, os.PathLike)):
            if Path(source).is_file():
                return self._send_path(project, Path(source), path, headers)
            with open(source, "rb") as opened:   # a FIFO, a device: read to its end
                return self.upload(project, opened, path, if_match=if_match)
        fh = source
        try:
            start = fh.tell()
            size = os.fstat(fh.fileno()).st_size - start if hasattr(fh, "fileno") else None
        except (OSError, io.UnsupportedOperation, AttributeError):
            start = size = None
        if size is None and isinstance(fh, io.BytesIO):
            size = len(fh.getbuffer()) - fh.tell()
        if size is not None:
            headers["Content-Length"] = str(size)

        def body() -> Iterator[bytes]:
            while chunk := fh.read(CHUNK):
                yield chunk
        content: Any = body()
        # a half-read file object cannot be sent again: not retried
        response = self._c._call("PUT", self._p(project, path), content=content, headers=headers,
                                 idempotent=False, timeout=httpx.Timeout(600.0, connect=10.0))
        return FileInfo.from_json(response.json(), created=response.status_code == 201)

    def _send_path(self, project: Any, local: Path, path: str, headers: dict[str, str]) -> FileInfo:
        """A local file as the body, sent by the kernel (``FastHTTP.send_file``): httpx cost
        a copy of every byte in Python and more CPU than the server (bench/README.md, files).
        A whole-file PUT is idempotent: retried on a broken connection and on 502/503."""
        for attempt in range(self._c.retries + 1):
            try:
                with open(local, "rb") as fh:
                    response = self._c._fast.send_file("PUT", self._p(project, path), fh,
                                                       os.fstat(fh.fileno()).st_size, headers=headers)
            except (ConnectFailed, SendFailed) as exc:
                if attempt >= self._c.retries:
                    raise ConnectionFailed(f"connection to {self._c.url} failed: {exc}") from exc
            except ReadTimedOut as exc:
                raise ConnectionFailed(f"no answer from {self._c.url}: {exc}") from exc
            else:
                if response.status_code in (200, 201):
                    return FileInfo.from_json(response.json(), created=response.status_code == 201)
                if response.status_code not in _RETRY_STATUS or attempt >= self._c.retries:
                    raise error_for(response.status_code, response.content)
            self._c._sleep(attempt)
        raise AssertionError("unreachable")

    def read_bytes(self, project: Any, path: str, *, range: tuple[int, int | None] | None = None) -> bytes:
        """The file's content (or bytes ``range=(first, last)`` of it, ``last`` inclusive or None)."""
        headers = {}
        if range is not None:
            first, last = range
            headers["Range"] = f"bytes={first}-{'' if last is None else last}"
        return self._c._call("GET", self._p(project, path), headers=headers,
                             timeout=max(self._c.timeout, 300.0)).content

    def read_text(self, project: Any, path: str, encoding: str = "utf-8") -> str:
        return self.read_bytes(project, path).decode(encoding)

    def download(self, project: Any, path: str, dest: str | os.PathLike[str] | IO[bytes]) -> FileInfo:
        """Stream the file into a local path or a binary file object; its size and ETag."""
        # On a connection of its own, read with http.client into one reused buffer: httpx
        # (h11, its chunker) spent 3-7x the CPU per byte (bench/README.md, files).
        for attempt in range(self._c.retries + 1):
            try:
                response, sock = self._c._fast.open_stream("GET", self._p(project, path), timeout=600.0)
            except (ConnectFailed, SendFailed) as exc:   # nothing written yet, and a GET: retry
                if attempt >= self._c.retries:
                    raise ConnectionFailed(f"cannot reach {self._c.url}: {exc}") from exc
                self._c._sleep(attempt)
                continue
            except ReadTimedOut as exc:
                raise ConnectionFailed(f"no answer from {self._c.url}: {exc}") from exc
            try:
                if response.status != 200:
                    raise error_for(response.status, _error_body(response))
                etag = response.getheader("etag")
                if isinstance(dest, (str, os.PathLike)):
                    with open(dest, "wb") as fh:
                        size = _copy_body(response, fh.write, self._c.url)
                else:   # a caller's object may keep what it is given: hand it bytes of its own
                    size = _copy_body(response, lambda view: dest.write(bytes(view)), self._c.url)
                return FileInfo(path=path, size=size, etag=etag)
            finally:
                sock.close()
        raise AssertionError("unreachable")

    def list(self, project: Any, path: str = "") -> Listing:
        """The entries of a directory (``""`` is the home): ``FileEntry(name, type, size, mtime)``."""
        raw = self._c._json("GET", self._p(project, path), params={"list": ""})
        listing = Listing(FileEntry.from_json(e) for e in raw.get("entries") or [])
        listing.path, listing.truncated = raw.get("path", path), bool(raw.get("truncated"))
        return listing

    def delete(self, project: Any, path: str, *, recursive: bool = False) -> None:
        params = {"recursive": "true"} if recursive else None
        self._c._call("DELETE", self._p(project, path), params=params)

    def move(self, project: Any, source: str, dest: str, *, overwrite: bool = False) -> str:
        body: dict[str, Any] = {"from": source, "to": dest}
        if overwrite:
            body["overwrite"] = True
        return self._c._json("POST", f"/projects/{project_id_of(project)}/files:move", json=body)["path"]

    def download_archive(self, project: Any, path: str, dest: str | os.PathLike[str] | IO[bytes]) -> int:
        """A directory as a tar.gz, into a local path or file object; the bytes written."""
        size = 0
        with self._c._http.stream("GET", f"/projects/{project_id_of(project)}/archive/{quote_path(path)}",
                                  timeout=httpx.Timeout(600.0, connect=10.0)) as response:
            if response.status_code != 200:
                response.read()
                raise error_for(response.status_code, response.content)
            fh = open(dest, "wb") if isinstance(dest, (str, os.PathLike)) else dest
            try:
                for chunk in response.iter_raw(CHUNK):
                    fh.write(chunk)
                    size += len(chunk)
            finally:
                if fh is not dest:
                    fh.close()
        return size

    def upload_archive(self, project: Any, source: str | os.PathLike[str] | IO[bytes] | bytes,
                       path: str = "") -> dict[str, Any]:
        """Unpack a tar.gz (a local path, file object or bytes) into the directory ``path``."""
        if isinstance(source, (bytes, bytearray)):
            content: Any = bytes(source)
        elif isinstance(source, (str, os.PathLike)):
            content = Path(source).read_bytes()
        else:
            content = source.read()
        return self._c._json("POST", f"/projects/{project_id_of(project)}/archive/{quote_path(path)}",
                             content=content, headers={"Content-Type": "application/gzip"},
                             timeout=max(self._c.timeout, 600.0))
