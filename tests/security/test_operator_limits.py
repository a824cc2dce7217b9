"""An owner may not undo the operator's restrictions on its project (adversarial review item 5).

The operator squeezes an abusive project with ``projecthub project limits --set ...``; the
owner then PUT looser values (or ``null``, or network on) through the v3 API and got them,
because the check compared with the server defaults, not with the project's current limits.
Now a non-admin may only tighten relative to the project's current effective limits; the
operator's values survive an owner's PUT of other keys; admins and the CLI set anything
(v3 admits only the project's members, so the operator's side here is the CLI).
No sandbox is started: the check happens before any daemon would.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.server import Server

GiB = 2**30
MiB = 2**20


def _limits(server: Server, key: str, project_id: str, body: Any = None) -> httpx.Response:
    method = "GET" if body is None else "PUT"
    return httpx.request(method, f"{server.url}/api/v3/projects/{project_id}/limits", json=body,
                         headers={"Authorization": f"Bearer {key}"}, timeout=60)


def test_owner_cannot_undo_the_operators_restriction(server: Server) -> None:
    owner = server.new_account("Owner of a restricted project")
    r = httpx.post(server.url + "/api/v3/projects", json={"title": "restricted"},
                   headers={"Authorization": f"Bearer {owner.api_key}"}, timeout=30)
    assert r.status_code == 201, r.text
    project_id = r.json()["project_id"]
    server.cli("project", "limits", "--project", project_id, "--set", "memory_bytes=256M",
               "--set", "pids=64", "--set", "disk_bytes=1G")
    restricted = _limits(server, owner.api_key, project_id).json()
    assert (restricted["memory_bytes"], restricted["pids"], restricted["disk_bytes"]) == (256 * MiB, 64, GiB)

    # the review's attack: back to the server defaults in one PUT
    r = _limits(server, owner.api_key, project_id,
                {"memory_bytes": 2 * GiB, "pids": 512, "disk_bytes": 10 * GiB})
    assert r.status_code == 403, r.text
    # one key at a time, unlimited (null), and network on: each refused
    for body in ({"memory_bytes": 257 * MiB}, {"pids": 65}, {"disk_bytes": "2G"},
                 {"memory_bytes": None}, {"pids": None}, {"disk_bytes": None}, {"network": True}):
        r = _limits(server, owner.api_key, project_id, body)
        assert r.status_code == 403, (body, r.text)
        assert "admin" in r.json()["error"], r.text
    assert _limits(server, owner.api_key, project_id).json() == restricted

    # an owner's PUT of other keys keeps the operator's values; sending back what GET said works
    assert _limits(server, owner.api_key, project_id, restricted).status_code == 200
    r = _limits(server, owner.api_key, project_id, {"cpu_cores": 1})   # unlimited -> 1 core
    assert r.status_code == 200, r.text
    assert r.json() == {**restricted, "cpu_cores": 1}
    assert _limits(server, owner.api_key, project_id).json() == {**restricted, "cpu_cores": 1}

    # tightening further is the owner's right; loosening back to the operator's value is not
    assert _limits(server, owner.api_key, project_id, {"pids": 32}).status_code == 200
    assert _limits(server, owner.api_key, project_id, {"pids": 64}).status_code == 403
    assert _limits(server, owner.api_key, project_id, {"cpu_cores": 2}).status_code == 403

    # the operator (CLI) sets anything, looser included
    out = server.cli("project", "limits", "--project", project_id, "--set", "pids=1024",
                     "--set", "memory_bytes=null")
    assert (out["limits"]["pids"], out["limits"]["memory_bytes"]) == (1024, None)
    assert _limits(server, owner.api_key, project_id).json()["pids"] == 1024
    # ... and the owner may then tighten from there, but not lift it again
    assert _limits(server, owner.api_key, project_id, {"memory_bytes": "4G"}).status_code == 200
    assert _limits(server, owner.api_key, project_id, {"memory_bytes": None}).status_code == 403
