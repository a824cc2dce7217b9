"""CoCalc-compatible HTTP surfaces: conat project/hub, legacy v1 project_exec, v2 exec.

Each handler decodes its wire format and calls the same HubService methods the native API
uses.  Handler-level errors are HTTP 200 ``{"error": ...}`` as CoCalc does (spec 1.9),
except v1's auth/parameter failures, which were HTTP 400 (spec section 5).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, Awaitable, Callable

from starlette.requests import Request

from ..auth.resolve import Identity
from ..errors import RemoteError, error_text
from ..hub.functions import HUB_FUNCTIONS
from ..hub.history import WRITE_FUNCTION, record_write
from ..hub.service import HubService
from ..project.api import PUBLIC_FUNCTIONS
from ..store import StoreUnavailable
from .replies import BoundedJSONResponse as JSONResponse
from ..observability.requestlog import note
from .requests import HTTPError, api_key_from, authenticate_key, decode_object, decode_params, read_body

log = logging.getLogger("projecthub.api")

EXEC_GRACE_S = 2.0  # lets an exec's own timeout error (with partial output) beat the bridge's


def _ok(value: Any) -> JSONResponse:
    return JSONResponse(value)


def _err(exc: RemoteError, status: int = 200) -> JSONResponse:
    body = exc.to_json()
    body.pop("status", None)   # an HTTP status hint for v3 (native.py), not a CoCalc field
    return JSONResponse(body, status_code=status)


def _unexpected(request: Request, exc: Exception) -> RemoteError:
    """A bug or an environment failure still answers in CoCalc's error model, never a 500."""
    if isinstance(exc, StoreUnavailable):   # a shared database away: one line, no traceback
        log.warning("store unavailable on %s: %s", request.url.path, exc.reason)
        return RemoteError(str(exc))
    log.exception("unexpected error on %s", request.url.path, exc_info=exc)
    return RemoteError(error_text(exc))


def _hub(request: Request) -> HubService:
    return request.app.state.hub


async def authenticate(request: Request) -> Identity | None:
    """Resolve the presented key; an address that keeps failing waits first (auth/throttle.py)."""
    return await authenticate_key(request, api_key_from(request))


def call_budget(request: Request, body: dict[str, Any], name: str, args: list[Any]) -> float:
    """Seconds the bridge waits.  Deviation from CoCalc (docs/compatibility.md): without a
    top-level timeout, an exec waits for its own timeout instead of being cut at 15 s, and a
    non-positive timeout means 'the default' instead of an error."""
    settings = request.app.state.settings
    raw = body.get("timeout")
    budget: float | None = None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw > 0:
        budget = raw / 1000.0
    if name == "system.exec" and args and isinstance(args[0], dict):
        exec_timeout = args[0].get("timeout", 60)
        if isinstance(exec_timeout, (int, float)) and not isinstance(exec_timeout, bool) and exec_timeout > 0:
            budget = max(budget or 0.0, exec_timeout + EXEC_GRACE_S)
        elif budget is None:
            budget = settings.max_call_timeout_s  # timeout 0 = no exec limit: wait as long as we may
    if budget is None:
        budget = settings.default_call_timeout_s
    return min(budget, settings.max_call_timeout_s)


def _call_fields(body: dict[str, Any]) -> tuple[str, list[Any]]:
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise RemoteError("Error: 'name' must be a non-empty string")
    args = body.get("args", [])
    if args is None:
        args = []
    if not isinstance(args, list):
        raise RemoteError("Error: 'args' must be an array")
    return name, args


def conat_endpoint(body_limit: str, caller: Callable[[Request], Awaitable[Identity]],
                   handler: Callable[[Request, HubService, Identity, dict[str, Any]], Awaitable[Any]]
                   ) -> Callable[[Request], Awaitable[JSONResponse]]:
    """Authentication, body decoding and CoCalc's error model shared by the two conat routes.
    The key comes from the headers and is checked (throttled) before a byte of the body is
    read: an anonymous or bad-key client costs no body parse.  Framework failures (bad
    JSON, too large) get 400/413, everything else HTTP 200 ``{"error": ...}``."""
    async def endpoint(request: Request) -> JSONResponse:
        try:
            identity = await caller(request)
            limit = getattr(request.app.state.settings, body_limit)
            try:
                body = await decode_object(await read_body(request, limit))
            except HTTPError as exc:
                return JSONResponse({"error": exc.message}, status_code=exc.status)
            return _ok(await handler(request, _hub(request), identity, body))
        except RemoteError as exc:
            return _err(exc)
        except Exception as exc:
            return _err(_unexpected(request, exc))
    return endpoint


async def _project_caller(request: Request) -> Identity:
    identity = await authenticate(request)
    if identity is None or not (identity.account_id or identity.project_id):
        raise RemoteError("must sign in as project or account")
    return identity


async def _hub_caller(request: Request) -> Identity:
    identity = await authenticate(request)
    if identity is None or not identity.account_id:
        raise RemoteError("must be signed in and MUST provide an api key (cookies are not allowed)")
    return identity


async def _conat_project(request: Request, hub: HubService, identity: Identity, body: dict[str, Any]) -> Any:
    project_id = await hub.authorize_project(identity, body.get("project_id") or None)
    compute_server_id = body.get("compute_server_id", 0)
    if compute_server_id not in (0, None):
        raise RemoteError(f"Error: no connection to compute server {compute_server_id} -- "
                          "this server has no such compute server")
    name, args = _call_fields(body)
    if name != "ping" and name not in PUBLIC_FUNCTIONS:
        raise RemoteError(f"Error: unknown function '{name}'")
    note(request.scope, function=name, project_id=project_id)   # the request log (a known name only)
    if name == "system.test":
        first = args[0] if args and isinstance(args[0], dict) else {}
        args = [{**first, "project_id": project_id}, *args[1:]]
    result = await hub.project_call(project_id, name, args, call_budget(request, body, name, args))
    if name == WRITE_FUNCTION:   # sync.history records writes made through the API
        await record_write(hub, project_id, identity.account_id, args)
    return result


async def _conat_hub(request: Request, hub: HubService, identity: Identity, body: dict[str, Any]) -> Any:
    name, args = _call_fields(body)
    function = HUB_FUNCTIONS.get(name)
    if function is None:
        raise RemoteError(f"Error: unknown function '{name}'")
    note(request.scope, function=name)   # the request log (a known name only)
    budget = call_budget(request, body, name, args)
    try:
        return await asyncio.wait_for(function(hub, identity.account_id, args, budget), budget)
    except asyncio.TimeoutError:
        subject = f"hub.account.{identity.account_id}.api"
        raise RemoteError(f"timeout - callHub: subject='{subject}', name='{name}', code='408' ")


# /api/conat/project carries file content (writeTextFileToProject): the big body limit
conat_project = conat_endpoint("max_body_bytes", _project_caller, _conat_project)
conat_hub = conat_endpoint("max_call_body_bytes", _hub_caller, _conat_hub)


# -- legacy v1 and v2 exec ----------------------------------------------------------------

_TRUE = {"true", "1", "yes", "on"}


def _coerce_exec_params(params: dict[str, Any]) -> dict[str, Any]:
    """Form fields arrive as strings: give numbers and booleans their JSON types."""
    out = dict(params)
    for key in ("timeout", "max_output", "compute_server_id"):
        if isinstance(out.get(key), str):
            try:
                number = float(out[key])
                out[key] = int(number) if number.is_integer() else number
            except ValueError:
                raise HTTPError(400, f"invalid parameters '{key}' must be a number")
    for key in ("bash", "err_on_exit", "async_call", "async_stats", "async_await", "filesystem"):
        if isinstance(out.get(key), str):
            out[key] = out[key].strip().lower() in _TRUE
    return out


# Fields of an exec error that travel with the wrapped text on v1 and v2, as they do on
# /api/conat/project: a timeout's partial output and kill reason, a spent budget's job id.
_LEGACY_EXTRA = ("stdout", "stderr", "killed_by", "job_id")


def _js_text(value: Any, *, in_array: bool = False) -> str:
    """``value`` as a JavaScript template literal renders it (``${x}``): an array is its
    items joined by commas, where null renders as nothing; booleans are lower case."""
    if value is None:
        return "" if in_array else "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "Infinity" if value > 0 else "-Infinity"
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    if isinstance(value, list):
        return ",".join(_js_text(item, in_array=True) for item in value)
    if isinstance(value, dict):
        return "[object Object]"
    return str(value)


def _legacy_error(opts: dict[str, Any], exc: RemoteError) -> dict[str, Any]:
    """The older channel's wrapping of an exec error (spec 4.9, seed 003):
    ``Error executing command '<command>' with args '<args>' -- <error>``.  ``args`` not
    sent renders as ``''`` like v1's default ``[]`` (the seed), never ``'undefined'``.  A
    kill (timeout) ends with the seed's ``, , `` and, like ``system.exec``, carries the
    partial ``stdout``/``stderr`` and ``killed_by`` as fields (docs/compatibility.md)."""
    command = _js_text(opts["command"]) if "command" in opts else "undefined"
    args = _js_text(opts.get("args", []))
    text = f"Error executing command '{command}' with args '{args}' -- {exc.message}"
    if "killed_by" in exc.extra:
        text += ", , "
    if "Connection refused" in text:
        text += " -- Email help@cocalc.com if you need full internet access, which is disabled by default."
    return {"error": text, **{k: exc.extra[k] for k in _LEGACY_EXTRA if k in exc.extra}}


async def _authorize_legacy(hub: HubService, identity: Identity, project_id: Any) -> str:
    if identity.project_id:  # "account id equals project id" counts as a collaborator
        if project_id != identity.project_id:
            raise RemoteError("user must be a collaborator on the project")
        return project_id
    if not await hub.is_collaborator(project_id, identity.account_id or ""):
        raise RemoteError("user must be a collaborator on the project")
    return project_id


_V1_FIELDS = ("command", "args", "path", "timeout", "max_output", "bash", "err_on_exit", "aggregate")
_V2_FIELDS = ("command", "args", "path", "timeout", "max_output", "bash", "err_on_exit", "aggregate",
              "env", "async_call", "async_get", "async_stats", "async_await", "compute_server_id",
              "filesystem")


async def v1_project_exec(request: Request) -> JSONResponse:
    hub = _hub(request)
    try:
        try:   # the key is in the headers (Basic auth): checked before the body is read
            identity = await authenticate(request)
        except RemoteError as exc:
            raise HTTPError(400, exc.message)
        if identity is None:
            raise HTTPError(400, "No account found. Is your API key wrong?")
        params = _coerce_exec_params(await decode_params(
            request, await read_body(request, request.app.state.settings.max_call_body_bytes)))
        if not isinstance(params.get("project_id"), str):
            raise HTTPError(400, "invalid parameters 'project_id' is required")
        if not isinstance(params.get("command"), str):
            raise HTTPError(400, "invalid parameters 'command' is required")
    except HTTPError as exc:
        return JSONResponse({"event": "error", "error": exc.message}, status_code=exc.status)
    message_id = params.get("id") if isinstance(params.get("id"), str) else str(uuid.uuid4())
    opts = {k: params[k] for k in _V1_FIELDS if k in params}
    opts.setdefault("args", [])
    opts.setdefault("path", "")
    opts.setdefault("timeout", 10)
    try:
        project_id = await _authorize_legacy(hub, identity, params["project_id"])
        note(request.scope, project_id=project_id)
        result = await hub.project_call(project_id, "system.exec", [opts],
                                        call_budget(request, {}, "system.exec", [opts]))
    except RemoteError as exc:
        return _ok({"event": "error", "id": message_id, **_legacy_error(opts, exc)})
    except Exception as exc:
        return _ok({"event": "error", "id": message_id, **_legacy_error(opts, _unexpected(request, exc))})
    return _ok({"event": "project_exec_output", "id": message_id, **result})


async def v2_exec(request: Request) -> JSONResponse:
    hub = _hub(request)
    try:   # the key is in the headers (Basic auth): checked before the body is read
        identity = await authenticate(request)
        if identity is None:
            raise RemoteError("must be signed in")
    except RemoteError as exc:
        return _err(exc)
    try:
        params = _coerce_exec_params(await decode_params(
            request, await read_body(request, request.app.state.settings.max_call_body_bytes)))
    except HTTPError as exc:
        return JSONResponse({"error": exc.message}, status_code=exc.status)
    try:
        project_id = params.get("project_id")
        if not isinstance(project_id, str):
            raise RemoteError("Error: project_id must be specified")
        project_id = await _authorize_legacy(hub, identity, project_id)
        note(request.scope, project_id=project_id)
    except RemoteError as exc:
        return _err(exc)
    opts = {k: params[k] for k in _V2_FIELDS if k in params}
    try:
        result = await hub.project_call(project_id, "system.exec", [opts],
                                        call_budget(request, {}, "system.exec", [opts]))
    except RemoteError as exc:
        return _ok(_legacy_error(opts, exc))
    except Exception as exc:
        return _ok(_legacy_error(opts, _unexpected(request, exc)))
    return _ok(result)


async def v1_unknown(request: Request) -> JSONResponse:
    """``/api/v1/<name>`` other than a POST to project_exec.  That route takes only POST, so
    a GET (or HEAD) of it lands here: 405 with ``Allow``, as every other method gets."""
    if request.path_params["name"] == "project_exec":
        return JSONResponse({"error": f"method {request.method} not allowed on {request.url.path}"},
                            status_code=405, headers={"Allow": "POST"})
    return JSONResponse({"event": "error", "error": f"unknown endpoint '{request.path_params['name']}'"},
                        status_code=400)
