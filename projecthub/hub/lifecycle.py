"""Project lifecycle on the hub: stopping idle projects, purging deleted ones.

Idle stop.  ``HubService`` notes each project's API activity in memory (a dict write per
call, never a store write) and counts its calls and streams in flight.  ``IdleStopper``
wakes every second; a running project with no call in flight whose last activity is older
than its ``idle_timeout_s`` (a per-project limit: server default 30 min, 0 = never) is
asked what else keeps it busy (``daemon.activity``): running async jobs, open Jupyter
sessions and terminals with a client attached count as activity until their own limits end
them (a detached terminal does not; it ends after its grace period).  If nothing does, the project
is stopped, which releases every process, its cgroups and its mounted image, and its state
says ``stopped`` with the reason.  The next call starts it again; a call that arrives while
the stop runs waits for it, then starts the project afresh.  Reading a project's state or
status is not activity (a client watching a project must not keep it alive).

Purging.  A deleted project's files (home, daemon state, disk image) stay for
``purge_after_s`` (``serve --purge-after``, default 7 days, so an operator can still copy
them out), then ``Purger`` removes them with its cgroups and run dir (``host/purge.py``) and
logs the bytes freed.  ``--purge-after 0`` purges at deletion.  When a start is refused
because the data disk is full, deleted projects are purged at once first: the grace
period is a courtesy, never a reason to refuse a live project (deleting and re-creating
filled projects could otherwise hold the disk for a week).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from ..errors import RemoteError
from ..host.sandbox import ProjectLimits
from ..store import StoreUnavailable

if TYPE_CHECKING:
    from .service import HubService

log = logging.getLogger("projecthub.hub.lifecycle")

TICK_S = 1.0            # how often idle deadlines are compared (in memory: cheap)
REFRESH_S = 10.0        # per-project idle_timeout_s re-read from the store (CLI changes)
RECHECK_S = 60.0        # a busy project (jobs, sessions) or a silent daemon is asked again after this
DEFAULT_PURGE_AFTER_S = 7 * 86400.0


class IdleStopper:
    def __init__(self, hub: "HubService") -> None:
        self.hub = hub
        self._timeouts: dict[str, float] = {}   # project -> idle_timeout_s (0 = never)
        self._refreshed = 0.0
        self._checking: set[str] = set()
        self._checks: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="idle-stop")

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._checks) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    def set_timeout(self, project_id: str, seconds: float) -> None:
        """A limit changed through the API: applies at once (the CLI's within REFRESH_S)."""
        self._timeouts[project_id] = seconds

    def reload_timeout(self, project_id: str) -> None:
        """Another hub changed the project's limits: re-read its timeout on the next tick."""
        self._timeouts.pop(project_id, None)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self.tick()
            except StoreUnavailable as exc:   # a shared database away: one line, no traceback
                log.warning("idle check failed: %s", exc.reason)
            except Exception:   # never dies: the next tick tries again
                log.warning("idle check failed", exc_info=True)

    async def tick(self) -> None:
        hub = self.hub
        now = time.monotonic()
        running = hub.host.running_project_ids()
        alive = set(running)
        for project_id in running:
            # first seen running (adopted after a restart, started by another path): its
            # idle time starts now
            hub.last_active.setdefault(project_id, now)
        for project_id in [p for p in hub.last_active if p not in alive and not hub.inflight.get(p)]:
            del hub.last_active[project_id]
        for project_id in [p for p in self._timeouts if p not in alive]:
            del self._timeouts[project_id]
        due_refresh = now - self._refreshed >= REFRESH_S
        unknown = [p for p in running if p not in self._timeouts]
        if due_refresh or unknown:
            await self._refresh(running if due_refresh else unknown)
            if due_refresh:
                self._refreshed = now
        default = hub.host.sandbox.config.defaults.idle_timeout_s
        for project_id in running:
            timeout = self._timeouts.get(project_id, default)
            if not timeout or project_id in self._checking or hub.inflight.get(project_id):
                continue
            if now - hub.last_active.get(project_id, now) < timeout:
                continue
            self._checking.add(project_id)
            task = asyncio.create_task(self._check(project_id, timeout), name=f"idle-check-{project_id}")
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)

    async def _refresh(self, project_ids: list[str]) -> None:
        defaults = self.hub.host.sandbox.config.defaults
        settings = await self.hub.db.project_settings(project_ids)
        for project_id in project_ids:
            overrides = (settings.get(project_id) or {}).get("limits") or {}
            timeout = defaults.idle_timeout_s
            if isinstance(overrides, dict) and "idle_timeout_s" in overrides:
                try:
                    timeout = ProjectLimits.merged(
                        defaults, {"idle_timeout_s": overrides["idle_timeout_s"]}).idle_timeout_s
                except ValueError:   # a hand-edited row: the server default applies
                    pass
            self._timeouts[project_id] = timeout

    async def _check(self, project_id: str, timeout: float) -> None:
        hub = self.hub
        seen = hub.last_active.get(project_id)
        try:
            try:
                info: dict[str, Any] | None = await hub.host.activity(project_id)
            except RemoteError as exc:
                if "unknown function" not in str(exc):
                    raise
                info = {}   # a daemon started by an older projecthub: only API calls count
            except Exception as exc:
                # no answer (overloaded by its own work?): never stop what we cannot see
                log.info("idle check of %s: daemon did not answer (%s); asking again later",
                         project_id, exc.__class__.__name__)
                self._postpone(project_id, seen, timeout)
                return
            if info is None or hub.last_active.get(project_id) != seen:
                return   # stopped meanwhile, or a call came in
            now = time.monotonic()
            if info.get("jobs") or info.get("sessions") or info.get("terminals"):
                self._postpone(project_id, seen, timeout)   # busy: ask again, do not stop
                return
            last = info.get("last_active")
            if isinstance(last, (int, float)) and not isinstance(last, bool):
                # e.g. a job that finished a minute ago: idle time starts there
                since = now - max(0.0, time.time() - float(last))
                if now - since < timeout:
                    hub.last_active[project_id] = max(seen or 0.0, since)
                    return
            idle_for = now - (seen if seen is not None else now)
            await hub.stop_idle(project_id, f"idle: no activity for {idle_for:.0f} s "
                                            f"(idle_timeout_s={timeout:g})")
        finally:
            self._checking.discard(project_id)

    def _postpone(self, project_id: str, seen: float | None, timeout: float) -> None:
        """Check again in min(timeout, RECHECK_S), unless activity came in meanwhile."""
        if self.hub.last_active.get(project_id) == seen:
            self.hub.last_active[project_id] = time.monotonic() - timeout + min(timeout, RECHECK_S)


class Purger:
    def __init__(self, hub: "HubService", purge_after_s: float = DEFAULT_PURGE_AFTER_S) -> None:
        self.hub = hub
        self.purge_after_s = purge_after_s
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="purge")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _run(self) -> None:
        # a quarter of the grace period between passes: a purge is at most that late
        interval = min(600.0, max(1.0, self.purge_after_s / 4))
        while True:
            try:
                await self.purge_due()
            except StoreUnavailable as exc:
                log.warning("purging deleted projects failed: %s", exc.reason)
            except Exception:
                log.warning("purging deleted projects failed", exc_info=True)
            await asyncio.sleep(interval)

    async def purge_due(self) -> int:
        """Purge every project deleted more than ``purge_after_s`` ago; how many."""
        before = datetime.now(timezone.utc) - timedelta(seconds=self.purge_after_s)
        rows = await self.hub.db.unpurged_deleted_projects(before)
        done = 0
        for row in rows:
            if await self.purge(row["project_id"], f"deleted more than {_duration(self.purge_after_s)} "
                                                   "ago") is not None:
                done += 1
        return done

    async def purge_early(self) -> bool:
        """The data disk is too full to start a project: purge every deleted project now.
        True if any was purged (the start is worth retrying)."""
        rows = await self.hub.db.unpurged_deleted_projects()
        freed = [await self.purge(row["project_id"], "the data disk is full") for row in rows]
        return any(f is not None for f in freed)

    async def purge(self, project_id: str, why: str) -> int | None:
        """Purge one deleted project; the bytes freed, None if it failed (logged, retried later)."""
        async with self._lock:
            project = await self.hub.db.get_project(project_id)
            if project is None or not project.get("deleted") or project.get("purged"):
                return None
            try:
                freed = await self.hub.host.purge(project_id)
            except Exception:
                log.exception("could not purge deleted project %s", project_id)
                return None
            await self.hub.db.delete_project_history(project_id)   # sync.history's copies of its files
            await self.hub.db.update_project(project_id, purged=datetime.now(timezone.utc))
        log.info("purged deleted project %s (%s): freed %d bytes (%.1f MiB) of home, state, disk "
                 "image and run dir", project_id, why, freed, freed / 2**20)
        return freed


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
