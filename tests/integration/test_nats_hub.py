"""End to end over a real nats-server: the official client -> ``projecthub hub --nats`` ->
NATS -> ``projecthub host`` -> the project's daemon.  The hub runs no user code; the host
never opens the database."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from projecthub.fabric.nats_config import HUB_USER
from projecthub.host.ledger import LEDGER_NAME
from tests.integration.test_nats_host import start_host, stop_host
from tests.cluster import attempt
from tests.nats import NatsServer, nats_server  # noqa: F401
from tests.server import Server


@pytest.fixture
def cluster(nats_server: NatsServer, tmp_path: Path) -> Iterator[tuple[Server, subprocess.Popen[str], Path]]:
    host_dir = tmp_path / "h1"
    host = start_host(nats_server, "h1", host_dir)
    hub_dir = tmp_path / "hub"
    hub_dir.mkdir()
    hub = Server(hub_dir, command="hub", extra_args=[
        "--nats", nats_server.url, "--nats-creds", str(nats_server.creds_file(HUB_USER))])
    try:
        hub.start()
        yield hub, host, host_dir
    finally:
        if hub.process is not None:
            hub.stop()
        stop_host(host, host_dir)


def _wait(predicate: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def _running_project(hub: Server, title: str) -> tuple[Any, str, Any]:
    """A new account's new project, started on the host by a first exec: (account, project
    id, its official-client Project)."""
    import cocalc_api
    account = hub.new_account()
    project_id = cocalc_api.Hub(api_key=account.api_key, host=hub.url).projects.create_project(title=title)
    project = cocalc_api.Project(api_key=account.api_key, host=hub.url, project_id=project_id)
    _wait(lambda: attempt(lambda: project.system.exec(command="true")), 60)
    return account, project_id, project


def test_exec_through_hub_nats_host(cluster: Any, nats_server: NatsServer) -> None:
    import cocalc_api
    hub, host, host_dir = cluster
    # the hub registers a host it hears (numeric id) before any project is placed on it
    assert _wait(lambda: [h for h in hub.cli("host", "list")["hosts"] if h["name"] == "h1"], 30)[0]["id"]
    account = hub.new_account()
    api = cocalc_api.Hub(api_key=account.api_key, host=hub.url)
    project_id = api.projects.create_project(title="on h1")
    project = cocalc_api.Project(api_key=account.api_key, host=hub.url, project_id=project_id)
    # the first call may come before the host's first heartbeat reached the hub
    result = _wait(lambda: attempt(lambda: project.system.exec(command="echo hi; id -u")), 60)
    out, uid = result["stdout"].split()
    assert out == "hi" and int(uid) > 0 and result["exit_code"] == 0
    # it runs on h1: its home is in the host's data dir, and the host's heartbeat lists it
    assert (host_dir / "projects" / project_id).is_dir()
    assert not (host_dir / "hub.db").exists()   # the host never opened a store
    big = project.system.exec(command="head -c 300000 /dev/zero | tr '\\0' x")
    assert big["stdout"] == "x" * 300000   # over the test server's 64 KiB max_payload: chunked
    idle = api.projects.create_project(title="never started")
    api.projects.stop(idle)   # nothing to stop anywhere: fine, and it is not placed on a host
    api.projects.delete(idle)
    import sqlite3
    with sqlite3.connect(hub.data_dir / "hub.db") as db:   # placement, as the hub recorded it
        placed = dict(db.execute("SELECT p.project_id, h.name FROM projects p "
                                 "LEFT JOIN hosts h ON h.host_id = p.host_id"))
    assert placed[idle] is None and placed[project_id] == "h1"
    listed = hub.cli("host", "list", "--nats", nats_server.url,
                     "--nats-creds", str(nats_server.creds_file(HUB_USER)))["hosts"]
    (h1,) = [h for h in listed if h["name"] == "h1"]
    assert isinstance(h1["id"], int) and h1["state"] == "up" and h1["projects"] == 1
    assert h1["capacity"]["cpus"] >= 1 and "loadavg1" in h1["load"]
    offline = hub.cli("host", "list")["hosts"]   # without NATS: the state the hub stored
    assert [(h["state"], h["projects"]) for h in offline if h["name"] == "h1"] == [("up", 1)]
    api.projects.stop(project_id)   # through the hub, to the host: its daemon goes away
    ledger = json.loads((host_dir / LEDGER_NAME).read_text())
    assert ledger[project_id]["state"] == "stopped"
    assert not (host_dir / "run" / project_id / "host.json").exists()



def test_a_lost_host_fails_fast_naming_it_and_its_return_readopts(cluster: Any, nats_server: NatsServer) -> None:
    hub, host, host_dir = cluster
    account, project_id, project = _running_project(hub, "on h1")
    daemon = json.loads((host_dir / "run" / project_id / "host.json").read_text())["pid"]

    host.kill()   # the host process dies; its project's daemon does not
    host.wait(10)
    started = time.monotonic()
    with pytest.raises(Exception, match="host h1"):
        project.system.exec(command="true")
    assert time.monotonic() - started < 6   # within the heartbeat timeout, never a hang
    native = httpx.post(f"{hub.url}/api/v3/projects/{project_id}/exec", json={"command": "true"},
                        headers={"Authorization": f"Bearer {account.api_key}"}, timeout=30)
    assert native.status_code == 503 and "host h1" in native.json()["error"]
    assert Path(f"/proc/{daemon}").exists()

    again = start_host(nats_server, "h1", host_dir)   # the same host comes back
    try:
        result = _wait(lambda: attempt(lambda: project.system.exec(command="echo back")), 60)
        assert result["stdout"] == "back\n"
        # the same daemon, adopted, not a new one
        assert json.loads((host_dir / "run" / project_id / "host.json").read_text())["pid"] == daemon
        admin_key = hub.cli("account", "create", "--name", "Admin", "--admin")["api_key"]
        report = httpx.get(hub.url + "/api/v3/admin/server", headers={"Authorization": f"Bearer {admin_key}"})
        assert report.status_code == 200 and report.json()["isolation"]["hub_only"] is True
    finally:
        stop_host(again, host_dir)


def test_job_output_streams_through_nats_and_stalled_readers_stay_bounded(cluster: Any) -> None:
    """A 50 MB job's SSE stream through hub -> NATS -> host: read in full it arrives whole;
    three readers that stall cost the hub and the host a bounded amount (the credit window
    per stream), not the job's size."""
    import socket

    import psutil
    hub, host, _ = cluster
    key = hub.new_account().api_key
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=hub.url, headers=auth, timeout=120) as http:
        pid = http.post("/api/v3/projects", json={"title": "streams"}).json()["project_id"]
        _wait(lambda: attempt(lambda: http.post(f"/api/v3/projects/{pid}/exec",
                                             json={"command": "true"}).raise_for_status()), 60)
        mb = 50
        job = http.post(f"/api/v3/projects/{pid}/exec", json={
            "command": f"head -c {mb * 1000000} /dev/zero | tr '\\0' x", "bash": True, "async": True,
            "timeout": 600}).json()["job_id"]
        _wait(lambda: http.get(f"/api/v3/projects/{pid}/jobs/{job}").json().get("status") != "running", 120)
        procs = [psutil.Process(hub.process.pid), psutil.Process(host.pid)]
        base = [p.memory_info().rss for p in procs]

        stalled = []
        for _ in range(3):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.connect(("127.0.0.1", hub.port))
            sock.sendall(f"GET /api/v3/projects/{pid}/jobs/{job}/events HTTP/1.1\r\nHost: x\r\n"
                         f"Authorization: Bearer {key}\r\n\r\n".encode())
            sock.settimeout(60)
            assert sock.recv(16 * 1024).startswith(b"HTTP/1.1 200")
            stalled.append(sock)
        peak = list(base)
        for _ in range(20):   # 4 s: whatever the hub and host would buffer, they have by now
            time.sleep(0.2)
            peak = [max(a, p.memory_info().rss) for a, p in zip(peak, procs)]
        growth_mib = [(p - b) / 2**20 for p, b in zip(peak, base)]
        assert max(growth_mib) < 40, growth_mib   # unbounded would be 3 x 50 MB

        got, event = 0, ""
        with http.stream("GET", f"/api/v3/projects/{pid}/jobs/{job}/events") as resp:
            for line in resp.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "stdout":
                    got += len(json.loads(line[6:])["data"])
        assert got == mb * 1000000
        for sock in stalled:
            sock.close()


def test_a_job_running_when_its_host_dies_finishes_and_is_read_after_the_host_returns(
        cluster: Any, nats_server: NatsServer) -> None:
    """The host process dies (SIGKILL) while a job runs in one of its projects: the job runs
    on in the project's daemon; meanwhile reading it fails fast naming the host; once the host
    is back (it re-adopts the daemon) the job's whole output and exit code are there."""
    hub, host, host_dir = cluster
    _, _, project = _running_project(hub, "job on h1")
    job = project.system.exec(command="for i in $(seq 1 30); do echo tick$i; sleep 0.1; done",
                              bash=True, async_call=True)
    job_id = job["job_id"]
    _wait(lambda: "tick2" in (project.call("system.exec", [{"async_get": job_id}]).get("stdout") or ""), 30)

    host.kill()   # mid-job; the daemon (and the job in it) live on
    host.wait(10)
    started = time.monotonic()
    with pytest.raises(Exception, match="host h1"):
        project.call("system.exec", [{"async_get": job_id}])
    assert time.monotonic() - started < 6
    time.sleep(3.5)   # the job ends while nobody serves its host

    again = start_host(nats_server, "h1", host_dir)
    try:
        record = _wait(lambda: attempt(lambda: project.call(
            "system.exec", [{"async_get": job_id, "async_await": True}])), 60)
        assert record["status"] == "completed", record
        assert record["exit_code"] == 0 and record["stderr"] == ""
        assert record["stdout"] == "".join(f"tick{i}\n" for i in range(1, 31))
    finally:
        stop_host(again, host_dir)
