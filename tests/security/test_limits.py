"""Resource limits: fork bomb, memory bomb, disk filling, escaping processes, stop.

Each test uses its own throw-away attacker project with small limits, so nothing it does
can leak into the other tests; B is the shared bystander whose latency is measured.
"""

from __future__ import annotations

import concurrent.futures
import shlex
import time

import pytest

from tests.security.conftest import (Proj, cgroup_procs, procs_of_uid, project_cgroup_dirs,
                                     require_cgroup, require_sandbox, venv_python, wait_until)


def _echo_round_trips(b: Proj, until: float) -> list[float]:
    times = []
    client = b.client
    while time.monotonic() < until:
        t0 = time.monotonic()
        assert client.system.exec(command="echo", args=["b-alive"])["stdout"] == "b-alive\n"
        times.append(time.monotonic() - t0)
        time.sleep(0.05)
    return times


def test_fork_bomb_is_contained_by_pids_limit(fresh_a, proj_b: Proj) -> None:
    require_sandbox()
    require_cgroup("pids")
    a = fresh_a()
    a.set_limits(pids=64)
    assert a.v3("GET", "/limits").json()["pids"] == 64
    assert a.run("echo ready")["stdout"] == "ready\n"
    uid = a.uid()
    instance = a.info()["status"]["instance_id"]
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 30"
    peak = 0
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        fut = pool.submit(a.run, bomb, 5)
        rtts = pool.submit(_echo_round_trips, proj_b, started + 5.0)
        time.sleep(2.0)
        # While the bomb holds every pid it may, A's daemon still has room of its own:
        # another exec in A works (the bomb's group is capped below the project's limit).
        during = a.run("echo a-still-serves", timeout=5)
        while not fut.done():
            peak = max(peak, len(procs_of_uid(uid, a.project_id)))  # host-side count of A's processes
            time.sleep(0.1)
        result = fut.result()
        trips = rtts.result()
    assert during["stdout"] == "a-still-serves\n", during
    assert a.info()["status"]["instance_id"] == instance
    assert trips and max(trips) < 2.0, f"B's echo round trips during the bomb: {trips}"
    assert result["killed_by"] == "timeout", result
    # 64 for the user plus the sandbox's small fixed headroom; never anything like unbounded
    assert 0 < peak <= 64 + 40, f"A reached {peak} processes"
    assert "retry" in result["stderr"] or "Resource temporarily unavailable" in result["stderr"], result["stderr"][-500:]
    # A recovers: the bomb is gone and a new exec works
    assert wait_until(lambda: len(procs_of_uid(uid, a.project_id)) < 10, 10), len(procs_of_uid(uid, a.project_id))
    assert a.run("echo recovered")["stdout"] == "recovered\n"


def test_memory_bomb_is_oom_killed_and_daemon_survives(fresh_a, proj_b: Proj) -> None:
    require_sandbox()
    require_cgroup("memory")
    a = fresh_a()
    a.set_limits(memory_bytes=128 * 2**20)
    before = a.info()["status"]["instance_id"] if a.run("true") else None
    hog = ("import sys\nx = []\nwhile True:\n    x.append(bytearray(8 * 2**20))\n")
    r = a.v3("POST", "/exec", {"command": venv_python(), "args": ["-c", hog], "bash": False, "timeout": 30})
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["killed_by"] == "oom", result
    assert result["signal"] == "SIGKILL"
    assert result["max_rss_bytes"] > 64 * 2**20
    # the daemon survived (same instance), and so did the server and B
    assert a.run("echo still-here")["stdout"] == "still-here\n"
    assert a.info()["status"]["instance_id"] == before
    assert proj_b.client.system.exec(command="echo b")["stdout"] == "b\n"


def test_oom_of_a_child_inside_a_script_is_reported(fresh_a) -> None:
    """The script survives (its child was the victim), but the result still says OOM."""
    require_sandbox()
    require_cgroup("memory")
    a = fresh_a()
    a.set_limits(memory_bytes=128 * 2**20)
    py = shlex.quote(venv_python())
    hog = shlex.quote("x = []\nwhile True: x.append(bytearray(8 * 2**20))")
    r = a.v3("POST", "/exec", {"command": f"{py} -c {hog}; echo after", "timeout": 30})
    result = r.json()
    assert result["stdout"] == "after\n" and result["exit_code"] == 0, result
    assert result["killed_by"] == "oom" and result["oom_killed"] is True, result


def test_many_small_allocators_never_kill_the_daemon(fresh_a) -> None:
    """A bomb of many processes, each smaller than the daemon: the OOM killer must pick
    among them, never the daemon (which would take every other exec of A with it)."""
    require_sandbox()
    require_cgroup("memory")
    a = fresh_a()
    a.set_limits(memory_bytes=128 * 2**20)
    before = a.info()["status"]["instance_id"] if a.run("true") else None
    py = shlex.quote(venv_python())
    grow = shlex.quote("import time\nx = bytearray(12 * 2**20)\nx[::4096] = b'x' * len(x[::4096])\ntime.sleep(20)")
    result = a.run(f"for i in $(seq 16); do {py} -c {grow} & done; wait", timeout=15)
    assert a.run("echo daemon-ok")["stdout"] == "daemon-ok\n", result
    assert a.info()["status"]["instance_id"] == before, "A's daemon was restarted: it was the OOM victim"


def test_disk_filling_is_bounded_with_a_clear_error(fresh_a) -> None:
    require_sandbox()
    a = fresh_a(tmp_bytes=8 * 2**20)  # /tmp is sized when the sandbox starts
    result = a.run("head -c 64M /dev/zero > /tmp/fill; echo rc=$?; du -k /tmp/fill | cut -f1", timeout=20)
    assert "No space left on device" in result["stderr"], result
    assert "rc=1" in result["stdout"]
    assert int(result["stdout"].split()[-1]) <= 8 * 1024
    # the project still works after filling its /tmp
    assert a.run("rm -f /tmp/fill && echo ok")["stdout"] == "ok\n"


def test_setsid_and_double_fork_escapes_die_at_timeout_and_stop_leaves_nothing(fresh_a) -> None:
    require_sandbox()
    require_cgroup("freezer")
    a = fresh_a()
    assert a.run("true")["exit_code"] == 0
    uid = a.uid()
    assert uid is not None
    marks = ("4101", "4102", "4103", "4104")
    escape = (f"setsid sleep {marks[0]} & (sleep {marks[1]} &) ; "
              f"nohup setsid bash -c 'trap \"\" HUP TERM; sleep {marks[2]}' >/dev/null 2>&1 & "
              f"({shlex.quote(venv_python())} -c 'import os,time\nif os.fork(): os._exit(0)\nos.setsid()\n"
              f"time.sleep({marks[3]})' &) ; sleep 1000")
    result = a.run(escape, timeout=2)
    assert result["killed_by"] == "timeout", result
    left = [p for p in procs_of_uid(uid, a.project_id) if any(m in " ".join(p.cmdline()) for m in marks)]
    assert not left, f"escaped processes outlived the exec: {[p.cmdline() for p in left]}"
    # now leave things running on purpose (an async job and an escapee) and stop A
    job = a.run(f"setsid sleep {marks[0]} & sleep {marks[1]}", timeout=60, **{"async": True})
    assert job
    assert wait_until(lambda: any(marks[0] in " ".join(p.cmdline()) for p in procs_of_uid(uid, a.project_id)), 10)
    a.stop()
    assert wait_until(lambda: not procs_of_uid(uid, a.project_id), 5), [p.cmdline() for p in procs_of_uid(uid, a.project_id)]
    assert cgroup_procs(project_cgroup_dirs(a.project_id)) == []
