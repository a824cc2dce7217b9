"""Daemon-side ProcessTracker on cgroups: one child group per exec/kernel.

Runs INSIDE the sandbox as the project uid.  The host made the project's groups and
a fixed pool of exec groups, all root's, and handed us descriptors it opened as root
for the few files we write (see ``cgroups.py`` for why: user code has our uid, so no
file may be writable for it); ``PROJECTHUB_CGROUPS`` says which descriptor is which.
Every write goes through ``FdTable`` -- never an open by path, which would fail --
and a process cannot leave its exec group: the group is the unit of killing, so
setsid, double forks and renames do not help it either.

Joining: v1 lets single threads move, so ``spawn`` moves only the calling thread
into the child group, lets ``start()`` fork on the fast vfork/posix_spawn path
(children inherit the forking thread's groups) and moves the thread back
(+0.07-0.17 ms, baselines §2) -- no ``preexec_fn``.  v2 only moves whole
processes in domain groups, so the whole daemon process hops into the child
group for the duration of ``start()`` under a lock.

Keeping the daemon alive (the security suite's memory and fork bombs found it was
the first OOM victim: a ~30 MB python beats a swarm of 12 MB allocators, and a
fork bomb could take every pid the daemon needs for its own threads):

* every child group gets sub-limits below the project's: ``pids.max`` = the
  user's limit (the project group's minus ``PIDS_HEADROOM``, which is left for the
  daemon), ``memory`` = the project's limit minus a reserve for the daemon (its
  current charge plus a margin, at most half the limit).  One exec's bomb then
  hits its own group's limit first, and the OOM killer only looks inside it.
* for project-wide OOMs (several groups together), children are born with
  ``oom_score_adj`` = ``CHILD_OOM_SCORE_ADJ``: the daemon raises its own value
  just around ``start()`` (children inherit it from the first instruction; an
  unprivileged process may always go back down to its ``oom_score_adj_min``,
  which the host pins to 0 at daemon start) so user code is always chosen before
  the daemon.  User code can lower itself back to 0 at most -- never below the
  daemon -- so only a project sabotaging itself could still make its daemon the
  victim, and the host restarts a dead daemon on the next call.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from typing import Callable, TypeVar

from projecthub.project.tracking import GroupUsage

from .cgroups import (PIDS_HEADROOM, V1_GROUP_CONTROLLERS, kill_groups, procs_of, read_int,
                      read_int_kept_open, read_text, read_text_kept_open, slot_name)

T = TypeVar("T")
ENV_VAR = "PROJECTHUB_CGROUPS"


class FdTable:
    """The descriptors the host opened for us, by the path of the file each one is.

    ``write`` is the only way this module changes a control file: one write() per value
    (cgroup files act on each write call)."""

    def __init__(self, fds: dict[str, int] | None = None):
        self.fds: dict[str, int] = dict(fds or {})

    def has(self, path: str) -> bool:
        return path in self.fds

    def write(self, path: str, value: str) -> None:
        fd = self.fds.get(path)
        if fd is None:
            raise PermissionError(13, "no descriptor from the host for this cgroup file", path)
        os.write(fd, value.encode())

    def fd(self, path: str) -> int | None:
        return self.fds.get(path)


# The process's table (tracker_for_daemon fills it); tests may give a group their own.
FDS = FdTable()


def _write(path: str, value: str) -> None:
    FDS.write(path, value)


# Memory the daemon keeps out of reach of any one child group: its own charge plus
# this margin, at least DAEMON_RESERVE_MIN, at most half the project's limit.
DAEMON_RESERVE_MARGIN = 16 * 2**20
DAEMON_RESERVE_MIN = 32 * 2**20
CHILD_OOM_SCORE_ADJ = 500
_UNLIMITED_V1 = 2**62  # memory.limit_in_bytes reads back as ~2**63 - 4096 when unlimited


def child_memory_limit(project_limit: int | None, daemon_charge: int) -> int | None:
    """A child group's memory limit: the project's minus the daemon's reserve."""
    if project_limit is None or project_limit <= 0 or project_limit >= _UNLIMITED_V1:
        return None
    reserve = max(DAEMON_RESERVE_MIN, daemon_charge + DAEMON_RESERVE_MARGIN)
    return project_limit - min(reserve, project_limit // 2)


def child_pids_limit(project_max: str | None) -> int | None:
    text = (project_max or "").strip()
    if not text.isdigit():
        return None
    return max(1, int(text) - PIDS_HEADROOM)


class _OomBias:
    """Raises the daemon's oom_score_adj while (possibly concurrent) spawns run, so
    children inherit CHILD_OOM_SCORE_ADJ; back to the baseline when the last ends.
    The file stays open (two writes per exec instead of two open/write/close); a forked
    child forgets the descriptor, which names its parent's /proc entry."""

    _lock = threading.Lock()
    _depth = 0
    _baseline: str | None = None
    _path = "/proc/self/oom_score_adj"
    _fd: int | None = None

    @classmethod
    def _write(cls, value: str) -> None:
        if cls._fd is None:
            cls._fd = os.open(cls._path, os.O_WRONLY | os.O_CLOEXEC)
        os.pwrite(cls._fd, value.encode(), 0)

    @classmethod
    def prepare(cls) -> None:
        """Open the file and read the baseline now: the daemon makes itself non-dumpable
        after start-up, and then /proc/self files are root's (no more opens for writing)."""
        with cls._lock:
            try:
                if cls._baseline is None:
                    cls._baseline = (read_text(cls._path) or "0").strip()
                if cls._fd is None:
                    cls._fd = os.open(cls._path, os.O_WRONLY | os.O_CLOEXEC)
            except OSError:
                pass

    @classmethod
    def _forget_in_child(cls) -> None:
        cls._fd = None

    @classmethod
    def enter(cls) -> None:
        with cls._lock:
            if cls._depth == 0:
                try:
                    if cls._baseline is None:
                        cls._baseline = (read_text(cls._path) or "0").strip()
                    if int(cls._baseline) < CHILD_OOM_SCORE_ADJ:
                        cls._write(str(CHILD_OOM_SCORE_ADJ))
                except (OSError, ValueError):
                    pass
            cls._depth += 1

    @classmethod
    def leave(cls) -> None:
        with cls._lock:
            cls._depth -= 1
            if cls._depth == 0 and cls._baseline is not None:
                try:
                    cls._write(cls._baseline)
                except OSError:
                    pass


os.register_at_fork(after_in_child=_OomBias._forget_in_child)


def _try_write(path: str, value: str) -> None:
    try:
        _write(path, value)
    except OSError:
        pass  # a sub-limit is protection for the daemon, never a reason to fail an exec


def _given_back(name: str) -> OSError:
    """What spawn/adopt raise on a closed group: its slot may hold another command now."""
    return OSError(errno.EBADF, f"process group {name!r} was closed and given back")


def _read_int_through(path: str) -> int:
    """A counter the host opened read-write for us (``cgroups._READ_WRITE``): one pread
    on its descriptor, which regenerates the value; by path when there is none."""
    fd = FDS.fd(path)
    if fd is not None:
        try:
            return int(os.pread(fd, 64, 0))
        except (OSError, ValueError):
            pass   # a write-only descriptor: read it by path
    return read_int(path)


# memory.stat is the costliest control file to read (the kernel sums every counter
# over the subtree) and the daemon's charge only feeds a reserve with a 16 MiB margin:
# read it at most this often instead of on every exec.
CHARGE_TTL_S = 1.0
_charges: dict[str, tuple[float, int]] = {}


def _v1_local_charge(memory_dir: str) -> int:
    """Bytes charged to the project group itself (the daemon), not to its children."""
    now = time.monotonic()
    cached = _charges.get(memory_dir)
    if cached is not None and now - cached[0] < CHARGE_TTL_S:
        return cached[1]
    charge = _field(read_text(os.path.join(memory_dir, "memory.stat")), "rss")
    _charges[memory_dir] = (now, charge)
    return charge


class _Spawner:
    """A daemon thread parked in one pooled group's cgroups, which runs that group's spawns.

    Why: in cgroup v1 every migration (a write to ``tasks``) takes the global
    cgroup_threadgroup_rwsem for writing, and the first writer after a quiet spell waits
    for an RCU grace period: ~13 ms here, on every exec that follows an idle moment (a
    thread-join spawn moves the spawning thread in and out).  A thread that already sits
    in the group spawns without migrating; it moves itself in once, in the background.
    In v1 memory is charged to the process's mm owner and the OOM killer only looks at
    thread-group leaders, so the parked thread adds no charge and is never a victim."""

    def __init__(self, dirs: dict[str, str]):
        self._dirs = dirs
        # Hand-off without a queue or an Event: ``_go`` is released to give the parked
        # thread one spawn, ``_done`` to hand the result back (two futex wake-ups per spawn).
        self._go = threading.Lock()
        self._go.acquire()
        self._done = threading.Lock()
        self._done.acquire()
        self._calls = threading.Lock()   # one spawn at a time (kernels spawn from threads)
        self._start: Callable[[], object] | None = None
        self._result: tuple[bool, object] = (False, None)
        self._stopping = False
        self.ready = False          # moved into every controller's group
        self._thread = threading.Thread(target=self._run, name="cgroup-spawner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tid = str(threading.get_native_id())
        try:
            for d in self._dirs.values():
                _write(os.path.join(d, "tasks"), tid)
            self.ready = True
        except OSError:
            return   # stays unready: spawns keep the thread-join path
        while True:
            self._go.acquire()
            if self._stopping:
                return
            start, self._start = self._start, None
            try:
                self._result = (True, start())   # type: ignore[misc]
            except BaseException as exc:  # handed back to the caller
                self._result = (False, exc)
            self._done.release()

    def call(self, start: Callable[[], T]) -> T:
        with self._calls:
            self._start = start
            self._go.release()
            self._done.acquire()
            (ok, value), self._result = self._result, (False, None)
        if ok:
            return value   # type: ignore[return-value]
        raise value   # type: ignore[misc]

    def stop(self) -> None:
        self._stopping = True
        self._go.release()
        self._thread.join(2.0)


class _V1Slot:
    """One exec group of the host's pool (see ``V1Pool``): its directory per controller."""

    __slots__ = ("dirs", "written", "spawner", "procs", "pids_current", "_pids_current_fd",
                 "oom_base", "mem_base", "peak_reset", "cpu_reset", "_max_usage")

    def __init__(self, dirs: dict[str, str]):
        self.dirs = dirs
        self.written: dict[str, str] = {}   # sub-limit file -> value last written
        self.spawner: _Spawner | None = None
        # (group dir, its cgroup.procs) per controller: checked at the end of every exec
        self.procs = tuple((d, os.path.join(d, "cgroup.procs")) for d in dirs.values())
        self.pids_current = os.path.join(dirs["pids"], "pids.current") if "pids" in dirs else None
        self._pids_current_fd: int | None = None
        self.oom_base = -1   # memory.oom_control's oom_kill when the slot was last given back
        # The group's charge when its peak was last reset: what the command before left
        # (page cache, kernel objects, both capped by _tidy), not the next command's.
        self.mem_base = 0
        # Peak reset for the current command; cpu counters reset at least once by this daemon
        # (a group the host kept from an earlier daemon carries that daemon's counters).
        self.peak_reset = False
        self.cpu_reset = False
        self._max_usage = (os.path.join(dirs["memory"], "memory.max_usage_in_bytes")
                           if "memory" in dirs else None)

    def reset_cpu(self) -> None:
        """Zero cpuacct's counters (usage, usage_user, usage_sys; raises OSError)."""
        if "cpuacct" in self.dirs:
            _write(os.path.join(self.dirs["cpuacct"], "cpuacct.usage"), "0")
        self.cpu_reset = True

    def reset_peak(self) -> None:
        """Start the peak over for the command about to run.  Writing 0 sets it to the
        group's charge now, which becomes ``mem_base``.  Done when the group is taken, not
        when it is given back: what a command leaves behind (kernel objects freed after
        RCU, a few hundred KiB) drains for a while after it ends, and a baseline read
        then would hide the next command's first few hundred KiB."""
        self.peak_reset = False
        if self._max_usage is not None:
            _write(self._max_usage, "0")
            self.mem_base = _read_int_through(self._max_usage)
            self.peak_reset = True

    def peak(self) -> int:
        """Peak charge since the last reset, above ``mem_base``."""
        if self._max_usage is None:
            return 0
        return max(0, _read_int_through(self._max_usage) - self.mem_base)

    def read_pids_current(self) -> int:
        """pids.current, -1 if unreadable.  Read at the end of every exec, so through a
        descriptor kept open while the slot lives (pread regenerates the value)."""
        try:
            if self._pids_current_fd is None:
                assert self.pids_current is not None
                self._pids_current_fd = os.open(self.pids_current, os.O_RDONLY | os.O_CLOEXEC)
            return int(os.pread(self._pids_current_fd, 64, 0))
        except (OSError, ValueError):
            return -1

    def oom_kills(self) -> int:
        mem = self.dirs.get("memory")
        return _field(read_text(os.path.join(mem, "memory.oom_control")), "oom_kill") if mem else 0


class V1Pool:
    """The host's exec groups, reused (the project cannot mkdir or rmdir groups: the
    pool is fixed at ``cgroups.POOL_SLOTS`` per project).

    A group goes back once it is verifiably empty (``V1Group.close``); giving it back
    resets its cpu counters, and an OOM kill is counted from the group's oom_kill total
    at that moment.  Leftover page cache is reclaimed (``memory.force_empty``), and
    taking the group resets its peak: the next exec's peak is what it adds to what
    little stays charged (``_V1Slot.reset_peak``).

    Hot groups keep a parked spawner thread (``_Spawner``), at most ``SPAWNERS`` of
    them, so a burst of concurrent execs keeps finding groups that spawn without a
    migration (a thread-join spawn costs 8 migrations on the event loop).  While more
    than ``KEEP`` spawners exist a janitor watches: once no burst needed more than
    ``KEEP`` groups for ``IDLE_S`` it stops the extra (coldest) ones, so an idle daemon
    keeps at most ``KEEP`` parked threads."""

    SPAWNERS = 64
    KEEP = 8
    IDLE_S = 30.0
    MAX_CHARGE = 2**20   # leftover pages (cache, anon) a reused group may hold
    MAX_KMEM = 4 * 2**20  # leftover kernel memory (see V1Group._only_kernel_noise)

    def __init__(self, slots: list[_V1Slot] | None = None) -> None:
        self.size = len(slots or [])
        self._free: list[_V1Slot] = list(reversed(slots or []))   # a stack: the hottest on top
        self._lock = threading.Lock()
        self._in_use = 0
        self._spawners = 0
        self._busy_at = 0.0               # last take() that left more than KEEP in use
        self._janitor: threading.Thread | None = None

    def take(self) -> _V1Slot | None:
        with self._lock:
            if not self._free:
                return None
            self._in_use += 1
            if self._in_use > self.KEEP:
                self._busy_at = time.monotonic()
            return self._free.pop()

    def lose(self, slot: _V1Slot) -> None:
        """``slot`` cannot be used again (processes in it survived SIGKILL)."""
        with self._lock:
            self._in_use = max(0, self._in_use - 1)
            if slot.spawner is not None:
                self._spawners -= 1
        if slot.spawner is not None:
            slot.spawner.stop()
            slot.spawner = None

    def give(self, slot: _V1Slot) -> bool:
        """Keep ``slot`` for the next exec (True), or refuse it (False: its counters
        could not be reset; the caller loses it).  The cpu counters are reset here rather
        than in take(): a blocking exec gives its group back after its reply
        (exec._run), off the next exec's path.  The peak cannot wait (``reset_peak``)."""
        try:
            slot.reset_cpu()
        except OSError:
            self.lose(slot)
            return False
        janitor: threading.Thread | None = None
        spawner = False
        with self._lock:
            self._in_use = max(0, self._in_use - 1)
            self._free.append(slot)
            if slot.spawner is None and self._spawners < self.SPAWNERS:
                self._spawners += 1
                spawner = True
            if self._spawners > self.KEEP and self._janitor is None:
                janitor = self._janitor = threading.Thread(
                    target=self._retire_extras, name="cgroup-pool-janitor", daemon=True)
        if spawner:
            slot.spawner = _Spawner(slot.dirs)
        if janitor is not None:
            janitor.start()
        return True

    def _retire_extras(self) -> None:
        """Janitor thread: wait until no burst needed more than KEEP groups for IDLE_S,
        then stop the spawners of all but the KEEP hottest free groups, and end."""
        while True:
            time.sleep(self.IDLE_S / 4)
            with self._lock:
                if self._spawners > self.KEEP and time.monotonic() - self._busy_at <= self.IDLE_S:
                    continue
                retired = []
                kept = 0
                for slot in reversed(self._free):   # hottest first
                    if slot.spawner is None:
                        continue
                    if kept < self.KEEP:
                        kept += 1
                        continue
                    retired.append(slot.spawner)
                    slot.spawner = None
                self._spawners -= len(retired)
                self._janitor = None
            for spawner in retired:
                spawner.stop()
            return


class V1Group:
    def __init__(self, name: str, parents: dict[str, str], pool: V1Pool):
        self.name = name
        parents = {c: p for c, p in parents.items() if c in V1_GROUP_CONTROLLERS}
        self._parents = parents
        self._pool = pool
        self._closed = False
        self._verified_empty = False   # kill_all found nothing, and nothing spawned since
        self._oom_seen = False
        self._charge = 0
        self._final_usage = False      # usage() read after the group was verified empty
        slot = pool.take()
        if slot is None:
            raise OSError(errno.EAGAIN, "too many processes running at once in this project: "
                          f"all {pool.size} of its process groups are in use")
        if slot.oom_base < 0:
            slot.oom_base = slot.oom_kills()
        try:
            if not slot.cpu_reset:   # first use by this daemon (give() resets it after that)
                slot.reset_cpu()
            slot.reset_peak()
        except OSError:
            pass   # usage() then says its peak is not exact (peak_reset)
        self._slot = slot
        self.dirs = slot.dirs
        self._last_usage: GroupUsage | None = None
        try:
            self._sub_limits()
        except BaseException:
            pool.give(slot)
            raise

    def _write_limit(self, path: str, value: str) -> None:
        if self._slot.written.get(path) != value:
            _try_write(path, value)
            self._slot.written[path] = value

    def _sub_limits(self) -> None:
        if "pids" in self.dirs:
            n = child_pids_limit(read_text_kept_open(os.path.join(self._parents["pids"], "pids.max")))
            if n is not None:
                if self._slot.spawner is not None:
                    n += 1   # the parked spawner thread counts as a task of the group
                self._write_limit(os.path.join(self.dirs["pids"], "pids.max"), str(n))
        if "memory" in self.dirs:
            parent = self._parents["memory"]
            limit = child_memory_limit(read_int_kept_open(os.path.join(parent, "memory.limit_in_bytes"), -1),
                                       _v1_local_charge(parent))
            if limit is not None:
                d = self.dirs["memory"]
                mem = os.path.join(d, "memory.limit_in_bytes")
                memsw = os.path.join(d, "memory.memsw.limit_in_bytes")
                if self._slot.written.get(mem) != str(limit):
                    # memory first (memsw is still unlimited), then memsw (must stay >= memory);
                    # a reused group may hold an older memsw below the new value: raise it first
                    has_memsw = FDS.has(memsw)
                    if has_memsw and mem in self._slot.written and int(self._slot.written[mem]) < limit:
                        _try_write(memsw, str(limit))
                    _try_write(mem, str(limit))
                    if has_memsw:
                        _try_write(memsw, str(limit))
                    self._slot.written[mem] = str(limit)

    def spawn(self, start: Callable[[], T]) -> T:
        if self._closed:
            raise _given_back(self.name)
        self._verified_empty = False
        spawner = self._slot.spawner
        if spawner is not None and spawner.ready:
            _OomBias.enter()
            try:
                return spawner.call(start)
            finally:
                _OomBias.leave()
        tid = str(threading.get_native_id())
        moved: list[str] = []
        _OomBias.enter()
        try:
            for ctrl, d in self.dirs.items():
                _write(os.path.join(d, "tasks"), tid)
                moved.append(ctrl)
            return start()
        finally:
            for ctrl in moved:
                _write(os.path.join(self._parents[ctrl], "tasks"), tid)
            _OomBias.leave()

    def adopt(self, pid: int) -> None:
        """Move a running process in (a kernel forked by a zygote): v1 moves a whole
        thread group through ``cgroup.procs``, with the host's descriptor."""
        if self._closed:
            raise _given_back(self.name)
        self._verified_empty = False
        for d in self.dirs.values():
            _write(os.path.join(d, "cgroup.procs"), str(pid))

    def env_marker(self) -> dict[str, str]:
        return {}

    def pids(self) -> list[int]:
        if self._verified_empty:
            return []
        d = self.dirs.get("pids") or self.dirs.get("memory") or next(iter(self.dirs.values()))
        me = os.getpid()   # a parked spawner thread (or a spawn in progress) lists the daemon
        return sorted(p for p in procs_of(d) if p != me)

    def _empty_now(self) -> bool:
        """No task in any controller's group and no sub-group (nlink 2 on cgroupfs)."""
        me = os.getpid()
        for d, procs in self._slot.procs:
            try:
                if os.stat(d).st_nlink > 2:
                    return False
            except FileNotFoundError:
                continue
            text = read_text(procs)
            if text and any(int(x) != me for x in text.split()):
                return False
        return True

    def kill_all(self) -> None:
        if self._verified_empty:
            return
        if self._empty_now():   # the common end of an exec: skip the freezer dance
            self._verified_empty = True
            return
        kill_groups(self.dirs.values(), freezer_dir=self.dirs.get("freezer"), write=_write)
        self._verified_empty = True

    def kill_all_but_migrants(self) -> None:
        """``kill_all`` for an exec that is answered before its group is released
        (``close`` then runs the complete ``kill_all``): one read of ``pids.current``
        -- every task in this pids group -- instead of a stat and a cgroup.procs read
        per controller.  No process can leave the group (the project cannot write any
        cgroup file), so a count equal to the parked spawner means empty."""
        path = self._slot.pids_current
        if path is None or self._verified_empty:
            self.kill_all()
            return
        spawner = self._slot.spawner
        parked = 1 if spawner is not None and spawner.ready else 0   # the parked thread is a task
        if self._slot.read_pids_current() != parked:
            self.kill_all()

    def usage(self) -> GroupUsage:
        if self._closed:   # the slot may be another command's by now: never read it again
            return self._last_usage or GroupUsage()
        u = GroupUsage()
        cpuacct = self.dirs.get("cpuacct")
        if cpuacct:
            u.cpu_user_s = read_int(os.path.join(cpuacct, "cpuacct.usage_user")) / 1e9
            u.cpu_sys_s = read_int(os.path.join(cpuacct, "cpuacct.usage_sys")) / 1e9
        mem = self.dirs.get("memory")
        if mem:
            slot = self._slot
            u.max_rss_bytes = slot.peak()
            u.exact_peak = slot.peak_reset
            self._charge = read_int(os.path.join(mem, "memory.usage_in_bytes"))
            u.rss_bytes = max(0, self._charge - slot.mem_base)
            u.oom_killed = slot.oom_kills() > slot.oom_base
            self._oom_seen = self._oom_seen or u.oom_killed
            self._final_usage = self._verified_empty
        u.pids = len(self.pids())
        self._last_usage = u
        return u

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.kill_all()
        except BaseException:
            self._pool.lose(self._slot)   # processes that survive SIGKILL: never reuse
            raise
        self._tidy()
        self._pool.give(self._slot)

    def _tidy(self) -> None:
        """Before the group goes back: count its OOM kills so far (the next exec only
        reports its own) and reclaim leftover pages, so its peak starts near zero."""
        mem = self.dirs.get("memory")
        if not mem:
            return
        if not self._final_usage:   # no usage() since the group emptied: look now
            self._charge = read_int(os.path.join(mem, "memory.usage_in_bytes"))
            self._oom_seen = self._oom_seen or self._slot.oom_kills() > self._slot.oom_base
        if self._oom_seen:
            self._slot.oom_base = self._slot.oom_kills()
        if self._charge > V1Pool.MAX_CHARGE and not self._only_kernel_noise(mem):
            _try_write(os.path.join(mem, "memory.force_empty"), "0")

    def _only_kernel_noise(self, mem: str) -> bool:
        """Even ``true`` leaves 0.1-1.3 MB of kernel memory (slab objects freed later
        or never: dentries, RCU-freed task structs) charged to its group, so a charge
        cap alone would reclaim every ~20 execs.  Pages (file cache, anon) must stay
        under MAX_CHARGE; kernel memory may reach MAX_KMEM."""
        kmem = read_int(os.path.join(mem, "memory.kmem.usage_in_bytes"))
        return self._charge - kmem <= V1Pool.MAX_CHARGE and kmem <= V1Pool.MAX_KMEM


class _V2Slot:
    __slots__ = ("dir", "cpu_base", "oom_base", "mem_base", "peak_reset")

    def __init__(self, d: str):
        self.dir = d
        self.cpu_base: tuple[int, int] | None = None   # cpu.stat user/system usec when given back
        self.oom_base = -1
        self.mem_base = 0          # memory.peak right after its reset: the charge left then
        self.peak_reset = False    # memory.peak was reset for the current command

    def cpu_usec(self) -> tuple[int, int]:
        stat = read_text(os.path.join(self.dir, "cpu.stat"))
        return _field(stat, "user_usec"), _field(stat, "system_usec")

    def oom_kills(self) -> int:
        return _field(read_text(os.path.join(self.dir, "memory.events")), "oom_kill")

    def reset_peak(self) -> None:
        """memory.peak through the host's read-write descriptor: a write resets what
        reads through that descriptor report (Linux 6.12+).  Older kernels only have the
        group's lifetime peak, which is not one command's: then there is no peak at all."""
        self.peak_reset = False
        fd = FDS.fd(os.path.join(self.dir, "memory.peak"))
        if fd is not None:
            try:
                os.write(fd, b"reset")
                self.mem_base = int(os.pread(fd, 64, 0))
                self.peak_reset = True
            except (OSError, ValueError):
                pass

    def peak(self) -> int:
        if not self.peak_reset:
            return 0
        fd = FDS.fd(os.path.join(self.dir, "memory.peak"))
        try:
            return max(0, int(os.pread(fd, 64, 0)) - self.mem_base)   # type: ignore[arg-type]
        except (OSError, ValueError, TypeError):
            return 0


class V2Pool:
    """v2's fixed pool: no spawner threads (v2 moves whole processes, see V2Group)."""

    def __init__(self, slots: list[_V2Slot]):
        self.size = len(slots)
        self._free = list(reversed(slots))
        self._lock = threading.Lock()

    def take(self) -> _V2Slot | None:
        with self._lock:
            return self._free.pop() if self._free else None

    def give(self, slot: _V2Slot) -> None:
        slot.cpu_base = slot.cpu_usec()   # the peak is reset on take (_V1Slot.reset_peak: why)
        with self._lock:
            self._free.append(slot)


class V2Group:
    _move_lock = threading.Lock()

    def __init__(self, name: str, parent: str, home: str, pool: V2Pool):
        self.name = name
        self._home = home
        self._pool = pool
        self._closed = False
        self._released = False   # given back: nothing here may touch the slot again
        slot = pool.take()
        if slot is None:
            raise OSError(errno.EAGAIN, "too many processes running at once in this project: "
                          f"all {pool.size} of its process groups are in use")
        if slot.cpu_base is None:
            slot.cpu_base = slot.cpu_usec()
        slot.reset_peak()
        if slot.oom_base < 0:
            slot.oom_base = slot.oom_kills()
        self._slot = slot
        self.dir = slot.dir
        self._last_usage: GroupUsage | None = None
        self._sub_limits(parent)

    def _sub_limits(self, parent: str) -> None:
        n = child_pids_limit(read_text(os.path.join(parent, "pids.max")))
        if n is not None:
            _try_write(os.path.join(self.dir, "pids.max"), str(n))
        raw = (read_text(os.path.join(parent, "memory.max")) or "").strip()
        if raw.isdigit():
            limit = child_memory_limit(int(raw), read_int(os.path.join(self._home, "memory.current")))
            if limit is not None:
                _try_write(os.path.join(self.dir, "memory.max"), str(limit))

    def spawn(self, start: Callable[[], T]) -> T:
        if self._closed:
            raise _given_back(self.name)
        pid = str(os.getpid())
        with self._move_lock:
            _write(os.path.join(self.dir, "cgroup.procs"), pid)
            _OomBias.enter()
            try:
                return start()
            finally:
                _OomBias.leave()
                _write(os.path.join(self._home, "cgroup.procs"), pid)

    def adopt(self, pid: int) -> None:
        """Move a running process in (a kernel forked by a zygote)."""
        if self._closed:
            raise _given_back(self.name)
        _write(os.path.join(self.dir, "cgroup.procs"), str(pid))

    def env_marker(self) -> dict[str, str]:
        return {}

    def pids(self) -> list[int]:
        if self._released:
            return []
        return sorted(procs_of(self.dir))

    def kill_all(self) -> None:
        if self._released:   # the slot may be another command's now (a stale kernel object)
            return
        kill_groups([self.dir], freezer_dir=self.dir, freeze_file="cgroup.freeze",
                    kill_file=os.path.join(self.dir, "cgroup.kill"), write=_write)

    def usage(self) -> GroupUsage:
        if self._closed:   # the slot may be another command's by now: never read it again
            return self._last_usage or GroupUsage()
        u = GroupUsage()
        slot = self._slot
        user, system = slot.cpu_usec()
        base_user, base_system = slot.cpu_base or (0, 0)
        u.cpu_user_s = max(0, user - base_user) / 1e6
        u.cpu_sys_s = max(0, system - base_system) / 1e6
        u.rss_bytes = max(0, read_int(os.path.join(self.dir, "memory.current")) - slot.mem_base)
        u.max_rss_bytes = slot.peak()
        u.exact_peak = slot.peak_reset
        u.oom_killed = slot.oom_kills() > slot.oom_base
        u.pids = len(self.pids())
        self._last_usage = u
        return u

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.kill_all()   # raises if processes survive SIGKILL: the slot is then never reused
        self._slot.oom_base = self._slot.oom_kills()
        self._released = True
        self._pool.give(self._slot)


def _field(text: str | None, key: str) -> int:
    for line in (text or "").splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            try:
                return int(v)
            except ValueError:
                return 0
    return 0


class CgroupTracker:
    def __init__(self, version: str, dirs: dict[str, str], home: dict[str, str], slots: int):
        self.kind = f"cgroup-{version}"
        self.version = version
        self.dirs = dirs
        self.home = home
        self._v1_pool: V1Pool | None = None
        self._v2_pool: V2Pool | None = None
        if version == "v1":
            self._v1_pool = V1Pool([_V1Slot({c: os.path.join(p, slot_name(i))
                                              for c, p in dirs.items() if c in V1_GROUP_CONTROLLERS})
                                    for i in range(slots)])
            self._prewarm_v1()
        else:
            self._v2_pool = V2Pool([_V2Slot(os.path.join(dirs["unified"], slot_name(i)))
                                    for i in range(slots)])

    def _prewarm_v1(self) -> None:
        """The first group gets its spawner (which moves itself in the background) at
        daemon start, so the project's first exec does not migrate."""
        assert self._v1_pool is not None
        slot = self._v1_pool.take()
        if slot is not None:
            self._v1_pool.give(slot)

    def new_group(self, name: str):
        if self._v1_pool is not None:
            return V1Group(name, self.dirs, self._v1_pool)
        assert self._v2_pool is not None
        return V2Group(name, self.dirs["unified"], self.home["unified"], self._v2_pool)


def fd_table_from_spec(version: str, dirs: dict[str, str], home: dict[str, str], spec: dict) -> FdTable:
    """``{path: fd}`` from the host's description: ``fds`` maps "<controller>/<file>" to one
    descriptor per exec group (slot order), ``home_fds`` "<controller>/<file>" to the
    descriptor of that file in the group the daemon lives in."""
    table: dict[str, int] = {}
    slots = int(spec["slots"])
    for key, column in dict(spec.get("fds") or {}).items():
        ctrl, _, name = str(key).partition("/")
        if ctrl not in dirs or len(column) != slots:
            raise ValueError(f"bad cgroup descriptor column {key!r}")
        for i, fd in enumerate(column):
            table[os.path.join(dirs[ctrl], slot_name(i), name)] = int(fd)
    for key, fd in dict(spec.get("home_fds") or {}).items():
        ctrl, _, name = str(key).partition("/")
        if ctrl not in home:
            raise ValueError(f"bad cgroup descriptor {key!r}")
        table[os.path.join(home[ctrl], name)] = int(fd)
    return FdTable(table)


# Where the daemon keeps the host's descriptors: above select()'s FD_SETSIZE (1024) and
# clear of the low numbers, so the daemon's own fds (sockets it hands to the kernel zygote,
# which select()s) stay small.  ~1,450 of them arrive at whatever numbers the host had.
FD_BASE = 4096


def _move_high(table: FdTable) -> FdTable:
    """Re-number ``table``'s descriptors from FD_BASE up (close-on-exec), raising the soft
    RLIMIT_NOFILE as far as needed (never past the hard limit: then they stay put)."""
    import fcntl
    import resource
    need = FD_BASE + len(table.fds) + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            return table
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    moved: dict[str, int] = {}
    for path, fd in table.fds.items():
        if fd >= FD_BASE:   # already high: a daemon re-executed in place (project/recycle.py)
            moved[path] = fd
            continue
        moved[path] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FD_BASE)
        os.close(fd)
    return FdTable(moved)


def spec_for_exec(environ: dict[str, str] | None = None) -> str | None:
    """``PROJECTHUB_CGROUPS`` for this daemon's re-exec in place (project/recycle.py): the
    host's description with each descriptor at the number it has now (``_move_high``
    renumbered them), and those descriptors made inheritable for the one execve.  None when
    this process has no cgroup table from the host."""
    raw = (environ if environ is not None else os.environ).get(ENV_VAR)
    if not raw or not FDS.fds:
        return None
    spec = json.loads(raw)
    dirs, home = dict(spec["dirs"]), dict(spec.get("home") or spec["dirs"])
    current = FDS.fds
    columns: dict[str, list[int]] = {}
    for key, column in dict(spec.get("fds") or {}).items():
        ctrl, _, name = str(key).partition("/")
        columns[key] = [current[os.path.join(dirs[ctrl], slot_name(i), name)]
                        for i in range(len(column))]
    home_fds: dict[str, int] = {}
    for key in dict(spec.get("home_fds") or {}):
        ctrl, _, name = str(key).partition("/")
        home_fds[key] = current[os.path.join(home[ctrl], name)]
    spec["fds"], spec["home_fds"] = columns, home_fds
    for fd in set(current.values()):
        os.set_inheritable(fd, True)
    return json.dumps(spec, separators=(",", ":"))


def _kernel_version() -> tuple[int, int]:
    try:
        major, minor = os.uname().release.split(".")[:2]
        return int(major), int("".join(c for c in minor if c.isdigit()) or 0)
    except ValueError:
        return (0, 0)


def tracker_for_daemon(environ: dict[str, str] | None = None) -> CgroupTracker | None:
    """The cgroup tracker described by ``PROJECTHUB_CGROUPS``, or None when the host
    gave us no groups or no descriptors to write them with -- the caller then uses the
    MarkerTracker."""
    global FDS
    raw = (environ if environ is not None else os.environ).get(ENV_VAR)
    if not raw:
        return None
    try:
        spec = json.loads(raw)
        version, dirs, home = spec["version"], dict(spec["dirs"]), dict(spec.get("home") or spec["dirs"])
        slots = int(spec.get("slots") or 0)
        table = fd_table_from_spec(version, dirs, home, spec) if slots > 0 else None
    except (ValueError, KeyError, TypeError):
        return None
    if version not in ("v1", "v2") or not dirs or table is None:
        return None
    if version == "v2" and _kernel_version() < (5, 16):
        # before 5.16 v2 checked the writer's own credentials on the common ancestor's
        # cgroup.procs (the project group's: root's), so no move would work
        return None
    needed = "tasks" if version == "v1" else "cgroup.procs"
    if not any(p.endswith("/" + needed) for p in table.fds):
        return None
    first = next((d for c, d in dirs.items() if c in (*V1_GROUP_CONTROLLERS, "unified")), None)
    if first is None or read_text(os.path.join(first, slot_name(0), "cgroup.procs")) is None:
        return None   # groups we cannot even read (modes): no cgroup tracking at all
    try:
        for fd in set(table.fds.values()):
            os.set_inheritable(fd, False)   # close-on-exec: never into a user process
        table = _move_high(table)
    except OSError:
        return None   # not the descriptors the host described
    FDS = table
    _OomBias.prepare()
    return CgroupTracker(version, dirs, home, slots)
