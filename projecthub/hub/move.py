"""``projecthub project move PROJECT --to HOST``: move a project to another host (scale-out).

The admin command acts as a hub on NATS: it stops the project on its host, has the source
host's daemon pack the home (``native.archive.pack``: a tar stream, as the source uid, in
its sandbox) and the target host's daemon unpack it (``native.archive.unpack*``: as the
target's own uid for the project, in its sandbox, within its disk limit, with
``project/archive.py``'s path and symlink rules), one chunk at a time: nothing holds more
than the fabric's stream window plus one chunk, whatever the size of the home.  The job
records (the state dir's ``jobs/``, project/jobs.py) follow the same way (the archive's
``scope: "jobs"``: same uid, same sandbox, same rules), so ``async_get`` answers the same on
the target.  The project is stopped first, so no job runs: a job that was running ends
there as after a daemon restart.  Both copies delete what the target held and the source
did not, so the target's home and job records become exactly the source's (no old job id
of the target survives to answer for the project).

The source stays authoritative until the store is switched (``projects.host_id``): a
failure or an interruption before that stops and purges the partial copy on the target and
leaves the project where it was.  After the switch the source's copy is purged, running
hubs are told (``project.moved`` on the hub event bus: they drop the cached placement),
and the project is started on the target if it was running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ..errors import RemoteError
from ..fabric.messages import STREAM_WINDOW
from ..fabric.nats_client import NatsFabric
from ..fabric.nats_wire import HEARTBEAT_INTERVAL_S
from .db import AsyncStore

log = logging.getLogger("projecthub.hub.move")

_CONTROL_TIMEOUT_S = 60.0
_CHUNK_BUDGET_S = 60.0


class MoveError(RemoteError):
    pass


async def _host_names(db: AsyncStore) -> dict[int, str]:
    return {int(h["host_id"]): str(h["name"]) for h in await db.list_hosts()}


async def wait_for_hosts(fabric: NatsFabric, names: tuple[str, ...]) -> None:
    """Heartbeats come every interval: listen a little longer than one before judging."""
    deadline = asyncio.get_running_loop().time() + HEARTBEAT_INTERVAL_S * 2.5
    while not all(n in fabric.live_hosts() for n in names):
        if asyncio.get_running_loop().time() > deadline:
            return
        await asyncio.sleep(0.05)


async def move_project(db: AsyncStore, fabric: NatsFabric, project_id: str, target: str,
                       timeout_s: float = 3600.0) -> dict[str, Any]:
    project = await db.get_project(project_id)
    if project is None:
        raise MoveError(f"Error: no project with id {project_id}")
    if project.get("deleted"):
        raise MoveError(f"Error: project {project_id} is deleted; deleted projects are not moved")
    names = await _host_names(db)
    source = names.get(int(project["host_id"])) if project.get("host_id") else None
    if source == target:
        raise MoveError(f"Error: project {project_id} is already on host {target}")
    await wait_for_hosts(fabric, tuple(n for n in (source, target) if n))
    live = fabric.live_hosts()
    if target not in live:
        known = "registered but down" if target in names.values() else "unknown"
        raise MoveError(f"Error: host {target} is {known}: no heartbeat on NATS; nothing was changed")
    target_id = next((i for i, n in names.items() if n == target), None)
    if target_id is None:
        target_id = int(await db.ensure_host(target, address="nats"))
    if source is None:   # never placed: nothing to copy, it starts on the target
        await fabric.call(target, "project.adopt", [project_id], None, _CONTROL_TIMEOUT_S)
        await db.update_project(project_id, host_id=target_id)
        return {"project_id": project_id, "from": None, "to": target, "copied": None, "running": False}
    if source not in live:
        raise MoveError(f"Error: the project's host {source} is down (no heartbeat on NATS); its files "
                        "cannot be read; nothing was changed")
    was_running = project_id in (live[source].get("running") or ())
    spec = {"limits": (project.get("settings") or {}).get("limits") or {}, "deleted": False}
    reason = f"moving to host {target}"
    await fabric.call(target, "project.adopt", [project_id], None, _CONTROL_TIMEOUT_S)
    await fabric.call(source, "project.stop", [project_id, reason], None, _CONTROL_TIMEOUT_S)
    try:
        async with asyncio.timeout(timeout_s):
            stats = await _copy(fabric, project_id, spec, source, target)
    except BaseException as exc:   # failed or interrupted: the source stays; the partial copy goes
        with contextlib.suppress(BaseException):
            await asyncio.shield(_discard(fabric, target, project_id, reason))
        with contextlib.suppress(BaseException):   # the source's daemon (started to pack)
            await asyncio.shield(fabric.call(source, "project.stop", [project_id, reason], None,
                                             _CONTROL_TIMEOUT_S))
        if isinstance(exc, TimeoutError):
            raise MoveError(f"Error: timeout: the copy took longer than {timeout_s:g} s; the project "
                            f"stays on {source}") from None
        if isinstance(exc, RemoteError):
            raise MoveError(f"{exc.message}; the project stays on {source}") from None
        raise
    await fabric.call(source, "project.stop", [project_id, reason], None, _CONTROL_TIMEOUT_S)
    await fabric.call(target, "project.stop", [project_id, "moved here"], None, _CONTROL_TIMEOUT_S)
    await db.update_project(project_id, host_id=target_id, state="stopped")   # the switch
    freed = None
    try:   # the old copy is no longer the project's: refused there from now on, its files go
        await fabric.call(source, "project.moved", [project_id, target], None, _CONTROL_TIMEOUT_S)
        freed = await fabric.call(source, "project.purge", [project_id], None, _CONTROL_TIMEOUT_S)
    except RemoteError as exc:
        log.warning("purging the old copy of %s on %s: %s", project_id, source, exc)
    if was_running:
        await fabric.call(target, "project.start", [project_id, spec], None, _CONTROL_TIMEOUT_S)
        await db.update_project(project_id, state="running")
    return {"project_id": project_id, "from": source, "to": target, "copied": stats,
            "source_purged": freed is not None, "running": was_running}


async def _copy(fabric: NatsFabric, project_id: str, spec: dict[str, Any], source: str,
                target: str) -> dict[str, Any]:
    """The home, then the job records: each the source daemon's tar stream into the target
    daemon's extractor, chunk by chunk."""
    stats = await _copy_tree(fabric, project_id, spec, source, target, "home")
    stats["jobs"] = await _copy_tree(fabric, project_id, spec, source, target, "jobs")
    return stats


async def _copy_tree(fabric: NatsFabric, project_id: str, spec: dict[str, Any], source: str,
                     target: str, scope: str) -> dict[str, Any]:
    def on_target(name: str, opts: dict[str, Any]) -> Any:
        return fabric.call(target, "project.call", [project_id, spec, name, [opts]], _CHUNK_BUDGET_S,
                           _CHUNK_BUDGET_S + 30)
    pack = fabric.stream(source, "project.stream",
                         [project_id, spec, "native.archive.pack", [{"path": "", "scope": scope}],
                          STREAM_WINDOW], STREAM_WINDOW)
    unpack_id: str | None = None
    try:
        first = await anext(pack, None)
        if not isinstance(first, dict) or first.get("kind") != "dir":
            what = "home" if scope == "home" else "job records"
            raise MoveError(f"Error: the source host sent no copy of the project's {what}")
        # delete_missing: the target's tree becomes exactly the source's (overwrite_newer
        # too for job records: a record the target holds is never the project's newer one)
        begin = await on_target("native.archive.unpackBegin",
                                {"path": "", "kind": "dir", "scope": scope, "delete_missing": True,
                                 "overwrite_newer": scope == "jobs"})
        unpack_id = str(begin["id"])
        async for item in pack:
            data = item.get("data") if isinstance(item, dict) else None
            if not isinstance(data, str):
                raise MoveError("Error: the source host sent a malformed chunk")
            await on_target("native.archive.unpackChunk", {"id": unpack_id, "data": data})
        stats = await on_target("native.archive.unpackEnd", {"id": unpack_id})
        unpack_id = None
        return stats if isinstance(stats, dict) else {}
    finally:
        with contextlib.suppress(Exception):
            await pack.aclose()
        if unpack_id is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(on_target("native.archive.unpackAbort", {"id": unpack_id}), 15)


async def _discard(fabric: NatsFabric, target: str, project_id: str, reason: str) -> None:
    await fabric.call(target, "project.stop", [project_id, reason], None, _CONTROL_TIMEOUT_S)
    await fabric.call(target, "project.purge", [project_id], None, _CONTROL_TIMEOUT_S)
