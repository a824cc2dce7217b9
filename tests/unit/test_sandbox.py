"""Real bwrap + real cgroups: what a sandboxed project daemon can and cannot do."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import time

import pytest

from tests.unit.test_sandbox_support import IS_ROOT, SandboxEnv, bwrap_works, cgroups_work, require

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def env():
    require("bubblewrap (bwrap installed and working)", bwrap_works())
    require("uid per project (server must run as root)", IS_ROOT)
    e = SandboxEnv()
    yield e
    e.close()


@pytest.fixture(scope="module")
def proj(env):
    return env.prepare("alpha")


def test_runs_as_project_uid_with_private_home(env, proj):
    r = env.run(proj, ["/bin/sh", "-c", 'id -u; id -g; id -G; id -un; echo "$HOME"; stat -c %a "$HOME"; '
                                        'touch "$HOME/f" && echo writable'])
    assert r.returncode == 0, r.stderr
    uid, gid, groups, name, home, mode, writable = r.stdout.split("\n")[:7]
    assert int(uid) == proj.uid and proj.uid != 0
    assert int(gid) == proj.gid and groups.split() == [gid]
    assert name == "user" and home == proj.home_inside
    assert mode == "700" and writable == "writable"
    st = os.stat(proj.home_outside)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (proj.uid, 0o700)
    assert (proj.home_outside / "f").exists()


def test_cannot_read_shadow_or_root_only_files(env, proj):
    secret = proj.home_outside / "root-only"
    secret.write_text("secret")
    os.chown(secret, 0, 0)
    os.chmod(secret, 0o600)
    r = env.run(proj, ["/bin/sh", "-c", "cat /etc/shadow; echo rc=$?; cat $HOME/root-only; echo rc=$?; "
                                        "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status"])
    assert "rc=0" not in r.stdout, r.stdout
    assert "secret" not in r.stdout
    caps = dict(line.split(":") for line in r.stdout.splitlines() if ":" in line)
    assert int(caps["CapEff"], 16) == 0 and int(caps["CapBnd"], 16) == 0
    assert caps["NoNewPrivs"].strip() == "1"


def test_cannot_see_data_dir_or_other_projects(env, proj):
    other = env.prepare("beta")
    (other.home_outside / "beta-secret").write_text("x")
    code = f"""
import os, json
print(json.dumps({{
  "data": os.path.exists({str(env.data_dir)!r}),
  "other_home": os.path.exists({str(other.home_outside)!r}),
  "home_entries": sorted(os.listdir("/home")),
  "state": os.access({proj.state_inside!r}, os.W_OK),
  "run": os.path.exists("/run/projecthub"),
  "usr_writable": os.access("/usr/bin", os.W_OK),
  "root_listing": sorted(os.listdir("/")),
}}))
"""
    r = env.py(proj, code)
    assert r.returncode == 0, r.stderr
    facts = json.loads(r.stdout)
    assert facts["data"] is False and facts["other_home"] is False
    assert facts["home_entries"] == ["user"]
    assert facts["state"]
    assert facts["run"] is False   # the daemon's socket lives outside every sandbox
    assert facts["usr_writable"] is False


def test_sees_only_its_own_processes(env, proj):
    r = env.run(proj, ["/bin/sh", "-c", "ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '; echo; ps -e -o pid= | wc -l"])
    assert r.returncode == 0, r.stderr
    pids = [int(x) for x in r.stdout.splitlines()[0].split()]
    assert os.getpid() not in pids or os.getpid() < 10
    assert max(pids) < 50 and len(pids) < 10, pids


def _listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    return srv


CONNECT = """
import socket, sys
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3).close(); print("connected")
except OSError as e:
    print("refused", e)
"""


def test_no_egress_without_network(env, proj):
    srv = _listener()
    try:
        r = env.py(proj, CONNECT.format(port=srv.getsockname()[1]))
        assert r.stdout.startswith("refused"), r.stdout + r.stderr
        # Only loopback inside.
        r = env.run(proj, ["/bin/sh", "-c", "ls /sys/class/net 2>/dev/null || cat /proc/net/dev"])
        assert "eth" not in r.stdout
    finally:
        srv.close()


def test_network_on_is_not_the_hosts_network(env):
    # network=true: its own netns with a veth (sandbox/network.py), never the host's, so
    # the host's loopback stays out of reach (tests/security/test_network.py: the rest)
    from projecthub.host.sandbox import network
    require("network egress (ip, nft, nsenter, ip_forward=1)", network.prerequisites() == "")
    netp = env.prepare("gamma", network=True)
    srv = _listener()
    try:
        r = env.py(netp, CONNECT.format(port=srv.getsockname()[1]) +
                   "import socket; print(sorted(n for _, n in socket.if_nameindex()))")
        assert r.stdout.startswith("refused"), r.stdout + r.stderr
        assert "['eth0', 'lo']" in r.stdout, r.stdout
    finally:
        srv.close()
        env.sandbox.stop_project("gamma")
    assert env.sandbox.network.attached() == []


def test_tmp_is_private_and_size_limited(env):
    p = env.prepare("delta", tmp_bytes=4 * 2**20)
    marker = f"/tmp/ph-host-marker-{os.getpid()}"
    open(marker, "w").close()
    try:
        code = f"""
import os, errno
print(os.path.exists({marker!r}))
try:
    with open("/tmp/big", "wb") as f:
        for _ in range(16):
            f.write(b"x" * 2**20); f.flush()
    print("no-enospc")
except OSError as e:
    print("ENOSPC" if e.errno == errno.ENOSPC else repr(e))
"""
        r = env.py(p, code)
        assert r.stdout.split() == ["False", "ENOSPC"], r.stdout + r.stderr
    finally:
        os.unlink(marker)


def test_environment_is_only_what_was_passed(env, proj, monkeypatch):
    monkeypatch.setenv("PH_SERVER_SECRET", "leak")
    r = env.py(proj, "import os, json; print(json.dumps(dict(os.environ)))",
               env={"PATH": "/usr/bin:/bin", "HOME": proj.home_inside, "MINE": "1"})
    seen = json.loads(r.stdout)
    assert "PH_SERVER_SECRET" not in seen
    assert seen["MINE"] == "1"
    assert set(seen) - {"PATH", "HOME", "MINE"} <= {"PROJECTHUB_CGROUPS", "PROJECTHUB_SANDBOX_PROJECT",
                                                  "PYTHONPATH", "LC_CTYPE", "PWD"}


def test_daemon_is_session_leader_and_in_project_cgroup(env, proj):
    require("cgroups (memory+pids writable)", cgroups_work())
    r = env.py(proj, "import os; print(os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid()); "
                     "print(open('/proc/self/cgroup').read())")
    lines = r.stdout.splitlines()
    assert lines[0] == "True True", r.stdout + r.stderr
    assert any(f"/{env.root_name}/alpha" in line for line in lines[1:])


def test_stop_project_leaves_nothing(env):
    require("cgroups (memory+pids writable)", cgroups_work())
    p = env.prepare("epsilon")
    # A daemon that leaves a setsid'd, double-forked sleeper behind.
    d = env.start(p, ["/bin/sh", "-c", "setsid sh -c 'sleep 300 & sleep 300' & sleep 300"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(env.sandbox.running_projects().get("epsilon", [])) < 4:
        time.sleep(0.05)
    pids = env.sandbox.running_projects()["epsilon"]
    assert len(pids) >= 4
    env.sandbox.stop_project("epsilon")
    d.wait(timeout=10)
    assert "epsilon" not in env.sandbox.running_projects()
    assert all(not os.path.exists(f"/proc/{pid}") or _zombie(pid) for pid in pids)
    assert not any(os.path.exists(x) for x in p.cgroup.values())
    assert not _procs_with_uid(p.uid)


def test_kill_strays_kills_unknown_projects_only(env):
    require("cgroups (memory+pids writable)", cgroups_work())
    keep, stray = env.prepare("zeta"), env.prepare("eta")
    a = env.start(keep, ["/bin/sleep", "300"])
    b = env.start(stray, ["/bin/sleep", "300"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and {"zeta", "eta"} - set(env.sandbox.running_projects()):
        time.sleep(0.05)
    killed = env.sandbox.kill_strays({"zeta", "alpha"})
    assert killed
    b.wait(timeout=10)
    running = env.sandbox.running_projects()
    assert "eta" not in running and "zeta" in running
    assert not _procs_with_uid(stray.uid)
    assert a.poll() is None
    env.sandbox.stop_project("zeta")
    a.wait(timeout=10)


def test_update_limits_live(env):
    require("cgroups (memory+pids writable)", cgroups_work())
    from projecthub.host.sandbox import ProjectLimits
    p = env.prepare("theta")
    env.sandbox.update_limits("theta", ProjectLimits(memory_bytes=300 * 2**20, pids=100, cpu_cores=0.5))
    mem = p.cgroup.get("memory")
    if mem:
        assert int(open(os.path.join(mem, "memory.limit_in_bytes")).read()) == 300 * 2**20
    if "pids" in p.cgroup:
        assert int(open(os.path.join(p.cgroup["pids"], "pids.max")).read()) >= 100
    if "cpu" in p.cgroup:
        assert int(open(os.path.join(p.cgroup["cpu"], "cpu.cfs_quota_us")).read()) == 50000
    env.sandbox.stop_project("theta")


def test_mode_none_reports_loudly_and_still_drops_uid():
    require("uid per project (server must run as root)", IS_ROOT)
    e = SandboxEnv(mode="none")
    try:
        assert e.sandbox.report.mode == "none"
        assert not e.sandbox.report.all_enforced
        assert "NOT fully isolated" in e.sandbox.report.to_text()
        p = e.prepare("iota")
        r = e.run(p, ["/bin/sh", "-c", "id -u; cat /etc/shadow >/dev/null 2>&1 && echo READ"])
        assert r.stdout.split() == [str(p.uid)]
    finally:
        e.close()


def _zombie(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _procs_with_uid(uid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid and not _zombie(int(entry)):
                    out.append(int(entry))
            except OSError:
                pass
    return out
