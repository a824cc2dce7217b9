"""Sandbox: prepares a project's dirs, uid and cgroup, and builds the command that
starts its daemon inside bwrap.  Host-side; the daemon side is ``tracker.py``.

Start chain in root mode (decisions and numbers in the package docstring):

    [preexec: join project cgroup; setsid]  bwrap (root, caps cut to SETUID/SETGID/SETPCAP)
        -> setpriv --reuid/--regid/--clear-groups/--no-new-privs/no caps
        -> setsid -w -> python -m projecthub.project.daemon ...
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil

from ..environment import ProjectEnvironment, server_environment
from . import bwrap as bw
from . import disk
from . import network as net
from .cgroups import CgroupDriver, make_driver
from .limits import ProjectLimits
from .probe import CapabilityReport, probe
from .tracker import ENV_VAR as CGROUP_ENV
from .users import UidAllocator, drop_argv, setpriv_path, write_identity_files

# Lets the no-cgroup fallback find a project's processes.  The value is
# "<instance tag>:<project id>": the tag (a hash of the data dir) keeps two Sandbox
# instances on one machine (tests, a second server) from killing each other's daemons.
MARKER_ENV = "PROJECTHUB_SANDBOX_PROJECT"


@dataclass
class SandboxConfig:
    data_dir: Path
    mode: str = "auto"                      # "auto" | "bwrap" | "none"
    uid_range: tuple[int, int] = (200000, 299999)
    cgroup_root_name: str = "projecthub"    # /sys/fs/cgroup/<ctrl>/projecthub/<project_id>
    require_isolation: bool = False
    defaults: ProjectLimits = field(default_factory=ProjectLimits)
    # The software projects run (host/environment.py); serve resolves a managed one.
    environment: ProjectEnvironment = field(default_factory=server_environment)


@dataclass
class PreparedProject:
    project_id: str
    uid: int | None                         # None: runs as the server's uid (not root)
    gid: int | None
    home_outside: Path
    home_inside: str                        # HOME as the daemon sees it
    state_outside: Path
    state_inside: str
    tmp_inside: str
    cgroup: dict[str, str] | None           # controller -> cgroup dir (same path inside)
    limits: ProjectLimits = field(default_factory=ProjectLimits)
    etc_files: dict[str, Path] = field(default_factory=dict)
    cgroup_env: dict[str, Any] | None = None
    network: net.Attachment | None = None   # network=true: its netns, veth and resolv.conf


class Sandbox:
    def __init__(self, config: SandboxConfig):
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):   # the probe then reports what is still missing
            net.repair_firewall()
        self.report: CapabilityReport = probe(self.data_dir, mode=config.mode,
                                              cgroup_root_name=config.cgroup_root_name,
                                              uid_range=config.uid_range)
        if config.mode == "bwrap" and not self.report.mode.startswith("bwrap"):
            raise RuntimeError("sandbox mode 'bwrap' requested but bwrap does not work:\n" + self.report.to_text())
        if config.require_isolation and not self.report.all_enforced:
            raise RuntimeError("require_isolation is set but layers are missing:\n" + self.report.to_text())
        self.is_root = os.geteuid() == 0
        self.use_bwrap = self.report.mode.startswith("bwrap")
        if not self.use_bwrap and self.is_root:
            # Mode "none": daemons run as their project's uid on the host's filesystem and
            # must traverse the data dir to their home (0711: not listable; hub.db stays 0600).
            os.chmod(self.data_dir, 0o711)
        self.driver: CgroupDriver | None = (make_driver(config.cgroup_root_name)
                                            if self.report.cgroup_version else None)
        self.uids = UidAllocator(self.data_dir, config.uid_range)
        self._setsid = shutil.which("setsid")
        self._prepared: dict[str, PreparedProject] = {}
        self._tag = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:12]
        # disk_bytes is enforced only where the probe really filled a loop-mounted image
        self.disk_enforced = self.report.enforced("disk-limit")
        # network=true: a netns + veth + NAT per project (network.py), never the host's netns
        self.network = net.ProjectNetworks(self._tag)
        if config.defaults.network:
            self._check_network()

    # ------------------------------------------------------------------ prepare

    def project_dir(self, project_id: str) -> Path:
        return self.data_dir / "projects" / project_id

    def prepare(self, project_id: str, uid: int | None, limits: ProjectLimits) -> PreparedProject:
        _check_project_id(project_id)
        if self.is_root:
            uid = self.uids.uid_for(project_id, uid)
            gid: int | None = uid
        else:
            uid = gid = None  # no per-project uid without root
        base = self.project_dir(project_id)
        projects = base.parent
        projects.mkdir(parents=True, exist_ok=True)
        os.chmod(projects, 0o711)   # traversable (mode none), not listable
        base.mkdir(exist_ok=True)
        os.chmod(base, 0o711)
        if self.disk_enforced or disk.image_path(base).exists():
            # home and state live in the project's image from here on (disk.py);
            # the loop below then sets owners and modes inside it.  An existing image is
            # mounted even if the probe failed: the files are in there (no mount: no start).
            disk.attach(base, limits.disk_bytes)
        home, state, etc = base / "home", base / "state", base / "etc"
        for d, mode in ((home, 0o700), (state, 0o700), (etc, 0o755)):
            d.mkdir(exist_ok=True)
            os.chmod(d, mode)
            if uid is not None and d is not etc:
                os.chown(d, uid, gid)
        etc_files = write_identity_files(etc, uid if uid is not None else os.getuid(),
                                         gid if gid is not None else os.getgid(),
                                         bw.HOME_INSIDE if self.use_bwrap else str(home))
        cgroup = cg_env = None
        if self.driver is not None:
            cgroup = self.driver.create(project_id, uid, gid, limits)
            cg_env = self.driver.daemon_env(project_id)
        attachment = None
        if limits.network:
            self._check_network()
            attachment = self.network.setup(project_id)   # also removes an earlier start's
        else:
            self.network.teardown(project_id)   # network was on at the last start
        inside = self.use_bwrap
        p = PreparedProject(
            project_id=project_id, uid=uid, gid=gid,
            home_outside=home, home_inside=bw.HOME_INSIDE if inside else str(home),
            state_outside=state, state_inside=bw.STATE_INSIDE if inside else str(state),
            tmp_inside=bw.TMP_INSIDE if inside else str(self._plain_tmp(base, uid, gid)),
            cgroup=cgroup, limits=limits, etc_files=etc_files, cgroup_env=cg_env,
            network=attachment)
        self._prepared[project_id] = p
        return p

    def _plain_tmp(self, base: Path, uid: int | None, gid: int | None) -> Path:
        # Mode "none": a per-project tmp dir on the data disk (no size limit).
        tmp = base / "tmp"
        tmp.mkdir(exist_ok=True)
        os.chmod(tmp, 0o700)
        if uid is not None:
            os.chown(tmp, uid, gid)
        return tmp

    # ------------------------------------------------------------------ daemon start

    def daemon_path_entry(self) -> str:
        """Where the daemon imports projecthub from when it is not installed in the
        interpreter's prefix (a source checkout, read-only in the sandbox), else ""."""
        return bw.daemon_path_entry(self.config.environment, sandboxed=self.use_bwrap)

    def daemon_command(self, prepared: PreparedProject, inner_argv: list[str],
                       env: dict[str, str]) -> tuple[list[str], dict]:
        """The daemon's argv and Popen kwargs.  ``kwargs["pass_fds"]`` are fds bwrap reads
        at start; the caller closes them after the spawn."""
        p = prepared
        child_env = dict(env)  # nothing of the server's own environment
        child_env[MARKER_ENV] = f"{self._tag}:{p.project_id}"
        if p.cgroup_env:
            child_env[CGROUP_ENV] = json.dumps(p.cgroup_env)
        drop = drop_argv(p.uid, p.gid) if p.uid is not None else []
        fds: list[int] = []
        if self.use_bwrap:
            command = bw.build_bwrap_command(
                privileged=self.is_root, network=p.network is not None, tmp_bytes=p.limits.tmp_bytes,
                home=p.home_outside, state_dir=p.state_outside, etc_files=p.etc_files,
                cgroup_dirs=self.driver.bind_dirs(p.project_id) if self.driver and p.cgroup else [],
                environment=self.config.environment,
                resolv_conf=p.network.resolv_conf if p.network else None)
            # setsid inside: the daemon becomes its own session and process-group leader
            # (not in bwrap-init's), with no controlling terminal.  -w only matters if
            # setsid had to fork, which it does not here (pid 2 is not a group leader).
            sess = [self._setsid, "-w"] if self._setsid else []
            if not sess:
                command.options.append("--new-session")
            argv = command.argv(drop + sess + list(inner_argv))
            if p.network is not None:
                argv = p.network.enter_argv() + argv   # nsenter execs bwrap: same pid
            fds = command.fds
            cwd = "/"
        else:
            argv = drop + list(inner_argv)
            cwd = "/"
        join = self.driver.join_dirs(p.project_id) if self.driver and p.cgroup else []
        kwargs: dict[str, Any] = {
            "env": child_env,
            "cwd": cwd,
            # New session on the host: the outer bwrap leaves the hub's session and
            # process group, so ^C/SIGHUP aimed at the hub never reach the project
            # and the daemon outlives a hub restart (no --die-with-parent either).
            "start_new_session": True,
            "close_fds": True,
            "pass_fds": tuple(fds),
        }
        if join or self.is_root:
            # Root: pin the daemon's oom_score_adj (and, since root writes it, its
            # oom_score_adj_min) to 0 -- never the server's own value, and a floor that
            # user code cannot go below; see tracker.py for why children sit above it.
            kwargs["preexec_fn"] = _cgroup_joiner(join, oom_score_adj=0 if self.is_root else None)
        return argv, kwargs

    # ------------------------------------------------------------------ cgroup descriptors
    # Issue 14 item 3 (cgroups.py has the why): the project uid may write no cgroup file,
    # so the daemon writes its exec groups through descriptors the host opens as root.

    def open_cgroup_fds(self, prepared: PreparedProject) -> list[int]:
        """Open the cgroup files ``prepared``'s daemon writes and describe them in its
        ``PROJECTHUB_CGROUPS`` (call before ``daemon_command``).  The caller passes the
        descriptors to the daemon (``pass_fds``) and closes its own copies once it has
        started.  [] when the project has no cgroups."""
        if self.driver is None or prepared.cgroup is None or prepared.cgroup_env is None:
            return []
        spec, fds = self.driver.open_daemon_fds(prepared.project_id)
        prepared.cgroup_env = {**prepared.cgroup_env, **spec}
        return fds

    # ------------------------------------------------------------------ running projects

    def check_limits(self, project_id: str, limits: ProjectLimits) -> None:
        """ValueError for limits that cannot apply to this project (disk_bytes below use)."""
        _check_project_id(project_id)
        disk.check_new_limit(self.project_dir(project_id), limits.disk_bytes)
        if limits.network:
            self._check_network()   # applies at the next start (the netns is made then)

    def _check_network(self) -> None:
        """ValueError when ``network=true`` cannot be given here (and why)."""
        why = "needs the bwrap sandbox as root" if not (self.use_bwrap and self.is_root) else \
            net.prerequisites(self.network.pool_text)
        if why:
            raise ValueError(f"network: not available on this host: {why}")

    def update_limits(self, project_id: str, limits: ProjectLimits) -> None:
        if limits.disk_bytes is not None and disk.attached(self.project_dir(project_id)):
            # grown online where the kernel lets us; a shrink (or no CAP_SYS_RESOURCE): next start
            disk.grow(self.project_dir(project_id), limits.disk_bytes)
        if self.driver is not None and project_id in self.driver.project_ids():
            self.driver.apply_limits(project_id, limits)
        if project_id in self._prepared:
            self._prepared[project_id].limits = limits

    def stop_project(self, project_id: str, timeout_s: float = 5.0) -> None:
        _check_project_id(project_id)
        try:
            if self.driver is not None and project_id in self.driver.project_ids():
                self.driver.kill(project_id, timeout_s)
                self.driver.remove(project_id, timeout_s=timeout_s)
            # Also the fallback sweep: catches anything started before cgroups existed
            # or by mode "none" without cgroups.
            _kill_matching(lambda proc: self._belongs(proc, project_id), timeout_s)
        finally:
            try:
                # its veth, netns and firewall entry (network=true): none outlives the stop
                self.network.teardown(project_id)
            finally:
                # Unmount the project's image (frees the loop device) even if a kill step
                # failed: a mount still in use is detached lazily and freed with its last user.
                disk.detach(self.project_dir(project_id))

    def disk_bytes_applied(self, project_id: str) -> int | None:
        """The size of the project's image now: what really bounds it (a shrink that could
        not apply at start leaves it above ``disk_bytes``); None without an image."""
        _check_project_id(project_id)
        return disk.image_size(self.project_dir(project_id))

    def purge_project(self, project_id: str) -> None:
        """Delete a stopped, deleted project's files (its image and directories): the data
        disk gets the space back.  There is no undelete."""
        _check_project_id(project_id)
        disk.purge(self.project_dir(project_id))

    def running_projects(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        if self.driver is not None:
            for pid_ in self.driver.project_ids():
                if not self._ours(pid_):
                    continue
                pids = self.driver.pids(pid_)
                if pids:
                    out[pid_] = pids
            return out
        for proc in psutil.process_iter():
            proj = self._owner(proc)
            if proj:
                out.setdefault(proj, []).append(proc.pid)
        return out

    def kill_strays(self, known_project_ids: set[str]) -> list[int]:
        killed: list[int] = []
        if self.driver is not None:
            for proj in self.driver.project_ids():
                # Only groups of THIS data dir: another server on the same machine (a
                # second data dir, a test run) shares the cgroup root and uid range, and
                # its projects are not ours to kill just because our store lacks them.
                if proj not in known_project_ids and self._ours(proj):
                    killed += self.driver.kill(proj)
                    self.driver.remove(proj)
        killed += _kill_matching(lambda proc: (o := self._owner(proc)) is not None
                                 and o not in known_project_ids, 5.0)
        # networks a crash or a lost daemon left (network.py): only running projects keep one
        self.network.sweep(set(self.running_projects()))
        return sorted(set(killed))

    # ------------------------------------------------------------------ fallback matching

    def _ours(self, project_id: str) -> bool:
        """A project prepared from this data dir (probe groups never are)."""
        return (not project_id.startswith(("probe-", ".")) and "/" not in project_id
                and self.project_dir(project_id).is_dir())

    def _owner(self, proc: psutil.Process) -> str | None:
        """The project a process belongs to, by cgroup, per-project uid or env marker.

        A process inside some project's cgroup belongs to that project -- and to us only
        if that project is ours: uids are allocated per data dir, so a second server on
        this machine hands out the same numbers and its processes must not be matched.
        """
        try:
            if proc.pid == os.getpid():
                return None
            if self.driver is not None:
                group = _cgroup_project(proc.pid, self.config.cgroup_root_name)
                if group is not None:
                    return group if self._ours(group) else None
            if self.is_root:
                uid = proc.uids().real
                if self.uids.in_range(uid):
                    by_uid = {u: p for p, u in self.uids.lookup().items()}
                    if uid in by_uid:
                        return by_uid[uid]
            tag, _, project = proc.environ().get(MARKER_ENV, "").partition(":")
            return project if tag == self._tag and project else None
        except (psutil.Error, OSError):
            return None

    def _belongs(self, proc: psutil.Process, project_id: str) -> bool:
        return self._owner(proc) == project_id


def _cgroup_project(pid: int, root_name: str) -> str | None:
    """The project id in ``/<root_name>/<id>/...`` of the process's cgroup paths, if any."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            text = f.read()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split(":", 2)[-1].strip("/").split("/")
        for i, part in enumerate(parts[:-1]):
            if part == root_name:
                return parts[i + 1]
    return None


def _kill_matching(match: Callable[[psutil.Process], bool], timeout_s: float) -> list[int]:
    killed: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        found = [p for p in psutil.process_iter() if p.pid != os.getpid() and match(p)]
        live = [p for p in found if _alive(p)]
        if not live or time.monotonic() > deadline:
            return sorted(killed)
        for p in live:
            try:
                os.kill(p.pid, signal.SIGKILL)
                killed.add(p.pid)
            except ProcessLookupError:
                pass
        time.sleep(0.02)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cgroup_joiner(dirs: list[str], oom_score_adj: int | None = None) -> Callable[[], None]:
    paths = [os.path.join(d, "cgroup.procs") for d in dirs]
    adj = None if oom_score_adj is None else str(oom_score_adj).encode()

    def join() -> None:
        # Runs in the forked child before exec (root): only os.open/os.write.
        me = str(os.getpid()).encode()
        for path in paths:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, me)
            finally:
                os.close(fd)
        if adj is not None:
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            try:
                os.write(fd, adj)
            finally:
                os.close(fd)
    return join


def _check_project_id(project_id: str) -> None:
    if (not project_id or len(project_id) > 128 or project_id.startswith((".", "-", "probe-"))
            or not all(c.isalnum() or c in "-_." for c in project_id)):
        raise ValueError(f"project_id: must be 1-128 of [A-Za-z0-9._-], got {project_id!r}")
