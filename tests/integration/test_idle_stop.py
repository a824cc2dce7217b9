"""Idle stop (issue 15 item 2): a project without API activity for its ``idle_timeout_s`` is
stopped and releases every process, cgroup and mount; its state says why; the next call
starts it again.  Jobs and sessions count as activity; reading the state does not.  The
stateless Jupyter pool and the zygote shrink to zero after their own idle delay.

One server for the module, with a short server default (``idle_timeout_s`` 6 s) and a
3 s Jupyter idle delay (``PROJECTHUB_JUPYTER_IDLE_S``), so the waits stay short.
"""

from __future__ import annotations

import glob
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import psutil
import pytest

from tests.conftest import have_bwrap, require
from tests.security.conftest import Proj, new_project, procs_of_uid
from tests.server import PROJECTHUB, TEST_ENV, Account, Server

DEFAULT_IDLE_S = 6
JUPYTER_IDLE_S = 3


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require("root (per-project uid)", os.geteuid() == 0)
    require("bubblewrap", have_bwrap())
    old = os.environ.get("PROJECTHUB_JUPYTER_IDLE_S")
    os.environ["PROJECTHUB_JUPYTER_IDLE_S"] = str(JUPYTER_IDLE_S)
    try:
        srv = Server(tmp_path_factory.mktemp("idlehub"), extra_args=[
            "--default-limits", f'{{"disk_bytes": "1G", "idle_timeout_s": {DEFAULT_IDLE_S}}}']).start()
    finally:
        if old is None:
            os.environ.pop("PROJECTHUB_JUPYTER_IDLE_S", None)
        else:
            os.environ["PROJECTHUB_JUPYTER_IDLE_S"] = old
    yield srv
    srv.stop()
    srv.cli("stop-all")


@pytest.fixture(scope="module")
def owner(idle_server: Server) -> Account:
    return idle_server.new_account("Idle Owner")


def state_of(p: Proj) -> dict[str, Any]:
    """The project's state as GET /projects/{id} shows it: reading it is not activity."""
    return p.info()["state"]


def wait_for(predicate: Callable[[], Any], timeout: float, step: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def cgroup_dirs(project_id: str) -> list[str]:
    return (glob.glob(f"/sys/fs/cgroup/*/projecthub/{project_id}")
            + glob.glob(f"/sys/fs/cgroup/projecthub/{project_id}"))


def mounted_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path))]


def sandbox_processes(p: Proj) -> list[psutil.Process]:
    """Every process of the project's sandbox, as the host sees it."""
    pid = p.info()["status"].get("project.pid")
    if pid is None:
        return []
    top = psutil.Process(pid)
    return [top, *top.children(recursive=True)]


def jupyter_processes(p: Proj) -> list[str]:
    out = []
    for proc in sandbox_processes(p):
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "ipykernel" in cmd or "zygote" in cmd:
            out.append(cmd)
    return out


def stateless(p: Proj, code: str) -> Any:
    return p.client.system.jupyter_execute(input=code, kernel="python3")


# ----------------------------------------------------------------------------- idle stop

def test_an_idle_project_stops_and_releases_everything(idle_server: Server, owner: Account) -> None:
    p = new_project(idle_server, owner, "idle 5 s")
    assert p.set_limits(idle_timeout_s=5)["idle_timeout_s"] == 5   # tighter: the owner may
    assert p.v3("GET", "/limits").json()["idle_timeout_s"] == 5
    assert p.run("echo hi")["stdout"] == "hi\n"
    assert stateless(p, "2 + 3")[0]["data"]["text/plain"] == "5"   # kernels, zygote: memory
    uid = p.uid()
    assert uid is not None and procs_of_uid(uid, p.project_id), "the project runs as its uid"
    assert cgroup_dirs(p.project_id), "and in its cgroups"
    last_call = time.monotonic()
    assert state_of(p)["state"] == "running"

    state = wait_for(lambda: (s := state_of(p))["state"] == "stopped" and s, 25)
    stopped_after = time.monotonic() - last_call
    assert state, f"still {state_of(p)} after 25 s"
    assert stopped_after >= 4.5, stopped_after   # not before its idle_timeout_s
    assert state["reason"].startswith("idle:") and "idle_timeout_s=5" in state["reason"], state
    # everything released: no process of its uid, no cgroup, no mount of its image
    assert wait_for(lambda: not procs_of_uid(uid, p.project_id), 5), procs_of_uid(uid, p.project_id)
    assert cgroup_dirs(p.project_id) == []
    assert mounted_under(idle_server.data_dir / "projects" / p.project_id) == []
    assert p.info()["status"].get("memory") is None

    # the next call starts it again, transparently
    assert p.run("cat /proc/self/status | grep -c ^Uid")["exit_code"] == 0
    again = state_of(p)
    assert again["state"] == "running" and "reason" not in again
    p.stop()
    stopped = state_of(p)
    assert stopped["state"] == "stopped" and stopped["reason"] == "stopped by request", stopped


def test_calls_keep_a_project_alive_and_reading_its_state_does_not(idle_server: Server,
                                                                   owner: Account) -> None:
    p = new_project(idle_server, owner, "busy")
    p.set_limits(idle_timeout_s=3)
    started = time.monotonic()
    while time.monotonic() - started < 7:   # a call every second for more than twice the timeout
        assert p.run("true")["exit_code"] == 0
        assert state_of(p)["state"] == "running"
        time.sleep(1)
    # state polls alone (wait_for) do not keep it alive
    assert wait_for(lambda: state_of(p)["state"] == "stopped", 15)


def test_a_running_job_counts_as_activity_until_it_ends(idle_server: Server, owner: Account) -> None:
    p = new_project(idle_server, owner, "job")
    p.set_limits(idle_timeout_s=3)
    r = p.v3("POST", "/exec", {"command": "sleep 8", "bash": True, "async": True, "timeout": 60})
    assert r.status_code == 200 and r.json()["status"] == "running", r.text
    job_started = time.monotonic()
    # the job runs 8 s: far past the 3 s idle timeout, the project stays up
    assert not wait_for(lambda: state_of(p)["state"] == "stopped", 7, step=0.5)
    # it stops only once the job is over and another idle_timeout_s has passed
    assert wait_for(lambda: state_of(p)["state"] == "stopped", 20)
    assert time.monotonic() - job_started >= 8 + 3 - 0.5
    job = p.v3("GET", f"/jobs/{r.json()['job_id']}").json()   # the record survived the stop
    assert job["status"] == "completed" and job["exit_code"] == 0, job


def test_an_open_session_counts_as_activity_until_it_is_deleted(idle_server: Server,
                                                                owner: Account) -> None:
    p = new_project(idle_server, owner, "session")
    p.set_limits(idle_timeout_s=3)
    r = p.v3("POST", "/sessions", {"kernel": "python3"})
    assert r.status_code == 201, r.text
    sid = r.json()["session_id"]
    assert p.v3("POST", f"/sessions/{sid}/execute", {"code": "x = 41"}).status_code == 200
    assert not wait_for(lambda: state_of(p)["state"] == "stopped", 8, step=0.5)
    assert p.v3("POST", f"/sessions/{sid}/execute", {"code": "x + 1"}).json()["outputs"], "state kept"
    assert p.v3("DELETE", f"/sessions/{sid}").status_code in (200, 204)
    assert wait_for(lambda: state_of(p)["state"] == "stopped", 15)


# ----------------------------------------------------- server default, 0 = never, Jupyter shrink

def test_server_default_applies_and_zero_means_never_while_jupyter_shrinks(
        idle_server: Server, owner: Account) -> None:
    default = new_project(idle_server, owner, "server default")
    never = new_project(idle_server, owner, "never")
    assert default.v3("GET", "/limits").json()["idle_timeout_s"] == DEFAULT_IDLE_S
    # 0 = never is a raise: the owner may not, an admin (the CLI) may
    r = never.v3("PUT", "/limits", {"idle_timeout_s": 0})
    assert r.status_code == 403 and "idle_timeout_s" in r.json()["error"], r.text
    out = idle_server.cli("project", "limits", "--project", never.project_id, "--set", "idle_timeout_s=0")
    assert out["limits"]["idle_timeout_s"] == 0
    assert never.v3("GET", "/limits").json()["idle_timeout_s"] == 0

    assert default.run("true")["exit_code"] == 0
    assert stateless(never, "6 * 7")[0]["data"]["text/plain"] == "42"
    assert jupyter_processes(never), "a kernel pool and a zygote after a stateless call"
    memory_busy = never.info()["status"]["memory"]["rss"]
    # the server default stops the first; the pool and the zygote of the second shrink to zero
    # after JUPYTER_IDLE_S, while the project itself never stops
    assert wait_for(lambda: state_of(default)["state"] == "stopped", DEFAULT_IDLE_S + 10)
    assert "idle_timeout_s=6" in state_of(default)["reason"]
    assert wait_for(lambda: not jupyter_processes(never), JUPYTER_IDLE_S + 10), jupyter_processes(never)
    memory_idle = never.info()["status"]["memory"]["rss"]
    assert memory_idle < memory_busy - 40 * 1024, (memory_busy, memory_idle)   # KiB: kernels gone
    time.sleep(DEFAULT_IDLE_S + 2)   # well past the server default since its last call
    assert state_of(never)["state"] == "running"
    # Jupyter comes back on the next call
    assert stateless(never, "1 + 1")[0]["data"]["text/plain"] == "2"
    never.stop()


# ------------------------------------------------------------------- who may set it, bad input

def test_owner_may_only_tighten_idle_timeout(idle_server: Server, owner: Account) -> None:
    p = new_project(idle_server, owner, "who")
    assert p.set_limits(idle_timeout_s="4")["idle_timeout_s"] == 4
    for looser in (5, 0, None):
        r = p.v3("PUT", "/limits", {"idle_timeout_s": looser})
        assert r.status_code == 403, r.text
        assert "idle_timeout_s" in r.json()["error"] and "admin" in r.json()["error"], r.text
    assert p.set_limits(idle_timeout_s="3s")["idle_timeout_s"] == 3


@pytest.mark.parametrize("value", [-1, "-5", "soon", True, False, [], {"s": 1}, 0.5, 1e308])
def test_invalid_idle_timeout_is_refused_naming_it(idle_server: Server, owner: Account, value: Any) -> None:
    p = new_project(idle_server, owner, "bad")
    r = p.v3("PUT", "/limits", {"idle_timeout_s": value})
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("Error: idle_timeout_s: "), r.text
    assert p.v3("GET", "/limits").json()["idle_timeout_s"] == DEFAULT_IDLE_S   # nothing changed
    # the same on project create
    r = httpx.post(idle_server.url + "/api/v3/projects", json={"title": "bad", "limits": {"idle_timeout_s": value}},
                   headers={"Authorization": f"Bearer {owner.api_key}"}, timeout=30)
    assert r.status_code == 400 and "idle_timeout_s" in r.json()["error"], r.text


def test_invalid_idle_timeout_on_the_command_line(idle_server: Server, owner: Account,
                                                  tmp_path: Path) -> None:
    p = new_project(idle_server, owner, "cli")
    out = subprocess.run([*PROJECTHUB, "project", "limits", "--data-dir", str(idle_server.data_dir),
                          "--project", p.project_id, "--set", "idle_timeout_s=-3"],
                         capture_output=True, text=True, timeout=60, env={**TEST_ENV, **os.environ})
    assert out.returncode == 2 and out.stdout.count("\n") == 1 and "Traceback" not in out.stderr, out
    assert '"error": "idle_timeout_s: must be 0 (never) or a positive number' in out.stdout, out.stdout
    out = subprocess.run([*PROJECTHUB, "serve", "--data-dir", str(tmp_path), "--port", "1",
                          "--default-limits", '{"idle_timeout_s": "abc"}'],
                         capture_output=True, text=True, timeout=60, env={**TEST_ENV, **os.environ})
    assert out.returncode != 0 and "idle_timeout_s: expected a number of seconds" in out.stderr, out
    assert "Traceback" not in out.stderr


# ------------------------------------------- the daemon drops Jupyter's modules (re-exec in place)

def daemon_process(p: Proj) -> psutil.Process:
    def is_daemon(proc: psutil.Process) -> bool:
        try:   # a kernel exiting meanwhile is a zombie without a command line
            return proc.name() != "bwrap" and "projecthub.project.daemon" in " ".join(proc.cmdline())
        except psutil.Error:
            return False
    found = [proc for proc in sandbox_processes(p) if is_daemon(proc)]
    assert len(found) == 1, found
    return found[0]


def maps_zmq(proc: psutil.Process) -> bool:
    """Whether the daemon has zmq (imported with jupyter_client) in its memory."""
    with open(f"/proc/{proc.pid}/maps") as f:
        return "zmq" in f.read()


def test_daemon_restarts_in_place_once_jupyter_is_idle_and_loses_no_call(
        idle_server: Server, owner: Account) -> None:
    """After the Jupyter idle window the daemon execs itself again (project/recycle.py):
    same pid and instance id, Jupyter's modules gone from its memory, and calls made
    across the restart from six threads all succeed (refused ones are resent by the hub)."""
    import threading
    p = new_project(idle_server, owner, "recycle")
    idle_server.cli("project", "limits", "--project", p.project_id, "--set", "idle_timeout_s=0")
    assert stateless(p, "6 * 7")[0]["data"]["text/plain"] == "42"
    daemon = daemon_process(p)
    instance = p.info()["status"]["instance_id"]
    assert maps_zmq(daemon), "Jupyter's client side is loaded after a stateless call"
    rss_busy = daemon.memory_info().rss

    failures: list[str] = []
    calls = [0]
    stop = threading.Event()

    def hammer() -> None:   # exec calls all the way through the restart
        while not stop.is_set():
            try:
                out = p.run("echo ok")
                if out.get("stdout") != "ok\n":
                    failures.append(repr(out))
                calls[0] += 1
            except Exception as exc:   # noqa: BLE001 -- any failure is the finding
                failures.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        restarted = wait_for(lambda: not maps_zmq(daemon), JUPYTER_IDLE_S + 20, step=0.2)
        time.sleep(1.0)   # and calls keep flowing to the new interpreter
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert restarted, "the daemon still holds zmq long after Jupyter went idle"
    assert failures == [], failures[:3]
    assert calls[0] > 10, calls
    assert daemon.is_running() and daemon_process(p).pid == daemon.pid, "the same process"
    assert p.info()["status"]["instance_id"] == instance, "the same daemon to the hub"
    rss_idle = daemon.memory_info().rss
    assert rss_idle < rss_busy - 8 * 2**20, (rss_busy, rss_idle)
    # Jupyter works again on the restarted daemon, and a session too
    assert stateless(p, "1 + 1")[0]["data"]["text/plain"] == "2"
    r = p.v3("POST", "/sessions", {"kernel": "python3"})
    assert r.status_code == 201, r.text
    assert p.v3("DELETE", f"/sessions/{r.json()['session_id']}").status_code in (200, 204)
    p.stop()


def test_daemon_does_not_restart_while_a_job_runs(idle_server: Server, owner: Account) -> None:
    p = new_project(idle_server, owner, "recycle-job")
    idle_server.cli("project", "limits", "--project", p.project_id, "--set", "idle_timeout_s=0")
    assert stateless(p, "1")[0]["data"]["text/plain"] == "1"
    r = p.v3("POST", "/exec", {"command": "sleep 12", "bash": True, "async": True, "timeout": 60})
    assert r.status_code == 200, r.text
    daemon = daemon_process(p)
    # past the idle window and several checks, the job keeps the daemon as it is
    assert not wait_for(lambda: not maps_zmq(daemon), JUPYTER_IDLE_S + 6, step=0.5)
    job = p.v3("GET", f"/jobs/{r.json()['job_id']}").json()
    assert job["status"] == "running", job
    # once it ended, the daemon restarts in place
    assert wait_for(lambda: not maps_zmq(daemon), 25, step=0.5)
    job = p.v3("GET", f"/jobs/{r.json()['job_id']}").json()
    assert job["status"] == "completed" and job["exit_code"] == 0, job
    p.stop()
