"""Keys and authorization: A's project key, and an account that is not B's collaborator,
against B through every HTTP surface; bad keys are slowed down on every surface."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from tests.security.conftest import Proj, require_sandbox
from tests.server import Account, Server


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _pwn(n: int) -> str:
    return f"touch /home/user/pwned-{n}; echo pwned"


def _project_calls(b: str) -> list[dict[str, Any]]:
    return [
        {"name": "system.exec", "args": [{"command": _pwn(1), "bash": True}], "project_id": b},
        {"name": "system.writeTextFileToProject", "args": [{"path": "pwned-2", "content": "x"}], "project_id": b},
        {"name": "system.readTextFileFromProject", "args": [{"path": "secret.txt"}], "project_id": b},
        {"name": "system.listing", "args": [{"path": ""}], "project_id": b},
        {"name": "system.deleteFiles", "args": [{"paths": ["secret.txt"]}], "project_id": b},
        {"name": "system.moveFiles", "args": [{"paths": ["secret.txt"], "dest": "pwned-3"}], "project_id": b},
        {"name": "system.signal", "args": [{"signal": 9, "pid": 2}], "project_id": b},
        {"name": "system.jupyterExecute", "args": [{"input": "open('/home/user/pwned-4','w')",
                                                    "kernel": "python3"}], "project_id": b},
        {"name": "system.test", "args": [{}], "project_id": b},
        {"name": "ping", "project_id": b},
    ]


def _hub_calls(b: str, attacker_account: str, victim_account: str) -> list[dict[str, Any]]:
    return [
        {"name": "projects.stop", "args": [{"project_id": b}]},
        {"name": "projects.start", "args": [{"project_id": b}]},
        {"name": "projects.touch", "args": [{"project_id": b}]},
        {"name": "projects.state", "args": [{"project_id": b}]},
        {"name": "projects.status", "args": [{"project_id": b}]},
        {"name": "projects.deleteProject", "args": [{"project_id": b}]},
        {"name": "projects.addCollaborator", "args": [{"opts": {"project_id": b, "account_id": attacker_account}}]},
        {"name": "projects.removeCollaborator", "args": [{"opts": {"project_id": b, "account_id": victim_account}}]},
        {"name": "jupyter.execute", "args": [{"project_id": b, "kernel": "python3",
                                              "input": "open('/home/user/pwned-5','w')"}]},
        {"name": "jupyter.kernels", "args": [{"project_id": b}]},
    ]


def _v3_routes(b: str) -> list[tuple[str, str, Any]]:
    p = f"/api/v3/projects/{b}"
    job, sess = "j" + uuid.uuid4().hex[:12], uuid.uuid4().hex
    return [
        ("GET", p, None), ("DELETE", p, None), ("POST", p + "/start", {}), ("POST", p + "/stop", {}),
        ("GET", p + "/limits", None), ("PUT", p + "/limits", {"memory_bytes": "64M"}),
        ("POST", p + "/exec", {"command": _pwn(6), "bash": True}),
        ("GET", p + "/jobs", None), ("GET", p + f"/jobs/{job}", None), ("DELETE", p + f"/jobs/{job}", None),
        ("GET", p + f"/jobs/{job}/output", None), ("GET", p + f"/jobs/{job}/events", None),
        ("POST", p + "/sessions", {"kernel": "python3"}), ("GET", p + "/sessions", None),
        ("GET", p + f"/sessions/{sess}", None), ("DELETE", p + f"/sessions/{sess}", None),
        ("POST", p + f"/sessions/{sess}/execute", {"code": "open('/home/user/pwned-7','w')"}),
        ("POST", p + f"/sessions/{sess}/stream", {"code": "1"}),
        ("POST", p + f"/sessions/{sess}/interrupt", {}), ("POST", p + f"/sessions/{sess}/restart", {}),
    ]


def _assert_b_untouched(server: Server, b: Proj, bob: Account, instance_before: str) -> None:
    assert not [p.name for p in b.home.iterdir() if p.name.startswith("pwned")]
    assert (b.home / "secret.txt").read_text().strip() == b.secret  # type: ignore[attr-defined]
    info = b.info()  # Bob still owns it, alone, and it was neither stopped nor deleted
    assert set(info["users"]) == {bob.account_id}, info["users"]
    assert info["status"]["instance_id"] == instance_before
    assert b.v3("GET", "/limits").json()["memory_bytes"] != 64 * 2**20


@pytest.mark.parametrize("who", ["project key of A", "account that is not B's collaborator"])
def test_a_cannot_touch_b_through_any_endpoint(server: Server, alice: Account, bob: Account,
                                               proj_a: Proj, proj_b: Proj, who: str) -> None:
    require_sandbox()  # the side-effect checks read B's home on the host
    if who.startswith("project key"):
        key = server.cli("key", "create", "--account", alice.account_id, "--project", proj_a.project_id)["api_key"]
        # the key works for its own project
        assert proj_a.v3("POST", "/exec", {"command": "echo mine", "bash": True}, key=key).json()["stdout"] == "mine\n"
    else:
        key = alice.api_key
    b = proj_b.project_id
    before = proj_b.info()["status"]["instance_id"]
    failures = []
    for body in _project_calls(b):
        reply = httpx.post(server.url + "/api/conat/project", json=body, headers=_auth(key), timeout=30).json()
        if not (isinstance(reply, dict) and "error" in reply):
            failures.append(("conat project", body["name"], reply))
    for body in _hub_calls(b, alice.account_id, bob.account_id):
        reply = httpx.post(server.url + "/api/conat/hub", json=body, headers=_auth(key), timeout=30).json()
        if not (isinstance(reply, dict) and "error" in reply):
            failures.append(("conat hub", body["name"], reply))
    v1 = httpx.post(server.url + "/api/v1/project_exec", headers=_auth(key), timeout=30,
                    json={"project_id": b, "command": _pwn(8), "bash": True})
    if v1.json().get("event") != "error":
        failures.append(("v1", "project_exec", v1.json()))
    v1_form = httpx.post(server.url + "/api/v1/project_exec", auth=(key, ""), timeout=30,
                         data={"project_id": b, "command": _pwn(9), "bash": "true"})
    if v1_form.json().get("event") != "error":
        failures.append(("v1 form", "project_exec", v1_form.json()))
    for body in ({"project_id": b, "command": _pwn(10), "bash": True},
                 {"project_id": b, "command": _pwn(11), "bash": True, "async_call": True}):
        v2 = httpx.post(server.url + "/api/v2/exec", headers=_auth(key), json=body, timeout=30).json()
        if "error" not in v2:
            failures.append(("v2", "exec", v2))
    for method, path, body in _v3_routes(b):
        r = httpx.request(method, server.url + path, json=body, headers=_auth(key), timeout=30)
        if r.status_code != 403:
            failures.append(("v3", f"{method} {path.split(b)[-1] or '/'}", r.status_code, r.text[:200]))
    listed = httpx.get(server.url + "/api/v3/projects", headers=_auth(key), timeout=30)
    if listed.status_code == 200 and b in listed.text:
        failures.append(("v3", "GET /projects lists B", listed.text[:200]))
    query = httpx.post(server.url + "/api/conat/hub", headers=_auth(key), timeout=30, json={
        "name": "db.userQuery", "args": [{"query": {"projects_all": [{"project_id": b, "title": None}]}}]}).json()
    if b in str(query) and "error" not in query:
        failures.append(("conat hub", "db.userQuery", query))
    assert not failures, "\n".join(map(str, failures))
    _assert_b_untouched(server, proj_b, bob, before)


def test_bad_keys_are_slowed_on_every_surface_without_locking_out_good_keys(
        tmp_path, proj_b: Proj) -> None:
    require_sandbox()
    b_before = proj_b.info()["status"]["instance_id"]
    # Its own server: the throttle is per client address, and this one is about to be
    # hammered.  Starting it is also a check: a second server on the same machine must
    # not mistake the session server's running projects for its own strays.
    other = Server(tmp_path).start()
    try:
        good = other.new_account("Good")
        good_project = httpx.post(other.url + "/api/v3/projects", json={"title": "g"},
                                  headers=_auth(good.api_key), timeout=30).json()["project_id"]
        bad = "sk-wrongwrongwrongwr000001"
        surfaces = {
            "v3": lambda k: httpx.get(f"{other.url}/api/v3/projects/{good_project}/limits",
                                      headers=_auth(k), timeout=30),
            "v1": lambda k: httpx.post(other.url + "/api/v1/project_exec", headers=_auth(k), timeout=30,
                                       json={"project_id": good_project, "command": "true"}),
            "v2": lambda k: httpx.post(other.url + "/api/v2/exec", headers=_auth(k), timeout=30,
                                       json={"project_id": good_project, "command": "true"}),
            "conat": lambda k: httpx.post(other.url + "/api/conat/hub", headers=_auth(k), timeout=30,
                                          json={"name": "system.ping"}),
        }
        names = list(surfaces)
        for call in surfaces.values():  # warm up: project daemon started, key verified once
            assert call(good.api_key).status_code == 200
        # the free allowance (30 a minute), spread over all surfaces: one shared budget
        for i in range(30):
            r = surfaces[names[i % len(names)]](bad)
            assert r.status_code in (200, 400, 401)
        slowed, fast = {}, {}
        for name, call in surfaces.items():
            t0 = time.monotonic()
            r = call(bad)
            slowed[name] = time.monotonic() - t0
            if name == "v3":
                assert r.status_code == 401
            else:
                assert "error" in r.json()
        for name, call in surfaces.items():
            t0 = time.monotonic()
            r = call(good.api_key)
            fast[name] = time.monotonic() - t0
            assert r.status_code == 200 and "error" not in (r.json() if isinstance(r.json(), dict) else {}), r.text
        # every surface is throttled by the same per-address budget (0.1 s, 0.2 s, ...)
        assert all(t >= 0.09 for t in slowed.values()), slowed
        assert sum(slowed.values()) >= 1.0, slowed
        # good keys from the same address are never delayed: the throttle's next delay
        # for this address is 1.6 s, a good call takes a few ms
        assert max(fast.values()) < 1.0, (fast, slowed)
    finally:
        other.stop()
        other.cli("stop-all")
    assert proj_b.info()["status"]["instance_id"] == b_before, "starting another server killed B's daemon"
