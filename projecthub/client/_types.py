"""Typed results and errors of ``projecthub.client`` (plain dataclasses; no server imports)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Iterator

# -- errors ----------------------------------------------------------------------------------


class ProjectHubError(Exception):
    """Any error the server answered (``status`` is its HTTP status, ``message`` its text)
    or a failure to reach it (``status`` is None)."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.message, self.status, self.body = message, status, body


class BadRequest(ProjectHubError):
    """400 (a bad value) or 422 (an unknown field, a reused Idempotency-Key)."""


class Unauthorized(ProjectHubError):
    """401: no, an invalid, a revoked or an expired API key."""


class PermissionDenied(ProjectHubError):
    """403: the key may not do this (not a collaborator, a project key, not an admin)."""


class NotFound(ProjectHubError):
    """404: no such project, job, session, key or file."""


class Conflict(ProjectHubError):
    """409: the request conflicts with the current state (e.g. a cell ended its own kernel)."""


class PreconditionFailed(Conflict):
    """412: the file changed since the ETag given as ``if_match``."""


class PayloadTooLarge(ProjectHubError):
    """413: the body is too large."""


class RateLimited(ProjectHubError):
    """429: an account limit (e.g. running projects)."""


class ServerError(ProjectHubError):
    """5xx, or the server could not be reached after the retries."""


class ConnectionFailed(ServerError):
    """The server could not be reached (after the bounded retries of idempotent calls)."""


class TimeoutExpired(ProjectHubError):
    """A command or cell ran out of time.  ``result`` is what it produced until then (an
    ``ExecResult`` or a ``CellResult``); ``stdout``/``stderr`` its partial output; ``job_id``
    names the job that keeps running when the server's call budget (504) ended the wait."""

    def __init__(self, message: str, status: int | None = None, body: Any = None,
                 result: Any = None, job_id: str | None = None) -> None:
        super().__init__(message, status, body)
        self.result, self.job_id = result, job_id

    @property
    def stdout(self) -> str:
        return getattr(self.result, "stdout", "") or ""

    @property
    def stderr(self) -> str:
        return getattr(self.result, "stderr", "") or ""


class CommandFailed(ProjectHubError):
    """``exec(..., check=True)``: the command exited non-zero or was killed (``result``)."""

    def __init__(self, message: str, result: "ExecResult") -> None:
        super().__init__(message)
        self.result = result


class CellError(ProjectHubError):
    """``run(..., check=True)``: the cell raised (``ename``, ``evalue``, ``traceback``)."""

    def __init__(self, result: "CellResult") -> None:
        err = result.error or {}
        self.ename, self.evalue = err.get("ename", ""), err.get("evalue", "")
        self.traceback = err.get("traceback", [])
        super().__init__(f"{self.ename}: {self.evalue}")
        self.result = result


_BY_STATUS: dict[int, type[ProjectHubError]] = {
    400: BadRequest, 401: Unauthorized, 403: PermissionDenied, 404: NotFound, 409: Conflict,
    412: PreconditionFailed, 413: PayloadTooLarge, 422: BadRequest, 429: RateLimited, 504: TimeoutExpired,
}


def error_for(status: int, content: bytes) -> ProjectHubError:
    """The exception for an error response (its ``{"error": ...}`` message)."""
    body: Any = None
    message = ""
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
    else:
        message = content[:500].decode("utf-8", "replace") or f"HTTP {status}"
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ProjectHubError)
    if cls is TimeoutExpired:
        job_id = body.get("job_id") if isinstance(body, dict) else None
        return TimeoutExpired(message, status, body, job_id=job_id)
    return cls(message, status, body)


# -- results ---------------------------------------------------------------------------------

def _pick(cls: Any, raw: dict[str, Any]) -> dict[str, Any]:
    names = cls.__dataclass_fields__
    return {k: v for k, v in raw.items() if k in names and k != "raw"}


@dataclass
class Project:
    project_id: str
    title: str = ""
    description: str = ""
    created: str | None = None
    last_edited: str | None = None
    state: dict[str, Any] = field(default_factory=dict)
    users: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Project":
        return cls(**_pick(cls, raw), raw=raw)

    @property
    def running(self) -> bool:
        return (self.state or {}).get("state") == "running"


@dataclass
class ExecResult:
    """A finished command (or a job record: ``status`` is then running/completed/...)."""
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    signal: str | None = None
    timed_out: bool = False
    killed_by: str | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    stdout_bytes: int | None = None
    stderr_bytes: int | None = None
    wall_s: float | None = None
    cpu_user_s: float | None = None
    cpu_sys_s: float | None = None
    max_rss_bytes: int | None = None
    oom_killed: bool = False
    spawn_error: dict[str, Any] | None = None
    job_id: str | None = None
    status: str | None = None
    start: str | None = None
    elapsed_s: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "ExecResult":
        values = _pick(cls, raw)
        for name in ("timed_out", "stdout_truncated", "stderr_truncated", "oom_killed"):
            if values.get(name) is None:
                values.pop(name, None)
        for name in ("stdout", "stderr"):
            if values.get(name) is None:
                values.pop(name, None)
        return cls(**values, raw=raw)

    @property
    def ok(self) -> bool:
        """Exited 0 (and was not killed)."""
        return self.exit_code == 0 and not self.timed_out and self.killed_by is None

    @property
    def running(self) -> bool:
        return self.status == "running"


@dataclass
class OutputChunk:
    """A piece of a job's output: ``stream`` is ``"stdout"`` or ``"stderr"``, ``offset`` the
    byte offset of ``data`` in that stream."""
    stream: str
    data: str
    offset: int = 0


@dataclass
class JobSummary:
    job_id: str
    status: str
    start: str | None = None
    native: bool = True
    pid: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "JobSummary":
        return cls(**_pick(cls, raw), raw=raw)


@dataclass
class Output:
    """One Jupyter output item: ``type`` is stream, display_data, execute_result or error."""
    type: str
    name: str | None = None
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Output":
        kind = raw.get("output_type")
        if not kind:
            if "ename" in raw:
                kind = "error"
            elif "name" in raw and "text" in raw:
                kind = "stream"
            elif "execution_count" in raw:
                kind = "execute_result"
            elif "data" in raw:
                kind = "display_data"
            else:
                kind = "other"
        text = raw.get("text", "")
        if isinstance(text, list):
            text = "".join(text)
        data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
        return cls(type=kind, name=raw.get("name"), text=text if isinstance(text, str) else "",
                   data=data, raw=raw)

    def mime(self, mime_type: str) -> bytes | str | None:
        """The value for ``mime_type`` (``image/*`` as bytes, text as str), if present."""
        value = self.data.get(mime_type)
        if value is None:
            return None
        if isinstance(value, list):
            value = "".join(value)
        if mime_type.startswith("image/") and mime_type != "image/svg+xml" and isinstance(value, str):
            return base64.b64decode(value)
        return value if isinstance(value, str) else json.dumps(value)

    @property
    def images(self) -> dict[str, bytes]:
        """``{"image/png": b"\\x89PNG...", ...}`` of a display_data/execute_result item."""
        out: dict[str, bytes] = {}
        for mime_type in self.data:
            if mime_type.startswith("image/"):
                value = self.mime(mime_type)
                out[mime_type] = value.encode() if isinstance(value, str) else value  # type: ignore[union-attr]
        return out


@dataclass
class CellResult:
    outputs: list[Output] = field(default_factory=list)
    status: str = "ok"
    execution_count: int | None = None
    timed_out: bool = False
    interrupted: bool = False
    restarted: bool = False
    state_survived: bool = True
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "CellResult":
        values = _pick(cls, raw)
        values["outputs"] = [Output.from_json(o) for o in raw.get("outputs") or [] if isinstance(o, dict)]
        return cls(**values, raw=raw)

    def _stream(self, name: str) -> str:
        return "".join(o.text for o in self.outputs if o.type == "stream" and o.name == name)

    @property
    def stdout(self) -> str:
        return self._stream("stdout")

    @property
    def stderr(self) -> str:
        return self._stream("stderr")

    @property
    def text(self) -> str:
        """What the cell printed (stdout), then its value's ``text/plain`` if it had one."""
        value = self.result
        return self.stdout + (value if value is not None else "")

    @property
    def result(self) -> str | None:
        """The ``text/plain`` of the cell's value (``execute_result``), e.g. ``'2'`` for ``1 + 1``."""
        # CoCalc's output items drop ``output_type``/``execution_count``: the value is the
        # cell's last item when that is a rich one (a display() call's item would look alike)
        for o in self.outputs:
            if o.type == "execute_result":
                value = o.mime("text/plain")
                return value if isinstance(value, str) else None
        if self.outputs and self.outputs[-1].type == "display_data" and not self.outputs[-1].images:
            value = self.outputs[-1].mime("text/plain")
            return value if isinstance(value, str) else None
        return None

    @property
    def images(self) -> list[bytes]:
        """Every image the cell displayed, as bytes (PNG, JPEG...), in order."""
        return [data for o in self.outputs for data in o.images.values()]

    @property
    def error(self) -> dict[str, Any] | None:
        """``{"ename", "evalue", "traceback"}`` when the cell raised."""
        for o in self.outputs:
            if o.type == "error":
                return o.raw
        return None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class SessionInfo:
    session_id: str
    name: str = ""
    kernel: str = ""
    state: str = ""
    pid: int | None = None
    created: str | None = None
    last_used: str | None = None
    cwd: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "SessionInfo":
        return cls(**_pick(cls, raw), raw=raw)


@dataclass
class Limits:
    memory_bytes: int | None = None
    pids: int | None = None
    cpu_cores: float | None = None
    cpu_shares: int | None = None
    tmp_bytes: int | None = None
    network: bool = False
    disk_bytes: int | None = None
    idle_timeout_s: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Limits":
        return cls(**_pick(cls, raw), raw=raw)


@dataclass
class ApiKey:
    id: int
    name: str = ""
    account_id: str | None = None
    project_id: str | None = None
    trunc: str | None = None
    created: str | None = None
    expire: str | None = None
    last_active: str | None = None
    secret: str | None = field(default=None, repr=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "ApiKey":
        return cls(**_pick(cls, raw), raw=raw)


@dataclass
class FileInfo:
    path: str
    size: int | None = None
    etag: str | None = None
    mtime: str | None = None
    created: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any], created: bool = False) -> "FileInfo":
        return cls(**_pick(cls, raw), created=created, raw=raw)


@dataclass
class FileEntry:
    name: str
    type: str
    size: int = 0
    mtime: str | None = None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "FileEntry":
        return cls(**_pick(cls, raw))

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"


class Listing(list):  # list[FileEntry]
    """A directory's entries (a list of ``FileEntry``), with the listed ``path`` and whether
    the server ``truncated`` a huge directory."""
    path: str = ""
    truncated: bool = False

    def names(self) -> list[str]:
        return [e.name for e in self]


# -- Server-Sent Events ----------------------------------------------------------------------

class SSEParser:
    """Incremental parser: feed bytes, get ``(id, event, data)`` for each complete event
    (comments and heartbeats are skipped)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> Iterator[tuple[str | None, str, bytes]]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\n\n" not in buf:
            self._buf = buf
            return
        *blocks, self._buf = buf.split(b"\n\n")
        for block in blocks:
            event_id, kind, data = None, "message", []
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    data.append(line[6:])
                elif line.startswith(b"event: "):
                    kind = line[7:].decode()
                elif line.startswith(b"id: "):
                    event_id = line[4:].decode()
            if data:
                yield event_id, kind, b"\n".join(data) if len(data) > 1 else data[0]


def project_id_of(project: Any) -> str:
    """A project id from an id string or anything with a ``project_id``."""
    if isinstance(project, str):
        return project
    pid = getattr(project, "project_id", None)
    if isinstance(pid, str):
        return pid
    raise TypeError(f"expected a project id or a Project, not {type(project).__name__}")


def quote_path(path: str) -> str:
    from urllib.parse import quote
    return quote(str(path).lstrip("/"), safe="/")
