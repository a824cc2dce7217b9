"""``MarkerTracker``: process groups without cgroups.

How a group finds its processes:

* The daemon is a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``), so a process
  that double-forks or calls ``setsid`` and loses its parent re-parents to the daemon
  instead of to init.  Every process of a project therefore stays in the daemon's
  process tree.
* Each group's root gets ``PROJECTHUB_GROUP=<name>`` in its environment; descendants
  inherit it.  A live root's whole subtree belongs to its group (tree membership is
  authoritative while the root lives, even for a child that cleared its environment);
  orphans that re-parented to the daemon are attributed by reading the marker from
  ``/proc/<pid>/environ``.

Known gap (cgroups close it): an orphan that both escaped its parent *and* exec'd with
a cleaned environment (``env -i``) carries no marker and cannot be attributed.

Zombie reaping: orphans that re-parent to the daemon become the daemon's children, so the
daemon must reap them.  A blanket ``waitpid(-1)`` would steal the exit status of children
someone in the daemon is waiting for (the exec engine, jupyter_client's ``Popen``), so the
reaper only reaps zombie children that are (a) not registered as *owned* (every
``group.spawn`` registers its root; other components can call ``own``) and (b) not in the
daemon's own session (a plain ``Popen`` without ``start_new_session`` stays there, so such
foreign children are never touched).

Everything here is synchronous and meant to run on the daemon's event-loop thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, TypeVar

from .tracking import GroupUsage, own_maxrss

T = TypeVar("T")

MARKER_ENV = "PROJECTHUB_GROUP"
_PR_SET_CHILD_SUBREAPER = 36
_KILL_ROUNDS = 50          # bounded kill loop: a fork bomb cannot keep us here forever
_KILL_BUDGET_S = 0.5


def become_subreaper() -> None:
    """Make the calling process a child subreaper (orphaned descendants re-parent to it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


# ---------------------------------------------------------------- /proc helpers

@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int
    starttime: int   # clock ticks since boot: with pid, identifies one process incarnation


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses; everything after the last ')' is fixed.
    rest = raw[raw.rfind(b")") + 2:].split()
    return ProcStat(pid, rest[0].decode(), int(rest[1]), int(rest[2]), int(rest[3]), int(rest[19]))


def children_of(pid: int) -> list[int]:
    """Direct children of every thread of ``pid`` (orphans re-parent to *a thread*)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return out


def subtree(pid: int) -> list[int]:
    """``pid`` and all its descendants (breadth first)."""
    seen = [pid]
    i = 0
    while i < len(seen):
        seen.extend(children_of(seen[i]))
        i += 1
    return seen


def read_marker(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    key = MARKER_ENV.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(key):
            return item[len(key):].decode(errors="replace")
    return None


def is_descendant(pid: int, ancestor: int) -> bool:
    """True when ``pid`` lives in ``ancestor``'s process tree (and is not ``ancestor``)."""
    cur = pid
    for _ in range(4096):
        st = read_stat(cur)
        if st is None or st.ppid <= 1:
            return False
        if st.ppid == ancestor:
            return True
        cur = st.ppid
    return False


def kill_exact(st: ProcStat, sig: int = signal.SIGKILL) -> None:
    """Signal the process incarnation ``st`` describes, never a recycled pid."""
    try:
        fd = os.pidfd_open(st.pid)
    except OSError:
        return
    try:
        now = read_stat(st.pid)
        if now is not None and now.starttime == st.starttime:
            signal.pidfd_send_signal(fd, sig)
    except OSError:
        pass
    finally:
        os.close(fd)


def _alive(st: ProcStat | None) -> bool:
    return st is not None and st.state not in ("Z", "X", "x")


# ---------------------------------------------------------------- tracker

class MarkerTracker:
    kind = "marker"

    def __init__(self, *, subreaper: bool = True) -> None:
        if subreaper:
            become_subreaper()
        self._daemon = os.getpid()
        self._session = os.getsid(0)
        self._owned: dict[int, str | None] = {}     # pid -> group name (None: foreign owner)
        # pid -> (starttime, group): processes moved into a group after they started
        # (kernels a zygote forked); they and their subtrees leave their ancestors' group.
        self._adopted: dict[int, tuple[int, str]] = {}
        self._groups: dict[str, MarkerGroup] = {}
        self._reaper_task: asyncio.Task[None] | None = None
        self._reaper_loop: asyncio.AbstractEventLoop | None = None

    # --- protocol
    def new_group(self, name: str) -> "MarkerGroup":
        self._ensure_reaper()
        if name in self._groups:
            raise ValueError(f"process group {name!r} already exists")
        group = MarkerGroup(self, name)
        self._groups[name] = group
        return group

    # --- ownership (who may reap which child)
    def own(self, pid: int, group: str | None = None) -> None:
        """Declare that someone in the daemon will wait for ``pid``: the reaper leaves it."""
        self._owned[pid] = group

    def disown(self, pid: int) -> None:
        self._owned.pop(pid, None)

    # --- scanning
    def group_pids(self, name: str) -> list[int]:
        """Live pids of group ``name`` among the daemon's descendants."""
        return [st.pid for st in self._group_stats(name)]

    def _adopter(self, pid: int) -> str | None:
        entry = self._adopted.get(pid)
        if entry is None:
            return None
        st = read_stat(pid)
        if st is None or st.starttime != entry[0]:
            del self._adopted[pid]   # exited (and maybe recycled)
            return None
        return entry[1]

    def _subtree(self, pid: int, name: str) -> list[int]:
        """``subtree`` minus the subtrees of processes adopted by other groups."""
        if not self._adopted:
            return subtree(pid)
        seen = [pid]
        i = 0
        while i < len(seen):
            for c in children_of(seen[i]):
                owner = self._adopter(c)
                if owner is None or owner == name:
                    seen.append(c)
            i += 1
        return seen

    def _group_stats(self, name: str) -> list[ProcStat]:
        found: list[ProcStat] = []
        roots: list[int] = []
        for child in children_of(self._daemon):
            adopter = self._adopter(child) if self._adopted else None
            if adopter is not None:
                if adopter == name:
                    roots.append(child)           # adopted, then re-parented to us
                continue
            if child in self._owned:
                if self._owned[child] != name:
                    continue                      # another group's (or a foreign) root
                roots.append(child)               # a live root: its tree is the group
            elif read_marker(child) == name:
                roots.append(child)               # an orphan carrying our marker
        for pid, (_start, owner) in list(self._adopted.items()):
            if owner == name and pid not in roots and self._adopter(pid) == name:
                roots.append(pid)                 # adopted, still below its old parent
        for root in roots:
            members = self._subtree(root, name)
            for pid in members:
                st = read_stat(pid)
                if _alive(st):
                    found.append(st)  # type: ignore[arg-type]
        return found

    def all_pids(self) -> list[int]:
        """Every live descendant of the daemon: the processes of this project."""
        out: list[int] = []
        for child in children_of(self._daemon):
            out.extend(p for p in subtree(child) if _alive(read_stat(p)))
        return out

    @staticmethod
    def find_marked(names: Iterable[str]) -> dict[str, list[int]]:
        """Scan *all* visible processes for markers (used once at daemon start, to find
        processes of jobs whose daemon died: they are no longer our descendants)."""
        wanted = set(names)
        found: dict[str, list[int]] = {}
        if not wanted:
            return found
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                marker = read_marker(int(entry))
                if marker in wanted:
                    found.setdefault(marker, []).append(int(entry))
        return found

    # --- reaping
    def reap_orphans(self) -> int:
        """Reap zombie children nobody in the daemon waits for.  Returns how many."""
        reaped = 0
        for pid in children_of(self._daemon):
            if pid in self._owned:
                continue
            st = read_stat(pid)
            if st is None or st.state != "Z" or st.session == self._session:
                continue
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped += 1
            except ChildProcessError:
                pass
        return reaped

    def _ensure_reaper(self) -> None:
        """Install the reaper on the running loop the first time a group is made there
        (so a daemon that only constructs the tracker still reaps its orphans)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._reaper_loop is not loop:
            self.install_reaper(loop)

    def install_reaper(self, loop: asyncio.AbstractEventLoop | None = None,
                       interval_s: float = 2.0) -> None:
        """Reap orphans on SIGCHLD (event-driven) when running on the main thread,
        otherwise from a low-frequency timer (signal handlers need the main thread)."""
        loop = loop or asyncio.get_running_loop()
        self._reaper_loop = loop
        if threading.current_thread() is threading.main_thread():
            try:
                loop.add_signal_handler(signal.SIGCHLD, self.reap_orphans)
                return
            except (NotImplementedError, RuntimeError, ValueError):
                pass   # not a unix selector loop: fall back to the timer
        if self._reaper_task is None or self._reaper_task.done():
            async def periodic() -> None:
                while True:
                    await asyncio.sleep(interval_s)
                    self.reap_orphans()
            self._reaper_task = loop.create_task(periodic())

    def _forget(self, group: "MarkerGroup") -> None:
        self._groups.pop(group.name, None)
        for pid in group.adopted:
            if self._adopted.get(pid, (0, ""))[1] == group.name:
                del self._adopted[pid]
        for pid in group.roots:
            if self._owned.get(pid) == group.name:
                del self._owned[pid]


@dataclass
class MarkerGroup:
    tracker: MarkerTracker
    name: str
    roots: list[int] = field(default_factory=list)
    adopted: list[int] = field(default_factory=list)
    closed: bool = False
    _drained: bool = False
    _ru_user: float = 0.0
    _ru_sys: float = 0.0
    _ru_maxrss: int = 0
    _peak_rss: int = 0

    def spawn(self, start: Callable[[], T]) -> T:
        self._drained = False
        proc = start()
        pid = getattr(proc, "pid", None)
        if isinstance(pid, int):
            self.roots.append(pid)
            self.tracker.own(pid, self.name)
        return proc

    def adopt(self, pid: int) -> None:
        """Track ``pid`` (e.g. a kernel forked by a zygote in another group) here.  Its
        /proc environ still shows its parent's marker, so membership is explicit."""
        st = read_stat(pid)
        if not _alive(st):
            raise ProcessLookupError(pid)
        self._drained = False
        self.adopted.append(pid)
        self.tracker._adopted[pid] = (st.starttime, self.name)  # type: ignore[union-attr]

    def env_marker(self) -> dict[str, str]:
        return {MARKER_ENV: self.name}

    def pids(self) -> list[int]:
        return self.tracker.group_pids(self.name)

    def kill_all(self) -> None:
        if self._drained:
            return
        # The roots lead their own process groups: one killpg reaches every member that
        # did not change its process group, before the (costlier) tree scan.
        for root in self.roots + self.adopted:
            try:
                os.killpg(root, signal.SIGKILL)
            except OSError:
                pass
        deadline = time.monotonic() + _KILL_BUDGET_S
        killed = False
        for _ in range(_KILL_ROUNDS):
            stats = self.tracker._group_stats(self.name)
            if not stats:
                # No live member is left, so nobody can fork a new one: the group stays
                # empty, and later kill_all/usage/close calls need no scan.
                self._drained = True
                break
            for st in stats:
                kill_exact(st)
            killed = True
            if time.monotonic() > deadline:
                break
            time.sleep(0.001)   # let SIGKILL land before re-scanning (bounded)
        if killed:
            self.tracker.reap_orphans()

    def record_rusage(self, ru: "os.struct_rusage | object") -> None:
        """Called by whoever reaped a root (``os.wait4``): its rusage covers the root and
        every descendant it waited for, which is the group's cpu once it has exited.  Its
        peak only counts above the daemon's own (``own_maxrss``); below that the peak is
        what ``usage`` sampled (0 for a command that ended before any sample)."""
        self._ru_user += float(getattr(ru, "ru_utime", 0.0))
        self._ru_sys += float(getattr(ru, "ru_stime", 0.0))
        self._ru_maxrss = max(self._ru_maxrss, own_maxrss(ru))

    def usage(self) -> GroupUsage:
        user, sys_, rss = self._ru_user, self._ru_sys, 0
        pids = self.pids() if not (self.closed or self._drained) else []
        if pids:
            import psutil   # on first use: the daemon's start (exec.py imports this module) skips it
        for pid in pids:
            try:
                p = psutil.Process(pid)
                with p.oneshot():
                    t = p.cpu_times()
                    rss += p.memory_info().rss
                user += t.user + t.children_user
                sys_ += t.system + t.children_system
            except psutil.Error:
                continue
        self._peak_rss = max(self._peak_rss, rss)
        return GroupUsage(cpu_user_s=user, cpu_sys_s=sys_,
                          max_rss_bytes=max(self._ru_maxrss, self._peak_rss),
                          rss_bytes=rss, pids=len(pids))

    def close(self) -> None:
        if self.closed:
            return
        self.kill_all()
        self.closed = True
        self.tracker._forget(self)
