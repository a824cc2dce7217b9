"""cgroup-backed ProcessTracker as the daemon uses it: inside the sandbox, as the
project uid, writing the host's root-owned groups only through the descriptors the host
opened (v1 here).  Plus the v2 code path on a cgroup2 mount when one is writable
(controllers or not: kill/freeze/procs work)."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import tempfile

import pytest

from projecthub.host.sandbox.cgroups import (PIDS_HEADROOM, POOL_SLOTS, V2Driver, discover_mounts,
                                             remove_tree, slot_name, write_text)
from projecthub.host.sandbox.limits import ProjectLimits
from tests.unit.test_sandbox_support import IS_ROOT, SandboxEnv, bwrap_works, cgroups_work, require

pytestmark = pytest.mark.timeout(180)

# Runs as the daemon would: tracker_for_daemon() from the env daemon_command set.
SCRIPT = r'''
import json, os, subprocess, sys, time
from projecthub.host.sandbox import tracker_for_daemon
if os.environ.get("V2_HOME"):  # v2 host-side run: live in the daemon leaf like the daemon does
    with open(os.path.join(os.environ["V2_HOME"], "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
t = tracker_for_daemon()
out = {"kind": t.kind if t else None}
mode = sys.argv[1]
PY = sys.executable

def wait_for(cond, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False

if mode == "oom":
    g = t.new_group("hog")
    p = g.spawn(lambda: subprocess.Popen([PY, "-c", "b = bytearray(1024 * 2**20); b[::4096] = b'x' * len(b[::4096])"]))
    out["rc"] = p.wait()
    u = g.usage()
    out.update(oom=u.oom_killed, max_rss=u.max_rss_bytes)
    g.close()
elif mode == "forkbomb":
    g = t.new_group("bomb")
    bomb = r"""
import os, time, sys
ok = fail = 0
for _ in range(400):
    try:
        if os.fork() == 0:
            time.sleep(60); os._exit(0)
        ok += 1
    except OSError:
        fail += 1
print(ok, fail, flush=True)
time.sleep(60)
"""
    p = g.spawn(lambda: subprocess.Popen([PY, "-c", bomb], stdout=subprocess.PIPE, text=True))
    ok, fail = map(int, p.stdout.readline().split())
    out.update(ok=ok, fail=fail, pids=len(g.pids()))
    g.kill_all()
    out["after_kill"] = len(g.pids())
    p.wait()
    g.close()
elif mode == "escapee":
    g = t.new_group("escape")
    p = g.spawn(lambda: subprocess.Popen(["/bin/sh", "-c", "setsid sh -c 'sleep 300 & exit 0' & exit 0"]))
    p.wait()
    def comm(pid):
        try:
            return open(f"/proc/{pid}/comm").read().strip()
        except OSError:
            return ""
    wait_for(lambda: [x for x in g.pids() if comm(x) == "sleep"] and len(g.pids()) == 1)
    sleepers = g.pids()
    out["sleepers"] = len(sleepers)
    out["sid_differs"] = all(os.getsid(s) != os.getsid(0) for s in sleepers)
    g.kill_all()
    out["after_kill"] = len(g.pids())
    out["alive"] = [s for s in sleepers if os.path.exists(f"/proc/{s}") and
                    open(f"/proc/{s}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
    d = getattr(g, "dirs", None) or {"unified": g.dir}
    g.close(); g.close()
    # the group goes back to the pool empty (the daemon cannot remove the host's groups)
    out["removed"] = not any(int(x) != os.getpid() for x in d.values()
                             for x in open(os.path.join(x, "cgroup.procs")).read().split())
    g2 = t.new_group("again")   # the hottest group is the one just given back
    out["reused"] = (getattr(g2, "dirs", None) or {"unified": g2.dir}) == d
    g2.close()
elif mode == "fds":
    from projecthub.host.sandbox import tracker as tracker_mod
    import socket
    a, b = socket.socketpair()
    out["lowest_host_fd"] = min(tracker_mod.FDS.fds.values())
    out["n_host_fds"] = len(tracker_mod.FDS.fds)
    out["new_fd"] = max(a.fileno(), b.fileno())
    out["cloexec"] = not any(os.get_inheritable(fd) for fd in tracker_mod.FDS.fds.values())
elif mode == "usage":
    g = t.new_group("busy")
    p = g.spawn(lambda: subprocess.Popen([PY, "-c", "import time\nwhile time.process_time() < 0.4: pass"]))
    out["rc"] = p.wait()
    u = g.usage()
    out.update(cpu=u.cpu_user_s + u.cpu_sys_s, max_rss=u.max_rss_bytes, pids=u.pids)
    out["thread_back"] = "/busy" not in open("/proc/thread-self/cgroup").read()
    g.close()
elif mode == "accounting":
    # one group after another, reused from the pool: each reports only its own command
    def run(argv):
        g = t.new_group("acct")
        p = g.spawn(lambda: subprocess.Popen(argv))
        rc = p.wait()
        g.kill_all()
        u = g.usage()
        g.close()
        return rc, u
    big = "b = bytearray(150 * 10**6)\nfor i in range(0, len(b), 4096): b[i] = 1"
    hog = "x = []\nwhile True: x.append(bytearray(16 * 2**20)); x[-1][::4096] = b'x' * len(x[-1][::4096])"
    busy = "import time\nwhile time.process_time() < 0.35:\n    for _ in range(20000): pass"
    rc, u = run([PY, "-c", big])
    out.update(big_rc=rc, big=u.max_rss_bytes, big_exact=u.exact_peak)
    small = [run(["true"])[1] for _ in range(10)]
    out.update(small=max(u.max_rss_bytes for u in small), small_exact=all(u.exact_peak for u in small))
    rc, u = run([PY, "-c", busy])
    out.update(busy_user=u.cpu_user_s)
    rc, u = run(["true"])
    out.update(idle_cpu=u.cpu_user_s + u.cpu_sys_s)
    rc, u = run([PY, "-c", hog])
    out.update(hog_rc=rc, hog_oom=u.oom_killed)
    after = [run(["true"])[1] for _ in range(3)]
    out.update(after_oom=[u.oom_killed for u in after])
    g = t.new_group("closed")
    g.close()
    # a group given back never touches its slot again (another command may hold it): a
    # later exec there runs on, whatever a stale kernel or exec object does to its old group
    other = t.new_group("other")   # the hottest slot: the one just given back
    p = other.spawn(lambda: subprocess.Popen(["sleep", "30"]))
    out["closed_usage"] = g.usage().max_rss_bytes
    g.kill_all()
    out["closed_pids"] = g.pids()
    try:
        g.spawn(lambda: subprocess.Popen(["true"]))
        out["closed_spawn"] = "ran"
    except OSError as e:
        out["closed_spawn"] = e.errno
    out["other_alive"] = p.poll() is None and other.pids() == [p.pid]
    other.close()
    p.wait()
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def env():
    require("bubblewrap (bwrap installed and working)", bwrap_works())
    require("uid per project (server must run as root)", IS_ROOT)
    require("cgroups (memory+pids controllers writable)", cgroups_work())
    e = SandboxEnv()
    yield e
    e.close()


@pytest.fixture(scope="module")
def proj(env):
    return env.prepare("cg", memory_bytes=256 * 2**20, pids=64)


def _run(env, proj, mode: str) -> dict:
    r = env.run(proj, [sys.executable, "-c", SCRIPT, mode], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_tracker_kind_inside_sandbox(env, proj):
    out = _run(env, proj, "usage")
    assert out["kind"].startswith("cgroup-")
    assert out["rc"] == 0 and out["cpu"] > 0.35 and out["pids"] == 0
    assert out["max_rss"] > 1 << 20
    assert out["thread_back"]


def test_each_group_reports_only_its_own_command(env, proj):
    """Peak memory, cpu and OOM kills of reused pooled groups (issue 15 item 4): a `true`
    after a 150 MB command reports its own few hundred KiB, not the 150 MB nor the
    "daemon"'s 20+ MB; an OOM kill is reported for the command it killed only."""
    out = _run(env, proj, "accounting")
    assert out["big_rc"] == 0 and out["big_exact"]
    assert 150 * 10**6 <= out["big"] <= 165 * 10**6, out
    assert out["small_exact"] and out["small"] <= 4 * 2**20, out
    assert out["busy_user"] >= 0.2 and out["idle_cpu"] <= 0.05, out
    assert out["hog_rc"] == -9 and out["hog_oom"] is True, out
    assert out["after_oom"] == [False, False, False], out
    assert out["closed_usage"] == 0 and out["closed_pids"] == []
    assert out["closed_spawn"] == errno.EBADF and out["other_alive"]


def test_host_descriptors_sit_high_and_close_on_exec(env, proj):
    """The ~1,450 descriptors from the host are moved above select()'s 1024, so the
    daemon's own new fds stay small (the kernel zygote select()s on one it inherits)."""
    out = _run(env, proj, "fds")
    assert out["n_host_fds"] > 4 * POOL_SLOTS
    assert out["lowest_host_fd"] >= 1024 and out["new_fd"] < 1024
    assert out["cloexec"]


def test_memory_hog_is_oom_killed_inside_the_group(env, proj):
    out = _run(env, proj, "oom")  # the "daemon" survives (we got its JSON)
    assert out["rc"] == -9
    assert out["oom"] is True
    assert out["max_rss"] <= 256 * 2**20 + (1 << 20)


def test_fork_bomb_is_bounded_by_pids_max(env, proj):
    out = _run(env, proj, "forkbomb")
    assert out["fail"] > 0 and out["ok"] < 64 + PIDS_HEADROOM
    assert out["after_kill"] == 0


def test_kill_all_reaches_setsid_double_forked_sleeper(env, proj):
    out = _run(env, proj, "escapee")
    assert out["sleepers"] >= 1 and out["sid_differs"]
    assert out["after_kill"] == 0 and out["alive"] == []
    assert out["removed"] and out["reused"]


def test_project_group_has_limits_and_nothing_is_the_projects(env, proj):
    mem, pids = proj.cgroup["memory"], proj.cgroup["pids"]
    assert int(open(os.path.join(mem, "memory.limit_in_bytes")).read()) == 256 * 2**20
    assert int(open(os.path.join(pids, "pids.max")).read()) == 64 + PIDS_HEADROOM
    # No delegation (issue 14 item 3): every group, file and directory is root's and
    # not writable for others, and the pool of exec groups is the host's.
    for top in proj.cgroup.values():
        for root, subdirs, files in os.walk(top):
            for path in (root, *(os.path.join(root, f) for f in files)):
                st = os.stat(path)
                assert st.st_uid == 0 and not st.st_mode & 0o022, path
    assert len(os.listdir(os.path.join(mem))) > POOL_SLOTS
    assert os.path.isdir(os.path.join(pids, slot_name(POOL_SLOTS - 1)))


def test_groups_are_readable_for_the_project_whatever_the_servers_umask():
    """The server runs with umask 077 (its data dir is private); the groups it makes must
    still be 0755 -- enterable and readable for the daemon, writable for nobody but root."""
    require("cgroups (root with a writable cgroup mount)", IS_ROOT and cgroups_work())
    from projecthub.host.sandbox.cgroups import make_driver
    drv = make_driver(f"phtest-umask-{os.getpid()}")
    assert drv is not None
    old = os.umask(0o077)
    try:
        drv.create("p1", None, None, ProjectLimits())
    finally:
        os.umask(old)
    try:
        tops = drv.dirs("p1").values() if drv.version == "v1" else [drv.dir("p1")]
        for top in tops:
            for d in (os.path.dirname(top), top, *(os.path.join(top, e) for e in os.listdir(top)
                                                   if os.path.isdir(os.path.join(top, e)))):
                assert stat.S_IMODE(os.stat(d).st_mode) == 0o755, d
    finally:
        drv.kill("p1")
        drv.remove("p1")
        for top in (drv.dirs("p1").values() if drv.version == "v1" else [drv.dir("p1")]):
            remove_tree(os.path.dirname(top))


def test_daemon_tracker_needs_the_hosts_descriptors(env, proj):
    """Without descriptors (an old host, or a tampered environment) there is no cgroup
    tracker: the daemon could not write a single cgroup file."""
    from projecthub.host.sandbox.tracker import tracker_for_daemon
    spec = env.sandbox.driver.daemon_env(proj.project_id)
    assert tracker_for_daemon({"PROJECTHUB_CGROUPS": json.dumps(spec)}) is None
    bad = {**spec, "slots": 2, "fds": {"pids/tasks": [987654, 987655]}, "home_fds": {}}
    assert tracker_for_daemon({"PROJECTHUB_CGROUPS": json.dumps(bad)}) is None


def _writable_v2() -> str | None:
    m = discover_mounts()
    if IS_ROOT and m.v2 and os.access(m.v2, os.W_OK) and os.path.exists(os.path.join(m.v2, "cgroup.procs")):
        return m.v2
    return None


def test_v2_tracker_kill_and_usage_on_unified_mount():
    mount = _writable_v2()
    require("cgroup v2 mount (writable)", mount is not None)
    name = f"phtest-v2-{os.getpid()}"
    drv = V2Driver(mount, discover_mounts().v2_controllers & {"memory", "pids", "cpu"}, name)
    try:
        drv.create("p1", None, None, ProjectLimits())
        spec = drv.daemon_env("p1")
        fd_spec, fds = drv.open_daemon_fds("p1")
        env = {"PATH": "/usr/bin:/bin", "PROJECTHUB_CGROUPS": json.dumps({**spec, **fd_spec}),
               "V2_HOME": spec["home"]["unified"], "PYTHONPATH": os.getcwd()}
        for mode in ("escapee", "usage"):
            r = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True,
                               text=True, timeout=60, cwd=tempfile.gettempdir(), pass_fds=fds)
            assert r.returncode == 0, r.stderr
            out = json.loads(r.stdout.strip().splitlines()[-1])
            assert out["kind"] == "cgroup-v2"
            if mode == "escapee":
                assert out["sleepers"] >= 1 and out["after_kill"] == 0 and out["alive"] == []
                assert out["removed"] and out["reused"]
            else:
                assert out["rc"] == 0 and out["cpu"] > 0.35
        assert drv.pids("p1") == []
        for fd in fds:
            os.close(fd)
    finally:
        drv.kill("p1")
        remove_tree(os.path.join(mount, name))


# ------------------------------------------------------- the exec-group pool (no cgroupfs needed)

def _fake_slot(root, name: str, fds: dict[str, int]):
    """A pool slot over plain directories: the control files it writes are plain files,
    written through descriptors like the host's (``fds``: path -> descriptor)."""
    from projecthub.host.sandbox.tracker import _V1Slot
    dirs = {}
    for ctrl, files in (("memory", ("memory.max_usage_in_bytes", "tasks")), ("cpuacct", ("cpuacct.usage", "tasks"))):
        d = os.path.join(root, ctrl, name)
        os.makedirs(d)
        for f in files:
            path = os.path.join(d, f)
            open(path, "w").close()
            fds[path] = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        dirs[ctrl] = d
    return _V1Slot(dirs)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


@pytest.fixture
def fake_fds(monkeypatch):
    from projecthub.host.sandbox import tracker
    table = tracker.FdTable()
    monkeypatch.setattr(tracker, "FDS", table)
    yield table.fds
    for fd in table.fds.values():
        os.close(fd)


def test_pool_resets_counters_on_give_back_and_trims_spawners_when_idle(tmp_path, monkeypatch, fake_fds):
    import time as time_mod

    from projecthub.host.sandbox.tracker import V1Pool
    monkeypatch.setattr(V1Pool, "KEEP", 2)
    monkeypatch.setattr(V1Pool, "IDLE_S", 0.4)
    slots = [_fake_slot(str(tmp_path), f"s{i}", fake_fds) for i in range(5)]
    pool = V1Pool(slots)
    assert pool.size == 5
    taken = [pool.take() for _ in range(5)]
    assert taken == slots                      # slot 0 first, then in order
    assert pool.take() is None                 # a busy moment: the pool ran dry
    for s in taken:
        assert pool.give(s)
    assert len(pool._free) == 5                # every group comes back
    assert _read(os.path.join(slots[0].dirs["cpuacct"], "cpuacct.usage")) == "0"
    # the peak is reset when a group is taken (V1Group), not here
    assert _read(os.path.join(slots[0].dirs["memory"], "memory.max_usage_in_bytes")) == ""
    assert all(s.spawner for s in slots)       # a burst's groups keep their spawners
    assert pool.take() is slots[-1]            # the hottest slot first
    assert pool.give(slots[-1])
    # no burst for IDLE_S: the janitor stops the extra (coldest) spawners, keeps the groups
    deadline = time_mod.monotonic() + 5
    while any(s.spawner for s in slots[:3]) and time_mod.monotonic() < deadline:
        time_mod.sleep(0.02)
    assert len(pool._free) == 5 and pool._janitor is None
    assert all(s.spawner is None for s in slots[:3])
    for s in slots[3:]:
        s.spawner.stop()


def test_peak_is_measured_from_the_charge_at_its_reset(tmp_path, fake_fds):
    """Writing 0 sets the peak to the charge now (what the command before left): that is
    the baseline; the command's peak is what the group reached above it."""
    slot = _fake_slot(str(tmp_path), "s", fake_fds)
    peak = os.path.join(slot.dirs["memory"], "memory.max_usage_in_bytes")
    os.close(fake_fds[peak])
    fake_fds[peak] = os.open(peak, os.O_RDWR | os.O_CLOEXEC)   # as the host opens it
    slot.reset_cpu()
    slot.reset_peak()
    assert _read(peak) == "0" and slot.peak_reset and slot.mem_base == 0
    with open(peak, "w") as f:   # the kernel's side: a reset sets the peak to the charge
        f.write("700000")
    slot.reset_peak()
    assert slot.mem_base == 700000
    with open(peak, "w") as f:
        f.write("900000")
    assert slot.peak() == 200000


def test_pool_loses_a_group_whose_counters_cannot_be_reset(tmp_path, fake_fds):
    from projecthub.host.sandbox.tracker import V1Pool
    slot = _fake_slot(str(tmp_path), "s", fake_fds)
    os.close(fake_fds.pop(os.path.join(slot.dirs["cpuacct"], "cpuacct.usage")))
    pool = V1Pool([slot])
    assert pool.take() is slot
    assert not pool.give(slot)
    assert pool.take() is None


def test_writes_only_through_the_hosts_descriptors(tmp_path, fake_fds):
    """A file the host gave no descriptor for is never opened by path, even if the
    permissions would allow it."""
    from projecthub.host.sandbox import tracker
    path = str(tmp_path / "pids.max")
    open(path, "w").close()
    with pytest.raises(PermissionError):
        tracker._write(path, "10")
    assert _read(path) == ""


def test_kernel_memory_noise_does_not_make_a_group_dirty(tmp_path):
    from projecthub.host.sandbox.tracker import V1Group, V1Pool
    group = V1Group.__new__(V1Group)
    mem = str(tmp_path)
    kmem = os.path.join(mem, "memory.kmem.usage_in_bytes")
    for charge, kernel, clean in ((3 << 20, (5 << 19), True),     # 0.5 MiB of pages, 2.5 MiB of slab
                                  (3 << 20, 1 << 20, False),      # 2 MiB of pages
                                  (6 << 20, 5 << 20, False)):     # too much slab
        with open(kmem, "w") as f:
            f.write(str(kernel))
        group._charge = charge
        assert group._only_kernel_noise(mem) is clean
    assert V1Pool.MAX_CHARGE == 1 << 20


def test_kept_open_control_file_follows_rewrites_and_a_recreated_group():
    # The daemon re-reads its project's limits on every exec through a descriptor kept
    # open (pread); a changed limit and a removed and re-made group must both show.
    require("cgroups (root with a writable cgroup mount)", IS_ROOT and cgroups_work())
    from projecthub.host.sandbox import cgroups
    pids_root = discover_mounts().v1.get("pids")
    require("a cgroup v1 pids controller", bool(pids_root))
    d = os.path.join(pids_root, f"phtest-kept-{os.getpid()}")
    os.mkdir(d)
    try:
        path = os.path.join(d, "pids.max")
        write_text(path, "10")
        assert cgroups.read_int_kept_open(path) == 10
        assert path in cgroups._kept_open
        write_text(path, "20")
        assert cgroups.read_int_kept_open(path) == 20
        os.rmdir(d)
        assert cgroups.read_text_kept_open(path) is None   # gone: no stale value
        os.mkdir(d)
        write_text(path, "30")
        assert cgroups.read_int_kept_open(path) == 30
    finally:
        fd = cgroups._kept_open.pop(os.path.join(d, "pids.max"), None)
        if fd is not None:
            os.close(fd)
        if os.path.isdir(d):
            os.rmdir(d)


def test_read_text_reads_files_longer_than_its_buffer(tmp_path):
    from projecthub.host.sandbox.cgroups import read_text
    for size in (0, 10, 32768, 65536, 65537, 200_000):
        path = tmp_path / f"f{size}"
        data = "".join(chr(97 + i % 26) for i in range(size))
        path.write_text(data)
        assert read_text(str(path)) == data
    # a seq_file: records, not one blob.  Other tests on this machine mount and unmount
    # (disk images): compare only a read that no mount change overlapped.
    for _ in range(50):
        before = open("/proc/self/mounts").read()
        mounts = read_text("/proc/self/mounts")
        if open("/proc/self/mounts").read() == before:
            break
    assert mounts is not None and mounts == before


def test_v2_needs_a_kernel_that_checks_the_openers_credentials(tmp_path, monkeypatch):
    """Before Linux 5.16 a v2 move was checked with the writer's own credentials, so the
    daemon could move nothing through root's descriptors: no cgroup tracker then."""
    from projecthub.host.sandbox import tracker
    monkeypatch.setattr(tracker, "FDS", tracker.FDS)   # restored after the test
    (tmp_path / "slot-000").mkdir()
    (tmp_path / "slot-000" / "cgroup.procs").write_text("")
    fd = os.open(tmp_path / "slot-000" / "cgroup.procs", os.O_WRONLY)
    spec = {"version": "v2", "dirs": {"unified": str(tmp_path)}, "home": {"unified": str(tmp_path)},
            "slots": 1, "fds": {"unified/cgroup.procs": [fd]}, "home_fds": {}}
    env = {"PROJECTHUB_CGROUPS": json.dumps(spec)}
    monkeypatch.setattr(tracker, "_kernel_version", lambda: (5, 15))
    assert tracker.tracker_for_daemon(env) is None
    monkeypatch.setattr(tracker, "_kernel_version", lambda: (5, 16))
    t = tracker.tracker_for_daemon(env)
    assert t is not None and t.kind == "cgroup-v2"
    for moved in tracker.FDS.fds.values():
        os.close(moved)
