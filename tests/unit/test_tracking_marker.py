"""MarkerTracker: finding, killing and reaping a group's processes without cgroups."""

from __future__ import annotations

import os
import subprocess
import time

import psutil
import pytest

from projecthub.project.tracking_fallback import MARKER_ENV, read_stat


def spawn(group, script: str, env: dict | None = None) -> subprocess.Popen:
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {}), **group.env_marker()}
    return group.spawn(lambda: subprocess.Popen(["bash", "-c", script], env=full_env,
                                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                start_new_session=True))


def wait_for(pred, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def alive(pid: int) -> bool:
    st = read_stat(pid)
    return st is not None and st.state != "Z"


def test_group_finds_setsid_double_fork_escapees_and_kills_them(ctx):
    group = ctx.tracker.new_group("t-escape")
    proc = spawn(group, "(setsid sleep 300 &); (bash -c 'sleep 301 & exit' &); sleep 302 & wait")
    wait_for(lambda: len(group.pids()) == 4)   # bash and 3 sleeps (two re-parented to us)
    pids = group.pids()
    escaped = [p for p in pids if read_stat(p).ppid == os.getpid() and p != proc.pid]
    assert escaped, "orphans should have re-parented to the subreaper test process"
    group.kill_all()
    proc.wait()
    wait_for(lambda: not any(alive(p) for p in pids))
    assert group.pids() == []
    group.close()
    ctx.tracker.reap_orphans()
    assert not [c for c in psutil.Process().children() if c.pid in pids]   # zombies reaped


def test_tree_membership_covers_children_that_clear_their_env(ctx):
    group = ctx.tracker.new_group("t-env-i")
    proc = spawn(group, "env -i /bin/sleep 303 & wait")
    def sleeper_started() -> bool:
        others = [p for p in group.pids() if p != proc.pid]
        return bool(others) and psutil.Process(others[0]).name() == "sleep"

    wait_for(sleeper_started)
    sleeper = [p for p in group.pids() if p != proc.pid][0]
    assert MARKER_ENV not in psutil.Process(sleeper).environ()
    group.close()
    proc.wait()
    wait_for(lambda: not alive(sleeper))


def test_groups_do_not_see_each_other(ctx):
    a, b = ctx.tracker.new_group("t-a"), ctx.tracker.new_group("t-b")
    pa, pb = spawn(a, "sleep 304"), spawn(b, "sleep 305")
    assert a.pids() == [pa.pid] and b.pids() == [pb.pid]
    a.close()
    pa.wait()
    assert alive(pb.pid) and b.pids() == [pb.pid]
    b.close()
    pb.wait()
    c = ctx.tracker.new_group("t-c")
    with pytest.raises(ValueError):
        ctx.tracker.new_group("t-c")
    c.close()


def test_reaper_leaves_owned_and_same_session_children(ctx):
    tracker = ctx.tracker
    group = tracker.new_group("t-owned")
    owned = spawn(group, "exit 3")
    foreign = subprocess.Popen(["true"])          # same session as the daemon: never reaped
    wait_for(lambda: read_stat(owned.pid).state == "Z" and read_stat(foreign.pid).state == "Z")
    tracker.reap_orphans()
    assert owned.wait() == 3 and foreign.wait() == 0   # exit statuses were not stolen
    group.close()


def test_orphan_zombies_are_reaped(ctx):
    group = ctx.tracker.new_group("t-orphan")
    proc = spawn(group, "sleep 0.3 & exit 0")
    proc.wait()
    wait_for(lambda: len(group.pids()) == 1)
    orphan = group.pids()[0]
    assert read_stat(orphan).ppid == os.getpid()        # re-parented to the subreaper
    wait_for(lambda: read_stat(orphan).state == "Z")
    assert ctx.tracker.reap_orphans() >= 1
    assert read_stat(orphan) is None
    group.close()


def test_usage_from_rusage_and_live_processes(ctx):
    group = ctx.tracker.new_group("t-usage")
    proc = spawn(group, "x=0; while [ $x -lt 100000 ]; do x=$((x+1)); done")
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    group.record_rusage(ru)
    usage = group.usage()
    assert usage.cpu_user_s + usage.cpu_sys_s > 0.05 and usage.pids == 0
    # bash's ru_maxrss starts at this process's peak (it was forked from us): not its own,
    # so no peak is known for a command this small (0), never ours
    assert usage.max_rss_bytes == 0 and not usage.exact_peak
    group.close()
    group.close()   # idempotent


def test_peak_above_the_parents_is_the_childs_own(ctx):
    import resource
    ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    size = ours + 64 * 2**20
    group = ctx.tracker.new_group("t-peak")
    proc = spawn(group, f"python3 -c 'b = bytearray({size}); b[::4096] = b\"x\" * len(b[::4096])'")
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0
    group.record_rusage(ru)
    peak = group.usage().max_rss_bytes
    assert size <= peak <= size + 32 * 2**20, (size, peak)
    group.close()
