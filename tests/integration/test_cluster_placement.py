"""Placement and routing on the cluster (issue 17 item 3), through the official client:
new projects spread over the hosts by assigned count (through both hubs at once), ``host
list`` reports the store's counts and states, ``compute_server_id`` runs a command in the
project's instance on another host, and a killed host is marked down within 10 s, its
projects' calls fail fast naming it, and its return re-adopts the running daemon."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cluster, attempt, cluster, http, nats_server, wait_for  # noqa: F401

DOWN_WITHIN_S = 10.0



def _stored_hosts(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """``host list`` without --nats: what the hubs recorded in the store."""
    return {h["name"]: h for h in cluster.cli("host", "list")["hosts"]}


def _base(cluster: Cluster, host: str, project_id: str) -> Path:
    return cluster.hosts[host].data_dir / "projects" / project_id


def _home(cluster: Cluster, host: str, project_id: str) -> Path:
    return _base(cluster, host, project_id) / "home"


def _conat(cluster: Cluster, hub: int, key: str, project_id: str, opts: dict[str, Any]) -> dict[str, Any]:
    reply = http(cluster.hubs[hub], "POST", "/api/conat/project", key,
                 json={"project_id": project_id, "name": "system.exec", "args": [opts]})
    assert reply.status_code == 200, reply.text   # errors too: CoCalc's {"error": ...}
    return dict(reply.json())


def test_placement_compute_server_and_a_lost_host(cluster: Cluster) -> None:
    import cocalc_api
    account = cluster.new_account()
    key = account.api_key
    hubs = [cocalc_api.Hub(api_key=key, host=h.url) for h in cluster.hubs]
    ids = [hubs[i % 2].projects.create_project(title=f"p{i}") for i in range(10)]

    def first_start(i: int) -> None:   # placed at the first start, through both hubs at once
        hubs[i % 2].projects.start(ids[i])
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(first_start, range(10)))

    stored = _stored_hosts(cluster)
    assert {n: h["projects"] for n, h in stored.items()} == {"h1": 5, "h2": 5}
    assert {n: h["state"] for n, h in stored.items()} == {"h1": "up", "h2": "up"}
    assert all(isinstance(h["id"], int) and h["last_seen"] for h in stored.values())
    live = {h["name"]: h for h in cluster.host_list()}
    assert {n: (h["state"], h["projects"]) for n, h in live.items()} == {"h1": ("up", 5), "h2": ("up", 5)}
    h1_id, h2_id = stored["h1"]["id"], stored["h2"]["id"]

    on_h1 = [p for p in ids if _base(cluster, "h1", p).is_dir()]
    on_h2 = [p for p in ids if _base(cluster, "h2", p).is_dir()]
    assert len(on_h1) == 5 and len(on_h2) == 5 and not set(on_h1) & set(on_h2)

    # compute_server_id = h2 for a project homed on h1: its instance there, its own home
    project_id = on_h1[0]
    project = cocalc_api.Project(api_key=key, host=cluster.hubs[1].url, project_id=project_id)
    wrote = project.system.exec(command="echo there > where.txt; id -u", bash=True, compute_server_id=h2_id)
    assert wrote["exit_code"] == 0
    assert (_home(cluster, "h2", project_id) / "where.txt").read_text() == "there\n"
    assert not (_home(cluster, "h1", project_id) / "where.txt").exists()
    assert project.system.exec(command="cat where.txt", compute_server_id=h2_id)["stdout"] == "there\n"
    at_home = _conat(cluster, 0, key, project_id, {"command": "test -e where.txt", "bash": True,
                                                   "err_on_exit": False, "compute_server_id": h1_id})
    assert at_home["exit_code"] == 1                        # its own host id: at home

    # an async job on the instance, read back through the other hub with the same id
    job = _conat(cluster, 1, key, project_id, {"command": "sleep 0.3; echo job-on-h2", "bash": True,
                                               "async_call": True, "compute_server_id": h2_id})
    assert "job_id" in job, job
    done = _conat(cluster, 0, key, project_id, {"async_get": job["job_id"], "async_await": True,
                                                "compute_server_id": h2_id})
    assert done.get("stdout") == "job-on-h2\n", done
    missing = _conat(cluster, 0, key, project_id, {"async_get": job["job_id"]})   # not at home
    assert "error" in missing

    unknown = _conat(cluster, 0, key, project_id, {"command": "true", "compute_server_id": 999})
    assert unknown["error"].startswith("Error: no connection to compute server 999"), unknown

    # a stop stops the instance too
    hubs[0].projects.stop(project_id)
    wait_for(lambda: not (cluster.hosts["h2"].data_dir / "run" / project_id / "host.json").exists(),
             30, "the instance on h2 to stop with the project")

    # h1 dies (SIGKILL; its daemons live on): marked down in the store within 10 s
    keep = on_h1[1]
    kept = cocalc_api.Project(api_key=key, host=cluster.hubs[0].url, project_id=keep)
    job = _conat(cluster, 0, key, keep, {"command": "sleep 600", "async_call": True})
    daemon = json.loads((cluster.hosts["h1"].data_dir / "run" / keep / "host.json").read_text())["pid"]
    cluster.kill_host("h1")
    killed = time.monotonic()
    wait_for(lambda: _stored_hosts(cluster)["h1"]["state"] == "down", DOWN_WITHIN_S, "h1 marked down")
    assert time.monotonic() - killed < DOWN_WITHIN_S
    assert _stored_hosts(cluster)["h2"]["state"] == "up"
    for hub in (0, 1):
        started = time.monotonic()
        failed = _conat(cluster, hub, key, keep, {"command": "true"})
        assert time.monotonic() - started < 2.0, "a down host's project answers at once"
        assert failed["error"].startswith(f"Error: host h1 (id {h1_id}) is down: no heartbeat for "), failed
    with pytest.raises(Exception, match=r"host h1 \(id \d+\) is down"):
        kept.system.exec(command="true")
    on_down = _conat(cluster, 1, key, on_h2[0], {"command": "true", "compute_server_id": h1_id})
    assert "host h1" in on_down["error"] and "is down" in on_down["error"], on_down
    assert Path(f"/proc/{daemon}").exists()

    # h1 returns: up again, the same daemon and its job re-adopted
    cluster.start_host("h1")
    wait_for(lambda: _stored_hosts(cluster)["h1"]["state"] == "up", DOWN_WITHIN_S, "h1 marked up")
    back = wait_for(lambda: attempt(lambda: kept.system.exec(command="echo back")), 60, "h1's project")
    assert back["stdout"] == "back\n"
    assert json.loads((cluster.hosts["h1"].data_dir / "run" / keep / "host.json").read_text())["pid"] == daemon
    status = _conat(cluster, 1, key, keep, {"async_get": job["job_id"]})
    assert status.get("status") == "running", status
