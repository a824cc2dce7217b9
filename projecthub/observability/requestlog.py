"""The request log and the request metrics: one pure-ASGI middleware around the routes.

Pure ASGI, not Starlette's ``BaseHTTPMiddleware``: that one runs the app in a task and pipes
the response through a memory stream (slow, and it buffers server-sent events).  Here the
middleware only wraps ``receive``/``send`` to count bytes and catch the status, and writes its
line when the response has ended, so a stream (SSE) is logged when it ends, with its full
duration and size.

Who called and what for is known only inside the handlers, so the middleware puts a small dict
in the scope (``scope[SCOPE_KEY]``) and the auth path fills it (``note_identity``: account id,
key id, project id of the key) as do the compat handlers (``note``: the conat function name,
the project).  For v3 the function is the route: ``POST /projects/{project_id}/exec``.

One line per request (logger ``projecthub.requests``), for example::

    {"ts": "2026-12-02T13:20:00.123Z", "level": "info", "logger": "projecthub.requests",
     "event": "request", "method": "POST", "path": "/api/conat/project", "surface": "conat-project",
     "function": "system.exec", "status": 200, "duration_ms": 2.113, "bytes_in": 87, "bytes_out": 64,
     "account_id": "...", "key_id": 3, "project_id": "...", "client": "127.0.0.1"}

Never a secret: no header (so no Authorization), no query string (``?token=``), no body.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Awaitable, Callable

from .audit import current_request
from . import logs
from .logs import utc_iso
from .metrics import Metrics

SCOPE_KEY = "projecthub.log"
log = logging.getLogger("projecthub.requests")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_SURFACES = (("/api/conat/project", "conat-project", ""), ("/api/conat/hub", "conat-hub", ""),
             ("/api/v1/", "v1", "system.exec"), ("/api/v2/", "v2", "system.exec"), ("/api/v3/", "v3", ""))
MAX_PATH = 200


def surface_of(path: str) -> tuple[str, str]:
    """(surface, default function) of a request path."""
    if path.startswith("/api/"):
        for prefix, surface, function in _SURFACES:
            if path.startswith(prefix):
                return surface, function
    return "other", ""


def note(scope: Scope, **fields: Any) -> None:
    """Tell the request log about this request (a handler knows the function, the project)."""
    info = scope.get(SCOPE_KEY)
    if info is not None:
        info.update(fields)


def note_identity(scope: Scope, identity: Any) -> None:
    info = scope.get(SCOPE_KEY)
    if info is not None:
        info["account_id"] = identity.account_id
        info["key_id"] = identity.key_id
        if identity.project_id:
            info["project_id"] = identity.project_id


class RequestObserver:
    """Logs (``log_requests``) and counts (``metrics``) every HTTP request.  With neither, it
    passes requests straight through."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], *,
                 metrics: Metrics | None = None, log_requests: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests
        self._route_names: dict[tuple[int, str], str] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (self.log_requests or self.metrics):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        info: dict[str, Any] = {}
        scope[SCOPE_KEY] = info
        current_request.set(info)   # audit events name the caller (observability/audit.py)
        status = 0
        bytes_in = 0
        bytes_out = 0

        async def counting_receive() -> dict[str, Any]:
            nonlocal bytes_in
            message = await receive()
            body = message.get("body")
            if body:
                bytes_in += len(body)
            return message

        async def counting_send(message: dict[str, Any]) -> None:
            nonlocal status, bytes_out
            if message["type"] == "http.response.start":
                status = message["status"]
            else:
                body = message.get("body")
                if body:
                    bytes_out += len(body)
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        except BaseException:
            if not status:
                status = 500   # the server's error handler answers outside this middleware
            raise
        finally:
            self._done(scope, info, status, time.perf_counter() - started, bytes_in, bytes_out)

    def _function(self, scope: Scope, surface: str, default: str) -> str:
        route = scope.get("route")
        if route is None:
            return default
        key = (id(route), scope["method"])
        name = self._route_names.get(key)
        if name is None:
            path = getattr(route, "path", "")
            if surface == "v3":
                path = path[len("/api/v3"):]
            name = self._route_names[key] = f"{scope['method']} {path}" if path else default
        return name

    def _done(self, scope: Scope, info: dict[str, Any], status: int, seconds: float,
              bytes_in: int, bytes_out: int) -> None:
        path = scope["path"]
        surface, default = surface_of(path)
        function = info.get("function") or (default if surface != "v3" and surface != "other"
                                            else self._function(scope, surface, default))
        if self.metrics is not None:
            self.metrics.observe(surface, function, status, seconds)
        if not self.log_requests or not log.isEnabledFor(logging.INFO):
            return
        project_id = info.get("project_id")
        if project_id is None:
            params = scope.get("path_params")
            if params:
                project_id = params.get("project_id")
                if project_id is not None:
                    project_id = project_id[:64]   # from the URL: any text, bounded like the path
        client = scope.get("client")
        line = json.dumps({
            "ts": utc_iso(time.time()), "level": "info", "logger": "projecthub.requests",
            "event": "request", "method": scope["method"], "path": path[:MAX_PATH],
            "surface": surface, "function": function, "status": status,
            "duration_ms": round(seconds * 1000, 3), "bytes_in": bytes_in, "bytes_out": bytes_out,
            "account_id": info.get("account_id"), "key_id": info.get("key_id"),
            "project_id": project_id, "client": client[0] if client else None,
        })
        logs.write_line(line)   # no LogRecord: straight onto the writer's queue (logs.py)
