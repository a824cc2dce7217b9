"""Process tracking: where an exec, job or kernel's processes live and how to kill them all.

Every user process the daemon starts belongs to one ``ProcessGroup``.  The group is the
unit of accounting (cpu, peak memory, pids) and of killing: ``kill_all`` must reach
descendants that called ``setsid`` or double-forked.  Backends:

* cgroup v1 / v2 (``projecthub.host.sandbox.cgroups``): a child cgroup per group;
* ``MarkerTracker`` (this module's fallback, ``projecthub.project.tracking_fallback``):
  the daemon is a child subreaper and tags each group's processes with an
  environment marker, so orphans re-parent to the daemon and can still be found.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypeVar

if TYPE_CHECKING:
    import subprocess

T = TypeVar("T")


def own_maxrss(ru: object) -> int:
    """A reaped child's ``ru_maxrss`` in bytes when it is the child's own peak, else 0.

    Linux starts a child's peak at its parent's: fork copies the mm's high-water mark, and
    an exec after vfork (how the daemon spawns) takes the mark of the mm it leaves, which is
    the daemon's.  So every command reports at least the daemon's own peak (20-40 MB).  A
    value above the daemon's peak now can only be the child's (the max of the two); one
    at or below it says nothing.  Call after the child was reaped."""
    child_kib = int(getattr(ru, "ru_maxrss", 0) or 0)
    if child_kib <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss:
        return 0
    return child_kib * 1024


def reap(pid: int, proc: subprocess.Popen[Any] | None, group: Any) -> tuple[int, Any] | None:
    """Reap the root ``pid`` of ``group`` if it exited: (wait status, rusage or None), or None
    while it still runs.  Tells ``proc`` it is reaped (so Popen.__del__ never waits on a
    recycled pid) and gives the rusage to the group when it keeps one."""
    try:
        reaped, status, rusage = os.wait4(pid, os.WNOHANG)
    except ChildProcessError:   # reaped by someone else (the tracker's orphan reaper)
        reaped, status, rusage = pid, 0, None
    if reaped == 0:
        return None
    if proc is not None:
        proc.returncode = os.waitstatus_to_exitcode(status)
    if rusage is not None and hasattr(group, "record_rusage"):
        group.record_rusage(rusage)
    return status, rusage


@dataclass
class GroupUsage:
    cpu_user_s: float = 0.0
    cpu_sys_s: float = 0.0
    max_rss_bytes: int = 0     # peak resident memory of the whole group (0 = unknown)
    rss_bytes: int = 0         # current resident memory of the whole group
    pids: int = 0              # processes currently alive in the group
    oom_killed: bool = False   # the kernel OOM killer fired inside this group
    # max_rss_bytes is the group's own peak, counted from when this group was taken (a cgroup
    # whose counters were reset for it).  False: a sample of live processes, or 0 (unknown).
    exact_peak: bool = False


class ProcessGroup(Protocol):
    name: str

    def spawn(self, start: Callable[[], T]) -> T:
        """Call ``start()`` (which forks, e.g. ``subprocess.Popen``) so every process it
        creates lands in this group.  Must not yield to the event loop."""

    def adopt(self, pid: int) -> None:
        """Move the already running, single-threaded process ``pid`` (not started through
        ``spawn``, e.g. forked by a kernel zygote) and its future children into this
        group.  Raises OSError when that is not possible."""

    def env_marker(self) -> dict[str, str]:
        """Extra environment variables the spawned process must carry (may be empty)."""

    def pids(self) -> list[int]:
        """Pids of every live process in the group."""

    def kill_all(self) -> None:
        """SIGKILL every process in the group, including setsid'd and re-parented ones."""

    def usage(self) -> GroupUsage:
        """Accounting for the group so far (works after the processes have exited)."""

    def close(self) -> None:
        """Kill what is left and release the group.  Idempotent."""


class ProcessTracker(Protocol):
    kind: str  # "cgroup-v1" | "cgroup-v2" | "marker"

    def new_group(self, name: str) -> ProcessGroup:
        """Create a fresh group; ``name`` is unique within the daemon (e.g. an exec id)."""
