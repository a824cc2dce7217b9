"""Capability probe: which isolation layers are really enforced on this machine.

Nothing is inferred from config or from a binary being present: the probe
creates a throw-away cgroup with limits and reads them back, then starts the
real sandbox once (same argv builder as project daemons) with a shell that
reports its uid, namespaces, capabilities, no_new_privs, /tmp size, whether it
can read /etc/shadow and whether it can create a child cgroup.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from . import bwrap as bw
from . import disk
from . import network
from .cgroups import make_driver, read_int, read_text, discover_mounts, slot_name
from .limits import ProjectLimits
from .users import drop_argv, setpriv_path, write_identity_files

NAMESPACES = ("mnt", "pid", "ipc", "uts", "net")
_NS_LAYER = {"mnt": "mount-namespace", "pid": "pid-namespace", "ipc": "ipc-namespace",
             "uts": "uts-namespace", "net": "net-namespace"}


class Layer(NamedTuple):
    name: str
    enforced: bool
    detail: str


@dataclass
class CapabilityReport:
    mode: str                        # "bwrap" (root + per-project uid) | "bwrap-rootless" | "none"
    cgroup_version: str | None       # "v1" | "v2" | None
    layers: list[Layer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def all_enforced(self) -> bool:
        return all(layer.enforced for layer in self.layers)

    def missing(self) -> list[str]:
        return [layer.name for layer in self.layers if not layer.enforced]

    def layer(self, name: str) -> Layer | None:
        return next((layer for layer in self.layers if layer.name == name), None)

    def enforced(self, name: str) -> bool:
        layer = self.layer(name)
        return bool(layer and layer.enforced)

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "cgroup_version": self.cgroup_version,
                "all_enforced": self.all_enforced, "missing": self.missing(),
                "layers": [layer._asdict() for layer in self.layers], "notes": list(self.notes)}

    def to_text(self) -> str:
        lines = [f"isolation mode: {self.mode}; cgroups: {self.cgroup_version or 'unavailable'}"]
        for layer in self.layers:
            lines.append(f"  [{'  OK  ' if layer.enforced else 'MISSING'}] {layer.name}: {layer.detail}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        if not self.all_enforced:
            lines.append("WARNING: projects are NOT fully isolated; missing: " + ", ".join(self.missing()))
        return "\n".join(lines)


_SCRIPT = r"""
echo "uid=$(id -u)"
if cat /etc/shadow >/dev/null 2>&1; then echo shadow=readable; else echo shadow=denied; fi
for n in mnt pid ipc uts net; do echo "ns_$n=$(readlink /proc/self/ns/$n)"; done
grep -E '^(NoNewPrivs|CapEff|CapBnd|CapPrm):' /proc/self/status | tr -d '\t ' | tr ':' '='
echo "tmp=$(awk '$2 == "/tmp" {print $4}' /proc/self/mounts | tail -n 1)"
if unshare -U true 2>/dev/null; then echo userns=open; else echo userns=blocked; fi
if [ -n "$PROBE_CG" ]; then
  if mkdir "$PROBE_CG/child" 2>/dev/null; then rmdir "$PROBE_CG/child"; echo cgmkdir=yes; else echo cgmkdir=no; fi
  w=no
  for f in cgroup.procs tasks pids.max memory.limit_in_bytes memory.max slot-000/cgroup.procs slot-000/tasks slot-000/pids.max; do
    if [ -e "$PROBE_CG/$f" ] && (echo $$ > "$PROBE_CG/$f") 2>/dev/null; then w=yes; fi
  done
  echo cgwrite=$w
  if cat "$PROBE_CG/slot-000/cgroup.procs" >/dev/null 2>&1; then echo cgread=yes; else echo cgread=no; fi
fi
"""


def probe(data_dir: Path | str, *, mode: str = "auto", cgroup_root_name: str = "projecthub",
          uid_range: tuple[int, int] = (200000, 299999)) -> CapabilityReport:
    data_dir = Path(data_dir)
    if mode not in ("auto", "bwrap", "none"):
        raise ValueError(f"mode: expected 'auto', 'bwrap' or 'none', got {mode!r}")
    root = os.geteuid() == 0
    bwrap_ok, bwrap_detail = _bwrap_works() if mode != "none" else (False, "disabled by mode=none")
    use_bwrap = bwrap_ok
    eff_mode = ("bwrap" if root else "bwrap-rootless") if use_bwrap else "none"
    report = CapabilityReport(mode=eff_mode, cgroup_version=None)
    layers = report.layers

    # --- cgroups: create, limit, read back
    driver = make_driver(cgroup_root_name)
    probe_id = f"probe-{os.getpid()}"
    probe_uid = uid_range[1] if root else None
    cg_dirs: list[str] = []
    if driver is None:
        m = discover_mounts()
        why = "not root" if not root else f"no writable memory+pids controllers (v1: {sorted(m.v1)}, v2: {m.v2})"
        for c in ("memory", "pids", "cpu"):
            layers.append(Layer(f"cgroup-{c}", False, why))
        layers.append(Layer("cgroup-kill", False, why))
    else:
        report.cgroup_version = driver.version
        lim = ProjectLimits(memory_bytes=64 * 2**20, pids=64, cpu_cores=0.5, tmp_bytes=None)
        try:
            dirs = driver.create(probe_id, probe_uid, probe_uid, lim)
            cg_dirs = driver.bind_dirs(probe_id)
            layers.extend(_check_cgroup_values(driver.version, dirs, lim))
            layers.append(_check_kill(driver.version, dirs))
        except OSError as e:
            for c in ("memory", "pids", "cpu"):
                layers.append(Layer(f"cgroup-{c}", False, f"{driver.version}: {e}"))
            layers.append(Layer("cgroup-kill", False, str(e)))
            driver.remove(probe_id)
            driver, cg_dirs = None, []

    try:
        facts = _run_probe_sandbox(data_dir / "probe", use_bwrap, root, probe_uid, cg_dirs)
    finally:
        if driver is not None:
            driver.remove(probe_id)

    layers.insert(0, Layer("bwrap", bwrap_ok, bwrap_detail))
    host_ns = {n: os.readlink(f"/proc/self/ns/{n}") for n in NAMESPACES}
    for n in NAMESPACES:
        inside = facts.get(f"ns_{n}", "")
        own = bool(inside) and inside != host_ns[n]
        layers.append(Layer(_NS_LAYER[n], own, f"own {inside}" if own else "shared with the host"))
    if root:
        uid = facts.get("uid", "?")
        ok = use_bwrap or setpriv_path() is not None
        ok = ok and uid == str(probe_uid) and facts.get("shadow") == "denied"
        layers.insert(1, Layer("uid-per-project", ok,
                               f"sandbox ran as uid {uid}, /etc/shadow {facts.get('shadow', '?')}"))
    else:
        layers.insert(1, Layer("uid-per-project", False,
                               f"server is not root (uid {os.geteuid()}): every project runs as this uid"))
        layers.append(Layer("user-namespace", use_bwrap,
                            "unprivileged bwrap --unshare-user works" if use_bwrap else bwrap_detail))
    nnp = facts.get("NoNewPrivs") == "1"
    layers.append(Layer("no-new-privs", nnp, f"NoNewPrivs={facts.get('NoNewPrivs', '?')}"))
    blocked = facts.get("userns") == "blocked"
    layers.append(Layer("no-nested-userns", blocked,
                        "unshare -U fails inside the sandbox (seccomp filter)" if blocked else
                        "a project can create user namespaces (no libseccomp/pyseccomp, or no bwrap)"))
    caps = facts.get("CapEff"), facts.get("CapBnd")
    nocaps = all(c is not None and int(c, 16) == 0 for c in caps)
    layers.append(Layer("capability-drop", nocaps, f"CapEff={caps[0]} CapBnd={caps[1]}"))
    tmp_opts = facts.get("tmp", "")
    sized = use_bwrap and "size=" in tmp_opts
    layers.append(Layer("tmp-size-limit", sized,
                        f"/tmp tmpfs {tmp_opts}" if sized else "no private size-limited /tmp"
                        + ("" if "--size" in bw.bwrap_features() else " (bwrap lacks --size)")))
    if driver is not None:
        # Issue 14 item 3 (cgroups.py): the project uid owns nothing in its cgroup tree; the
        # daemon writes its exec groups through descriptors the host opened as root.
        locked = (facts.get("cgmkdir"), facts.get("cgwrite"), facts.get("cgread")) == ("no", "no", "yes")
        layers.append(Layer("cgroup-lockdown", locked,
                            "sandboxed uid reads its groups but cannot create groups, move processes "
                            "or change limits (daemon writes through host-opened fds)" if locked else
                            f"sandboxed uid: mkdir={facts.get('cgmkdir')} write={facts.get('cgwrite')} "
                            f"read={facts.get('cgread')} in its cgroup"))
    if not use_bwrap:
        report.notes.append("NO SANDBOX: projects see the host filesystem, processes and network")
    disk_ok, disk_detail = disk.probe(data_dir / "probe")
    layers.append(Layer("disk-limit", disk_ok, disk_detail if disk_ok else
                        disk_detail + "; disk_bytes NOT enforced: " + _disk_note(data_dir)))
    layers.append(_network_layer(use_bwrap and root))
    return report


def _network_layer(sandboxed_root: bool) -> Layer:
    """What ``network=true`` gives here.  Either way no project shares the host's network
    namespace (where it cannot be given it is refused), so the layer holds; the detail says
    which, and why not."""
    hole = network.firewall_hole()
    if hole:
        return Layer("network-egress", False, hole)
    ok, detail = network.support() if sandboxed_root else (False, "needs the bwrap sandbox as root")
    return Layer("network-egress", True, detail if ok else f"network=true is refused here: {detail}")


def _disk_note(data_dir: Path) -> str:
    """Without images, homes live on the data dir's filesystem with no per-project quota:
    say which filesystem a project can fill."""
    best = ("/", "?", "")
    path = os.path.realpath(data_dir)
    for line in (read_text("/proc/self/mounts") or "").splitlines():
        parts = line.split()
        if len(parts) >= 4 and (path == parts[1] or path.startswith(parts[1].rstrip("/") + "/")):
            if len(parts[1]) >= len(best[0]):
                best = (parts[1], parts[2], parts[3])
    quota = any(o in best[2].split(",") for o in ("usrquota", "prjquota", "pquota", "uquota", "quota"))
    return (f"a project can fill {best[1]} at {best[0]} "
            f"(the data dir's filesystem{'; it has quota support, not used yet' if quota else ', mounted without quotas'})")


def _bwrap_works() -> tuple[bool, str]:
    exe = bw.bwrap_path()
    if not exe:
        return False, "bwrap not installed (apt-get install bubblewrap)"
    argv = [exe, "--ro-bind", "/", "/", "--unshare-pid", "--proc", "/proc", "--dev", "/dev"]
    if os.geteuid() != 0:
        argv.append("--unshare-user")
    try:
        r = subprocess.run(argv + ["true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{exe}: {e}"
    if r.returncode != 0:
        return False, f"{exe} fails: {r.stderr.strip()[:200]}"
    ver = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    return True, f"{ver} at {exe}"


def _run_probe_sandbox(base: Path, use_bwrap: bool, root: bool, uid: int | None,
                       cg_dirs: list[str]) -> dict[str, str]:
    home, state, etc = base / "home", base / "state", base / "etc"
    for d in (home, state, etc):
        d.mkdir(parents=True, exist_ok=True)
    gid = uid
    if root and uid is not None:
        for d in (home, state):
            os.chown(d, uid, gid)
    etc_files = write_identity_files(etc, uid if uid is not None else os.getuid(),
                                     gid if gid is not None else os.getgid(), bw.HOME_INSIDE)
    sh = shutil.which("sh") or "/bin/sh"
    inner = [sh, "-c", _SCRIPT]
    if root and uid is not None and setpriv_path():
        inner = drop_argv(uid, gid) + inner
    # a controller with the exec-group pool (v1's cpu has none)
    probe_cg = next((d for d in cg_dirs if os.path.isdir(os.path.join(d, slot_name(0)))),
                    cg_dirs[0] if cg_dirs else "")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PROBE_CG": probe_cg}
    command = None
    if use_bwrap:
        command = bw.build_bwrap_command(privileged=root, network=False, tmp_bytes=16 * 2**20,
                                         home=home, state_dir=state, etc_files=etc_files,
                                         cgroup_dirs=cg_dirs)
        argv = command.argv(inner)
    else:
        argv = inner
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20, env=env, cwd="/",
                           pass_fds=tuple(command.fds) if command else ())
    except (OSError, subprocess.TimeoutExpired):
        return {}
    finally:
        if command is not None:
            command.close()
    facts = {}
    for line in r.stdout.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            facts[k.strip()] = v.strip()
    return facts


def _check_cgroup_values(version: str, dirs: dict[str, str], lim: ProjectLimits) -> list[Layer]:
    out = []
    if version == "v1":
        mem = read_int(os.path.join(dirs.get("memory", "/nonexistent"), "memory.limit_in_bytes"), -1)
        memsw = os.path.exists(os.path.join(dirs.get("memory", "/nonexistent"), "memory.memsw.limit_in_bytes"))
        out.append(Layer("cgroup-memory", mem == lim.memory_bytes,
                         f"v1 memory.limit_in_bytes={mem}" + (" + memsw" if memsw else " (no memsw: swap not limited)")))
        pids = (read_text(os.path.join(dirs.get("pids", "/nonexistent"), "pids.max")) or "").strip()
        out.append(Layer("cgroup-pids", pids.isdigit(), f"v1 pids.max={pids or 'unavailable'}"))
        quota = read_int(os.path.join(dirs.get("cpu", "/nonexistent"), "cpu.cfs_quota_us"), -1)
        out.append(Layer("cgroup-cpu", quota > 0, f"v1 cpu.cfs_quota_us={quota}, cpu.shares"
                         + ("" if "cpuacct" in dirs else "; no cpuacct: per-exec cpu time unknown")))
    else:
        d = dirs["unified"]
        mem = (read_text(os.path.join(d, "memory.max")) or "").strip()
        out.append(Layer("cgroup-memory", mem == str(lim.memory_bytes), f"v2 memory.max={mem or 'unavailable'}"))
        pids = (read_text(os.path.join(d, "pids.max")) or "").strip()
        out.append(Layer("cgroup-pids", pids.isdigit(), f"v2 pids.max={pids or 'unavailable'}"))
        cpu = (read_text(os.path.join(d, "cpu.max")) or "").strip()
        out.append(Layer("cgroup-cpu", bool(cpu) and not cpu.startswith("max"), f"v2 cpu.max={cpu or 'unavailable'}"))
    return out


def _check_kill(version: str, dirs: dict[str, str]) -> Layer:
    if version == "v1":
        if "freezer" in dirs and os.path.exists(os.path.join(dirs["freezer"], "freezer.state")):
            return Layer("cgroup-kill", True, "v1 freezer: freeze, SIGKILL all, thaw")
        return Layer("cgroup-kill", True, "v1 without freezer: SIGKILL loop over cgroup.procs (racy against fork storms)")
    d = dirs["unified"]
    if os.path.exists(os.path.join(d, "cgroup.kill")):
        return Layer("cgroup-kill", True, "v2 cgroup.kill")
    return Layer("cgroup-kill", True, "v2 cgroup.freeze + SIGKILL loop")
