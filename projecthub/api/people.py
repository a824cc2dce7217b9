"""Who is signed in, and who works on a project (``/api/v3``), for the web UI and programs.

    GET    /api/v3/me                                          the caller's account (or project key)
    POST   /api/v3/projects/{id}/collaborators  {"account_id"}  add a collaborator (any member)
    DELETE /api/v3/projects/{id}/collaborators/{account_id}    remove one (owners; anyone: themselves)

The same HubService calls as CoCalc's ``projects.addCollaborator`` / ``removeCollaborator``
(hub/functions.py), with the same rules: one path per operation.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..auth.resolve import Identity
from ..hub.service import OWNER_ROLES, account_json, is_uuid
from . import models as m
from .native import ApiError, _account, _by_method, _hub, _no_body, _no_query, _parsed, _project, endpoint
from .replies import BoundedJSONResponse as JSONResponse


@endpoint
async def me(request: Request, identity: Identity) -> Response:
    """The caller: a project key has no account (CoCalc's rule), only its project."""
    _no_query(request)
    if not identity.account_id:
        return JSONResponse({"account": None, "project_id": identity.project_id, "is_admin": False,
                             "key_id": identity.key_id})
    row = await _hub(request).db.get_account(identity.account_id)
    if row is None:
        raise ApiError(401, "invalid API key")
    account = account_json(row)
    return JSONResponse({"account": account, "project_id": None, "is_admin": account["is_admin"],
                         "key_id": identity.key_id})


@endpoint
async def add_collaborator(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    account_id = _account(identity)   # a project key cannot invite people
    body: m.CollaboratorRequest = await _parsed(request, m.CollaboratorRequest)
    await _hub(request).add_collaborator(project_id, body.account_id)
    return JSONResponse({"project_id": project_id, "account_id": body.account_id, "added_by": account_id},
                        status_code=201)


@endpoint
async def remove_collaborator(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    account_id = _account(identity)
    await _no_body(request)
    target = request.path_params["account_id"]
    if not is_uuid(target):
        raise ApiError(400, "account_id must be a UUID")
    hub = _hub(request)
    project = await hub.db.get_project(project_id)
    if target != account_id and await hub.project_role(account_id, project) not in OWNER_ROLES:
        raise ApiError(403, "only an owner may remove other collaborators from a project")
    await hub.remove_collaborator(project_id, target)   # the store refuses to remove the owner
    return Response(status_code=204)


def routes() -> list[Route]:
    p = "/api/v3/projects/{project_id}"
    table = {
        "/api/v3/me": {"GET": me},
        p + "/collaborators": {"POST": add_collaborator},
        p + "/collaborators/{account_id}": {"DELETE": remove_collaborator},
    }
    return [Route(path, _by_method(handlers), methods=list(handlers)) for path, handlers in table.items()]
