"""v3 terminals: REST routes and the WebSocket a terminal is used through (docs/terminal.md).

The REST routes are native endpoints like any other (``native.endpoint``: same keys, same
project rules, same error mapping).  The WebSocket cannot answer with HTTP statuses once it
is open, so its refusals are close codes: 4401 (no, bad or revoked key), 4403 (no access
to the project), 4404 (unknown project or terminal), 4400 (bad path or query).

Why the WebSocket is built the way it is:

* Browsers cannot put an ``Authorization`` header on a WebSocket, and a key in the URL
  ends up in logs and history: so the key comes in the header (programs) or as the first
  text message (browsers), within ``AUTH_TIMEOUT_S``.
* A browser sends cookies-free upgrades from any page: an upgrade with a foreign
  ``Origin`` is refused before anything else (cross-site WebSocket hijacking), unless the
  operator lists that origin in ``PROJECTHUB_TERMINAL_ORIGINS``.
* A key revoked, or a collaborator removed, while a socket is attached must end it: the
  key and the project access are checked again every ``RECHECK_S``.
* Nothing is buffered without bound: output is pulled from the fabric's flow-controlled
  stream only as fast as the socket takes it (a send that stalls for ``SEND_STALL_S`` ends
  the connection), and input is read one frame at a time (the next frame is not read
  before the daemon took the last one), at most ``INPUT_FRAME_MAX`` bytes each.
* Each attached socket costs the hub up to a stream window plus a socket's buffers (~0.5 MiB
  with a shell flooding a client that never reads): an account attaches at most
  ``SOCKETS_PER_ACCOUNT`` at once, counted here in the hub (the daemon's per-terminal cap runs
  as the project's uid, so the hub does not rely on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..auth.resolve import Identity
from ..errors import RemoteError
from ..hub import terminals as terms
from ..hub.service import HubService
from . import models as m
from .native import ApiError, _body, _no_body, _parsed, _project, endpoint
from .replies import BoundedJSONResponse as JSONResponse
from .requests import api_key_from, authenticate_key

log = logging.getLogger("projecthub.terminals")

AUTH_TIMEOUT_S = 10.0
RECHECK_S = 1.0
SEND_STALL_S = 30.0
INPUT_FRAME_MAX = terms.INPUT_FRAME_MAX
ORIGINS_ENV = "PROJECTHUB_TERMINAL_ORIGINS"
SOCKETS_PER_ACCOUNT = int(os.environ.get("PROJECTHUB_TERMINAL_SOCKETS_PER_ACCOUNT", "32"))

_attached: dict[str, int] = {}   # account (or project key's project) -> sockets attached now

CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_ERROR, CLOSE_TRY_LATER = 1000, 1008, 1009, 1011, 1013
CLOSE_BAD_REQUEST, CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN, CLOSE_NOT_FOUND = 4400, 4401, 4403, 4404


def _hub(conn: Request | WebSocket) -> HubService:
    return conn.app.state.hub


def _view(info: dict[str, Any], *fields: str) -> dict[str, Any]:
    view = {name: info.get(name) for name in fields}
    if "created" in view:
        view["created"] = m.iso_s(view["created"])
    return view


# -- REST ----------------------------------------------------------------------------------

@endpoint
async def create_terminal(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    body = _body(await _parsed(request, m.TerminalRequest))
    info = await terms.create_terminal(_hub(request), project_id, body.get("cols"), body.get("rows"))
    return JSONResponse(_view(info, "terminal_id", "cols", "rows", "created", "pid"), status_code=201)


@endpoint
async def list_terminals(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    rows = await terms.list_terminals(_hub(request), project_id)
    return JSONResponse({"terminals": [_view(r, "terminal_id", "cols", "rows", "created", "clients", "alive")
                                       for r in rows if isinstance(r, dict)]})


@endpoint
async def delete_terminal(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    await _no_body(request)
    await terms.kill_terminal(_hub(request), project_id, request.path_params["terminal_id"])
    return Response(status_code=204)


# -- WebSocket -----------------------------------------------------------------------------

class _Close(Exception):
    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(reason)
        # a close reason is at most 123 bytes of UTF-8
        self.code, self.reason = code, reason.encode()[:123].decode("utf-8", "ignore")


def allowed_origins() -> set[str]:
    raw = os.environ.get(ORIGINS_ENV, "")
    return {o.strip().rstrip("/").lower() for o in raw.split(",") if o.strip()}


def origin_allowed(ws: WebSocket) -> bool:
    """No Origin (a program), the server's own origin, or one the operator allowed."""
    origin = ws.headers.get("origin")
    if origin is None:
        return True
    origin = origin.strip().rstrip("/").lower()
    host = (ws.headers.get("host") or "").strip().lower()
    if host and origin in (f"http://{host}", f"https://{host}"):
        return True
    extra = allowed_origins()
    return "*" in extra or origin in extra


async def _key(ws: WebSocket) -> str:
    """The key from the Authorization header, or from the first message."""
    if ws.headers.get("authorization"):
        try:
            return api_key_from(ws)   # type: ignore[arg-type]  (reads only .headers)
        except RemoteError as exc:
            raise _Close(CLOSE_UNAUTHORIZED, exc.message)
    try:
        async with asyncio.timeout(AUTH_TIMEOUT_S):
            message = await ws.receive()
    except TimeoutError:
        raise _Close(CLOSE_UNAUTHORIZED, f"no auth message within {AUTH_TIMEOUT_S:g} s")
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    try:
        parsed = json.loads(text) if isinstance(text, str) and len(text) <= 4096 else None
    except ValueError:
        parsed = None
    if (not isinstance(parsed, dict) or parsed.get("type") != "auth"
            or not isinstance(parsed.get("token"), str) or not parsed["token"]):
        raise _Close(CLOSE_UNAUTHORIZED, 'the first message must be {"type": "auth", "token": "<api key>"}')
    return str(parsed["token"])


async def _authorize(ws: WebSocket, identity: Identity) -> str:
    try:
        return await _project(ws, identity)   # type: ignore[arg-type]  (path, query, app only)
    except ApiError as exc:
        code = {403: CLOSE_FORBIDDEN, 404: CLOSE_NOT_FOUND}.get(exc.status, CLOSE_BAD_REQUEST)
        raise _Close(code, exc.message)
    except m.RequestError as exc:
        raise _Close(CLOSE_BAD_REQUEST, exc.message)
    except RemoteError as exc:
        raise _Close(CLOSE_BAD_REQUEST, exc.message)


async def _check_access(hub: HubService, key: str, identity: Identity, project_id: str) -> None:
    """The key still resolves (not revoked, expired, disabled) and still reaches the project;
    else the socket ends."""
    current = await hub.resolve_key(key)
    if current is None or current.key_id != identity.key_id:
        raise _Close(CLOSE_UNAUTHORIZED, "the API key was revoked or has expired")
    if current.project_id:
        if current.project_id != project_id:
            raise _Close(CLOSE_FORBIDDEN, "this project API key is bound to another project")
    elif not await hub.is_collaborator(project_id, current.account_id or ""):
        raise _Close(CLOSE_FORBIDDEN, "you are no longer a collaborator on this project")


async def _still_allowed(hub: HubService, key: str, identity: Identity, project_id: str) -> None:
    """``_check_access`` every RECHECK_S, from the moment the socket is authorized: also
    while the attach waits for the daemon's first item (a project can freeze its own daemon
    across a revocation, and the scrollback would then go to a revoked key)."""
    while True:
        await asyncio.sleep(RECHECK_S)
        await _check_access(hub, key, identity, project_id)


async def _first_item(output: Any, watchdog: "asyncio.Future[None]") -> Any:
    """The attach's first item (the scrollback), unless the watchdog ends the socket first."""
    first = asyncio.ensure_future(output.__anext__())
    try:
        await asyncio.wait([first, watchdog], return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not first.done():
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
    if watchdog.done():
        watchdog.result()   # raises its _Close
    try:
        return first.result()
    except StopAsyncIteration:
        raise _Close(CLOSE_NOT_FOUND, "no such terminal")
    except RemoteError as exc:
        status = exc.extra.get("status")
        code = (CLOSE_NOT_FOUND if status == 404 or "does not exist" in exc.message
                else CLOSE_TRY_LATER if status == 429 else CLOSE_ERROR)
        raise _Close(code, exc.message)


async def _send_output(ws: WebSocket, output: Any) -> None:
    async for out in output:
        if out.exit_code is not None:
            await _send(ws, text=json.dumps({"type": "exit", "code": out.exit_code}))
            raise _Close(CLOSE_NORMAL, "the shell exited")
        await _send(ws, data=out.data)
    raise _Close(CLOSE_ERROR, "the terminal's output stream ended")


async def _send(ws: WebSocket, data: bytes | None = None, text: str | None = None) -> None:
    try:
        async with asyncio.timeout(SEND_STALL_S):
            if text is not None:
                await ws.send_text(text)
            else:
                await ws.send_bytes(data or b"")
    except TimeoutError:
        raise _Stalled()


class _Stalled(Exception):
    """The client stopped reading: no close frame can be sent either (it would wait for the
    same socket); returning from the app makes uvicorn drop the connection."""


async def _receive_input(ws: WebSocket, hub: HubService, project_id: str, terminal_id: str) -> None:
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        data = message.get("bytes")
        if data is not None:
            if len(data) > INPUT_FRAME_MAX:
                raise _Close(CLOSE_TOO_BIG, f"input frames are limited to {INPUT_FRAME_MAX} bytes")
            try:
                await terms.send_input(hub, project_id, terminal_id, data)
            except RemoteError as exc:   # e.g. the shell is not reading: those keys are lost
                log.debug("terminal input refused: %s", exc.message)
            continue
        text = message.get("text")
        if not isinstance(text, str) or len(text) > 4096:
            continue
        try:
            control = json.loads(text)
        except ValueError:
            continue
        if isinstance(control, dict) and control.get("type") == "resize":
            cols, rows = control.get("cols"), control.get("rows")
            try:
                await terms.resize_terminal(hub, project_id, terminal_id, cols, rows)
            except RemoteError as exc:   # a bad size: ignored, like any malformed control message
                log.debug("terminal resize refused: %s", exc.message)


async def terminal_socket(ws: WebSocket) -> None:
    if not origin_allowed(ws):
        # before accept: the upgrade is answered 403 and no message is ever exchanged
        log.warning("refused a terminal WebSocket from origin %r", ws.headers.get("origin", "")[:200])
        await ws.close(code=CLOSE_POLICY)
        return
    await ws.accept()
    hub = _hub(ws)
    output: Any = None
    watchdog: asyncio.Future[None] | None = None
    counted: str | None = None
    try:
        key = await _key(ws)
        identity = await authenticate_key(ws, key)   # type: ignore[arg-type]  (throttled like HTTP)
        if identity is None:
            raise _Close(CLOSE_UNAUTHORIZED, "invalid API key")
        project_id = await _authorize(ws, identity)
        terminal_id = ws.path_params["terminal_id"]
        owner = identity.account_id or f"project:{project_id}"
        if _attached.get(owner, 0) >= SOCKETS_PER_ACCOUNT:
            raise _Close(CLOSE_TRY_LATER, f"this account already has {SOCKETS_PER_ACCOUNT} terminal "
                                          "connections open; close one first")
        _attached[owner] = _attached.get(owner, 0) + 1
        counted = owner
        watchdog = asyncio.ensure_future(_still_allowed(hub, key, identity, project_id))
        output = terms.attach(hub, project_id, terminal_id)
        first = await _first_item(output, watchdog)
        await _check_access(hub, key, identity, project_id)   # the wait may have been long
        await _send(ws, data=first.data)   # the scrollback, possibly empty
        if first.exit_code is not None:
            await _send(ws, text=json.dumps({"type": "exit", "code": first.exit_code}))
            raise _Close(CLOSE_NORMAL, "the shell exited")
        tasks = [asyncio.ensure_future(_send_output(ws, output)),
                 asyncio.ensure_future(_receive_input(ws, hub, project_id, terminal_id)),
                 watchdog]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        exc = next(iter(done)).exception()
        if exc is not None:
            raise exc
    except _Close as close:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await ws.close(code=close.code, reason=close.reason)
    except RemoteError as exc:   # the daemon went away, or the client was dropped as too slow
        code = CLOSE_POLICY if exc.extra.get("dropped") else CLOSE_ERROR
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await ws.close(code=code, reason=exc.message.encode()[:123].decode("utf-8", "ignore"))
    except (WebSocketDisconnect, _Stalled, OSError):
        pass   # the client went away (or stopped reading): uvicorn drops the connection
    finally:
        if counted is not None:
            left = _attached.get(counted, 1) - 1
            if left > 0:
                _attached[counted] = left
            else:
                _attached.pop(counted, None)
        if watchdog is not None and not watchdog.done():
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
        if output is not None:   # detach now (the daemon starts the grace period)
            with contextlib.suppress(Exception):
                await output.aclose()


def routes() -> list[BaseRoute]:
    p = "/api/v3/projects/{project_id}/terminals"
    handlers = {"GET": list_terminals, "POST": create_terminal}

    async def collection(request: Request) -> Response:
        return await handlers[request.method](request)

    return [Route(p, collection, methods=list(handlers)),
            Route(p + "/{terminal_id}", delete_terminal, methods=["DELETE"]),
            WebSocketRoute(p + "/{terminal_id}/ws", terminal_socket)]
