"""Review of the project software environment and network egress, as a hostile project (or
local user) would attack them: each test is an attack that worked before its fix.

* Rootless sandboxes: bwrap creates the mount points' parent directories (the daemon's import
  path entry among them) on the sandbox's root tmpfs, which is the project's own in a user
  namespace: a planted ``zmq.py`` there would run inside the daemon on its next lazy import.
* A networked project filled the host's connection-tracking table (shared by the host's own
  connections: the hub's port among them) at ~45,000 entries a second.
* The machine-wide network lock sat in a world-writable directory, where any local user could
  create it first and hold it: every networked start then hung.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from projecthub.host.environment import ProjectEnvironment
from projecthub.host.sandbox import bwrap as bw
from projecthub.host.sandbox import network
from projecthub.host.sandbox.users import write_identity_files
from tests.conftest import have_bwrap, require
from tests.security.conftest import Proj, new_project, require_sandbox
from tests.security.test_network import forwarding, testnet  # noqa: F401  (its module-scoped fixtures, shared)
from tests.server import Account, Server

pytestmark = pytest.mark.timeout(300)

NOBODY = 65534


def _require_unprivileged_bwrap() -> None:
    require("root (to drop to an unprivileged uid), setpriv and bubblewrap",
            os.geteuid() == 0 and shutil.which("setpriv") is not None and have_bwrap())
    probe = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                            bw.bwrap_path() or "bwrap", "--unshare-user", "--ro-bind", "/", "/", "true"],
                           capture_output=True, timeout=30)
    require("unprivileged user namespaces (rootless bwrap)", probe.returncode == 0)


@contextlib.contextmanager
def _as_nobody_dir() -> Iterator[Path]:
    """A scratch directory an unprivileged uid can reach (pytest's tmp_path is 0700 root)."""
    d = Path(tempfile.mkdtemp(prefix="ph-review-"))
    try:
        os.chmod(d, 0o755)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- 1. rootless mount plan

def test_rootless_sandbox_cannot_plant_modules_on_the_daemons_import_path() -> None:
    """The daemon of a rootless server starts as ``python -I -c BOOT ENTRY``, with ENTRY (the
    projecthub package's parent: a source checkout, or the server's site-packages of which only
    projecthub is mounted) first on its ``sys.path``.  bwrap made ENTRY as a mount point's
    parent on the root tmpfs, owned by the project's uid in its user namespace: the project
    could write ``ENTRY/zmq.py`` and run code inside its own non-dumpable daemon."""
    _require_unprivileged_bwrap()
    with _as_nobody_dir() as d:
        home, state = d / "home", d / "state"
        for sub in (home, state):
            sub.mkdir()
            os.chown(sub, NOBODY, NOBODY)
        etc_files = write_identity_files(d / "etc", NOBODY, NOBODY, bw.HOME_INSIDE)
        # the host's /usr/bin/python3 stands for the project environment (the managed one may
        # sit under a directory this uid cannot traverse, e.g. /root/.cache)
        env = ProjectEnvironment(kind="external", python="/usr/bin/python3", bin_dirs=("/usr/bin",))
        entry = bw.daemon_path_entry(env, sandboxed=True)
        assert entry, "projecthub is mounted alone: the daemon gets its parent as a sys.path entry"
        cmd = bw.build_bwrap_command(privileged=False, network=False, tmp_bytes=None, home=home,
                                     state_dir=state, etc_files=etc_files, cgroup_dirs=[],
                                     environment=env)
        script = ("for d in \"$@\"; do if (echo 'raise SystemExit(1)' > \"$d/zmq.py\") 2>/dev/null; "
                  "then echo \"WROTE $d\"; else echo \"denied $d\"; fi; done; "
                  "mkdir /run 2>/dev/null && echo 'WROTE /run'; true")
        targets = [entry, os.path.dirname(entry), "/", bw.HOME_INSIDE, bw.TMP_INSIDE, bw.STATE_INSIDE]
        argv = cmd.argv(["/bin/sh", "-c", script, "sh", *targets])
        try:
            r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                                *argv], pass_fds=cmd.fds, capture_output=True, text=True, timeout=60)
        finally:
            cmd.close()
        assert r.returncode == 0, r.stderr
        wrote = [line[6:] for line in r.stdout.splitlines() if line.startswith("WROTE ")]
        # the project's own writable places still are; nothing else of the sandbox's root is
        assert sorted(wrote) == sorted([bw.HOME_INSIDE, bw.TMP_INSIDE, bw.STATE_INSIDE]), r.stdout


def test_a_local_user_cannot_plant_the_managed_environment() -> None:
    """A managed environment in a directory another local user controls (a shared cache dir,
    HOME kept by ``sudo -E``, a group-writable /opt): that user plants ``current`` ->
    ``gen-1`` with their own ``bin/python``.  Every project would run it, and the host runs it
    too, as the server's user: ``env status`` (and serve's checks) ran it as root."""
    require("root, to play both the server and another local user", os.geteuid() == 0)
    with _as_nobody_dir() as d:
        shared = d / "shared"
        shared.mkdir()
        os.chown(shared, NOBODY, NOBODY)     # the other user's directory
        root = shared / "project-env"
        gen = root / "gen-1"
        (gen / "bin").mkdir(parents=True)
        python = gen / "bin" / "python"
        python.write_text(f"#!/bin/sh\nid -u > {shared}/ran-as-$(id -u)\necho '[]'\n")
        python.chmod(0o755)
        (gen / "projecthub-env.json").write_text(json.dumps({"packages": [], "masked_paths": []}))
        os.symlink("gen-1", root / "current")
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                os.lchown(name, NOBODY, NOBODY)
        from tests.server import PROJECTHUB
        r = subprocess.run([*PROJECTHUB, "env", "status", "--env-dir", str(root)], capture_output=True,
                           text=True, timeout=60)
        ran = sorted(p.name for p in shared.glob("ran-as-*"))
        assert ran == [], f"the host ran another user's python: {ran}"
        assert r.returncode == 2, r.stdout + r.stderr
        error = json.loads(r.stdout)["error"]
        assert f"owned by uid {NOBODY}" in error and str(shared) in error, error
        # serve refuses it the same way (before any project starts)
        from projecthub.host import environment
        with pytest.raises(environment.EnvironmentError_, match="another user could change"):
            environment.resolve(d / "data", project_env=str(root), build_missing=False)
        # a build there is refused too, before anything is created
        r = subprocess.run([*PROJECTHUB, "env", "build", "--env-dir", str(shared / "new-env")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "another user could change" in r.stdout, r.stdout + r.stderr
        assert not (shared / "new-env").exists()


# ---------------------------------------------------------------- 2. connection tracking

# In the project: one datagram from each of N fresh sockets (a new source port: a new flow,
# so a new entry in the host's connection-tracking table), as fast as it can.
FLOOD = r"""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sent = 0
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x", (host, port))
        sent += 1
    except OSError:
        pass
    s.close()
print(sent)
"""

# In the test namespace: how many distinct flows (source address and port) arrived.
COUNTER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)   # SO_RCVBUFFORCE (root): no drops in a burst
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
s.settimeout(float(sys.argv[2]))
seen = set()
try:
    while True:
        seen.add(s.recvfrom(16)[1])
except socket.timeout:
    pass
print(len(seen), flush=True)
"""


@pytest.fixture(scope="module")
def admin(server: Server) -> Account:
    out = server.cli("account", "create", "--name", "Review Network Admin", "--admin")
    return Account(out["account_id"], out["api_key"])


def _sandbox_address(p: Proj) -> str:
    out = p.run("ip -o -4 addr show dev eth0")
    assert out["exit_code"] == 0, out
    return out["stdout"].split()[3].split("/")[0]


def _tracked_from(addr: str) -> int | None:
    try:
        with open("/proc/net/nf_conntrack") as f:
            return sum(1 for line in f if f" src={addr} " in line)
    except OSError:
        return None


def test_a_project_cannot_fill_the_hosts_connection_tracking_table(
        server: Server, admin: Account, testnet) -> None:
    """Every flow of a networked project is tracked in the host's own namespace (for NAT and
    the firewall's ``ct state``), in the table the host's own connections use: when it is full
    the kernel drops every new connection, the hub's port among them.  A project sent 45,000
    new flows a second (and can hold established TCP ones for days); now it gets at most
    ``network.PROJECT_CONNECTIONS`` at once."""
    limit = network.PROJECT_CONNECTIONS
    p = new_project(server, admin, "conntrack flood", network=True)
    try:
        addr = _sandbox_address(p)
        port = 9000 + os.getpid() % 1000
        counter = subprocess.Popen(["ip", "netns", "exec", testnet.name, sys.executable, "-u", "-c", COUNTER,
                                    str(port), "3"], stdout=subprocess.PIPE, text=True)
        try:
            assert counter.stdout is not None and counter.stdout.readline().strip() == "ready"
            n = 3 * limit
            out = p.run(f"python3 -c {shlex.quote(FLOOD)} {testnet.addr} {port} {n}", timeout=60)
            assert out["exit_code"] == 0, out
            tracked = _tracked_from(addr)
            arrived = int(counter.stdout.readline().strip())
        finally:
            counter.kill()
            counter.wait(5)
        # egress works (the control), up to the project's share of the table
        assert arrived >= min(limit, 1000), arrived
        assert arrived <= limit, f"{arrived} flows of one project reached the outside (limit {limit})"
        if tracked is not None:
            assert tracked <= limit + 16, f"{tracked} conntrack entries from one project"
        # over the limit a new connection fails at once with a clear error, not a timeout
        probe = ("import socket, time; t = time.monotonic()\n"
                 "try: socket.create_connection((%r, 9), timeout=10)\n"
                 "except OSError as e: print(e.strerror, round(time.monotonic() - t, 1))" % testnet.addr)
        out = p.run(f"python3 -c {shlex.quote(probe)}", timeout=30)
        err, _, took = out["stdout"].strip().rpartition(" ")
        assert err == "No route to host" and float(took) < 3, out
        # and the hub still takes new connections
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    finally:
        p.stop()


# ---------------------------------------------------------------- 3. the machine-wide lock

def test_a_local_user_cannot_hold_the_network_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every networked start takes one machine-wide flock (address allocation, the shared
    firewall).  Its file was first looked for in /run/lock, which is world-writable: any local
    user could create it before the hub and hold the lock, and every networked project start
    then hung in ``prepare``.  Now the lock lives where only root creates files, and a lock
    file somebody else owns is never used."""
    require("root, setpriv and flock", os.geteuid() == 0 and shutil.which("setpriv") is not None
            and shutil.which("flock") is not None)
    first = os.stat(os.path.dirname(network.LOCK_PATHS[0]))
    assert first.st_uid == 0 and not first.st_mode & 0o022, \
        f"{network.LOCK_PATHS[0]}: its directory is writable by others"
    with _as_nobody_dir() as d:
        sticky, private = d / "lock", d / "run"
        sticky.mkdir()
        os.chmod(sticky, 0o1777)          # like /run/lock
        private.mkdir()                   # like /run: root's alone
        planted = sticky / "projecthub-network.lock"
        holder = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                                   "flock", "-x", str(planted), "sleep", "120"])
        try:
            deadline = time.monotonic() + 10
            while not planted.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert planted.exists() and planted.stat().st_uid == NOBODY
            time.sleep(0.2)   # flock(1) holds it from here on
            monkeypatch.setattr(network, "LOCK_PATHS", (str(planted), str(private / "projecthub-network.lock")))
            took = threading.Event()

            def take() -> None:
                with network.machine_lock():
                    took.set()
            t = threading.Thread(target=take, daemon=True)
            t.start()
            assert took.wait(5), "the network lock waited for a file another user holds"
        finally:
            holder.kill()
            holder.wait(5)
        t.join(5)
