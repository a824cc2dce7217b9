"""cgroup v1 and v2 behind one host-side driver interface, plus the kill helpers the
daemon-side tracker (``tracker.py``) shares.

Layout: ``<mount>/<root_name>/<project_id>`` in every controller (v1) or in the
unified tree (v2).  The project group carries the limits; the daemon lives in it
(v1) or in its ``daemon`` leaf (v2, "no internal processes" rule).  Below it the host
makes a fixed pool of ``POOL_SLOTS`` exec groups (``slot-NNN``): one per running
exec, job, kernel or zygote, reused by the daemon.

No delegation (issue 14 item 3).  Every directory and file of a project's groups is
root's and not writable for the project uid, so user code cannot move a process
between groups (v1 checks write access to the destination's ``tasks``/``cgroup.procs``;
v2 to the common ancestor's ``cgroup.procs``), cannot mkdir a group of its own and
cannot touch a limit, a freezer or ``cgroup.kill``.  The daemon runs with the same uid
as its user code, so whatever it may write, user code could too: instead of
permissions the daemon gets descriptors the host opened as root
(``open_daemon_fds``, passed through bwrap like ``--ready-fd``).  Since Linux 5.16 a
write to ``tasks``/``cgroup.procs`` is checked with the credentials of the file's
*opener* (v1 ``__cgroup1_procs_write``, v2 ``cgroup_procs_write_permission`` via
``of->file->f_cred``), so a root-opened descriptor lets the daemon move its spawning
thread into an exec group and back, and adopt a forked kernel, while no descriptor
user code can open is writable.  The daemon keeps them close-on-exec and is
non-dumpable, so they cannot be taken from it (``/proc/PID/fd`` reopens with the
caller's credentials; ``pidfd_getfd`` needs ptrace access).
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol

from .limits import ProjectLimits

# Room in pids.max for the sandbox's own tasks on top of the user's limit: the
# outer bwrap, its in-namespace init, and the daemon's threads (pids counts
# threads), which include up to 64 parked spawner threads (tracker.V1Pool.SPAWNERS,
# one per hot pooled exec group).  bwrap's own zombies (baselines §2) only pile up with a bwrap
# per exec; the daemon design starts one bwrap per project, so a fixed margin is enough.
PIDS_HEADROOM = 32 + 64
CFS_PERIOD_US = 100_000
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")
V2_CONTROLLERS = ("memory", "pids", "cpu")
V2_DAEMON_LEAF = "daemon"

# Exec groups per project, made by the host at project start (the project cannot mkdir).
# One per concurrently running exec, async job, kernel and kernel zygote: the exec
# throughput target runs 64 at once, the rest is room for jobs and kernels.  A daemon
# that finds none free answers an exec with EAGAIN ("too many concurrent processes").
POOL_SLOTS = 96
SLOT_PREFIX = "slot-"
# The controllers an exec group lives in (v1).  "cpu" only carries the project's
# limits (cpuacct does the accounting): an exec group there would only cost.
V1_GROUP_CONTROLLERS = ("memory", "pids", "cpuacct", "freezer")
# Files the daemon writes, per controller, in every exec group (v1) and in the project
# group it returns its spawning thread to; opened by the host (``open_daemon_fds``).
V1_SLOT_FILES = {"memory": ("tasks", "cgroup.procs", "memory.limit_in_bytes",
                            "memory.memsw.limit_in_bytes", "memory.max_usage_in_bytes",
                            "memory.force_empty"),
                 "pids": ("tasks", "cgroup.procs", "pids.max"),
                 "cpuacct": ("tasks", "cgroup.procs", "cpuacct.usage"),
                 "freezer": ("tasks", "cgroup.procs", "freezer.state")}
V1_HOME_FILES = ("tasks",)
# v2: memory.peak is opened read-write: a write resets the peak seen through that
# descriptor (Linux 6.12+), which the daemon then reads through it.
V2_SLOT_FILES = ("cgroup.procs", "cgroup.kill", "cgroup.freeze", "pids.max", "memory.max",
                 "memory.peak")
V2_HOME_FILES = ("cgroup.procs",)
# Peak counters the daemon resets and then reads on every exec: read-write, so a read is one
# pread on the same descriptor (the files are world-readable anyway; no new descriptor).
_READ_WRITE = {"memory.peak", "memory.max_usage_in_bytes"}


def slot_name(i: int) -> str:
    return f"{SLOT_PREFIX}{i:03d}"


# --------------------------------------------------------------------- fs helpers

_READ_SIZE = 65536
# A seq_file (/proc, cgroupfs: cgroup.procs, mounts) hands out at most one page per read()
# however big the buffer (seen: 4 KiB reads of a 10 KiB /proc/self/mounts), and stops short
# of it only by less than one record.  So only a read under half a page means the end.
_SHORT_READ = 2048


def read_text(path: str) -> str | None:
    # Raw open/read/close: the exec hot path reads a dozen control files per exec, and a
    # text-mode open() adds fstat x2, ioctl(TCGETS), lseek x2 and an io object to each.
    # A read under _SHORT_READ is the end, so no extra read() to see EOF for the small
    # control files: regular files only come up short at their end, and a seq_file stops
    # more than one record short of a page only at its end (no record of these files
    # comes near 2 KiB).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while True:
            chunk = os.read(fd, _READ_SIZE)
            chunks.append(chunk)
            if len(chunk) <= _SHORT_READ:
                break
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "surrogateescape")


# Control files read on every exec (a project's own limits) stay open and are re-read
# with pread at offset 0, which regenerates their content: one syscall instead of
# open + read + close.  Bounded, and a file whose group went away is reopened or dropped.
_KEEP_OPEN_MAX = 64
_kept_open: dict[str, int] = {}


def read_text_kept_open(path: str) -> str | None:
    fd = _kept_open.pop(path, None)
    if fd is None:
        if len(_kept_open) >= _KEEP_OPEN_MAX:
            return read_text(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
    try:
        data = os.pread(fd, _READ_SIZE, 0)
    except OSError:   # e.g. ENODEV: the group was removed (and maybe made again)
        os.close(fd)
        return read_text(path)
    if len(data) > _SHORT_READ:   # not a small control file (see read_text): read it whole
        os.close(fd)
        return read_text(path)
    _kept_open[path] = fd
    return data.decode("utf-8", "surrogateescape")


def _first_int(text: str | None, default: int) -> int:
    try:
        return int(text.split()[0]) if text else default
    except ValueError:
        return default


def read_int_kept_open(path: str, default: int = 0) -> int:
    return _first_int(read_text_kept_open(path), default)


def read_int(path: str, default: int = 0) -> int:
    return _first_int(read_text(path), default)


def write_text(path: str, value: str) -> None:
    # One write() per value: cgroup files act on each write call.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def procs_of(group_dir: str, recursive: bool = True) -> list[int]:
    """Pids in ``group_dir`` (and, by default, its descendants)."""
    out: list[int] = []
    for d in walk_groups(group_dir) if recursive else [group_dir]:
        text = read_text(os.path.join(d, "cgroup.procs"))
        if text:
            out.extend(int(x) for x in text.split())
    return out


def walk_groups(group_dir: str) -> list[str]:
    """``group_dir`` and every descendant group, parents first."""
    try:
        st = os.stat(group_dir)
    except OSError:
        return []
    if not stat.S_ISDIR(st.st_mode):
        return []
    out = [group_dir]
    if st.st_nlink == 2:  # cgroupfs (kernfs) counts sub-groups in nlink: a leaf, skip the scandir
        return out
    for entry in os.scandir(group_dir):
        if entry.is_dir(follow_symlinks=False):
            out.extend(walk_groups(entry.path))
    return out


def kill_groups(proc_dirs: Iterable[str], freezer_dir: str | None = None,
                freeze_file: str = "freezer.state", kill_file: str | None = None,
                timeout_s: float = 5.0,
                write: Callable[[str, str], None] = write_text) -> list[int]:
    """SIGKILL everything in ``proc_dirs`` (recursively) until they are empty.

    With a freezer the tree is frozen first, so nothing can fork or setsid away
    between reading ``cgroup.procs`` and the kill; killed tasks die on thaw.
    v2's ``cgroup.kill`` (``kill_file``) does all of that in the kernel.
    Returns the pids signalled.  ``write`` writes a control file (the daemon passes
    one that uses the host's descriptors: it may not open them itself).
    """
    proc_dirs = [d for d in proc_dirs if os.path.isdir(d)]
    # Never ourselves: in v1 a daemon thread sitting in a group during spawn()
    # makes the whole daemon show up in that group's cgroup.procs.
    me = os.getpid()
    killed: set[int] = set()
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while True:
        pids = {p for d in proc_dirs for p in procs_of(d)} - {me}
        if not pids:
            return sorted(killed)
        if time.monotonic() > deadline:
            raise TimeoutError(f"cgroup processes survive SIGKILL: {sorted(pids)[:20]}")
        if kill_file and _try_write(kill_file, "1", write):
            killed |= pids
        else:
            frozen = freezer_dir is not None and _freeze(freezer_dir, freeze_file, True, write)
            for pid in ({p for d in proc_dirs for p in procs_of(d)} | pids) - {me}:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                except ProcessLookupError:
                    pass
            if frozen:
                _freeze(freezer_dir, freeze_file, False, write)
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _freeze(freezer_dir: str, freeze_file: str, on: bool,
            write: Callable[[str, str], None] = write_text) -> bool:
    path = os.path.join(freezer_dir, freeze_file)
    if freeze_file == "freezer.state":  # v1
        if not _try_write(path, "FROZEN" if on else "THAWED", write):
            return False
        if on:  # FREEZING -> FROZEN is asynchronous; don't wait forever (D-state tasks)
            end = time.monotonic() + 0.2
            while (read_text(path) or "").strip() == "FREEZING" and time.monotonic() < end:
                time.sleep(0.001)
        return True
    return _try_write(path, "1" if on else "0", write)  # v2 cgroup.freeze


def _try_write(path: str, value: str, write: Callable[[str, str], None] = write_text) -> bool:
    try:
        write(path, value)
        return True
    except OSError:
        return False


def remove_tree(group_dir: str, timeout_s: float = 2.0) -> None:
    """rmdir ``group_dir`` and its descendants, children first.

    rmdir fails with EBUSY while a dying task (or zombie) is still charged to the
    group, hence the short retry loop.
    """
    deadline = time.monotonic() + timeout_s
    for d in reversed(walk_groups(group_dir)):
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno not in (errno.EBUSY, errno.EAGAIN) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)


# ----------------------------------------------------------------- mount discovery

@dataclass
class Mounts:
    v1: dict[str, str]        # controller -> mount point
    v2: str | None            # unified mount point
    v2_controllers: set[str]  # controllers available in the unified tree


def discover_mounts(mounts_file: str = "/proc/self/mounts") -> Mounts:
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in (read_text(mounts_file) or "").splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        point, fstype, opts = parts[1], parts[2], parts[3].split(",")
        if fstype == "cgroup":
            for ctrl in V1_CONTROLLERS:
                if ctrl in opts:
                    v1.setdefault(ctrl, point)
        elif fstype == "cgroup2" and (v2 is None or point == "/sys/fs/cgroup"):
            v2 = point
    ctrls = set((read_text(os.path.join(v2, "cgroup.controllers")) or "").split()) if v2 else set()
    return Mounts(v1=v1, v2=v2, v2_controllers=ctrls)


# -------------------------------------------------------------------------- drivers

class CgroupDriver(Protocol):
    version: str                     # "v1" | "v2"
    controllers: list[str]           # limit controllers really available

    def create(self, project_id: str, uid: int | None, gid: int | None,
               limits: ProjectLimits) -> dict[str, str]: ...
    def apply_limits(self, project_id: str, limits: ProjectLimits) -> None: ...
    def daemon_env(self, project_id: str) -> dict: ...
    def open_daemon_fds(self, project_id: str) -> tuple[dict, list[int]]: ...
    def join_dirs(self, project_id: str) -> list[str]: ...
    def bind_dirs(self, project_id: str) -> list[str]: ...
    def project_ids(self) -> list[str]: ...
    def pids(self, project_id: str) -> list[int]: ...
    def kill(self, project_id: str, timeout_s: float = 5.0) -> list[int]: ...
    def remove(self, project_id: str, timeout_s: float = 2.0) -> None: ...


def _room_for_fds(n: int) -> None:
    """The host opens ~1,450 descriptors per daemon start (briefly): raise the soft
    RLIMIT_NOFILE if it would not leave room (1024 is a common default)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 256
    need = open_now + n + 1024
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(hard, need)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def _open_for_daemon(path: str) -> int:
    flags = os.O_RDWR if os.path.basename(path) in _READ_WRITE else os.O_WRONLY
    return os.open(path, flags | os.O_CLOEXEC)


def _open_columns(spec: dict, fds: list[int], key: str, paths: list[str], optional: bool) -> None:
    """Open one file in every slot (a column of descriptors, slot order).  An optional
    file missing (memsw without swap accounting) or not writable on this kernel
    (memory.peak before 6.12) is left out: the daemon then does without it."""
    col: list[int] = []
    try:
        for path in paths:
            col.append(_open_for_daemon(path))
    except OSError:
        for fd in col:
            os.close(fd)
        if optional:
            return
        raise
    fds.extend(col)
    spec["fds"][key] = col


def _mkdir_readable(path: str) -> None:
    """A group directory the project can enter and read but not write: 0755 whatever the
    server's umask (077 since item 12 would make it 0700: the daemon could not even read
    its own groups)."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        if stat.S_IMODE(os.stat(path).st_mode) == 0o755:
            return
    os.chmod(path, 0o755)


def _makedirs_readable(path: str) -> None:
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        _makedirs_readable(parent)
    _mkdir_readable(path)


def _root_layout(top: str, layout: Iterable[str]) -> None:
    """Make ``top`` the host's alone: undo an older version's delegation (chowned
    directory, tasks, cgroup.procs) and kill and remove any sub-group that is not part
    of the layout (a group an older daemon or its user code made)."""
    keep = set(layout)
    for entry in os.scandir(top):
        if entry.is_dir(follow_symlinks=False):
            if entry.name not in keep:
                kill_groups([entry.path])
                remove_tree(entry.path)
        elif entry.stat(follow_symlinks=False).st_uid != 0:
            os.chown(entry.path, 0, 0)
    st = os.stat(top)
    if st.st_uid != 0 or st.st_gid != 0:
        os.chown(top, 0, 0)
    if stat.S_IMODE(st.st_mode) != 0o755:
        os.chmod(top, 0o755)


class V1Driver:
    version = "v1"

    def __init__(self, mounts: dict[str, str], root_name: str):
        self.mounts = {c: m for c, m in mounts.items() if c in V1_CONTROLLERS}
        self.root_name = root_name
        self.controllers = [c for c in ("memory", "pids", "cpu") if c in self.mounts]

    def _roots(self) -> dict[str, str]:
        return {c: os.path.join(m, self.root_name) for c, m in self.mounts.items()}

    def dirs(self, project_id: str) -> dict[str, str]:
        return {c: os.path.join(r, project_id) for c, r in self._roots().items()}

    def slot_dirs(self, project_id: str, i: int) -> dict[str, str]:
        return {c: os.path.join(d, slot_name(i)) for c, d in self.dirs(project_id).items()
                if c in V1_GROUP_CONTROLLERS}

    def create(self, project_id, uid, gid, limits):
        """The project group and its exec-group pool, all root's (no delegation: see the
        module docstring; ``uid``/``gid`` are not given anything).  Anything still running
        in an exec group belonged to a daemon that is gone (a new one starts now): killed."""
        _check_name(project_id)
        dirs = self.dirs(project_id)
        slots = [slot_name(i) for i in range(POOL_SLOTS)]
        for ctrl, d in dirs.items():
            _makedirs_readable(d)
            if os.geteuid() == 0:
                _root_layout(d, slots if ctrl in V1_GROUP_CONTROLLERS else ())
            if ctrl in V1_GROUP_CONTROLLERS:
                for name in slots:
                    _mkdir_readable(os.path.join(d, name))
        # pids.current counts the whole subtree: 0 (the usual start) means nothing to look for
        if "pids" in dirs and read_int(os.path.join(dirs["pids"], "pids.current"), 1) != 0:
            for i in range(POOL_SLOTS):
                sd = self.slot_dirs(project_id, i)
                if any(procs_of(x, recursive=False) for x in sd.values()):
                    kill_groups(sd.values(), freezer_dir=sd.get("freezer"))
        self.apply_limits(project_id, limits)
        return dirs

    def apply_limits(self, project_id, limits):
        dirs = self.dirs(project_id)
        if "memory" in dirs and os.path.isdir(dirs["memory"]):
            _set_v1_memory(dirs["memory"], limits.memory_bytes)
        if "pids" in dirs and os.path.isdir(dirs["pids"]):
            write_text(os.path.join(dirs["pids"], "pids.max"),
                       "max" if limits.pids is None else str(limits.pids + PIDS_HEADROOM))
        if "cpu" in dirs and os.path.isdir(dirs["cpu"]):
            d = dirs["cpu"]
            period = read_int(os.path.join(d, "cpu.cfs_period_us"), CFS_PERIOD_US)
            quota = -1 if limits.cpu_cores is None else max(1000, int(limits.cpu_cores * period))
            write_text(os.path.join(d, "cpu.cfs_quota_us"), str(quota))
            write_text(os.path.join(d, "cpu.shares"), str(limits.cpu_shares or 1024))

    def daemon_env(self, project_id):
        dirs = self.dirs(project_id)
        return {"version": "v1", "dirs": dirs, "home": dirs}

    def open_daemon_fds(self, project_id):
        dirs = self.dirs(project_id)
        spec: dict = {"slots": POOL_SLOTS, "fds": {}, "home_fds": {}}
        fds: list[int] = []
        _room_for_fds(POOL_SLOTS * sum(len(f) for f in V1_SLOT_FILES.values()) + len(dirs))
        try:
            for ctrl in V1_GROUP_CONTROLLERS:
                if ctrl not in dirs:
                    continue
                for name in V1_HOME_FILES:
                    fd = _open_for_daemon(os.path.join(dirs[ctrl], name))
                    fds.append(fd)
                    spec["home_fds"][f"{ctrl}/{name}"] = fd
                for name in V1_SLOT_FILES[ctrl]:
                    paths = [os.path.join(dirs[ctrl], slot_name(i), name) for i in range(POOL_SLOTS)]
                    _open_columns(spec, fds, f"{ctrl}/{name}", paths,
                                  optional=name not in ("tasks", "cgroup.procs"))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return spec, fds

    def join_dirs(self, project_id):
        return list(self.dirs(project_id).values())

    def bind_dirs(self, project_id):
        return list(self.dirs(project_id).values())

    def project_ids(self):
        ids: set[str] = set()
        for root in self._roots().values():
            if os.path.isdir(root):
                ids.update(e.name for e in os.scandir(root) if e.is_dir())
        return sorted(ids)

    def pids(self, project_id):
        return sorted({p for d in self.dirs(project_id).values() for p in procs_of(d)})

    def kill(self, project_id, timeout_s=5.0):
        dirs = self.dirs(project_id)
        return kill_groups(dirs.values(), freezer_dir=dirs.get("freezer"), timeout_s=timeout_s)

    def remove(self, project_id, timeout_s=2.0):
        for d in self.dirs(project_id).values():
            remove_tree(d, timeout_s)


def _set_v1_memory(d: str, limit: int | None) -> None:
    value = "-1" if limit is None else str(limit)
    mem = os.path.join(d, "memory.limit_in_bytes")
    memsw = os.path.join(d, "memory.memsw.limit_in_bytes")
    has_memsw = os.path.exists(memsw)
    # memsw must stay >= memory: raise memsw first when growing, memory first when shrinking.
    try:
        write_text(mem, value)
        if has_memsw:
            write_text(memsw, value)
    except OSError as e:
        if not has_memsw or e.errno != errno.EINVAL:
            raise
        write_text(memsw, value)
        write_text(mem, value)


class V2Driver:
    version = "v2"

    def __init__(self, mount: str, available: set[str], root_name: str):
        self.mount = mount
        self.root = os.path.join(mount, root_name)
        self.controllers = [c for c in V2_CONTROLLERS if c in available]

    def dir(self, project_id: str) -> str:
        return os.path.join(self.root, project_id)

    def _enable(self, d: str) -> None:
        if self.controllers:
            write_text(os.path.join(d, "cgroup.subtree_control"),
                       " ".join("+" + c for c in self.controllers))

    def create(self, project_id, uid, gid, limits):
        """Project group, its ``daemon`` leaf and the exec-group pool, all root's: the
        project cannot write the common ancestor's ``cgroup.procs`` (the project group's),
        which v2 requires for any move between two of its groups."""
        _check_name(project_id)
        _makedirs_readable(self.root)
        self._enable(self.mount)
        self._enable(self.root)
        d = self.dir(project_id)
        leaf = os.path.join(d, V2_DAEMON_LEAF)
        _makedirs_readable(leaf)
        slots = [slot_name(i) for i in range(POOL_SLOTS)]
        if os.geteuid() == 0:
            _root_layout(d, [V2_DAEMON_LEAF, *slots])
            _root_layout(leaf, ())
        self._enable(d)
        stale = read_int(os.path.join(d, "pids.current"), 1) != 0
        for name in slots:
            sd = os.path.join(d, name)
            existed = os.path.isdir(sd)
            _mkdir_readable(sd)
            if existed and stale and procs_of(sd):
                self._kill_dir(sd)
        self.apply_limits(project_id, limits)
        return {"unified": d}

    def apply_limits(self, project_id, limits):
        d = self.dir(project_id)
        if not os.path.isdir(d):
            return
        if "memory" in self.controllers:
            v = "max" if limits.memory_bytes is None else str(limits.memory_bytes)
            write_text(os.path.join(d, "memory.max"), v)
            swap = os.path.join(d, "memory.swap.max")
            if os.path.exists(swap):
                write_text(swap, "0" if limits.memory_bytes is not None else "max")
        if "pids" in self.controllers:
            write_text(os.path.join(d, "pids.max"),
                       "max" if limits.pids is None else str(limits.pids + PIDS_HEADROOM))
        if "cpu" in self.controllers:
            quota = "max" if limits.cpu_cores is None else str(max(1000, int(limits.cpu_cores * CFS_PERIOD_US)))
            write_text(os.path.join(d, "cpu.max"), f"{quota} {CFS_PERIOD_US}")
            # cpu.shares 1024 == cpu.weight 100 (the systemd mapping, clamped to 1..10000)
            weight = max(1, min(10000, round((limits.cpu_shares or 1024) * 100 / 1024)))
            write_text(os.path.join(d, "cpu.weight"), str(weight))

    def daemon_env(self, project_id):
        d = self.dir(project_id)
        return {"version": "v2", "dirs": {"unified": d}, "home": {"unified": os.path.join(d, V2_DAEMON_LEAF)}}

    def open_daemon_fds(self, project_id):
        d = self.dir(project_id)
        spec: dict = {"slots": POOL_SLOTS, "fds": {}, "home_fds": {}}
        fds: list[int] = []
        _room_for_fds(POOL_SLOTS * len(V2_SLOT_FILES) + len(V2_HOME_FILES))
        try:
            for name in V2_HOME_FILES:
                fd = _open_for_daemon(os.path.join(d, V2_DAEMON_LEAF, name))
                fds.append(fd)
                spec["home_fds"][f"unified/{name}"] = fd
            for name in V2_SLOT_FILES:
                paths = [os.path.join(d, slot_name(i), name) for i in range(POOL_SLOTS)]
                _open_columns(spec, fds, f"unified/{name}", paths, optional=name != "cgroup.procs")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return spec, fds

    def join_dirs(self, project_id):
        return [os.path.join(self.dir(project_id), V2_DAEMON_LEAF)]

    def bind_dirs(self, project_id):
        return [self.dir(project_id)]

    def project_ids(self):
        if not os.path.isdir(self.root):
            return []
        return sorted(e.name for e in os.scandir(self.root) if e.is_dir())

    def pids(self, project_id):
        return sorted(procs_of(self.dir(project_id)))

    def _kill_dir(self, d: str, timeout_s: float = 5.0) -> list[int]:
        return kill_groups([d], freezer_dir=d, freeze_file="cgroup.freeze",
                           kill_file=os.path.join(d, "cgroup.kill"), timeout_s=timeout_s)

    def kill(self, project_id, timeout_s=5.0):
        return self._kill_dir(self.dir(project_id), timeout_s)

    def remove(self, project_id, timeout_s=2.0):
        remove_tree(self.dir(project_id), timeout_s)


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or name.startswith(".") or len(name) > 200:
        raise ValueError(f"project_id: not usable as a cgroup name: {name!r}")


def make_driver(root_name: str, mounts: Mounts | None = None) -> CgroupDriver | None:
    """The usable driver on this machine, or None (not root / nothing writable).

    v1 wins when its memory and pids controllers are mounted, because a controller
    can only be attached to one hierarchy: on a hybrid host the unified tree has none.
    """
    m = mounts or discover_mounts()
    if "memory" in m.v1 and "pids" in m.v1:
        if all(os.access(p, os.W_OK) for p in m.v1.values()):
            return V1Driver(m.v1, root_name)
    if m.v2 and {"memory", "pids"} <= m.v2_controllers and os.access(m.v2, os.W_OK):
        return V2Driver(m.v2, m.v2_controllers, root_name)
    return None
