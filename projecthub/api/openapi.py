"""OpenAPI 3.1 description of the native API (served at /api/v3/openapi.json), generated
from the request/response models in ``models.py`` (the same classes validate requests)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from . import models as m

_REF = "#/components/schemas/{model}"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _list(model: type[BaseModel]) -> dict[str, Any]:
    return {"type": "array", "items": _ref(model)}


_ERROR_TEXT = {
    "400": "Bad input: a value of the wrong type, out of range or missing; malformed JSON",
    "401": "Missing, invalid, expired or revoked API key (or sign-in token)",
    "403": "Not allowed for this key",
    "404": "No such project, job, session or key",
    "409": "A state conflict (the session's kernel died: a cell's code ended it, or it was killed, "
           "e.g. out of memory; a redeemed token's account has its maximum of keys; a file or "
           "directory in the way)",
    "413": "Body too large",
    "422": "An unknown field in the body or query string (named in the error); an "
           "Idempotency-Key reused with a different body",
    "429": "An account limit (max_running_projects) is reached; or the project's terminals (8)",
    "504": "The call's time budget ran out (the error names the job that keeps running, if any)",
    "507": "The server's disk is full",
}

_SSE_JOB = """Server-Sent Events (`text/event-stream`), each `data:` a JSON object:

* `stdout` / `stderr`: `{"event", "offset", "end", "data"}`: UTF-8 text of bytes `[offset, end)` \
of the stream (byte offsets; never cut inside a character);
* `stats`: `{"event", "timestamp" (ISO 8601 UTC), "mem_rss" (MiB), "cpu_pct" (percent of one \
core), "cpu_secs" (CPU seconds)}`, about every second at first, then less often;
* `done`: `{"event", "record"}`, the job's final record (an `ExecResult`); the stream ends;
* `error`: `{"event", "error"}`; the stream ends.

Every event's `id` is `<stdout offset>:<stderr offset>`: reconnect with `Last-Event-ID` \
(or `?offset=&stderr_offset=`) to resume without loss or repetition.  A comment line \
(`: heartbeat`) comes every 15 s of silence."""

_SSE_CELL = """Server-Sent Events (`text/event-stream`), each `data:` a JSON object:

* `output`: `{"event", "item"}`, one Jupyter output item (`stream`, `display_data`, \
`execute_result`, `error`) as it is produced;
* `done`: `{"event", "result"}`, the cell's `CellResult`; the stream ends;
* `error`: `{"event", "error"}`; the stream ends.

Event ids count up from 1.  A comment line (`: heartbeat`) comes every 15 s of silence."""



def _sse_schema(events: list[str]) -> dict[str, Any]:
    """One Server-Sent Event as a client parses it (``data`` is a JSON document)."""
    return {"type": "object", "required": ["event", "data"], "properties": {
        "event": {"enum": events}, "id": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json"}}}

_PROJECT_ID = {"name": "project_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_SESSION_ID = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}
_TERMINAL_ID = {"name": "terminal_id", "in": "path", "required": True,
                "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
_KEY_ID = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "integer"}}
_IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False,
                "description": "the same key with the same body returns the same job's result (the "
                               "command runs once); with a different body: 422",
                "schema": {"type": "string", "minLength": 1, "maxLength": 200}}
_LAST_EVENT_ID = {"name": "Last-Event-ID", "in": "header", "required": False,
                  "description": "'<stdout offset>:<stderr offset>' to resume",
                  "schema": {"type": "string", "pattern": "^[0-9]+:[0-9]+$"}}


def _query(model: type[BaseModel]) -> list[dict[str, Any]]:
    """Query parameters from a query model (the same one that validates them)."""
    schema = model.model_json_schema(ref_template=_REF)
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", None)
        prop.pop("title", None)
        if "anyOf" in prop:   # Optional[X]: the parameter is optional anyway
            options = [s for s in prop["anyOf"] if s.get("type") != "null"]
            if len(options) == 1:
                extra = {k: v for k, v in prop.items() if k != "anyOf"}
                prop = {**options[0], **extra}
        param = {"name": name, "in": "query", "required": False, "schema": _tidy(prop)}
        if description:
            param["description"] = description
        params.append(param)
    return params


def _op(summary: str, responses: dict[str, Any], errors: tuple[str, ...], *,
        params: list[dict[str, Any]] | None = None, body: type[BaseModel] | None = None,
        body_required: bool = True, description: str | None = None, auth: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "parameters": params or []}
    if description:
        op["description"] = description
    every = ("400", "401", "413") if auth else ()
    op["responses"] = {**responses, **{code: _json(_ref(m.Error), _ERROR_TEXT[code])
                                       for code in sorted(set(every + errors))}}
    op["security"] = [{"bearer": []}, {"basic": []}] if auth else []
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": {"application/json": {"schema": _ref(body)}}}
    return op


_P = ("403", "404", "422")   # every project operation: not yours, no such project, unknown field
_RUN = _P + ("429", "504", "507")   # operations that may start the project
_KERNEL = _RUN + ("409",)   # session operations: a kernel that died (killed, out of memory) is 409


_FILE_PATH = {"name": "path", "in": "path", "required": True, "schema": {"type": "string"},
              "description": "relative to the home; may contain `/`; no `..`; symlinks must not lead out"}
_BINARY = {"type": "string", "format": "binary"}


def _file_paths(p: str, no_query: list[dict[str, Any]]) -> dict[str, Any]:
    """The files API (api/files.py)."""
    fp = [_PROJECT_ID, _FILE_PATH]
    octets = {"application/octet-stream": {"schema": _BINARY}}
    return {
        p + "/files/{path}": {
            "get": _op("Download a file (streamed; `Range`, `If-None-Match`), or list a directory with "
                       "`?list`", {"200": {"description": "The file's bytes (`ETag`, `Content-Length`, "
                                           "`Accept-Ranges`), or with `?list` a `FileList`",
                                           "content": {**octets, "application/json": {"schema": _ref(m.FileList)}}},
                                   "206": {"description": "The requested byte range (`Content-Range`)",
                                           "content": octets},
                                   "304": {"description": "Not modified (`If-None-Match` matched the ETag)"},
                                   "416": _json(_ref(m.Error), "The range starts past the end")},
                       _P, params=fp + _query(m.FilesQuery) + [
                           {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"},
                            "description": "one range: `bytes=a-b`, `bytes=a-` or `bytes=-n`"}]),
            "put": {**_op("Upload a file (streamed; replaces it atomically at the end)",
                          {"200": _json(_ref(m.FileInfo), "Replaced"), "201": _json(_ref(m.FileInfo), "Created"),
                           "412": _json(_ref(m.Error), "If-Match did not match the file's ETag")},
                          _P + ("409", "429"), params=fp + [
                              {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
                               "description": "the ETag the file must still have (`*`: it must exist)"}],
                          description="The body is the file's bytes, any size up to the project's disk "
                                      "limit (413 when the disk is full: the old file stays as it was)."),
                    "requestBody": {"required": True, "content": octets}},
            "delete": _op("Delete a file, a symlink, or a directory (`?recursive=true` when not empty)",
                          {"204": {"description": "Deleted"}}, _P + ("409",),
                          params=fp + _query(m.DeleteFileQuery)),
        },
        p + "/files:move": {"post": _op("Move or rename a file or directory", {"200": _json(_ref(m.Moved))},
                                        _P + ("409",), params=[_PROJECT_ID] + no_query, body=m.MoveFileRequest)},
        p + "/archive/{path}": {
            "get": _op("Download a directory as tar.gz (streamed)",
                       {"200": {"description": "A gzip-compressed tar of the directory's contents",
                                "content": {"application/gzip": {"schema": _BINARY}}}}, _P, params=fp + no_query),
            "post": {**_op("Unpack a tar or tar.gz body into a directory (made if missing)",
                           {"200": _json(_ref(m.ArchiveUnpacked))}, _P + ("429",), params=fp + no_query,
                           description="What the archive holds replaces what is there; links that leave "
                                       "the directory, devices and FIFOs are skipped (`skipped_unsafe`)."),
                     "requestBody": {"required": True, "description": "tar bytes, plain or compressed "
                                     "(detected; any Content-Type)", "content": octets}},
        },
    }


def _paths() -> dict[str, Any]:
    p = "/api/v3/projects/{project_id}"
    jp, sp = [_PROJECT_ID, _JOB_ID], [_PROJECT_ID, _SESSION_ID]
    no_query = _query(m.EmptyQuery)
    return {
        "/healthz": {"get": _op("Liveness: the server answers", {"200": _json(_ref(m.Health))}, (), auth=False)},
        "/api/v3/projects": {
            "get": _op("List your projects", {"200": _json(_list(m.Project))}, ("403", "422"), params=no_query),
            "post": _op("Create a project (and optionally set its limits and start it)",
                        {"201": _json(_ref(m.ProjectCreated), "Created")}, ("403", "422", "429", "504", "507"),
                        body=m.CreateProjectRequest, body_required=False),
        },
        p: {
            "get": _op("Project details, state and status", {"200": _json(_ref(m.ProjectDetails))}, _P,
                       params=[_PROJECT_ID]),
            "delete": _op("Delete a project (stops it first; owner or admin)", {"204": {"description": "Deleted"}},
                          _P, params=[_PROJECT_ID]),
        },
        p + "/start": {"post": _op("Start a project", {"200": _json(_ref(m.ProjectState))}, _RUN,
                                   params=[_PROJECT_ID])},
        p + "/stop": {"post": _op("Stop a project; leaves no process behind", {"200": _json(_ref(m.ProjectState))},
                                  _P, params=[_PROJECT_ID])},
        p + "/limits": {
            "get": _op("Effective limits", {"200": _json(_ref(m.Limits))}, _P, params=[_PROJECT_ID]),
            "put": _op("Override limits (account keys of the owner or an admin; owners may only tighten)",
                       {"200": _json(_ref(m.Limits))}, _P, params=[_PROJECT_ID], body=m.LimitsRequest),
        },
        p + "/exec": {"post": _op(
            "Run a command; rich result, or a job record with yield_after/async",
            {"200": _json(_ref(m.ExecResult))}, _RUN, params=[_PROJECT_ID, _IDEMPOTENCY], body=m.ExecRequest,
            description="Blocks until the command ends (or `timeout`), unless `yield_after` or `async` "
                        "turn it into a job. With an `Idempotency-Key` the exec is always a job, and "
                        "repeating the call returns that job's result.")},
        p + "/jobs": {"get": _op("List jobs, newest first", {"200": _json(_list(m.JobSummary))}, _RUN,
                                 params=[_PROJECT_ID])},
        p + "/jobs/{job_id}": {
            "get": _op("A job's record (wait=seconds blocks until it ends or the wait is over)",
                       {"200": _json(_ref(m.ExecResult))}, _RUN, params=jp + _query(m.GetJobQuery)),
            "delete": _op("Kill a job's whole process tree", {"200": _json(_ref(m.JobKilled))}, _RUN, params=jp),
        },
        p + "/jobs/{job_id}/output": {"get": _op(
            "A byte range of a job's full output (kept on disk beyond the JSON cap)",
            {"200": _json(_ref(m.JobOutput))}, _RUN, params=jp + _query(m.JobOutputQuery))},
        p + "/jobs/{job_id}/events": {"get": _op(
            "Stream a job's output, stats and end as Server-Sent Events",
            {"200": {"description": _SSE_JOB, "content": {"text/event-stream": {"schema": _sse_schema(["stdout", "stderr", "stats", "done", "error"])}}}},
            _RUN, params=jp + _query(m.JobEventsQuery) + [_LAST_EVENT_ID], description=_SSE_JOB)},
        p + "/sessions": {
            "get": _op("List kernel sessions", {"200": _json(_list(m.Session))}, _KERNEL, params=[_PROJECT_ID]),
            "post": _op("Create a persistent kernel session", {"201": _json(_ref(m.Session), "Created")}, _KERNEL,
                        params=[_PROJECT_ID], body=m.SessionRequest, body_required=False),
        },
        p + "/sessions/{session_id}": {
            "get": _op("A session", {"200": _json(_ref(m.Session))}, _KERNEL, params=sp),
            "delete": _op("Delete a session (kills its kernel)", {"204": {"description": "Deleted"}}, _KERNEL,
                          params=sp),
        },
        p + "/sessions/{session_id}/execute": {"post": _op(
            "Execute a cell; state is kept between calls", {"200": _json(_ref(m.CellResult))},
            _KERNEL, params=sp, body=m.CellRequest)},
        p + "/sessions/{session_id}/stream": {"post": _op(
            "Execute a cell and stream its outputs as Server-Sent Events",
            {"200": {"description": _SSE_CELL, "content": {"text/event-stream": {"schema": _sse_schema(["output", "done", "error"])}}}},
            _KERNEL, params=sp, body=m.CellRequest, description=_SSE_CELL)},
        p + "/sessions/{session_id}/interrupt": {"post": _op(
            "Interrupt the running cell", {"200": _json(_ref(m.Session))}, _KERNEL, params=sp)},
        p + "/sessions/{session_id}/restart": {"post": _op(
            "Restart the kernel (its state is lost)", {"200": _json(_ref(m.Session))}, _KERNEL, params=sp)},
        "/api/v3/keys": {
            "get": _op("Your API keys (never their secrets); admins may pass account_id",
                       {"200": _json(_list(m.ApiKey))}, ("403", "404", "422"), params=_query(m.KeysQuery)),
            "post": _op("Create an API key; its secret is in this reply only",
                        {"201": _json(_ref(m.NewApiKey), "Created")}, ("403", "404", "422"),
                        body=m.CreateKeyRequest, body_required=False),
        },
        "/api/v3/keys/{key_id}": {"delete": _op(
            "Revoke an API key (it is refused at once)", {"204": {"description": "Revoked"}},
            ("403", "404", "422"), params=[_KEY_ID])},
        **_file_paths(p, no_query),
        p + "/terminals": {
            "get": _op("List the project's terminals (a stopped project has none)",
                       {"200": _json(_ref(m.TerminalList))}, _P, params=[_PROJECT_ID]),
            "post": _op("Open a terminal: `bash -l` on a PTY in the project (starts it if stopped)",
                        {"201": _json(_ref(m.TerminalCreated), "Created")}, _RUN, params=[_PROJECT_ID],
                        body=m.TerminalRequest, body_required=False,
                        description="Use it over the WebSocket `.../terminals/{terminal_id}/ws` "
                                    "(docs/terminal.md: auth message, frames, close codes). At most 8 "
                                    "terminals per project (429). A terminal without a client is killed "
                                    "after its grace period (default 10 min)."),
        },
        p + "/terminals/{terminal_id}": {"delete": _op(
            "Close a terminal: kills every process started in it", {"204": {"description": "Closed"}}, _P,
            params=[_PROJECT_ID, _TERMINAL_ID])},
        "/api/v3/tokens/redeem": {"post": _op(
            "Spend a one-time sign-in token (org.createToken) for a new API key of its account",
            {"200": _json(_ref(m.RedeemedToken))}, ("400", "401", "409", "413", "422"), auth=False, body_required=False,
            body=m.RedeemTokenRequest, params=[{"name": "token", "in": "query", "required": False,
                                                "description": "the token, when not in the body",
                                                "schema": {"type": "string"}}],
            description="The token is the credential (no API key). Unknown, expired, used tokens and "
                        "tokens of disabled accounts are 401 (throttled like bad keys); the key is "
                        "made after the token is spent.")},
        "/api/v3/accounts": {"get": _op("Every account (admins only)", {"200": _json(_list(m.Account))},
                                        ("403", "422"), params=no_query)},
    }


_MODELS: list[type[BaseModel]] = [
    m.Error, m.Health, m.LimitsRequest, m.Limits, m.CreateProjectRequest, m.ProjectCreated, m.ProjectState,
    m.ProjectStatus, m.Project, m.ProjectDetails, m.ExecRequest, m.ExecResult, m.SpawnError, m.StatSample,
    m.JobSummary,
    m.JobKilled, m.JobOutput, m.SessionRequest, m.CellRequest, m.Session, m.CellResult, m.CreateKeyRequest,
    m.ApiKey, m.NewApiKey, m.Account, m.RedeemTokenRequest, m.RedeemedToken,
    m.FileInfo, m.FileEntry, m.FileList, m.MoveFileRequest, m.Moved, m.ArchiveUnpacked,
    m.TerminalRequest, m.TerminalCreated, m.Terminal, m.TerminalList]


# api/people.py and api/admin.py (the web UI's needs, open to every client)
_MODELS += [m.Me, m.CollaboratorRequest, m.CollaboratorAdded, m.AccountPatchRequest, m.IsolationLayer,
            m.IsolationReport, m.ServerReport]


def _people_paths() -> dict[str, Any]:
    p = "/api/v3/projects/{project_id}"
    account_id = {"name": "account_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
    no_query = _query(m.EmptyQuery)
    return {
        "/api/v3/me": {"get": _op("Who this key is: its account (or, for a project key, its project)",
                                  {"200": _json(_ref(m.Me))}, ("422",), params=no_query)},
        p + "/collaborators": {"post": _op(
            "Add a collaborator (any member of the project; account keys)",
            {"201": _json(_ref(m.CollaboratorAdded), "Added")}, _P, params=[_PROJECT_ID],
            body=m.CollaboratorRequest)},
        p + "/collaborators/{account_id}": {"delete": _op(
            "Remove a collaborator (owners; anyone may remove themselves; never the owner)",
            {"204": {"description": "Removed"}}, _P, params=[_PROJECT_ID, account_id])},
        "/api/v3/admin/server": {"get": _op(
            "The isolation report this server enforces and its default limits (admins only)",
            {"200": _json(_ref(m.ServerReport))}, ("403", "422"), params=no_query)},
        "/api/v3/accounts/{account_id}": {"patch": _op(
            "Disable or enable an account (admins only; not your own)", {"200": _json(_ref(m.Account))},
            ("403", "404", "422"), params=[account_id] + no_query, body=m.AccountPatchRequest)},
    }


def _tidy(node: Any) -> Any:
    """Drop ``"default": null`` (the same as absent; it would contradict a non-null type)."""
    if isinstance(node, dict):
        return {k: _tidy(v) for k, v in node.items() if not (k == "default" and v is None)}
    if isinstance(node, list):
        return [_tidy(v) for v in node]
    return node


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    _, defs = models_json_schema([(model, "validation") for model in _MODELS], ref_template=_REF)
    defs = _tidy(defs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "projecthub native API", "version": __version__,
                 "description": "Projects, exec with rich results, durable jobs with SSE streams, "
                                "persistent Jupyter kernel sessions, API keys and accounts. Authenticate "
                                "with `Authorization: Bearer <api key>` (or Basic with the key as user "
                                "name).\n\nRequests are strict: an unknown field (body or query) is 422 "
                                "naming it; any other invalid value is 400. Every error is "
                                "`{\"error\": \"...\"}`. Every time is an ISO 8601 UTC string."},
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "basic": {"type": "http", "scheme": "basic"}},
            "schemas": defs["$defs"],
        },
        "paths": {**_paths(), **_people_paths()},
    }
