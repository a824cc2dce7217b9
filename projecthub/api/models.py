"""Typed request and response models of the native API (``/api/v3``).

The one source of truth for v3: request models validate every body and query string
(``parse_body`` / ``parse_query``), and the OpenAPI document (``openapi.py``) is generated
from these same classes, so the two cannot drift.

Rules (README, "Native API"):

* an unknown field in a body or query string is **422** ``{"error": "unknown field 'x'"}``;
* any other invalid value (wrong type, negative, out of range, missing) is **400**
  ``{"error": "<field> ..."}``, as before;
* numbers are JSON numbers (``true`` is not a number), ``1000.0`` is accepted where an
  integer is expected; every time is an ISO 8601 UTC string (``2026-01-31T12:00:00.000Z``).

Response models document what the daemon returns (``project/execution/results.py``,
``project/jobs.py``, ``project/jupyter/sessions.py``); they are not applied to replies at
run time (the exec path stays fast), the schemathesis test checks replies against them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from annotated_types import Interval
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from ..host.sandbox import limits as _lim
from ..store.bounds import DESCRIPTION_MAX, TITLE_MAX

MAX_NUMBER = 1e9  # seconds or characters: far beyond any sane value, and safely an int


class RequestError(Exception):
    """A request that does not match its model: ``status`` is 422 (unknown field) or 400."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _integral(value: Any) -> Any:
    """JSON has one number type: 1000.0 is the integer 1000."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


def _env_names(value: Any) -> Any:
    if isinstance(value, dict):
        for name in value:
            if not isinstance(name, str) or not name or "=" in name or "\x00" in name:
                raise ValueError("must map variable names (non-empty, no '=') to strings")
    return value


Seconds = Annotated[float, Interval(ge=0, le=MAX_NUMBER), BeforeValidator(_no_bool)]
Count = Annotated[int, Interval(ge=0, le=int(MAX_NUMBER)), BeforeValidator(_integral)]
Offset = Annotated[int, Interval(ge=0)]
Env = Annotated[dict[str, str], BeforeValidator(_env_names),
                Field(description="Environment variables (names non-empty, without '=')",
                      json_schema_extra={"propertyNames": {"pattern": "^[^=\\x00]+$", "minLength": 1}})]
Time = Annotated[str, Field(description="ISO 8601 UTC time, e.g. 2026-01-31T12:00:00.000Z",
                            json_schema_extra={"format": "date-time"})]
Uuid = Annotated[str, Field(json_schema_extra={"format": "uuid"})]

_STRICT = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class Request(BaseModel):
    model_config = _STRICT


class Reply(BaseModel):
    """Response models: documentation of replies; more fields may come in later versions."""
    model_config = ConfigDict(extra="allow")


# -- limits ---------------------------------------------------------------------------------

_SIZE = {"type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*[KkMmGgTt]?[iI]?[bB]?\\s*$"}
_DURATION = {"type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*[smhdSMHD]?\\s*$"}


def _limit(schema: list[dict[str, Any]], description: str) -> Any:
    """A limit's value is checked by ``ProjectLimits`` (its messages name the limit); the
    model only forbids unknown limits and documents the accepted forms and minimums."""
    return Field(default=None, description=description,
                 json_schema_extra=lambda s: (s.clear(), s.update({"anyOf": schema, "description": description})))


class LimitsRequest(Request):
    """Per-project overrides; absent keys keep their current value.  Sizes are bytes or
    strings like ``512M`` / ``2GiB`` (binary units); ``null`` lifts a limit (admins)."""
    model_config = ConfigDict(extra="forbid", strict=False, title="LimitsRequest")
    memory_bytes: Any = _limit([{"type": "integer", "minimum": _lim._MIN_MEMORY, "maximum": _lim._MAX_BYTES},
                                _SIZE, {"type": "null"}],
                               f"memory in bytes (at least {_lim._MIN_MEMORY // 2**20} MiB)")
    pids: Any = _limit([{"type": "integer", "minimum": _lim._MIN_PIDS, "maximum": _lim._MAX_PIDS},
                        {"type": "null"}], f"processes and threads (at least {_lim._MIN_PIDS})")
    cpu_cores: Any = _limit([{"type": "number", "minimum": 0.01, "maximum": _lim._MAX_CPU_CORES},
                             {"type": "null"}], "CPU quota in cores, e.g. 1.5")
    cpu_shares: Any = _limit([{"type": "integer", "minimum": _lim._CPU_SHARES_RANGE[0],
                               "maximum": _lim._CPU_SHARES_RANGE[1]}, {"type": "null"}],
                             "relative CPU weight")
    tmp_bytes: Any = _limit([{"type": "integer", "minimum": _lim._MIN_TMP, "maximum": _lim._MAX_BYTES},
                             _SIZE, {"type": "null"}], f"/tmp size (at least {_lim._MIN_TMP // 2**20} MiB)")
    network: Any = _limit([{"type": "boolean"}],
                          "true = outbound access through the project's own network namespace and NAT, "
                          "never to the host or other projects (admins only; applies at the next start)")
    disk_bytes: Any = _limit([{"type": "integer", "minimum": _lim._MIN_DISK, "maximum": _lim._MAX_DISK},
                              _SIZE, {"type": "null"}],
                             f"home + job state, a per-project ext4 image (at least {_lim._MIN_DISK // 2**20} "
                             "MiB); null = not enforced (admins)")
    idle_timeout_s: Any = _limit([{"anyOf": [{"const": 0}, {"type": "number", "minimum": 1,
                                                             "maximum": _lim._MAX_IDLE_S}]},
                                  _DURATION, {"type": "null"}],
                                 "the project is stopped after this long without API activity (running "
                                 "jobs and open sessions count); 0 or null = never; a longer value or 0 is "
                                 "for admins; e.g. 1800 or '30m' (0 < x < 1 refused)")


class Limits(Reply):
    """Effective limits (``null`` = not enforced)."""
    memory_bytes: int | None = Field(json_schema_extra={"minimum": _lim._MIN_MEMORY})
    pids: int | None = Field(json_schema_extra={"minimum": _lim._MIN_PIDS})
    cpu_cores: float | None = Field(json_schema_extra={"minimum": 0.01})
    cpu_shares: int | None
    tmp_bytes: int | None = Field(json_schema_extra={"minimum": _lim._MIN_TMP})
    network: bool
    disk_bytes: int | None = Field(json_schema_extra={"minimum": _lim._MIN_DISK})
    idle_timeout_s: float = Field(description="seconds; 0 = never")


# -- projects -------------------------------------------------------------------------------

class CreateProjectRequest(Request):
    title: str = Field("", max_length=TITLE_MAX)
    description: str = Field("", max_length=DESCRIPTION_MAX)
    start: bool = Field(False, description="start it at once")
    limits: LimitsRequest | None = None


class ProjectCreated(Reply):
    project_id: Uuid


class ProjectState(Reply):
    state: str = Field(description="running, stopped, starting, stopping, ...")
    time: Time | None = Field(description="when the state was entered")
    reason: str | None = Field(None, description="why it stopped (e.g. idle), when known")


class ProjectStatus(Reply):
    state: str
    pid: int | None = Field(None, alias="project.pid", description="the project daemon's pid on the host")
    started: Time | None = Field(None, description="when the running daemon started")
    instance_id: str | None = None
    memory: dict[str, int] | None = Field(None, description="{'rss': KiB} of every project process")
    processes: int | None = None
    cpu_s: float | None = Field(None, description="CPU seconds (user + system) of the live project processes")
    disk_bytes_applied: int | None = Field(description="the disk image's real size")


class Project(Reply):
    project_id: Uuid
    title: str
    description: str
    created: Time | None
    last_edited: Time | None
    state: ProjectState
    users: dict[str, dict[str, Any]] = Field(description="account_id -> {group: owner|collaborator}")


class ProjectDetails(Project):
    status: ProjectStatus


# -- exec and jobs --------------------------------------------------------------------------

class ExecRequest(Request):
    command: str = Field(description="Program, or a bash script when it has whitespace and no args",
                         min_length=1)
    args: list[str] = None
    bash: bool = None
    path: str = Field(None, description="Working directory, relative to HOME")
    cwd: str = Field(None, description="Working directory; overrides path")
    env: Env = None
    timeout: Seconds = Field(None, description="seconds; 0 = no limit; default 60")
    max_output: Count = Field(None, description="characters kept per stream in the reply "
                                     "(the job's output files keep everything)")
    yield_after: Seconds = Field(None, description="seconds: return the job record if still "
                                        "running after this long")
    async_: bool = Field(None, alias="async", description="start as a durable job and return "
                                "its record at once")


class StatSample(Reply):
    timestamp: Time
    mem_rss: float = Field(description="resident memory in MiB")
    cpu_pct: float = Field(description="percent of one core since the previous sample")
    cpu_secs: float = Field(description="CPU seconds so far")


class SpawnError(Reply):
    """Why the program never ran (Node's error object, as CoCalc reports it)."""
    errno: int = Field(description="negative errno, e.g. -2")
    code: str = Field(description="e.g. ENOENT, EACCES")
    syscall: str = Field(description="'spawn <program>'")
    path: str
    spawnargs: list[str]


_KILLED_BY = Literal["timeout", "signal", "oom", "output"]


class ExecResult(Reply):
    """A finished exec's rich result; or, for ``yield_after``/``async``/Idempotency-Key execs,
    a job record: while ``status`` is ``running`` it has ``stdout``/``stderr`` so far and
    ``exit_code`` null, the rich fields come once it has finished."""
    exit_code: int | None = Field(None, description="null while running, and when killed by a signal")
    signal: str | None = Field(None, description="e.g. SIGKILL, when a signal ended the command")
    timed_out: bool = None
    killed_by: _KILLED_BY | None = Field(None, description="why the command was killed, if it was")
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = None
    stderr_truncated: bool = None
    stdout_bytes: int = Field(None, description="bytes written in total")
    stderr_bytes: int = None
    wall_s: float = Field(None, description="seconds")
    cpu_user_s: float = Field(None, description="CPU seconds in user mode of every process of this exec")
    cpu_sys_s: float = Field(None, description="CPU seconds in the kernel, counted the same way")
    max_rss_bytes: int = Field(None, description="peak memory of this exec's own cgroup, bytes "
                                      "(steps of 256 KiB per CPU; 0 = unknown)")
    oom_killed: bool = Field(None, description="the OOM killer killed a process of this exec")
    spawn_error: SpawnError = Field(None, description="present when the command could not be started")
    stdout_error: str = Field(None, description="an async job's stdout file ended short: why (e.g. the "
                                                "project's disk is full) and after which byte")
    stderr_error: str = Field(None, description="the same for stderr")
    type: Literal["async"] = Field(None, description="'async' for a job record")
    job_id: str = Field(None, description="present when the exec became (or was started as) a job")
    status: Literal["running", "completed", "error", "killed"] = None
    start: Time | None = Field(None, description="when the job started")
    pid: int | None = Field(None, description="the job's root process id (inside the project)")
    elapsed_s: float | None = Field(None, description="seconds the job ran, once finished")
    stats: list[StatSample] = Field(None, description="newest resource samples (jobs; GET with stats=true)")


class JobSummary(Reply):
    job_id: str
    status: Literal["running", "completed", "error", "killed"]
    start: Time
    native: bool = Field(description="started through v3 (rich result) rather than CoCalc's async exec")
    pid: int | None = Field(None, description="while running")


class JobKilled(Reply):
    job_id: str
    killed: bool = Field(description="false when it had already finished")


class JobOutput(Reply):
    data: str = Field(description="UTF-8 text of bytes [offset, end)")
    offset: int
    end: int = Field(description="where to continue reading (never inside a character)")
    total: int = Field(description="bytes of the stream stored so far")
    encoding: Literal["utf-8"]


class GetJobQuery(Request):
    model_config = ConfigDict(extra="forbid", strict=False)
    wait: Seconds = Field(None, description="block until the job ends or this many seconds passed")
    stats: bool = Field(None, description="include resource samples")


class JobOutputQuery(Request):
    model_config = ConfigDict(extra="forbid", strict=False)
    stream: Literal["stdout", "stderr"] = "stdout"
    offset: Offset = 0
    length: Offset = Field(1 << 20, description="bytes (at most 1 MiB per call)")


class JobEventsQuery(Request):
    model_config = ConfigDict(extra="forbid", strict=False)
    offset: Offset = Field(0, description="stdout byte offset to start from")
    stderr_offset: Offset = 0


# -- kernel sessions ------------------------------------------------------------------------

class SessionRequest(Request):
    name: str = Field(None, description="unique in the project; default: the session id")
    kernel: str = Field(None, description="kernel spec name; default python3")
    cwd: str = Field(None, description="working directory, relative to HOME")
    env: Env = None


class CellRequest(Request):
    code: str
    timeout_s: Seconds = Field(None, description="seconds; default 60")
    max_output: Count = Field(None, description="characters of output kept")


class Session(Reply):
    session_id: str
    name: str
    kernel: str
    pid: int | None = Field(description="the kernel's pid while it is alive")
    state: Literal["starting", "idle", "busy", "dead"]
    created: Time
    last_used: Time
    cwd: str


class CellResult(Reply):
    outputs: list[dict[str, Any]] = Field(description="Jupyter output items (stream, display_data, error, ...)")
    status: str = Field(description="ok, error, timeout, ...")
    execution_count: int | None
    timed_out: bool
    interrupted: bool
    restarted: bool = Field(description="the kernel was (re)started for or by this cell")
    state_survived: bool


# -- keys and accounts ----------------------------------------------------------------------

class CreateKeyRequest(Request):
    name: str = Field("", description="a label for you")
    expire: Time | None = Field(None, description="when the key stops working; null = never")
    project_id: Uuid | None = Field(None, description="a project key: acts only inside this project")


class KeysQuery(Request):
    model_config = ConfigDict(extra="forbid", strict=False)
    account_id: Uuid | None = Field(None, description="admins: list another account's keys")


class ApiKey(Reply):
    id: int
    account_id: Uuid
    project_id: Uuid | None
    name: str
    trunc: str | None = Field(description="the key's first and last characters, to recognise it")
    created: Time | None
    expire: Time | None
    last_active: Time | None


class NewApiKey(ApiKey):
    secret: str = Field(description="the key itself: shown only in this reply")


class Account(Reply):
    account_id: Uuid
    first_name: str
    last_name: str
    email: str | None
    is_admin: bool
    disabled: bool = Field(description="a disabled account's keys are refused everywhere")
    created: Time | None


class RedeemTokenRequest(Request):
    token: str = Field(description="the one-time token org.createToken returned (or ?token=)")


class RedeemedToken(Reply):
    account_id: Uuid
    api_key: str = Field(description="a new API key of the token's account: shown only in this reply")
    key: ApiKey


# -- misc -----------------------------------------------------------------------------------

class Error(Reply):
    error: str


class Health(Reply):
    status: Literal["ok"]


# -- files (api/files.py) --------------------------------------------------------------------

class FileInfo(Reply):
    path: str = Field(description="relative to the home")
    size: int = Field(description="bytes")
    etag: str = Field(description="changes whenever the file does; send it as If-Match")
    mtime: str = Field(description="ISO 8601 UTC")


class FileEntry(Reply):
    name: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int = Field(description="bytes (of the link itself for a symlink)")
    mtime: str = Field(description="ISO 8601 UTC")


class FileList(Reply):
    path: str = Field(description="the directory, relative to the home (\"\" is the home)")
    entries: list[FileEntry] = Field(description="sorted by name")
    truncated: bool = Field(description="true when the directory has more than 10,000 entries")


class FilesQuery(Request):
    model_config = ConfigDict(extra="forbid", strict=False)
    list: str | None = Field(None, description="present (`?list`): list the directory instead of "
                                               "reading a file")


class DeleteFileQuery(Request):
    model_config = ConfigDict(extra="forbid", strict=False)
    recursive: bool = Field(False, description="delete a directory with everything in it")


class MoveFileRequest(Request):
    from_: str = Field(alias="from", description="the path to move, relative to the home")
    to: str = Field(description="its new path; its directories are made")
    overwrite: bool = Field(False, description="replace what is at `to`")


class Moved(Reply):
    path: str


class ArchiveUnpacked(Reply):
    files: int
    directories: int
    bytes: int
    skipped_newer: int
    skipped_unsafe: int = Field(description="links leaving the directory, devices, FIFOs: not written")
    backups: int
    deleted: int


# -- terminals (api/terminals.py, docs/terminal.md) -------------------------------------------

Dimension = Annotated[int, Interval(ge=1, le=1000), BeforeValidator(_integral)]


class TerminalRequest(Request):
    """A new terminal's size (both optional: 80 x 24)."""
    cols: Dimension | None = Field(None, description="columns, 1..1000 (default 80)")
    rows: Dimension | None = Field(None, description="rows, 1..1000 (default 24)")


class TerminalCreated(Reply):
    terminal_id: str = Field(description="attach at `.../terminals/{terminal_id}/ws` (a WebSocket)")
    cols: int
    rows: int
    created: Time
    pid: int = Field(description="the shell's pid inside the project's sandbox")


class Terminal(Reply):
    terminal_id: str
    cols: int
    rows: int
    created: Time
    clients: int = Field(description="WebSockets attached now")
    alive: bool


class TerminalList(Reply):
    terminals: list[Terminal]


class EmptyBody(Request):
    """Operations that take no body: an object with fields is 422 (nothing is ignored)."""


class EmptyQuery(Request):
    model_config = ConfigDict(extra="forbid", strict=False)


# -- validation -----------------------------------------------------------------------------

def _field(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def request_error(exc: ValidationError) -> RequestError:
    errors = exc.errors(include_url=False, include_input=False)
    for err in errors:
        if err["type"] == "extra_forbidden":
            return RequestError(422, f"unknown field '{_field(err['loc'])}'")
    err = errors[0]
    field, kind, msg = _field(err["loc"]), err["type"], err["msg"]
    if kind == "missing":
        return RequestError(400, f"{field} is required")
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    return RequestError(400, f"{field}: {msg[0].lower() + msg[1:]}")


def parse_body(model: type[Request], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise request_error(exc) from None


def parse_query(model: type[Request], params: Any) -> Any:
    """Query strings: each parameter once; unknown ones are 422 like unknown body fields."""
    raw: dict[str, str] = {}
    for name, value in params.multi_items():
        if name in raw:
            raise RequestError(400, f"{name}: given more than once")
        raw[name] = value
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise request_error(exc) from None


# -- times ----------------------------------------------------------------------------------

def iso_ms(value: Any) -> Any:
    """Epoch milliseconds (the daemon's CoCalc-style job times) -> ISO 8601 UTC."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return iso_s(value / 1000)
    return value


def iso_s(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"))
    return value


# -- who am I, collaborators, admin (api/people.py, api/admin.py; the web UI uses them) ---------

class Me(Reply):
    account: Account | None = Field(description="the key's account; null for a project key")
    project_id: Uuid | None = Field(description="a project key's project; null for an account key")
    is_admin: bool
    key_id: int | None = Field(description="the id of the key making this call (see GET /api/v3/keys)")


class CollaboratorRequest(Request):
    account_id: Uuid = Field(description="the account to add")


class CollaboratorAdded(Reply):
    project_id: Uuid
    account_id: Uuid
    added_by: Uuid


class AccountPatchRequest(Request):
    disabled: bool = Field(description="true: its keys are refused at once everywhere; false: enable again")


class IsolationLayer(Reply):
    name: str
    enforced: bool
    detail: str


class IsolationReport(Reply):
    mode: str
    cgroup_version: str | None
    all_enforced: bool
    missing: list[str]
    layers: list[IsolationLayer]
    notes: list[str]


class ServerReport(Reply):
    isolation: IsolationReport = Field(description="what the running server enforces (projecthub doctor)")
    project_limits: Limits = Field(description="every project's default limits")
    account_limits: dict[str, int | None] = Field(description="per-account caps (null = none)")
