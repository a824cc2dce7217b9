"""Admin-only views of the server (``/api/v3``), for the web UI's admin pages and programs.

    GET   /api/v3/admin/server              isolation report (what ``projecthub doctor`` probes, as
                                            this server enforces it) and the server-wide limits
    PATCH /api/v3/accounts/{account_id}     {"disabled": bool}: disable or enable an account

The isolation report is the one the sandbox probed at start (host/sandbox/probe.py), not a
new probe: it says what this running server really enforces.  Disabling goes through
``HubService.set_account_disabled`` (one path; its keys are refused at once everywhere).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..auth.resolve import Identity
from . import models as m
from .native import _account, _by_method, _hub, _no_query, _parsed, endpoint
from .replies import BoundedJSONResponse as JSONResponse


@endpoint
async def server(request: Request, identity: Identity) -> Response:
    _no_query(request)
    hub = _hub(request)
    await hub._require_admin(_account(identity), "see the server's isolation report and limits")
    sandbox = hub.host.sandbox
    return JSONResponse({
        "isolation": sandbox.report.to_json(),
        "project_limits": sandbox.config.defaults.to_json(),   # every project's defaults
        "account_limits": hub.account_limits.to_json(),        # per-account caps
    })


@endpoint
async def patch_account(request: Request, identity: Identity) -> Response:
    _no_query(request)
    body: m.AccountPatchRequest = await _parsed(request, m.AccountPatchRequest)
    return JSONResponse(await _hub(request).set_account_disabled(
        _account(identity), request.path_params["account_id"], body.disabled))


def routes() -> list[Route]:
    table = {
        "/api/v3/admin/server": {"GET": server},
        "/api/v3/accounts/{account_id}": {"PATCH": patch_account},
    }
    return [Route(path, _by_method(handlers), methods=list(handlers)) for path, handlers in table.items()]
