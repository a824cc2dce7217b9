"""CoCalc hub API functions (``POST /api/conat/hub``), translated onto HubService.

Each function receives the authenticated account id (never trusted from ``args``, spec
1.8) and the positional ``args``; errors follow the dispatcher rules of spec 1.7/1.8.
Project-scoped keys never get here (the endpoint refuses them, spec 2.4).

Who may do what (docs/security.md has the full table): any member (owner, collaborator)
or admin may start, stop, touch, inspect and add collaborators; only the owner or an
admin may delete a project or remove *other* collaborators (a collaborator may remove
itself); nobody removes the owner, and no function changes who owns a project.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from ..errors import RemoteError
from . import messages
from .messages import MESSAGE_FUNCTIONS
from .orgs import ORG_FUNCTIONS
from .service import OWNER_ROLES, HubService, is_uuid, iso
from .user_search import USER_SEARCH_FUNCTIONS

HubFunction = Callable[[HubService, str, list[Any], "float | None"], Awaitable[Any]]

_PROJECT_FIELDS = ["project_id", "title", "last_edited", "created", "state", "deleted", "users"]


def _first(args: list[Any]) -> dict[str, Any]:
    """authFirst: a missing or non-object ``args[0]`` becomes ``{}``."""
    return dict(args[0]) if args and isinstance(args[0], dict) else {}


def _now_ms() -> int:
    return int(time.time() * 1000)


async def ping(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    return {"now": _now_ms()}


async def test(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    return {"account_id": account_id, "server_time": _now_ms()}


async def get_names(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    ids = args[0] if args else []
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise RemoteError("Error: account_ids must be a list of strings")
    return await hub.db.get_names(ids)


async def manage_api_keys(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    return await hub.manage_api_keys(account_id, _first(args))


def _project_id(opts: dict[str, Any]) -> Any:
    return opts.get("project_id")


async def create_project(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    opts = _first(args)
    title = opts.get("title") or ""
    description = opts.get("description") or ""
    if not isinstance(title, str) or not isinstance(description, str):
        raise RemoteError("Error: title and description must be strings")
    return await hub.create_project(account_id, title=title, description=description,
                                    start=bool(opts.get("start")))


def _lifecycle(action: str, verb: str) -> HubFunction:
    async def call(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
        project_id = _project_id(_first(args))
        await hub.require_project_member(account_id, project_id, verb)
        if action == "start":
            await hub.touch(project_id, force=True)
            await hub.start_project(project_id)
        elif action == "stop":
            await hub.stop_project(project_id)
        elif action == "touch":
            await hub.touch(project_id, force=True)
            await hub.start_project(project_id)
        elif action == "state":
            return await hub.project_state(project_id)
        elif action == "status":
            return await hub.project_status(project_id)
        return None
    return call


async def delete_project(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    project_id = _project_id(_first(args))
    try:
        project = await hub.require_project_member(account_id, project_id, "delete")
    except RemoteError:
        raise RemoteError("Error: must be an owner to delete a project")
    if await hub.project_role(account_id, project) not in OWNER_ROLES:   # not a collaborator
        raise RemoteError("Error: must be an owner to delete a project")
    await hub.delete_project(project_id, account_id=account_id)
    return None


def _as_list(value: Any, field: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) for v in values):
        raise RemoteError(f"Error: {field} must be a string or a list of strings")
    return values


async def add_collaborator(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    opts = _first(args).get("opts")
    if not isinstance(opts, dict):
        raise RemoteError("Error: missing opts")
    project_ids = _as_list(opts.get("project_id"), "project_id")
    account_ids = _as_list(opts.get("account_id"), "account_id")
    if len(project_ids) > 1 and len(account_ids) == 1:
        account_ids = account_ids * len(project_ids)
    if len(account_ids) > 1 and len(project_ids) == 1:
        project_ids = project_ids * len(account_ids)
    if len(project_ids) != len(account_ids):
        raise RemoteError("Error: project_id and account_id lists must have the same length")
    for project_id, collaborator in zip(project_ids, account_ids):
        await hub.require_project_member(account_id, project_id, "add collaborators to")
        await hub.add_collaborator(project_id, collaborator)
    return {"project_id": project_ids}


async def remove_collaborator(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    opts = _first(args).get("opts")
    if not isinstance(opts, dict):
        raise RemoteError("Error: missing opts")
    project_id, collaborator = opts.get("project_id"), opts.get("account_id")
    if not isinstance(collaborator, str):
        raise RemoteError("Error: account_id must be a string")
    project = await hub.require_project_member(account_id, project_id, "remove collaborators from")
    if collaborator != account_id and await hub.project_role(account_id, project) not in OWNER_ROLES:
        raise RemoteError("Error: only an owner may remove other collaborators from a project")
    await hub.remove_collaborator(project_id, collaborator)   # the store refuses the owner
    return None


def _project_row(hub: HubService, project: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    running = hub.host.is_running(project["project_id"])
    state = "running" if running else (project.get("state") or "stopped")
    if state == "running" and not running:
        state = "stopped"
    full = {
        "project_id": project["project_id"],
        "title": project.get("title") or "",
        "description": project.get("description") or "",
        "last_edited": iso(project.get("last_edited")),
        "created": iso(project.get("created")),
        "state": {"state": state, "time": iso(project.get("state_time") or project.get("created"))},
        "deleted": bool(project.get("deleted")),
        "users": project.get("users") or {},
    }
    return {f: full.get(f) for f in fields}


async def user_query(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    query = _first(args).get("query")
    if not isinstance(query, dict) or len(query) != 1:
        raise RemoteError("Error: query must be an object with exactly one table")
    (table, spec), = query.items()
    if table in ("projects", "projects_all"):
        pattern = spec[0] if isinstance(spec, list) and spec and isinstance(spec[0], dict) else (
            spec if isinstance(spec, dict) else {})
        fields = list(pattern) or _PROJECT_FIELDS
        wanted = pattern.get("project_id")
        if wanted is not None and not is_uuid(wanted):
            raise RemoteError("Error: invalid project_id")
        if table == "projects":
            rows = await hub.db.list_projects(account_id, project_id=wanted)
        else:
            rows = await hub.db.list_projects(account_id, recent_days=None, limit=None, project_id=wanted)
        result = [_project_row(hub, r, fields) for r in rows]
        return {table: result if isinstance(spec, list) else (result[0] if result else None)}
    if table == "accounts":
        account = await hub.db.get_account(account_id) or {}
        pattern = spec[0] if isinstance(spec, list) and spec else spec
        if not isinstance(pattern, dict):
            raise RemoteError("Error: accounts query must be an object")
        full = {
            "account_id": account_id,
            "first_name": account.get("first_name") or "",
            "last_name": account.get("last_name") or "",
            "email_address": account.get("email"),
            "name": None,
            "created": iso(account.get("created")),
        }
        row = {f: full.get(f) for f in pattern}
        return {"accounts": [row] if isinstance(spec, list) else row}
    if table == "messages":   # the caller's own messages and read/starred/... flags
        return await messages.user_query(hub, account_id, spec)
    raise RemoteError(f"Error: user query of table '{table}' is not supported")


# -- copy between projects ------------------------------------------------------------------

COPY_TIMEOUT_S = 600.0       # CoCalc's copy has no fixed bound; ours does, and the caller may lower it
MAX_COPY_TIMEOUT_S = 3600.0


def _copy_path(value: Any, field: str) -> str:
    """A path relative to the home ("" is the home itself)."""
    if not isinstance(value, str):
        raise RemoteError(f"Error: '{field}' must be a path (a string)")
    if len(value) > 4096 or "\x00" in value:
        raise RemoteError(f"Error: '{field}' must be at most 4096 characters, without NUL bytes")
    if ".." in value.split("/"):
        raise RemoteError(f"Error: '{field}' must stay inside the home (no '..')")
    return value


def _inside(path: str, parent: str) -> bool:
    """Whether ``path`` is ``parent`` or below it (both relative to the home)."""
    a = [p for p in path.strip("/").split("/") if p not in ("", ".")]
    b = [p for p in parent.strip("/").split("/") if p not in ("", ".")]
    return a[:len(b)] == b


async def copy_path_between_projects(hub: HubService, account_id: str, args: list[Any],
                                     budget: float | None) -> Any:
    opts = _first(args)
    src = opts.get("src_project_id")
    target = opts.get("target_project_id") or src
    for project_id, which in ((src, "source"), (target, "target")):
        if not is_uuid(project_id) or not await hub.is_collaborator(project_id, account_id):
            raise RemoteError(f"Error: user must be collaborator on {which} project")
    src_path = _copy_path(opts.get("src_path", opts.get("path")), "src_path")
    target_path = _copy_path(opts.get("target_path") if opts.get("target_path") is not None else src_path,
                             "target_path")
    if src == target and (_inside(target_path, src_path) or _inside(src_path, target_path)):
        raise RemoteError("Error: within one project the source and the target must not contain "
                          "each other")
    if opts.get("scheduled"):
        raise RemoteError("Error: scheduled copies are not supported; copy now instead")
    timeout = opts.get("timeout", COPY_TIMEOUT_S)
    if (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout)
            or timeout <= 0):
        raise RemoteError("Error: 'timeout' must be a positive number of seconds")
    timeout = min(float(timeout), MAX_COPY_TIMEOUT_S)
    if budget is not None:
        timeout = min(timeout, max(0.5, budget - 0.5))
    options = {k: opts[k] for k in ("overwrite_newer", "delete_missing", "backup", "exclude") if k in opts}
    return await hub.copy_path(src, src_path, target, target_path, options, timeout)


# -- sync.history ----------------------------------------------------------------------------

async def sync_history(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    from .history import history
    opts = _first(args)
    project_id = opts.get("project_id")
    if not is_uuid(project_id) or not await hub.is_collaborator(project_id, account_id):
        raise RemoteError("Error: user must be collaborator on project")
    return await history(hub, project_id, opts.get("path"), budget)


# -- jupyter -------------------------------------------------------------------------------

async def _jupyter_project(hub: HubService, account_id: str, project_id: Any) -> str:
    if project_id:
        if not is_uuid(project_id) or not await hub.is_collaborator(project_id, account_id):
            raise RemoteError("Error: permission denied -- user must be collaborator on project")
        return project_id
    if not await hub.db.get_setting("jupyter_api_enabled", False):
        raise RemoteError("Error: Jupyter API is not enabled on this server.")
    # each account its own scratch project: a shared one let accounts read each other's files
    return await hub.jupyter_scratch_project(account_id)


async def jupyter_kernels(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    project_id = await _jupyter_project(hub, account_id, _first(args).get("project_id"))
    return await hub.project_call(project_id, "native.kernelSpecs", [{}], budget)


async def jupyter_execute(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    opts = _first(args)
    if opts.get("input") is None:
        raise RemoteError("Error: input or hash must not be null")
    if not opts.get("kernel"):
        raise RemoteError("Error: kernel must be specified in hash is not specified")
    project_id = await _jupyter_project(hub, account_id, opts.get("project_id"))
    request = {k: opts[k] for k in ("input", "kernel", "history", "path", "limits") if k in opts}
    output = await hub.project_call(project_id, "system.jupyterExecute", [request], budget)
    return {"output": output, "created": iso(datetime.now(timezone.utc))}


HUB_FUNCTIONS: dict[str, HubFunction] = {
    "system.ping": ping,
    "system.test": test,
    "system.getNames": get_names,
    "system.manageApiKeys": manage_api_keys,
    "projects.createProject": create_project,
    "projects.start": _lifecycle("start", "start"),
    "projects.stop": _lifecycle("stop", "stop"),
    "projects.touch": _lifecycle("touch", "touch"),
    "projects.state": _lifecycle("state", "get state of"),
    "projects.status": _lifecycle("status", "get status of"),
    "projects.deleteProject": delete_project,
    "projects.addCollaborator": add_collaborator,
    "projects.removeCollaborator": remove_collaborator,
    "projects.copyPathBetweenProjects": copy_path_between_projects,
    "sync.history": sync_history,
    "db.userQuery": user_query,
    "jupyter.kernels": jupyter_kernels,
    "jupyter.execute": jupyter_execute,
    **USER_SEARCH_FUNCTIONS,   # system.userSearch (user_search.py)
    **ORG_FUNCTIONS,           # org.* (orgs.py)
    **MESSAGE_FUNCTIONS,       # messages.send/get, org.message (messages.py)
}
