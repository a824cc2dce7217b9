"""Exact per-exec accounting through a real server (issue 15 item 4).

Every exec, job and kernel runs in a pooled cgroup of its own; the group's counters must
describe that one command: peak memory, cpu user/system and OOM kills.  Two things used
to get this wrong: the root's ``ru_maxrss`` (a forked child starts with its parent's peak,
so every exec reported the daemon's 21-40 MB), and counters a reused group carried over
from the command before it.  These tests run commands of known size back to back in one
project, so each group is reused many times, and compare.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from typing import Any

import httpx
import pytest

from tests.conftest import have_bwrap, require
from tests.server import Account, Server

MiB = 2**20
MB = 10**6
# `true` is a few hundred KiB of page tables, stack and kernel objects; bash around it a
# few MiB.  The daemon is 20-40 MiB: anything near that is someone else's memory.
SMALL = 8 * MiB
ALLOC = 200 * MB
ALLOC_PY = (f"b = bytearray({ALLOC})\n"
            "for i in range(0, len(b), 4096): b[i] = 1\n")
# ~0.35 s of user-space cpu, however busy the machine is (cpu time, not wall time), with
# one clock syscall per 20,000 loops so that nearly none of it is system time
BUSY_PY = ("import time\nwhile time.process_time() < 0.35:\n"
           "    for _ in range(20000): pass\n")
HOG_PY = "x = []\nwhile True: x.append(bytearray(16 * 2**20)); x[-1][::4096] = b'x' * len(x[-1][::4096])\n"
MEMORY_GROUP = "grep -o 'memory:.*' /proc/self/cgroup"


@pytest.fixture(autouse=True)
def _sandboxed() -> None:
    require("root (per-project uid and cgroups)", os.geteuid() == 0)
    require("bubblewrap", have_bwrap())


class Project:
    def __init__(self, server: Server, account: Account, **limits: Any) -> None:
        self.server = server
        self.key = account.api_key
        body: dict[str, Any] = {"title": "accounting"}
        if limits:
            body["limits"] = limits
        r = httpx.post(server.url + "/api/v3/projects", json=body, headers=self._headers, timeout=60)
        assert r.status_code == 201, r.text
        self.project_id = r.json()["project_id"]

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def v3(self, method: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{self.server.url}/api/v3/projects/{self.project_id}{path}",
                             json=body, headers=self._headers, timeout=120, **kw)

    def run(self, command: str, *args: str, timeout: float = 60) -> dict[str, Any]:
        # one word and no args: the bare program; whitespace makes it a bash script
        r = self.v3("POST", "/exec", {"command": command, "args": list(args), "timeout": timeout})
        assert r.status_code == 200, r.text
        return r.json()

    def py(self, code: str) -> dict[str, Any]:
        return self.run("python3", "-c", code)

    def job(self, command: str, *args: str) -> dict[str, Any]:
        started = self.v3("POST", "/exec", {"command": command, "args": list(args), "async": True,
                                            "timeout": 60})
        assert started.status_code == 200, started.text
        job_id = started.json()["job_id"]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            final = self.v3("GET", f"/jobs/{job_id}", params={"wait": 20}).json()
            if final["status"] != "running":
                return final
        raise AssertionError(f"job {job_id} did not finish")

    def stop(self) -> None:
        self.v3("POST", "/stop")


@pytest.fixture
def project(server: Server, account: Account):
    made: list[Project] = []

    def make(**limits: Any) -> Project:
        p = Project(server, account, **limits)
        made.append(p)
        return p
    yield make
    for p in made:
        p.stop()


def _require_cgroup_accounting(p: Project) -> None:
    group = p.run(MEMORY_GROUP)["stdout"]
    require("exec groups in the memory cgroup", "/slot-" in group)


def _mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


def test_true_after_big_allocations_reports_only_its_own_memory(project) -> None:
    p = project()
    _require_cgroup_accounting(p)
    big = p.py(ALLOC_PY)
    assert big["exit_code"] == 0, big
    # the python interpreter itself is ~8-10 MB on top of the 200 MB it allocated
    assert ALLOC <= big["max_rss_bytes"] <= ALLOC + 20 * MB, _mib(big["max_rss_bytes"])
    # leave page cache in the group too (a file written and read back), then reuse it
    cached = p.run("head -c 30000000 /dev/zero > f && cat f > /dev/null && rm f")
    assert cached["exit_code"] == 0, cached
    peaks = []
    for _ in range(25):
        r = p.run("true")   # the bare program, no shell
        assert r["exit_code"] == 0, r
        peaks.append(r["max_rss_bytes"])
    assert max(peaks) <= SMALL, [_mib(x) for x in peaks]
    # a shell too, and concurrently, so several pooled groups are taken, given back and reused
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: p.run("true; true"), range(24)))
    assert all(r["exit_code"] == 0 for r in results)
    assert max(r["max_rss_bytes"] for r in results) <= SMALL, [_mib(r["max_rss_bytes"]) for r in results]
    # and the big one is still measured as big in a reused group
    again = p.py(ALLOC_PY)
    assert ALLOC <= again["max_rss_bytes"] <= ALLOC + 20 * MB, _mib(again["max_rss_bytes"])


def test_cpu_user_and_system_belong_to_the_exec(project) -> None:
    p = project()
    _require_cgroup_accounting(p)
    busy = p.py(BUSY_PY)
    assert busy["exit_code"] == 0, busy
    assert 0.2 <= busy["cpu_user_s"] <= 2.0, busy
    assert busy["cpu_sys_s"] < 0.3, busy
    for _ in range(5):
        idle = p.run("true")
        assert idle["cpu_user_s"] + idle["cpu_sys_s"] <= 0.05, idle
    sleeper = p.run("sleep 0.3")
    assert sleeper["cpu_user_s"] + sleeper["cpu_sys_s"] <= 0.05, sleeper
    assert sleeper["max_rss_bytes"] <= SMALL, _mib(sleeper["max_rss_bytes"])


def test_oom_kill_is_reported_once_for_the_exec_it_killed(project) -> None:
    p = project(memory_bytes=256 * MiB)
    _require_cgroup_accounting(p)
    killed = p.run(f"{MEMORY_GROUP}; python3 -c \"{HOG_PY}\"; echo survived")
    assert killed["oom_killed"] is True and killed["killed_by"] == "oom", killed
    assert killed["stdout"].endswith("survived\n"), killed
    group = killed["stdout"].splitlines()[0]
    # the next execs reuse the group (the pool hands out the hottest group first)
    for _ in range(5):
        after = p.run(MEMORY_GROUP)
        assert after["stdout"].strip() == group
        assert after["oom_killed"] is False and after["killed_by"] is None, after
        assert after["max_rss_bytes"] <= SMALL, _mib(after["max_rss_bytes"])


def test_async_jobs_are_accounted_like_execs(project) -> None:
    p = project(memory_bytes=256 * MiB)
    _require_cgroup_accounting(p)
    hog = p.job("python3", "-c", HOG_PY)
    assert hog["status"] == "completed" and hog["oom_killed"] is True, hog
    assert hog["killed_by"] == "oom" and hog["signal"] == "SIGKILL", hog
    for _ in range(3):
        small = p.job("true")
        assert small["status"] == "completed" and small["exit_code"] == 0, small
        assert small["oom_killed"] is False and small["killed_by"] is None, small
        assert small["max_rss_bytes"] <= SMALL, _mib(small["max_rss_bytes"])
    big = p.job("python3", "-c", ALLOC_PY)
    assert big["exit_code"] == 0, big
    assert ALLOC <= big["max_rss_bytes"] <= ALLOC + 20 * MB, _mib(big["max_rss_bytes"])
    busy = p.job("python3", "-c", BUSY_PY)
    assert busy["cpu_user_s"] >= 0.2, busy
    after = p.job("true")
    assert after["cpu_user_s"] + after["cpu_sys_s"] <= 0.05, after
    assert after["max_rss_bytes"] <= SMALL, _mib(after["max_rss_bytes"])


def test_kernels_and_execs_never_share_a_group(project) -> None:
    """A live kernel keeps its group; no exec is placed in it, and no exec's group holds
    anything but that exec's processes (and the daemon's parked spawner thread, which
    shows the daemon's pid: it is the exec's parent)."""
    p = project()
    _require_cgroup_accounting(p)
    created = p.v3("POST", "/sessions", {"name": "acct", "kernel": "python3"})
    assert created.status_code == 201, created.text
    sid = created.json()["session_id"]
    try:
        ran = p.v3("POST", f"/sessions/{sid}/execute", {
            "code": "import os, re\n"
                    "g = re.search(r'memory:(.*)', open('/proc/self/cgroup').read()).group(1)\n"
                    "print(os.getpid(), g)"}).json()
        assert ran["status"] == "ok", ran
        kernel_pid, kernel_group = ran["outputs"][0]["text"].split()
        assert "/slot-" in kernel_group
        probe = ("import os, re\n"
                 "g = re.search(r'memory:(.*)', open('/proc/self/cgroup').read()).group(1)\n"
                 "procs = open('/sys/fs/cgroup/memory' + g + '/cgroup.procs').read().split()\n"
                 "print(g, os.getpid(), os.getppid(), *procs)")

        def look(_: int) -> list[str]:
            r = p.py(probe)
            assert r["exit_code"] == 0, r
            return r["stdout"].split()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            seen = list(pool.map(look, range(24)))
        for group, me, parent, *procs in seen:
            assert group != kernel_group, (group, kernel_group)
            assert kernel_pid not in procs
            assert set(procs) <= {me, parent}, (group, me, parent, procs)
    finally:
        p.v3("DELETE", f"/sessions/{sid}")
