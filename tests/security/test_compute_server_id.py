"""compute_server_id as a hostile project user sees it (issue 17 item 3): the id selects a
host, never another project; the instance there carries the project's own limits and its
own uid; another project's jobs stay out of reach; odd ids are a clear error, not a 5xx."""

from __future__ import annotations

import glob
from typing import Any

from tests.cluster import Cluster, cluster, http, nats_server, wait_for  # noqa: F401


def _exec(cluster: Cluster, key: str, project_id: str, opts: dict[str, Any]) -> dict[str, Any]:
    reply = http(cluster.hubs[0], "POST", "/api/conat/project", key,
                 json={"project_id": project_id, "name": "system.exec", "args": [opts]})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _pids_max(host: str, project_id: str) -> str:
    """The pids limit the host put on the project's group (cgroup v1 or v2)."""
    found = glob.glob(f"/sys/fs/cgroup/**/projecthub-{host}/{project_id}/pids.max", recursive=True)
    assert found, f"no pids group of {project_id} on {host}"
    return open(found[0]).read().strip()


def test_compute_server_id_reaches_only_the_callers_instance_with_its_limits(cluster: Cluster) -> None:
    import cocalc_api
    alice, bob = cluster.new_account("Alice"), cluster.new_account("Bob")
    hub = cluster.hubs[0].url
    ids = {h["name"]: h["id"] for h in cluster.cli("host", "list")["hosts"]}
    pa = cocalc_api.Hub(api_key=alice.api_key, host=hub).projects.create_project(title="alice")
    pb = cocalc_api.Hub(api_key=bob.api_key, host=hub).projects.create_project(title="bob")
    cluster.cli("project", "limits", "--project", pa, "--set", "pids=77")
    # Bob's secret, in his instance on every host
    for name, host_id in ids.items():
        done = _exec(cluster, bob.api_key, pb, {"command": "echo bob-secret > secret; id -u", "bash": True,
                                                "compute_server_id": host_id})
        assert done.get("exit_code") == 0, done
    bob_job = _exec(cluster, bob.api_key, pb, {"command": "sleep 30", "async_call": True,
                                               "compute_server_id": ids["h2"]})["job_id"]

    for name, host_id in ids.items():
        mine = _exec(cluster, alice.api_key, pa, {"command": "cat secret; id -u; ls ..", "bash": True,
                                                  "err_on_exit": False, "compute_server_id": host_id})
        assert "bob-secret" not in mine["stdout"] + mine["stderr"]
        assert pb not in mine["stdout"]
        # Bob's job id through Alice's project on the same host: not hers
        foreign = _exec(cluster, alice.api_key, pa, {"async_get": bob_job, "compute_server_id": host_id})
        assert "error" in foreign and "bob" not in str(foreign)
    # the instance has Alice's limits (pids=77 plus the daemon's allowance), not the defaults
    assert len({_pids_max(name, pa) for name in ids}) == 1 and int(_pids_max("h2", pa)) < 512
    alice_uids = {_exec(cluster, alice.api_key, pa, {"command": "id -u", "compute_server_id": i})["stdout"]
                  for i in ids.values()}
    bob_uids = {_exec(cluster, bob.api_key, pb, {"command": "id -u", "compute_server_id": i})["stdout"]
                for i in ids.values()}
    assert not alice_uids & bob_uids

    # Bob's project with any compute_server_id: not Alice's to call
    refused = _exec(cluster, alice.api_key, pb, {"command": "cat secret", "compute_server_id": ids["h2"]})
    assert "error" in refused and "bob-secret" not in str(refused)

    for odd in (True, -1, 2.5, "2", [2], {"id": 2}, 2**62):
        answer = _exec(cluster, alice.api_key, pa, {"command": "true", "compute_server_id": odd})
        assert answer.get("error", "").startswith("Error: no connection to compute server"), (odd, answer)
