"""Daemon-side ProcessTracker on cgroups: one child group per exec/kernel.

Runs INSIDE the sandbox as the project uid; the host delegated the project's
groups (see ``cgroups.py``) and told us where they are in ``PROJECTHUB_CGROUPS``.

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

import json
import os
import threading
import time
from typing import Callable, TypeVar

from projecthub.project.tracking import GroupUsage

from .cgroups import (PIDS_HEADROOM, kill_groups, procs_of, read_int, read_int_kept_open, read_text,
                      read_text_kept_open, remove_tree, write_text)

T = TypeVar("T")
ENV_VAR = "PROJECTHUB_CGROUPS"


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100]
    return "g_" + cleaned.lstrip(".")  # prefix keeps names clear of "daemon" and of control files


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
        write_text(path, value)
    except OSError:
        pass  # a sub-limit is protection for the daemon, never a reason to fail an exec


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


# Per-exec child groups exist for accounting, killing and the daemon-protecting
# sub-limits above; the project's own limits live on the project group.  The "cpu" controller only carries limits (cpuacct does the
# accounting), so a child there would just cost a mkdir/rmdir per exec.
V1_GROUP_CONTROLLERS = ("memory", "pids", "cpuacct", "freezer")


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
                write_text(os.path.join(d, "tasks"), tid)
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
    """An empty per-exec child group kept for the next exec (see ``V1Pool``)."""

    __slots__ = ("dirs", "written", "spawner", "procs", "pids_current", "_pids_current_fd")

    def __init__(self, dirs: dict[str, str]):
        self.dirs = dirs
        self.written: dict[str, str] = {}   # sub-limit file -> value last written
        self.spawner: _Spawner | None = None
        # (group dir, its cgroup.procs) per controller: checked at the end of every exec
        self.procs = tuple((d, os.path.join(d, "cgroup.procs")) for d in dirs.values())
        self.pids_current = os.path.join(dirs["pids"], "pids.current") if "pids" in dirs else None
        self._pids_current_fd: int | None = None

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

    def close_files(self) -> None:
        if self._pids_current_fd is not None:
            os.close(self._pids_current_fd)
            self._pids_current_fd = None


class V1Pool:
    """Empty child groups per daemon, reused instead of mkdir + rmdir per exec
    (4 controllers: ~0.2-0.4 ms and a good share of the daemon's exec cpu).

    A group goes back only when it is verifiably clean: no task and no sub-group in
    any controller, it never needed a kill, no OOM kill happened in it and it holds
    (almost) no memory charge.  Giving one back resets its peak memory and cpu
    counters; if a reset fails the group is removed instead.

    Size: up to ``MAX`` slots, so a burst of concurrent execs keeps finding pooled
    groups with parked spawners (a group made on demand costs mkdir x4, 8 thread
    migrations on the event loop and later rmdir x4: about a third of the daemon's cpu
    per exec at 64 concurrent calls).  While more than ``KEEP`` slots are free, a
    janitor thread watches: once no burst needed more than ``KEEP`` for ``IDLE_S`` it
    removes the extra slots (rmdir may have to wait for their spawner threads to leave),
    so an idle daemon keeps at most ``KEEP`` groups and parked threads."""

    MAX = 64
    KEEP = 8
    IDLE_S = 30.0
    MAX_CHARGE = 2**20   # leftover pages (cache, anon) a reused group may hold
    MAX_KMEM = 4 * 2**20  # leftover kernel memory (see V1Group._only_kernel_noise)

    def __init__(self) -> None:
        self._free: list[_V1Slot] = []   # a stack: the hottest slot is taken first
        self._lock = threading.Lock()
        self._busy_at = 0.0               # last take() that left at most KEEP free slots
        self._janitor: threading.Thread | None = None

    def take(self) -> _V1Slot | None:
        with self._lock:
            if len(self._free) <= self.KEEP:
                self._busy_at = time.monotonic()
            return self._free.pop() if self._free else None

    def give(self, slot: _V1Slot) -> bool:
        """Keep ``slot`` (True) or refuse it (False: the caller removes it).  The peak
        memory and cpu counters are reset here rather than in take(): a blocking exec
        gives its group back after its reply (exec._run), off the next exec's path."""
        try:
            if "memory" in slot.dirs:
                write_text(os.path.join(slot.dirs["memory"], "memory.max_usage_in_bytes"), "0")
            if "cpuacct" in slot.dirs:
                write_text(os.path.join(slot.dirs["cpuacct"], "cpuacct.usage"), "0")
        except OSError:
            return False
        janitor: threading.Thread | None = None
        with self._lock:
            if len(self._free) >= self.MAX:
                return False
            self._free.append(slot)
            if len(self._free) > self.KEEP and self._janitor is None:
                janitor = self._janitor = threading.Thread(
                    target=self._retire_extras, name="cgroup-pool-janitor", daemon=True)
        if slot.spawner is None:
            slot.spawner = _Spawner(slot.dirs)
        if janitor is not None:
            janitor.start()
        return True

    def _retire_extras(self) -> None:
        """Janitor thread: wait until no burst needed more than KEEP slots for IDLE_S,
        then remove the extra (coldest) slots and end."""
        while True:
            time.sleep(self.IDLE_S / 4)
            with self._lock:
                extra = len(self._free) - self.KEEP
                if extra > 0 and time.monotonic() - self._busy_at <= self.IDLE_S:
                    continue
                retired = self._free[:max(extra, 0)]
                del self._free[:len(retired)]
                self._janitor = None
            for slot in retired:
                _discard(slot)
            return


def _discard(slot: _V1Slot, strict: bool = False) -> None:
    if slot.spawner is not None:
        slot.spawner.stop()   # a live thread keeps the group busy (rmdir: EBUSY)
        slot.spawner = None
    slot.close_files()
    for d in slot.dirs.values():
        try:
            remove_tree(d)
        except OSError:
            if strict:
                raise


class V1Group:
    def __init__(self, name: str, parents: dict[str, str], pool: V1Pool | None = None):
        self.name = name
        parents = {c: p for c, p in parents.items() if c in V1_GROUP_CONTROLLERS}
        self._parents = parents
        self._pool = pool
        self._closed = False
        self._verified_empty = False   # kill_all found nothing, and nothing spawned since
        self._had_kill = False         # some task needed killing: never reuse the group
        self._oom_seen = False
        self._charge = 0
        self._final_usage = False      # usage() read after the group was verified empty
        slot = pool.take() if pool is not None else None
        if slot is None:
            slot = _V1Slot({c: os.path.join(p, _safe_name(name)) for c, p in parents.items()})
            for d in slot.dirs.values():
                os.mkdir(d)
        self._slot = slot
        self.dirs = slot.dirs
        self._sub_limits()

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
                    has_memsw = os.path.exists(memsw)
                    if has_memsw and mem in self._slot.written and int(self._slot.written[mem]) < limit:
                        _try_write(memsw, str(limit))
                    _try_write(mem, str(limit))
                    if has_memsw:
                        _try_write(memsw, str(limit))
                    self._slot.written[mem] = str(limit)

    def spawn(self, start: Callable[[], T]) -> T:
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
                write_text(os.path.join(d, "tasks"), tid)
                moved.append(ctrl)
            return start()
        finally:
            for ctrl in moved:
                write_text(os.path.join(self._parents[ctrl], "tasks"), tid)
            _OomBias.leave()

    def adopt(self, pid: int) -> None:
        """Move a running process in (a kernel forked by a zygote): v1 moves a whole
        thread group through ``cgroup.procs``; we own the delegated groups."""
        self._verified_empty = False
        for d in self.dirs.values():
            write_text(os.path.join(d, "cgroup.procs"), str(pid))

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
        if kill_groups(self.dirs.values(), freezer_dir=self.dirs.get("freezer")):
            self._had_kill = True

    def kill_all_but_migrants(self) -> None:
        """``kill_all`` for an exec that is answered before its group is released
        (``close`` then runs the complete ``kill_all``): one read of ``pids.current``
        -- every task in this pids group and its sub-groups -- instead of a stat and a
        cgroup.procs read per controller.  Only a process that moved itself out of the
        pids group (it could as well leave every group) is left for ``close``."""
        path = self._slot.pids_current
        if path is None or self._verified_empty:
            self.kill_all()
            return
        spawner = self._slot.spawner
        parked = 1 if spawner is not None and spawner.ready else 0   # the parked thread is a task
        if self._slot.read_pids_current() != parked:
            self.kill_all()

    def usage(self) -> GroupUsage:
        u = GroupUsage()
        cpuacct = self.dirs.get("cpuacct")
        if cpuacct:
            u.cpu_user_s = read_int(os.path.join(cpuacct, "cpuacct.usage_user")) / 1e9
            u.cpu_sys_s = read_int(os.path.join(cpuacct, "cpuacct.usage_sys")) / 1e9
        mem = self.dirs.get("memory")
        if mem:
            u.max_rss_bytes = read_int(os.path.join(mem, "memory.max_usage_in_bytes"))
            u.rss_bytes = read_int(os.path.join(mem, "memory.usage_in_bytes"))
            u.oom_killed = _field(read_text(os.path.join(mem, "memory.oom_control")), "oom_kill") > 0
            self._oom_seen = self._oom_seen or u.oom_killed
            self._charge = u.rss_bytes
            self._final_usage = self._verified_empty
        u.pids = len(self.pids())
        return u

    def close(self) -> None:
        if self._closed:
            return
        self.kill_all()
        self._closed = True
        if self._reusable() and self._pool is not None and self._pool.give(self._slot):
            return
        _discard(self._slot, strict=True)

    def _reusable(self) -> bool:
        if self._pool is None or self._had_kill or not self._verified_empty or self._oom_seen:
            return False
        mem = self.dirs.get("memory")
        if mem:
            if not self._final_usage:   # no usage() since the group emptied: look now
                self._charge = read_int(os.path.join(mem, "memory.usage_in_bytes"))
                if _field(read_text(os.path.join(mem, "memory.oom_control")), "oom_kill") > 0:
                    return False
            if self._charge > V1Pool.MAX_CHARGE and not self._only_kernel_noise(mem):
                return False
        return True

    def _only_kernel_noise(self, mem: str) -> bool:
        """Even ``true`` leaves 0.1-1.3 MB of kernel memory (slab objects freed later
        or never: dentries, RCU-freed task structs) charged to its group, so a charge
        cap alone discarded a pooled group every ~20 execs (a new group costs ~3 ms of
        migrations on the event loop).  Pages (file cache, anon) must stay under
        MAX_CHARGE; kernel memory may reach MAX_KMEM."""
        kmem = read_int(os.path.join(mem, "memory.kmem.usage_in_bytes"))
        return self._charge - kmem <= V1Pool.MAX_CHARGE and kmem <= V1Pool.MAX_KMEM


class V2Group:
    _move_lock = threading.Lock()

    def __init__(self, name: str, parent: str, home: str):
        self.name = name
        self.dir = os.path.join(parent, _safe_name(name))
        self._home = home
        self._closed = False
        os.mkdir(self.dir)
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
        pid = str(os.getpid())
        with self._move_lock:
            write_text(os.path.join(self.dir, "cgroup.procs"), pid)
            _OomBias.enter()
            try:
                return start()
            finally:
                _OomBias.leave()
                write_text(os.path.join(self._home, "cgroup.procs"), pid)

    def adopt(self, pid: int) -> None:
        """Move a running process in (a kernel forked by a zygote)."""
        write_text(os.path.join(self.dir, "cgroup.procs"), str(pid))

    def env_marker(self) -> dict[str, str]:
        return {}

    def pids(self) -> list[int]:
        return sorted(procs_of(self.dir))

    def kill_all(self) -> None:
        kill_groups([self.dir], freezer_dir=self.dir, freeze_file="cgroup.freeze",
                    kill_file=os.path.join(self.dir, "cgroup.kill"))

    def usage(self) -> GroupUsage:
        u = GroupUsage()
        stat = read_text(os.path.join(self.dir, "cpu.stat"))
        u.cpu_user_s = _field(stat, "user_usec") / 1e6
        u.cpu_sys_s = _field(stat, "system_usec") / 1e6
        u.rss_bytes = read_int(os.path.join(self.dir, "memory.current"))
        u.max_rss_bytes = read_int(os.path.join(self.dir, "memory.peak"))
        u.oom_killed = _field(read_text(os.path.join(self.dir, "memory.events")), "oom_kill") > 0
        u.pids = len(self.pids())
        return u

    def close(self) -> None:
        if self._closed:
            return
        self.kill_all()
        remove_tree(self.dir)
        self._closed = True


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
    def __init__(self, version: str, dirs: dict[str, str], home: dict[str, str]):
        self.kind = f"cgroup-{version}"
        self.version = version
        self.dirs = dirs
        self.home = home
        self._v1_pool = V1Pool() if version == "v1" else None
        if self._v1_pool is not None:
            self._prewarm_v1()

    def _prewarm_v1(self) -> None:
        """One empty group (and its spawner, which moves itself in the background) made
        at daemon start, so the project's first exec neither mkdirs nor migrates.
        Best effort: any failure just leaves the pool empty."""
        assert self._v1_pool is not None
        dirs = {c: os.path.join(p, f"g_pool-{os.getpid()}")
                for c, p in self.dirs.items() if c in V1_GROUP_CONTROLLERS}
        made: list[str] = []
        try:
            for d in dirs.values():
                os.mkdir(d)
                made.append(d)
        except OSError:
            for d in made:
                try:
                    os.rmdir(d)
                except OSError:
                    pass
            return
        self._v1_pool.give(_V1Slot(dirs))

    def new_group(self, name: str):
        if self.version == "v1":
            return V1Group(name, self.dirs, self._v1_pool)
        return V2Group(name, self.dirs["unified"], self.home["unified"])


def tracker_for_daemon(environ: dict[str, str] | None = None) -> CgroupTracker | None:
    """The cgroup tracker described by ``PROJECTHUB_CGROUPS``, or None when the host
    gave us no (writable) groups -- the caller then uses the MarkerTracker."""
    raw = (environ if environ is not None else os.environ).get(ENV_VAR)
    if not raw:
        return None
    try:
        spec = json.loads(raw)
        version, dirs, home = spec["version"], dict(spec["dirs"]), dict(spec.get("home") or spec["dirs"])
    except (ValueError, KeyError, TypeError):
        return None
    if version not in ("v1", "v2") or not dirs:
        return None
    if not all(os.access(d, os.W_OK) for d in dirs.values()):
        return None
    return CgroupTracker(version, dirs, home)
