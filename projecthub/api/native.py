"""The native REST API (``/api/v3``): richer results, durable jobs, SSE streams, sessions.

Same HubService path as the CoCalc surfaces, but with real HTTP statuses:
400 bad input, 401 no/invalid key, 403 not allowed, 404 unknown, 413 too large, 422 an
unknown field or a reused Idempotency-Key, 504 time budget exhausted.  Requests are checked
against the models in ``models.py``, which also generate the OpenAPI document served at
``/api/v3/openapi.json`` (and rendered at ``/api/v3/docs``).  Times are ISO 8601 UTC strings.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..auth.resolve import Identity
from ..errors import RemoteError
from ..hub.service import HubService, iso, is_uuid
from . import docs, models as m
from .openapi import document as openapi_document
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
    if "no spec available for kernel" in text:   # a bad kernel name is bad input
        return 400
    if text.startswith("error: no api key with id") or text.startswith("error: no account with id"):
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
        except (HTTPError, m.RequestError) as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        except RemoteError as exc:
            status = exc.extra.pop("status", None)
            if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
                status = _status_for(exc)   # (a hint from a project's daemon is only a hint)
            return JSONResponse(exc.to_json(), status_code=status)
    return wrapped


def _body(opts: Any) -> dict[str, Any]:
    """A validated request model as the dict the hub and the daemon take (fields sent only)."""
    return opts.model_dump(exclude_unset=True, by_alias=True)


async def _parsed(request: Request, model: type[m.Request]) -> Any:
    """The request body validated by ``model`` (an empty body is ``{}``)."""
    return m.parse_body(model, await _json_body(request))


def _no_query(request: Request) -> None:
    if request.query_params:
        m.parse_query(m.EmptyQuery, request.query_params)


async def _no_body(request: Request) -> None:
    """Operations without a body: none, or ``{}``; a field is 422 like any unknown field."""
    raw = await read_body(request, request.app.state.settings.max_call_body_bytes)
    if raw.strip():
        m.parse_body(m.EmptyBody, await decode_object(raw))


async def _json_body(request: Request) -> dict[str, Any]:
    # no v3 call carries file content: the small call limit; decoded off the loop when big
    return await decode_object(await read_body(request, request.app.state.settings.max_call_body_bytes))


async def _project(request: Request, identity: Identity, query: type[m.Request] | None = None) -> str:
    """The project in the path, if this identity may use it (project keys: only their own).
    The query string must match ``query`` (none at all by default): read it with
    ``_query(request)`` afterwards."""
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
    if query is not None:
        request.state.query = m.parse_query(query, request.query_params)
    else:
        _no_query(request)
    return project_id


def _query(request: Request) -> Any:
    return request.state.query


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
    _no_query(request)
    hub = _hub(request)
    rows = await hub.db.list_projects(_account(identity), recent_days=None, limit=None)
    return JSONResponse([await _project_json(hub, r) for r in rows if not r.get("deleted")])


async def _project_json(hub: HubService, row: dict[str, Any]) -> dict[str, Any]:
    state = await hub.project_state(row["project_id"])
    return {"project_id": row["project_id"], "title": row.get("title") or "",
            "description": row.get("description") or "", "created": iso(row.get("created")),
            "last_edited": iso(row.get("last_edited")), "state": state, "users": row.get("users") or {}}


@endpoint
async def create_project(request: Request, identity: Identity) -> Response:
    _no_query(request)
    account_id = _account(identity)
    body: m.CreateProjectRequest = await _parsed(request, m.CreateProjectRequest)
    title, description = body.title, body.description
    hub = _hub(request)
    limits = _body(body.limits) if body.limits is not None else None
    project_id = await hub.create_project(account_id, title=title, description=description)
    try:
        if limits:
            await hub.set_limits(project_id, limits, account_id=account_id)
        if body.start:
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
    status = await hub.project_status(project_id)
    if "start_ts" in status:   # CoCalc's epoch ms: an ISO time like every v3 time
        status["started"] = m.iso_ms(status.pop("start_ts"))
    result["status"] = status
    return JSONResponse(result)


@endpoint
async def delete_project(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    await _no_body(request)
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
    await _no_body(request)
    hub = _hub(request)
    await hub.start_project(project_id)
    return JSONResponse(await hub.project_state(project_id))


@endpoint
async def stop_project(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    await _no_body(request)
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
    body = _body(await _parsed(request, m.LimitsRequest))
    return JSONResponse(await hub.set_limits(project_id, body, account_id=account_id))


# -- exec and jobs ---------------------------------------------------------------------------

@endpoint
async def exec_command(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    body = _body(await _parsed(request, m.ExecRequest))
    key = request.headers.get("idempotency-key")
    if key is not None:
        if not key or len(key) > 200:
            raise ApiError(400, "Idempotency-Key must be 1-200 characters")
        # the same key with another body is refused (422) by the daemon, which keeps the
        # fingerprint with the job (durable like the key)
        body["idempotency_fingerprint"] = hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        body["idempotency_key"] = key
    result = await _hub(request).project_call(project_id, "native.exec", [body], _budget(request, body))
    if "job_id" in result:
        _job_view(result)
    return JSONResponse(result)


def _job_view(record: Any) -> Any:
    """A daemon job record as v3 shows it: ISO times (the daemon keeps CoCalc's epoch ms for
    the CoCalc surfaces) and no exit code while the job runs (CoCalc's record says 0)."""
    if isinstance(record, dict):
        if "start" in record:
            record["start"] = m.iso_ms(record["start"])
        if record.get("status") == "running":
            record["exit_code"] = None
        stats = record.get("stats")
        if isinstance(stats, list):
            for sample in stats:
                if isinstance(sample, dict) and "timestamp" in sample:
                    sample["timestamp"] = m.iso_ms(sample["timestamp"])
    return record


@endpoint
async def list_jobs(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    result = await _hub(request).project_call(project_id, "native.jobs", [{}], 30.0)
    if isinstance(result, list):
        for job in result:
            _job_view(job)
    return JSONResponse(result)


def _job_opts(request: Request) -> dict[str, Any]:
    return {"job_id": request.path_params["job_id"]}


@endpoint
async def get_job(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity, m.GetJobQuery)
    query: m.GetJobQuery = _query(request)
    opts = _job_opts(request)
    wait = query.wait
    budget = 30.0
    if wait is not None:
        budget = min(wait, request.app.state.settings.max_call_timeout_s)
        opts["wait"] = True
    opts["stats"] = bool(query.stats)
    result = await _hub(request).project_call(project_id, "native.job", [opts],
                                              budget + 2.0 if wait is not None else budget)
    return JSONResponse(_job_view(result))


@endpoint
async def kill_job(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    await _no_body(request)
    result = await _hub(request).project_call(project_id, "native.jobKill", [_job_opts(request)], 30.0)
    return JSONResponse(result)


@endpoint
async def job_output(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity, m.JobOutputQuery)
    query: m.JobOutputQuery = _query(request)
    opts = {**_job_opts(request), "stream": query.stream, "offset": query.offset, "length": query.length}
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
    query: m.JobEventsQuery = _query(request)
    last = request.headers.get("last-event-id")
    if last:
        try:
            out, err = (int(x) for x in last.split(":", 1))
            return out, err
        except ValueError:
            raise ApiError(400, "Last-Event-ID must look like '<stdout offset>:<stderr offset>'")
    return query.offset, query.stderr_offset


@endpoint
async def job_events(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity, m.JobEventsQuery)
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
                elif kind == "stats":
                    event["timestamp"] = m.iso_ms(event.get("timestamp"))
                elif kind == "done":
                    _job_view(event.get("record"))
                yield _sse(kind, event, f"{offsets[0]}:{offsets[1]}")
                if kind in ("done", "error"):
                    return
        except RemoteError as exc:
            yield _sse("error", exc.to_json())

    return StreamingResponse(_with_heartbeats(events()), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- kernel sessions -------------------------------------------------------------------------

def _session_view(record: Any) -> Any:
    """ISO times in a session record (the daemon keeps epoch seconds)."""
    if isinstance(record, dict) and "session_id" in record:
        for name in ("created", "last_used"):
            if name in record:
                record[name] = m.iso_s(record[name])
    return record


def _session_call(name: str, body: type[m.Request] | None = None,
                  status: int = 200) -> Callable[[Request], Awaitable[Response]]:
    @endpoint
    async def handler(request: Request, identity: Identity) -> Response:
        project_id = await _project(request, identity)
        if body is None:
            if request.method != "GET":
                await _no_body(request)
            opts: dict[str, Any] = {}
        else:
            opts = _body(await _parsed(request, body))
        if "session_id" in request.path_params:
            opts["session_id"] = request.path_params["session_id"]
        budget = request.app.state.settings.max_call_timeout_s
        result = await _hub(request).project_call(project_id, name, [opts], budget)
        if result is None:
            return Response(status_code=204)
        if isinstance(result, list):
            result = [_session_view(r) for r in result]
        return JSONResponse(_session_view(result), status_code=status)
    return handler


@endpoint
async def session_stream(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    opts = _body(await _parsed(request, m.CellRequest))
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


# -- API keys and accounts -------------------------------------------------------------------
# The same HubService.manage_api_keys that CoCalc's system.manageApiKeys uses (one path): a
# revoked key is dropped from the key cache there, so it is refused at once.

@endpoint
async def list_keys(request: Request, identity: Identity) -> Response:
    account_id = _account(identity)
    query: m.KeysQuery = m.parse_query(m.KeysQuery, request.query_params)
    hub = _hub(request)
    target = account_id
    if query.account_id is not None and query.account_id != account_id:
        await hub._require_admin(account_id, "list another account's API keys")
        if not is_uuid(query.account_id) or await hub.db.get_account(query.account_id) is None:
            raise ApiError(404, f"no account with id {query.account_id}")
        target = query.account_id
    return JSONResponse(await hub.manage_api_keys(target, {"action": "get"}))


@endpoint
async def create_key(request: Request, identity: Identity) -> Response:
    _no_query(request)
    account_id = _account(identity)   # a project key cannot mint keys
    body: m.CreateKeyRequest = await _parsed(request, m.CreateKeyRequest)
    if body.expire is not None:
        try:
            expire = datetime.fromisoformat(body.expire.replace("Z", "+00:00"))
        except ValueError:
            raise ApiError(400, f"expire: not an ISO 8601 time: {body.expire[:60]!r}")
        if expire.tzinfo is None:
            expire = expire.replace(tzinfo=timezone.utc)
        if expire <= datetime.now(timezone.utc):
            raise ApiError(400, "expire: must be in the future")
    if body.project_id is not None and not is_uuid(body.project_id):
        raise ApiError(400, "project_id must be a UUID")
    opts = {"action": "create", "name": body.name, "expire": body.expire, "project_id": body.project_id}
    created = await _hub(request).manage_api_keys(account_id, opts)
    return JSONResponse(created[0], status_code=201)


@endpoint
async def delete_key(request: Request, identity: Identity) -> Response:
    _no_query(request)
    account_id = _account(identity)
    await _no_body(request)
    raw = request.path_params["key_id"]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise ApiError(400, "key_id must be an integer")
    await _hub(request).manage_api_keys(account_id, {"action": "delete", "id": int(raw)})
    return Response(status_code=204)


@endpoint
async def list_accounts(request: Request, identity: Identity) -> Response:
    _no_query(request)
    return JSONResponse(await _hub(request).list_accounts(_account(identity)))


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


def _by_method(handlers: dict[str, Callable[[Request], Awaitable[Response]]]) -> Callable[[Request], Awaitable[Response]]:
    """One route per path, so a 405 lists every method the path supports in ``Allow``."""
    async def dispatch(request: Request) -> Response:
        return await handlers[request.method](request)
    return dispatch


def routes() -> list[Route]:
    p = "/api/v3/projects/{project_id}"
    table: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {
        "/api/v3/openapi.json": {"GET": openapi},
        "/api/v3/docs": {"GET": docs.page},
        "/api/v3/docs/": {"GET": docs.slash},
        "/api/v3/docs/{name}": {"GET": docs.asset},
        "/api/v3/keys": {"GET": list_keys, "POST": create_key},
        "/api/v3/keys/{key_id}": {"DELETE": delete_key},
        "/api/v3/accounts": {"GET": list_accounts},
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
        p + "/sessions": {"POST": _session_call("native.session.create", m.SessionRequest, status=201),
                          "GET": _session_call("native.session.list")},
        p + "/sessions/{session_id}": {"GET": _session_call("native.session.get"),
                                       "DELETE": _session_call("native.session.delete")},
        p + "/sessions/{session_id}/execute": {"POST": _session_call("native.session.execute", m.CellRequest)},
        p + "/sessions/{session_id}/stream": {"POST": session_stream},
        p + "/sessions/{session_id}/interrupt": {"POST": _session_call("native.session.interrupt")},
        p + "/sessions/{session_id}/restart": {"POST": _session_call("native.session.restart")},
    }
    return [Route(path, _by_method(handlers), methods=list(handlers)) for path, handlers in table.items()]
