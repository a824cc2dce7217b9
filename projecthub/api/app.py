"""The ASGI application: routes, lifespan (store, sandbox, host, hub), body limits."""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..auth.resolve import KeyResolver
from ..config import ServerSettings, prepare_data_dir
from ..host.environment import resolve as resolve_environment
from ..host.host import Host
from ..host.sandbox import ProjectLimits, Sandbox, SandboxConfig
from ..host.sandbox.disk import disk_full_message
from ..hub.account_limits import AccountLimits
from ..hub.db import AsyncStore
from ..hub.service import HubService
from ..store import Store, StoreUnavailable
from . import compat, files, native, terminals, tokens
from ..observability.metrics import Metrics
from ..observability.requestlog import RequestObserver
from . import admin, people, ui
from .metrics import MetricsPortGate, metrics_endpoint
from .replies import ReplyBudget
from .requests import BadKeyThrottle

log = logging.getLogger("projecthub.server")


def build_sandbox(settings: ServerSettings) -> Sandbox:
    """Raises ValueError for invalid default limits, RuntimeError under --require-isolation,
    EnvironmentError_ for a project environment that cannot work.  Builds the managed project
    environment when it is missing (progress on stderr)."""
    defaults = ProjectLimits.from_json(settings.default_limits)
    environment = resolve_environment(
        settings.data_dir, settings.project_env, settings.project_rootfs,
        progress=lambda line: print(f"projecthub: {line}", file=sys.stderr, flush=True))
    return Sandbox(SandboxConfig(data_dir=settings.data_dir, mode=settings.sandbox_mode,
                                 require_isolation=settings.require_isolation, defaults=defaults,
                                 uid_range=settings.uid_range, environment=environment,
                                 cgroup_root_name=settings.cgroup_root_name))


def create_app(settings: ServerSettings, sandbox: Sandbox | None = None) -> Starlette:
    """``sandbox`` may be built by the caller (the CLI does, to refuse to start cleanly)."""
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        prepare_data_dir(settings.data_dir)
        store = Store(settings.db_url)
        store.migrate()
        nonlocal sandbox
        if sandbox is None:
            sandbox = build_sandbox(settings)
        for line in sandbox.report.to_text().splitlines():
            log.info("isolation: %s", line)
        if not sandbox.report.all_enforced:
            log.warning("NOT ALL ISOLATION LAYERS ARE ENFORCED: see `projecthub doctor`")
        db = AsyncStore(store)
        host = Host(settings.data_dir, sandbox, db, jupyter_pool_size=settings.jupyter_pool_size,
                    spare_projects=settings.spare_projects, jupyter_idle_s=settings.jupyter_idle_s,
                    terminal_grace_s=settings.terminal_grace_s)
        if settings.nats_url:   # projecthub hub: the hosts are other processes, on NATS
            from ..hub.remote_host import connect_remote_host
            host = await connect_remote_host(settings.nats_url, settings.nats_creds, db,  # type: ignore[assignment]
                                             sandbox.config.defaults)
        resolver = KeyResolver(store, cache_ttl=settings.key_cache_ttl)
        # register this machine as a host: projects record where they run (scale-out routes on
        # it); a hub on NATS places each project on a host at its first start (remote_host.py)
        host_id = 0 if settings.nats_url else await db.ensure_host(
            socket.gethostname(), address=f"unix:{settings.data_dir / 'run'}")
        hub = HubService(db, host, resolver, host_id=host_id,
                         account_limits=AccountLimits.from_json(settings.account_limits),
                         purge_after_s=settings.purge_after_s,
                         events=getattr(host, "events", None))   # hub-to-hub, on NATS (hub/events.py)
        app.state.settings = settings
        app.state.metrics = metrics
        app.state.hub = hub
        app.state.throttle = BadKeyThrottle(settings.bad_key_limit_per_minute)
        app.state.replies = ReplyBudget(settings.reply_buffer_bytes)   # replies held for slow clients
        await host.start()
        hub.start_key_refresh()
        hub.start_lifecycle()   # idle stop, purging deleted projects (hub/lifecycle.py)
        log.info("projecthub listening on http://%s:%s (data dir %s)", settings.host, settings.port,
                 settings.data_dir)
        try:
            yield
        finally:
            await hub.stop_key_refresh()  # before db.close(): a pass may be on the store thread
            await hub.stop_lifecycle()
            await host.close()
            db.close()

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    routes = [
        Route("/healthz", health),
        Route("/metrics", metrics_endpoint),   # admin key, or no key on --metrics-port (api/metrics.py)
        Route("/api/conat/project", compat.conat_project, methods=["POST"]),
        Route("/api/conat/hub", compat.conat_hub, methods=["POST"]),
        Route("/api/v1/project_exec", compat.v1_project_exec, methods=["POST"]),
        Route("/api/v1/{name}", compat.v1_unknown, methods=["POST", "GET"]),
        Route("/api/v2/exec", compat.v2_exec, methods=["POST"]),
        *native.routes(),
        *tokens.routes(),   # POST /api/v3/tokens/redeem (org.createToken's sign-in tokens)
        *files.routes(),    # /api/v3/projects/{id}/files/..., files:move, archive/...
        *people.routes(),   # /api/v3/me, /api/v3/projects/{id}/collaborators
        *admin.routes(),    # /api/v3/admin/server, PATCH /api/v3/accounts/{id}
        Route("/", ui.page),   # the web UI (api/ui.py): one page and its built assets
        Route("/ui/{name}", ui.asset),
        *terminals.routes(),   # /api/v3/projects/{id}/terminals (REST + WebSocket, docs/terminal.md)
    ]

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"not found: {request.url.path}"}, status_code=404)

    async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"method {request.method} not allowed on {request.url.path}"},
                            status_code=405, headers=getattr(exc, "headers", None))  # keeps Allow

    async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # A shared database down or restarting: the client may retry, nothing is wrong with
        # its request (the CoCalc surfaces answer this as {"error": ...} themselves).  Keyed
        # by class, not 500: Starlette re-raises what its 500 handler answered.
        log.warning("store unavailable on %s: %s", request.url.path, getattr(exc, "reason", exc))
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "2"})

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        full = disk_full_message(exc)
        if full is not None:   # no space for a write (store or host): 507, not a server bug
            log.error("no space on %s: %s", request.url.path, exc)
            return JSONResponse({"error": full}, status_code=507)
        if isinstance(exc, (UnicodeError, RecursionError)):
            # Bad input that slipped past the decoders (requests.py): still the client's
            # fault, so 400 with a message, and one log line instead of a traceback.
            log.warning("bad input reached %s: %s", request.url.path, type(exc).__name__)
            return JSONResponse({"error": "invalid request: text must be valid Unicode and nesting "
                                          "shallow"}, status_code=400)
        log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal server error"}, status_code=500)

    # request log + request metrics (observability/requestlog.py): pure ASGI, outermost but
    # for Starlette's error middleware (a 500 is recorded from the exception)
    metrics = Metrics() if settings.metrics else None
    middleware = [Middleware(RequestObserver, metrics=metrics, log_requests=settings.request_log)]
    if settings.metrics_port:
        middleware.insert(0, Middleware(MetricsPortGate, port=settings.metrics_port))
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware,
                     exception_handlers={404: not_found, 405: method_not_allowed, 500: server_error,
                                         StoreUnavailable: store_unavailable})
