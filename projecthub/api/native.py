"""The native REST API (``/api/v3``): richer results, durable jobs, SSE streams, sessions.

Same HubService path as the CoCalc surfaces, but with real HTTP statuses:
400 bad input, 401 no/invalid key, 403 not allowed, 404 unknown, 413 too large,
504 time budget exhausted.  The OpenAPI document is served at ``/api/v3/openapi.json``.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..auth.resolve import Identity
from ..errors import RemoteError
from ..hub.service import HubService, is_uuid
from .openapi import OPENAPI
from .replies import BoundedJSONResponse as JSONResponse   # big replies count against the budget
from .requests import HTTPError, api_key_from, authenticate_key, decode_object, read_body

HEARTBEAT_S = 15.0
_STATUS_BY_PREFIX = (
    ("timeout", 504),
)


def _hub(request: Request) -> HubService:
    return request.app.state.hub


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def _status_for(exc: RemoteError) -> int:
    text = exc.message.lower()
    if text.startswith("timeout") or "time budget" in text:
        return 504
    if "insufficient storage" in text:   # the server's disk (disk.py): not the request's fault
        return 507
    if "does not exist" in text or "no such" in text or "unknown session" in text:
        return 404
    if "no spec available for kernel" in text:
        return 404
    if "kernel last" in text:  # the user's code ended its own kernel: a state conflict, not bad input
        return 409
    return 400


def endpoint(handler: Callable[[Request, Identity], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Authentication and error mapping shared by every native endpoint."""
    async def wrapped(request: Request) -> Response:
        try:
            try:
                key = api_key_from(request)
            except RemoteError as exc:
                raise ApiError(401, exc.message)
            identity = await authenticate_key(request, key)  # throttled like every surface
            if identity is None:
                raise ApiError(401, "invalid API key")
            return await handler(request, identity)
        except ApiError as exc:
            return JSONResponse({"error": exc.message, **exc.extra}, status_code=exc.status)
        except HTTPError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        except RemoteError as exc:
            status = exc.extra.pop("status", None) or _status_for(exc)
            return JSONResponse(exc.to_json(), status_code=status)
    return wrapped


# Field types of request bodies (the OpenAPI document says the same); unknown fields are ignored.
_NUMBER = (int, float)
MAX_NUMBER = 1e9  # seconds or characters: far beyond any sane value, and safely an int
NULLABLE_FIELDS = {"limits"}
EXEC_FIELDS: dict[str, tuple[type, ...]] = {
    "command": (str,), "args": (list,), "bash": (bool,), "path": (str,), "cwd": (str,), "env": (dict,),
    "timeout": _NUMBER, "max_output": (int,), "yield_after": _NUMBER, "async": (bool,)}
PROJECT_FIELDS: dict[str, tuple[type, ...]] = {
    "title": (str,), "description": (str,), "start": (bool,), "limits": (dict,)}
SESSION_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,), "kernel": (str,), "cwd": (str,), "env": (dict,), "code": (str,),
    "timeout_s": _NUMBER, "max_output": (int,)}


def check_fields(body: dict[str, Any], spec: dict[str, tuple[type, ...]]) -> None:
    """400 for a field of the wrong type, instead of a confusing failure further in."""
    for field, types in spec.items():
        if field not in body or (body[field] is None and field in NULLABLE_FIELDS):
            continue
        value = body[field]
        if isinstance(value, float) and not math.isfinite(value) or \
                isinstance(value, (int, float)) and not isinstance(value, bool) and value > MAX_NUMBER:
            raise ApiError(400, f"{field} must be at most {MAX_NUMBER:g}")
        if int in types and float not in types and isinstance(value, float) and value.is_integer():
            body[field] = value = int(value)  # JSON has one number type: 1000.0 is an integer
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise ApiError(400, f"{field} must be of type {' or '.join(t.__name__ for t in types)}")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ApiError(400, f"{field} must not be negative")
    env = body.get("env")
    if isinstance(env, dict) and not all(isinstance(k, str) and k and "=" not in k and isinstance(v, str)
                                         for k, v in env.items()):
        raise ApiError(400, "env must map variable names (non-empty, no '=') to strings")
    args = body.get("args")
    if isinstance(args, list) and not all(isinstance(a, str) for a in args):
        raise ApiError(400, "args must be a list of strings")


async def _json_body(request: Request) -> dict[str, Any]:
    # no v3 call carries file content: the small call limit; decoded off the loop when big
    return await decode_object(await read_body(request, request.app.state.settings.max_call_body_bytes))


async def _project(request: Request, identity: Identity) -> str:
    """The project in the path, if this identity may use it (project keys: only their own)."""
    project_id = request.path_params["project_id"]
    if not is_uuid(project_id):
        raise ApiError(400, "project_id must be a UUID")
    hub = _hub(request)
    if identity.project_id:
        if identity.project_id != project_id:
            raise ApiError(403, "this project API key is bound to another project")
    elif not await hub.is_collaborator(project_id, identity.account_id or ""):
        raise ApiError(403, "you are not a collaborator on this project")
    project = await hub.db.get_project(project_id)
    if project is None or project.get("deleted"):
        raise ApiError(404, "no such project")
    return project_id


def _account(identity: Identity) -> str:
    if not identity.account_id:
        raise ApiError(403, "this endpoint needs an account API key")
    return identity.account_id


def _budget(request: Request, opts: dict[str, Any] | None = None) -> float:
    settings = request.app.state.settings
    timeout = (opts or {}).get("timeout", 60)
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
        return min(timeout + 2.0, settings.max_call_timeout_s)
    return settings.max_call_timeout_s


# -- projects ----------------------------------------------------------------------------

@endpoint
async def list_projects(request: Request, identity: Identity) -> Response:
    hub = _hub(request)
    rows = await hub.db.list_projects(_account(identity), recent_days=None, limit=None)
    return JSONResponse([await _project_json(hub, r) for r in rows if not r.get("deleted")])


async def _project_json(hub: HubService, row: dict[str, Any]) -> dict[str, Any]:
    from ..hub.service import iso
    state = await hub.project_state(row["project_id"])
    return {"project_id": row["project_id"], "title": row.get("title") or "",
            "description": row.get("description") or "", "created": iso(row.get("created")),
            "last_edited": iso(row.get("last_edited")), "state": state, "users": row.get("users") or {}}


@endpoint
async def create_project(request: Request, identity: Identity) -> Response:
    body = await _json_body(request)
    check_fields(body, PROJECT_FIELDS)
    title, description = body.get("title") or "", body.get("description") or ""
    hub = _hub(request)
    limits = body.get("limits")
    account_id = _account(identity)
    project_id = await hub.create_project(account_id, title=title, description=description)
    try:
        if limits:
            await hub.set_limits(project_id, limits, account_id=account_id)
        if body.get("start"):
            await hub.start_project(project_id)
    except BaseException:
        await hub.delete_project(project_id, purge_now=True)  # a rejected request leaves no half-made project
        raise
    return JSONResponse({"project_id": project_id}, status_code=201)


@endpoint
async def get_project(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    hub = _hub(request)
    row = await hub.db.get_project(project_id)
    result = await _project_json(hub, row)
    result["status"] = await hub.project_status(project_id)
    return JSONResponse(result)


@endpoint
async def delete_project(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    if identity.project_id:   # a project key acts inside its project, never on its existence
        raise ApiError(403, "a project API key may not delete a project; use the owner's account key")
    hub = _hub(request)
    await hub.require_project_owner(identity.account_id, project_id,
                                    "only the project's owner or an admin may delete it")
    await hub.delete_project(project_id)
    return Response(status_code=204)


@endpoint
async def start_project(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    hub = _hub(request)
    await hub.start_project(project_id)
    return JSONResponse(await hub.project_state(project_id))


@endpoint
async def stop_project(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    hub = _hub(request)
    await hub.stop_project(project_id)
    return JSONResponse(await hub.project_state(project_id))


@endpoint
async def project_limits(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    hub = _hub(request)
    if request.method == "GET":
        return JSONResponse(await hub.get_limits(project_id))
    account_id = _account(identity)  # a project key may not change its own ceiling
    body = await _json_body(request)
    return JSONResponse(await hub.set_limits(project_id, body, account_id=account_id))


# -- exec and jobs ---------------------------------------------------------------------------

@endpoint
async def exec_command(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    body = await _json_body(request)
    check_fields(body, EXEC_FIELDS)
    if not body.get("command"):
        raise ApiError(400, "command is required and must be a non-empty string")
    key = request.headers.get("idempotency-key")
    if key is not None:
        if not key or len(key) > 200:
            raise ApiError(400, "Idempotency-Key must be 1-200 characters")
        body["idempotency_key"] = key
    result = await _hub(request).project_call(project_id, "native.exec", [body], _budget(request, body))
    return JSONResponse(result)


@endpoint
async def list_jobs(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    result = await _hub(request).project_call(project_id, "native.jobs", [{}], 30.0)
    return JSONResponse(result)


def _job_opts(request: Request) -> dict[str, Any]:
    return {"job_id": request.path_params["job_id"]}


@endpoint
async def get_job(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    opts = _job_opts(request)
    wait = request.query_params.get("wait")
    budget = 30.0
    if wait is not None:
        try:
            budget = min(max(float(wait), 0.0), request.app.state.settings.max_call_timeout_s)
        except ValueError:
            raise ApiError(400, "wait must be a number of seconds")
        opts["wait"] = True
    opts["stats"] = request.query_params.get("stats") in ("1", "true")
    result = await _hub(request).project_call(project_id, "native.job", [opts], budget + 2.0 if wait else budget)
    return JSONResponse(result)


@endpoint
async def kill_job(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    result = await _hub(request).project_call(project_id, "native.jobKill", [_job_opts(request)], 30.0)
    return JSONResponse(result)


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer")
    if value < 0:
        raise ApiError(400, f"{name} must not be negative")
    return value


@endpoint
async def job_output(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    stream = request.query_params.get("stream", "stdout")
    if stream not in ("stdout", "stderr"):
        raise ApiError(400, "stream must be stdout or stderr")
    opts = {**_job_opts(request), "stream": stream, "offset": _int_param(request, "offset", 0),
            "length": _int_param(request, "length", 1 << 20)}
    result = await _hub(request).project_call(project_id, "native.jobOutput", [opts], 30.0)
    # {"data": UTF-8 text of bytes [offset, end), "offset", "end", "total"}: continue from "end"
    return JSONResponse(result)


def _sse(event: str, data: Any, event_id: str | None = None) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    for line in json.dumps(data, ensure_ascii=False).split("\n"):
        lines.append(f"data: {line}")
    return ("\n".join(lines) + "\n\n").encode()


async def _with_heartbeats(source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Interleave comment lines so proxies and clients see a live connection."""
    iterator = source.__aiter__()
    pending: asyncio.Task[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=HEARTBEAT_S)
            if not done:
                yield b": heartbeat\n\n"
                continue
            try:
                chunk = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield chunk
    finally:
        # A client that went away must stop the project stream at once (the fabric then
        # sends ``cancel`` and the daemon stops feeding), not whenever GC finds it: let the
        # cancelled step finish first, since a running generator cannot be closed.
        if pending is not None:
            pending.cancel()
            await asyncio.wait({pending})
        aclose = getattr(iterator, "aclose", None)
        if aclose:
            await aclose()


def _resume_offsets(request: Request) -> tuple[int, int]:
    last = request.headers.get("last-event-id")
    if last:
        try:
            out, err = (int(x) for x in last.split(":", 1))
            return out, err
        except ValueError:
            raise ApiError(400, "Last-Event-ID must look like '<stdout offset>:<stderr offset>'")
    return _int_param(request, "offset", 0), _int_param(request, "stderr_offset", 0)


@endpoint
async def job_events(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    out_offset, err_offset = _resume_offsets(request)
    hub = _hub(request)
    opts = {**_job_opts(request), "offset_stdout": out_offset, "offset_stderr": err_offset}

    async def events() -> AsyncIterator[bytes]:
        offsets = [out_offset, err_offset]
        try:
            async for event in hub.project_stream(project_id, "native.jobEvents", [opts]):
                kind = event.get("event", "message")
                if kind in ("stdout", "stderr"):
                    index = 0 if kind == "stdout" else 1
                    offsets[index] = event["offset"] + len(event["data"].encode("utf-8", "surrogateescape"))
                    if "end" in event:
                        offsets[index] = event["end"]
                yield _sse(kind, event, f"{offsets[0]}:{offsets[1]}")
                if kind in ("done", "error"):
                    return
        except RemoteError as exc:
            yield _sse("error", exc.to_json())

    return StreamingResponse(_with_heartbeats(events()), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- kernel sessions -------------------------------------------------------------------------

def _session_call(name: str, with_body: bool = False, status: int = 200) -> Callable[[Request], Awaitable[Response]]:
    @endpoint
    async def handler(request: Request, identity: Identity) -> Response:
        project_id = await _project(request, identity)
        opts: dict[str, Any] = await _json_body(request) if with_body else {}
        check_fields(opts, SESSION_FIELDS)
        if "session_id" in request.path_params:
            opts["session_id"] = request.path_params["session_id"]
        budget = request.app.state.settings.max_call_timeout_s
        result = await _hub(request).project_call(project_id, name, [opts], budget)
        if result is None:
            return Response(status_code=204)
        return JSONResponse(result, status_code=status)
    return handler


@endpoint
async def session_stream(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    opts = await _json_body(request)
    check_fields(opts, SESSION_FIELDS)
    opts["session_id"] = request.path_params["session_id"]
    hub = _hub(request)

    async def events() -> AsyncIterator[bytes]:
        seq = 0
        try:
            async for event in hub.project_stream(project_id, "native.session.stream", [opts]):
                seq += 1
                kind = event.get("event", "message")
                yield _sse(kind, event, str(seq))
                if kind in ("done", "error"):
                    return
        except RemoteError as exc:
            yield _sse("error", exc.to_json())

    return StreamingResponse(_with_heartbeats(events()), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def openapi(request: Request) -> Response:
    return JSONResponse(OPENAPI)


def _by_method(handlers: dict[str, Callable[[Request], Awaitable[Response]]]) -> Callable[[Request], Awaitable[Response]]:
    """One route per path, so a 405 lists every method the path supports in ``Allow``."""
    async def dispatch(request: Request) -> Response:
        return await handlers[request.method](request)
    return dispatch


def routes() -> list[Route]:
    p = "/api/v3/projects/{project_id}"
    table: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {
        "/api/v3/openapi.json": {"GET": openapi},
        "/api/v3/projects": {"GET": list_projects, "POST": create_project},
        p: {"GET": get_project, "DELETE": delete_project},
        p + "/start": {"POST": start_project},
        p + "/stop": {"POST": stop_project},
        p + "/limits": {"GET": project_limits, "PUT": project_limits},
        p + "/exec": {"POST": exec_command},
        p + "/jobs": {"GET": list_jobs},
        p + "/jobs/{job_id}": {"GET": get_job, "DELETE": kill_job},
        p + "/jobs/{job_id}/output": {"GET": job_output},
        p + "/jobs/{job_id}/events": {"GET": job_events},
        p + "/sessions": {"POST": _session_call("native.session.create", with_body=True, status=201),
                          "GET": _session_call("native.session.list")},
        p + "/sessions/{session_id}": {"GET": _session_call("native.session.get"),
                                       "DELETE": _session_call("native.session.delete")},
        p + "/sessions/{session_id}/execute": {"POST": _session_call("native.session.execute", with_body=True)},
        p + "/sessions/{session_id}/stream": {"POST": session_stream},
        p + "/sessions/{session_id}/interrupt": {"POST": _session_call("native.session.interrupt")},
        p + "/sessions/{session_id}/restart": {"POST": _session_call("native.session.restart")},
    }
    return [Route(path, _by_method(handlers), methods=list(handlers)) for path, handlers in table.items()]
