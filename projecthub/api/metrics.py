"""``GET /metrics``: Prometheus text format (observability/metrics.py holds the registry).

Who may scrape: on the API port, an admin account's key only (no key or a bad key: 401, any
other key: 403), since the numbers describe every user's activity.  With ``serve
--metrics-port``, a second listener (127.0.0.1 by default: ``--metrics-host``) answers
``/metrics`` without a key and nothing else; which listener a request came in on is the
socket's own address (``scope["server"]``), which a client cannot choose.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import RemoteError
from ..observability.metrics import CONTENT_TYPE, Metrics
from .requests import api_key_from, authenticate_key

# Scrape-time questions to project daemons (kernels, jobs): at most this many at once, and
# the whole scrape waits at most SCRAPE_TIMEOUT_S for them; daemons that did not answer in
# time are left out of the sums.
SCRAPE_CONCURRENCY = 32
SCRAPE_TIMEOUT_S = 2.0


async def _host_state(request: Request) -> dict[str, Any]:
    hub = request.app.state.hub
    host = hub.host
    running = host.running_project_ids()
    state: dict[str, Any] = {"projects": len(running), "key_cache_hits": hub.resolver.cache_hits,
                             "key_cache_misses": hub.resolver.cache_misses}
    slots = asyncio.Semaphore(SCRAPE_CONCURRENCY)

    async def ask(project_id: str) -> dict[str, Any] | None:
        async with slots:
            try:
                return await host.activity(project_id)
            except Exception:  # noqa: BLE001 - a stopping daemon: not counted
                return None

    tasks = [asyncio.ensure_future(ask(p)) for p in running]
    if tasks:
        await asyncio.wait(tasks, timeout=SCRAPE_TIMEOUT_S)
    kernels = jobs = 0
    for task in tasks:
        if not task.done():
            task.cancel()
            continue
        if task.cancelled() or task.exception() is not None:
            continue
        info = task.result()
        if info:
            kernels += int(info.get("sessions") or 0)
            jobs += int(info.get("jobs") or 0)
    state["kernels"] = kernels
    state["jobs"] = jobs
    return state


def on_metrics_port(request: Request) -> bool:
    port = request.app.state.settings.metrics_port
    server = request.scope.get("server")
    return bool(port) and server is not None and server[1] == port


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics | None = getattr(request.app.state, "metrics", None)
    if metrics is None:
        return JSONResponse({"error": "metrics are switched off (serve --no-metrics)"}, status_code=404)
    if not on_metrics_port(request):
        try:
            identity = await authenticate_key(request, api_key_from(request))
        except RemoteError as exc:
            return JSONResponse({"error": exc.message}, status_code=401)
        if identity is None:
            return JSONResponse({"error": "invalid API key"}, status_code=401)
        if not identity.is_admin:
            return JSONResponse({"error": "/metrics needs an admin account's key"}, status_code=403)
    body = metrics.render(await _host_state(request))
    return Response(body, media_type=CONTENT_TYPE)


class MetricsPortGate:
    """On the --metrics-port listener, only ``/metrics`` exists (pure ASGI, no allocation on
    the API port's requests beyond one comparison)."""

    def __init__(self, app: Any, port: int) -> None:
        self.app = app
        self.port = port

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        server = scope.get("server")
        if (scope["type"] == "websocket" and server is not None and server[1] == self.port):
            await send({"type": "websocket.close", "code": 1008})   # the upgrade is refused (403)
            return
        if (scope["type"] == "http" and server is not None and server[1] == self.port
                and scope["path"] != "/metrics"):
            await JSONResponse({"error": "only /metrics is served on this port"}, status_code=404)(
                scope, receive, send)
            return
        await self.app(scope, receive, send)
