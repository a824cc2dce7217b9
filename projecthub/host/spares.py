"""Spare projects: sandboxes started ahead of ``create_project``, so a new project's first
call finds its daemon already running (cold start = a database write, not a ~150 ms
sandbox + interpreter start).

A *spare* is a project row in state ``spare`` (no users: nobody can see or address it)
with a running daemon under its own project id, uid and cgroup.  ``create_project`` claims
one: the row becomes the caller's new project, still reported as ``stopped``, and its daemon
is *parked*.  The first start/call of that project promotes the parked daemon in
microseconds.  A project that is never started keeps its parked daemon only while it is
among the newest ``max_parked``; older ones are stopped, so bulk creation never leaves a
daemon per project behind.  Anything that could make the pre-started sandbox differ from a
fresh one (limits changed before the first start) drops the parked daemon instead.

Spares are refilled one at a time in the background (never several boots at once on a
small machine), and never outlive the server: ``close()`` stops them and a restarted
server discards leftovers.

A spare also comes with its Jupyter machinery ready (``project/jupyter/warm.py``): once it
is in the pool, its daemon imports the Jupyter layer, starts the ``python3`` kernel's
zygote and pools one warm stateless kernel (~1-1.5 s of CPU, in the background: the spare
can be claimed meanwhile, its first Jupyter call then uses whatever is ready).  So a new
project's first ``jupyter_execute`` takes a warm kernel (~10-20 ms) instead of ~1 s.  That
costs a waiting spare ~60 MiB PSS more (the zygote and one kernel).  The daemon's idle
shrink (the pool and the zygote go away after ``jupyter_idle_s`` without a stateless call)
must not take this from a spare that waits longer than that for its project: the warm-up
*holds* its pool until the project is claimed (``daemon.claim``, sent when the new project
first starts, ``unpark``), and the idle window starts then.  A parked project that is never
started keeps the hold until its daemon is stopped (at most ``max_parked`` of them).

The warm-up belongs to the spare alone: its daemon starts it inside the spare's own
sandbox, as the spare's own uid and in its cgroup, and the project that claims the spare
is that very project id, uid and home.  Nothing of it is shared between projects.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from ..hub.db import AsyncStore
from ..store import StoreUnavailable

if TYPE_CHECKING:
    from .host import DaemonHandle

log = logging.getLogger("projecthub.host.spares")

RETRY_DELAYS_S = (1.0, 5.0, 30.0, 120.0)   # after failed spare starts: a broken sandbox cannot spin
# A spare is taken by a create_project that is usually followed at once by the new
# project's first calls: booting the replacement right then would take a core from them.
REFILL_DELAY_S = 1.0
# The stateless kernel whose machinery a spare warms up (CoCalc's clients name it; it is
# the project environment's ipykernel), and how long that may take on a busy machine.
# $PROJECTHUB_SPARE_JUPYTER names another kernelspec, or turns the warm-up off ("0"):
# a server whose users never run Jupyter saves the memory and CPU.
WARM_KERNEL = "python3"
WARM_TIMEOUT_S = 90.0


def warm_kernel_from_env() -> str | None:
    value = os.environ.get("PROJECTHUB_SPARE_JUPYTER", WARM_KERNEL).strip()
    return None if value.lower() in ("", "0", "off", "false", "no", "none") else value

Launch = Callable[[dict[str, Any]], Awaitable["DaemonHandle"]]
Stop = Callable[[str, "DaemonHandle | None"], Awaitable[None]]


class SparePool:
    def __init__(self, db: AsyncStore, data_dir: Path, launch: Launch, stop: Stop, *,
                 size: int = 1, max_parked: int | None = None,
                 warm_kernel: str | None = None) -> None:
        self.db = db
        self.data_dir = data_dir
        self.size = max(0, size)
        self.max_parked = max_parked if max_parked is not None else self.size + 1
        self._launch = launch
        self.warm_kernel = warm_kernel if warm_kernel is not None else warm_kernel_from_env()
        self._stop = stop
        self._ready: collections.deque[DaemonHandle] = collections.deque()
        self._parked: collections.OrderedDict[str, DaemonHandle] = collections.OrderedDict()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._warming: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------
    async def start(self, leftover_spare_ids: list[str]) -> None:
        """Discard spares a previous server left behind, then begin filling the pool."""
        for project_id in leftover_spare_ids:
            await self._discard(project_id, None)
        if self.size > 0:
            self._worker = asyncio.create_task(self._refill_loop(), name="spare-projects")
            self._wake.set()

    async def close(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker
        for task in list(self._warming):   # the spares go away: their warm-ups are moot
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for task in list(self._background):
            with contextlib.suppress(Exception):
                await task
        while self._ready:
            handle = self._ready.popleft()
            await self._discard(handle.project_id, handle)
        while self._parked:
            project_id, handle = self._parked.popitem(last=False)
            await self._stop(project_id, handle)   # the project stays, stopped

    # -- create_project ---------------------------------------------------------------
    def take(self) -> DaemonHandle | None:
        """A ready spare for a new project, or None (the caller creates one the usual way)."""
        asyncio.get_running_loop().call_later(REFILL_DELAY_S, self._wake.set)
        while self._ready:
            handle = self._ready.popleft()
            if not handle.client.closed:
                return handle
            self._later(self._discard(handle.project_id, handle))
        return None

    def give_back(self, handle: DaemonHandle) -> None:
        """The claim failed before the row changed (e.g. no such account): still a spare."""
        if self._closed:
            self._later(self._discard(handle.project_id, handle))
        else:
            self._ready.appendleft(handle)

    def drop(self, handle: DaemonHandle) -> None:
        self._later(self._discard(handle.project_id, handle))

    def park(self, handle: DaemonHandle) -> None:
        """``handle``'s spare is now a new, not yet started project."""
        self._parked[handle.project_id] = handle
        while len(self._parked) > self.max_parked:
            project_id, old = self._parked.popitem(last=False)
            self._later(self._stop(project_id, old))

    # -- the host's view of parked daemons ----------------------------------------------
    def unpark(self, project_id: str) -> DaemonHandle | None:
        """The parked daemon of ``project_id`` if it is alive (the project starts now)."""
        handle = self._parked.pop(project_id, None)
        if handle is not None and handle.client.closed:
            self._later(self._stop(project_id, handle))
            return None
        if handle is not None and self.warm_kernel:   # its warm-up's hold ends: its idle window starts
            self._later(_quietly(handle.client.call("daemon.claim", [], 5.0)))
        return handle

    def is_parked(self, project_id: str) -> bool:
        return project_id in self._parked

    # -- internals ----------------------------------------------------------------------
    def _later(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("spare project cleanup failed")
        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refill_loop(self) -> None:
        failures = 0
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            while not self._closed and len(self._ready) < self.size:
                try:
                    handle = await self._start_one()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    delay = RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S) - 1)]
                    failures += 1
                    if isinstance(exc, StoreUnavailable):   # a shared database away: one line
                        log.warning("could not start a spare project (%s); retrying in %.0f s",
                                    exc.reason, delay)
                    else:
                        log.exception("could not start a spare project; retrying in %.0f s", delay)
                    await asyncio.sleep(delay)
                    continue
                failures = 0
                if self._closed:
                    await self._discard(handle.project_id, handle)
                    return
                self._ready.append(handle)
                log.info("spare project %s ready", handle.project_id)
                if self.warm_kernel:
                    self._warm(handle, self.warm_kernel)

    async def _start_one(self) -> DaemonHandle:
        project_id = await self.db.create_spare_project()
        handle: DaemonHandle | None = None
        try:
            handle = await self._launch({"project_id": project_id, "settings": {}})
            # One throwaway exec loads the daemon's exec path (lazy imports, the first
            # pooled cgroup): otherwise the new project's first call pays for it.
            with contextlib.suppress(Exception):
                await handle.client.call("system.exec", [{"command": "true"}], 10.0)
            return handle
        except BaseException:   # also cancellation (server shutdown): leave nothing behind
            await asyncio.shield(self._discard(project_id, handle))
            raise

    def _warm(self, handle: DaemonHandle, kernel: str) -> None:
        """Warm the ready spare's Jupyter in the background (see the module docstring).  A
        failure (no such kernel in a custom environment, a slow machine) only means the
        first Jupyter call of its project is a cold one."""
        async def run() -> None:
            try:
                result = await asyncio.wait_for(
                    handle.client.call("daemon.warmJupyter", [{"kernel": kernel}], WARM_TIMEOUT_S),
                    WARM_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("spare project %s: no Jupyter warm-up (%s)", handle.project_id, exc)
                return
            if isinstance(result, dict) and result.get("warmed"):
                log.info("spare project %s: Jupyter warmed up (kernel %s)", handle.project_id, kernel)
                if handle in self._ready:
                    # The zygote and the pooled kernel took the exec groups the first warm-up
                    # exec left hot (a parked spawner thread): without this one more exec, the
                    # new project's first exec would spawn from a cold group (~13 ms more:
                    # cgroup v1 migrations, see host/sandbox/tracker.py ``_Spawner``).
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(handle.client.call("system.exec", [{"command": "true"}], 10.0),
                                               10.0)
            else:
                log.info("spare project %s: no Jupyter warm-up (%s)", handle.project_id,
                         result.get("reason") if isinstance(result, dict) else result)
        task = asyncio.get_running_loop().create_task(run())
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)

    async def _discard(self, project_id: str, handle: DaemonHandle | None) -> None:
        """Stop a spare and remove every trace of it: it never belonged to anybody."""
        await self._stop(project_id, handle)
        await asyncio.to_thread(remove_spare_dirs, self.data_dir, project_id)
        await self.db.discard_spare(project_id)


async def _quietly(call: Awaitable[Any]) -> None:
    """A notice to a daemon that may be stopping (a parked project stopped at once)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(call, 5.0)


def remove_spare_dirs(data_dir: Path, project_id: str) -> None:
    from .sandbox import disk
    # unmount first: rmtree must never walk into a mounted image (or leave its loop device)
    disk.remove(data_dir / "projects" / project_id)
    for path in (data_dir / "projects" / project_id, data_dir / "run" / project_id):
        shutil.rmtree(path, ignore_errors=True)
