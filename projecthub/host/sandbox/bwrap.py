"""The bubblewrap command line for a project daemon, and the paths it must see.

Mount plan (one long-lived sandbox per project; a bwrap per exec would cost
+4.3-4.7 ms each, baselines §2):

* system dirs read-only (/usr /bin /sbin /lib* /etc; merged-usr symlinks kept
  as symlinks), /etc/passwd|group replaced by the project's generated files and
  /etc/shadow|gshadow by empty ones;
* the Python prefix(es), the venv and the projecthub package read-only at their
  host paths (so ``sys.executable`` and shebangs keep working); their ancestor
  directories are created 0755 because bwrap makes missing parents 0700, which an
  unprivileged uid cannot traverse -- that is how /root/.pyenv/... becomes usable
  while /root itself (0700 on the host) stays invisible;
* fresh /proc (pid namespace) and /dev, a private size-limited tmpfs /tmp;
* writable: HOME and the state dir, at fixed inside paths -- nothing else of the data
  dir, no other project, and not the daemon's socket (the host keeps that outside every
  sandbox, see ``fabric/peer.py``);
* the root tmpfs (the mount points' parents) remounted read-only last: in a rootless
  sandbox it is the project uid's own, and it holds the daemon's ``sys.path`` entry;
* /etc/passwd, /etc/group and the emptied shadow files are copied in from file
  descriptors (``--ro-bind-data``), so no data-dir path shows in the sandbox's mountinfo;
* the project's own cgroup directories, read-only, at their host paths (the daemon
  writes them through descriptors the host opened);
* a seccomp filter that refuses new user namespaces (``seccomp.py``).

Every option reaches bwrap through ``--args FD``: the sandbox's pid 1 is a bwrap
process, and its command line (readable by the project) then shows only the command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..environment import ProjectEnvironment, package_dir, server_environment
from .seccomp import filter_program

HOME_INSIDE = "/home/user"
STATE_INSIDE = "/var/lib/projecthub"
TMP_INSIDE = "/tmp"
SOCKET_NAME = "daemon.sock"

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
HIDDEN_ETC = ("shadow", "gshadow", "shadow-", "gshadow-")


@lru_cache(maxsize=1)
def bwrap_path() -> str | None:
    return shutil.which("bwrap")


@lru_cache(maxsize=1)
def bwrap_features() -> frozenset[str]:
    """Options this bwrap build knows (``--size`` appeared in 0.5, ``--disable-userns`` in 0.8)."""
    exe = bwrap_path()
    if not exe:
        return frozenset()
    try:
        text = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(w for w in text.split() if w.startswith("--"))


# Where the projecthub package is mounted in a sandbox when the environment's interpreter
# does not have it installed: under the read-only root, never at its host path, whose
# parents may lie in a mount the project writes (a checkout in /tmp sat in the sandbox's
# own /tmp, and its parent would be the daemon's first sys.path entry).
PACKAGE_PARENT_INSIDE = "/opt/projecthub/lib"


def code_paths(environment: ProjectEnvironment | None = None) -> tuple[list[str], str | None]:
    """Read-only host paths the daemon's interpreter needs at their own paths (the project
    environment's, see ``host/environment.py``), and the host directory of the projecthub
    package when it must be mounted alone (at ``PACKAGE_PARENT_INSIDE``; None when the
    environment's interpreter has it installed)."""
    env = environment or server_environment()
    pkg_dir = package_dir()
    paths = set(env.ro_paths)
    package: str | None = pkg_dir
    if env.kind == "server":
        if any(_under(pkg_dir, p) for p in paths):
            package = None
        else:
            # the server's own interpreter (embedders, tests) finds an editable install of
            # projecthub at its host path; serve never runs projects on it
            paths.add(pkg_dir)
    return _minimal(p for p in paths if env.rootfs or not _system_covered(p)), package


def daemon_path_entry(environment: ProjectEnvironment | None, sandboxed: bool) -> str:
    """The ``sys.path`` entry the daemon imports projecthub from ("" when installed)."""
    package = code_paths(environment)[1]
    if package is None:
        return ""
    return PACKAGE_PARENT_INSIDE if sandboxed else os.path.dirname(package)


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _system_covered(path: str) -> bool:
    return any(_under(path, d) for d in SYSTEM_DIRS if not os.path.islink(d))


def _minimal(paths) -> list[str]:
    out: list[str] = []
    for p in sorted(set(paths)):
        if os.path.exists(p) and not any(_under(p, q) for q in out):
            out.append(p)
    return out


def data_fd(name: str, data: bytes) -> int:
    """A memfd holding ``data``, positioned at its start (bwrap reads it to the end)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class BwrapCommand:
    """bwrap's options and the fds they name.  ``argv`` hands the options over through
    ``--args FD``; pass ``fds`` to the child (``pass_fds``) and ``close()`` after it started."""
    options: list[str]
    fds: list[int] = field(default_factory=list)
    seccomp: bool = False

    def argv(self, command: list[str]) -> list[str]:
        exe = bwrap_path()
        if not exe:
            raise RuntimeError("bwrap: not installed")
        blob = b"".join(a.encode() + b"\0" for a in self.options)
        fd = data_fd("projecthub-bwrap-args", blob)
        self.fds.append(fd)
        return [exe, "--args", str(fd), "--", *command]

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()


class ArgvBuilder:
    """Accumulates bwrap arguments, creating 0755 parents for every mount point."""

    def __init__(self) -> None:
        self.args: list[str] = []
        self.fds: list[int] = []
        self._made: set[str] = {"/"}

    def _parents(self, dest: str) -> None:
        parts = Path(dest).parts[1:-1]
        cur = ""
        for part in parts:
            cur += "/" + part
            if cur not in self._made:
                self.args += ["--perms", "0755", "--dir", cur]
                self._made.add(cur)

    def mount(self, kind: str, src: str | None, dest: str) -> None:
        self._parents(dest)
        self.args += [kind, src, dest] if src is not None else [kind, dest]
        self._made.add(dest)

    def raw(self, *args: str) -> None:
        self.args += args

    def data(self, kind: str, name: str, data: bytes, dest: str, perms: str = "0444") -> None:
        fd = data_fd(name, data)
        self.fds.append(fd)
        self._parents(dest)
        self.args += ["--perms", perms, kind, str(fd), dest]   # bwrap's default is 0600
        self._made.add(dest)


def build_bwrap_command(*, privileged: bool, network: bool, tmp_bytes: int | None,
                        home: Path, state_dir: Path, etc_files: dict[str, Path],
                        cgroup_dirs: list[str], hostname: str = "project",
                        environment: ProjectEnvironment | None = None,
                        resolv_conf: bytes | None = None) -> BwrapCommand:
    """``network``: True when the caller starts bwrap inside the project's prepared network
    namespace (``network.py``: ``nsenter`` first), False for a fresh one with loopback only.
    Never the host's.  ``resolv_conf``: that namespace's /etc/resolv.conf."""
    if not bwrap_path():
        raise RuntimeError("bwrap: not installed")
    feats = bwrap_features()
    b = ArgvBuilder()
    try:
        _fill(b, feats, privileged=privileged, network=network, tmp_bytes=tmp_bytes, home=home,
              state_dir=state_dir, etc_files=etc_files, cgroup_dirs=cgroup_dirs, hostname=hostname,
              environment=environment or server_environment(), resolv_conf=resolv_conf)
    except BaseException:
        BwrapCommand([], b.fds).close()
        raise
    program = filter_program()
    if program is not None and "--seccomp" in feats:
        fd = data_fd("projecthub-seccomp", program)
        b.fds.append(fd)
        b.raw("--seccomp", str(fd))
    return BwrapCommand(b.args, b.fds, seccomp=program is not None)


def _resolv_conf_path(root: str) -> str | None:
    """Where /etc/resolv.conf really is inside (symlinks followed within ``root``, e.g.
    systemd's /run/systemd/resolve/stub-resolv.conf), if bwrap can put a file there: an
    existing file, or a path outside the read-only system dirs (bwrap creates it on the
    sandbox's root tmpfs).  None: no resolv.conf (a read-only dir without the file)."""
    path = "/etc/resolv.conf"
    for _ in range(8):
        host = root + path
        if os.path.islink(host):
            target = os.readlink(host)
            path = os.path.normpath(target if target.startswith("/") else
                                    os.path.join(os.path.dirname(path), target))
            continue
        if os.path.isfile(host):
            return path
        if os.path.lexists(host):
            return None
        return None if any(_under(path, d) for d in SYSTEM_DIRS) else path
    return None


def _fill(b: ArgvBuilder, feats: frozenset[str], *, privileged: bool, network: bool,
          tmp_bytes: int | None, home: Path, state_dir: Path, etc_files: dict[str, Path],
          cgroup_dirs: list[str], hostname: str, environment: ProjectEnvironment,
          resolv_conf: bytes | None = None) -> None:
    b.raw("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", hostname)
    if not network:
        b.raw("--unshare-net")
    if privileged:
        # Root-run bwrap (no user namespace).  Keep only what setpriv needs to drop
        # to the project uid; setpriv then empties every capability set.
        b.raw("--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
              "--cap-add", "CAP_SETPCAP")
    else:
        b.raw("--unshare-user")
        if "--disable-userns" in feats:
            b.raw("--disable-userns")
    # The system directories: the host's, or an unpacked image's (--project-rootfs)
    root = environment.rootfs or ""
    for d in SYSTEM_DIRS:
        src = root + d
        if os.path.islink(src):
            b.raw("--symlink", os.readlink(src), d)
        elif os.path.isdir(src):
            b.mount("--ro-bind", src, d)
    for name in ("passwd", "group"):
        if name in etc_files:
            b.data("--ro-bind-data", name, Path(etc_files[name]).read_bytes(), f"/etc/{name}")
    for name in HIDDEN_ETC:
        src = etc_files.get(name.rstrip("-"))
        if src and os.path.exists(f"{root}/etc/{name}"):
            b.data("--ro-bind-data", name, Path(src).read_bytes(), f"/etc/{name}", perms="0400")
    b.mount("--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu")
    if network and resolv_conf is not None:
        # the host's upstream resolvers (network.py): its 127.0.0.x stub is out of reach
        dest = _resolv_conf_path(root)
        if dest:
            b.data("--ro-bind-data", "resolv.conf", resolv_conf, dest)
    b.mount("--proc", None, "/proc")
    b.mount("--dev", None, "/dev")
    if tmp_bytes is not None and "--size" in feats:
        b.raw("--size", str(tmp_bytes))
    b.raw("--perms", "1777")
    b.mount("--tmpfs", None, TMP_INSIDE)
    b.mount("--symlink", "/tmp", "/var/tmp")
    ro, package = code_paths(environment)
    for p in ro:
        b.mount("--ro-bind", p, p)
    if package is not None:
        b.mount("--ro-bind", package, f"{PACKAGE_PARENT_INSIDE}/{os.path.basename(package)}")
    for p in environment.masked_paths:
        # the base interpreter's site-packages: the server machine's packages, not the
        # project environment's (a managed venv enables it only for the user site)
        if os.path.isdir(p) and any(_under(p, q) for q in ro + list(SYSTEM_DIRS)):
            b.raw("--perms", "0755", "--tmpfs", p, "--remount-ro", p)
    b.mount("--bind", str(home), HOME_INSIDE)
    b.mount("--bind", str(state_dir), STATE_INSIDE)
    for d in cgroup_dirs:
        # read-only: the daemon writes its groups only through descriptors the host opened
        # (tracker.py), so nothing inside needs a writable cgroup path.
        b.mount("--ro-bind", d, d)
    # Last mount operation: the root tmpfs read-only.  It holds the directories bwrap made
    # for the mounts above (e.g. the daemon's sys.path entry, the projecthub package's
    # parent); in a rootless sandbox (user namespace) they belong to the project's uid, which
    # could otherwise plant a module there that the daemon imports.  As root they are root's.
    b.raw("--remount-ro", "/")
    # The daemon works from "/", never from the home (whose files are hostile to it);
    # user processes get their cwd explicitly.
    b.raw("--chdir", "/")
