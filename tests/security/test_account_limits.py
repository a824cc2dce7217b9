"""Per-account caps (issue 14 item 9): one account once made 198 projects with 166 running
daemons.  A server started with ``--account-limits`` refuses the project past
``max_projects`` (v3: 403, conat: ``{"error"}``) and the start past
``max_running_projects`` (v3: 429, CoCalc surfaces: ``{"error"}``), whichever call would
start it; the error names the limit; admins are exempt; ``projecthub account limits``
overrides an account's caps while the server runs.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Iterator

import httpx
import pytest

from tests.security.conftest import require_sandbox
from tests.server import PROJECTHUB, Account, Server

LIMITS = {"max_projects": 3, "max_running_projects": 2}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require_sandbox()
    srv = Server(tmp_path_factory.mktemp("capped"),
                 extra_args=["--account-limits", json.dumps(LIMITS)]).start()
    yield srv
    srv.stop()
    srv.cli("stop-all")


def v3(server: Server, key: str, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, server.url + "/api/v3" + path, json=body, headers=_auth(key), timeout=90)


def hub_call(server: Server, key: str, name: str, *args: Any) -> Any:
    r = httpx.post(server.url + "/api/conat/hub", json={"name": name, "args": list(args)},
                   headers=_auth(key), timeout=90)
    assert r.status_code == 200, r.text
    return r.json()


def conat_exec(server: Server, key: str, project_id: str) -> Any:
    r = httpx.post(server.url + "/api/conat/project", headers=_auth(key), timeout=90,
                   json={"project_id": project_id, "name": "system.exec", "args": [{"command": "true"}]})
    assert r.status_code == 200, r.text
    return r.json()


def create(server: Server, key: str) -> httpx.Response:
    return v3(server, key, "POST", "/projects", {"title": "capped"})


def make_projects(server: Server, account: Account, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        r = create(server, account.api_key)
        assert r.status_code == 201, r.text
        ids.append(r.json()["project_id"])
    return ids


def test_max_projects_refused_on_v3_and_conat(capped: Server) -> None:
    acct = capped.new_account("Many Projects")
    ids = make_projects(capped, acct, 3)
    r = create(capped, acct.api_key)
    assert r.status_code == 403, r.text
    assert "max_projects=3" in r.json()["error"]
    out = hub_call(capped, acct.api_key, "projects.createProject", {"title": "one more"})
    assert isinstance(out, dict) and "max_projects=3" in out["error"], out
    assert set(out) == {"error", "limit"}, out   # no v3 "status" hint in a CoCalc reply
    listed = v3(capped, acct.api_key, "GET", "/projects").json()
    assert len(listed) == 3
    # deleting one makes room again
    assert v3(capped, acct.api_key, "DELETE", f"/projects/{ids[0]}").status_code == 204
    assert create(capped, acct.api_key).status_code == 201


def test_max_running_projects_refused_by_every_starting_call(capped: Server) -> None:
    acct = capped.new_account("Many Daemons")
    a, b, c = make_projects(capped, acct, 3)
    try:
        assert v3(capped, acct.api_key, "POST", f"/projects/{a}/exec", {"command": "true"}).status_code == 200
        out = conat_exec(capped, acct.api_key, b)
        assert "error" not in out and out["exit_code"] == 0, out
        # the third daemon: refused however it would be started
        r = v3(capped, acct.api_key, "POST", f"/projects/{c}/exec", {"command": "true"})
        assert r.status_code == 429, r.text
        assert "max_running_projects=2" in r.json()["error"]
        assert v3(capped, acct.api_key, "POST", f"/projects/{c}/start").status_code == 429
        out = conat_exec(capped, acct.api_key, c)
        assert "max_running_projects=2" in out.get("error", ""), out
        for name in ("projects.start", "projects.touch"):
            out = hub_call(capped, acct.api_key, name, {"project_id": c})
            assert isinstance(out, dict) and "max_running_projects=2" in out["error"], (name, out)
        out = hub_call(capped, acct.api_key, "jupyter.execute",
                       {"project_id": c, "kernel": "python3", "input": "1+1"})
        assert isinstance(out, dict) and "max_running_projects=2" in out["error"], out
        # creating one more with start: refused, and nothing is left behind (a 4th is past
        # max_projects anyway, so make room first)
        v3(capped, acct.api_key, "DELETE", f"/projects/{c}")
        before = {p["project_id"] for p in v3(capped, acct.api_key, "GET", "/projects").json()}
        r = v3(capped, acct.api_key, "POST", "/projects", {"title": "started", "start": True})
        assert r.status_code == 429 and "max_running_projects=2" in r.json()["error"], r.text
        out = hub_call(capped, acct.api_key, "projects.createProject", {"title": "started", "start": True})
        assert isinstance(out, dict) and "max_running_projects=2" in out["error"], out
        assert {p["project_id"] for p in v3(capped, acct.api_key, "GET", "/projects").json()} == before
        c = make_projects(capped, acct, 1)[0]
        r = httpx.post(capped.url + "/api/v2/exec", headers=_auth(acct.api_key), timeout=60,
                       json={"project_id": c, "command": "true"})
        assert "max_running_projects=2" in r.json().get("error", ""), r.text
        # a collaborator starting the owner's project counts against the owner
        friend = capped.new_account("Friend")
        hub_call(capped, acct.api_key, "projects.addCollaborator",
                 {"opts": {"project_id": c, "account_id": friend.account_id}})
        assert v3(capped, friend.api_key, "POST", f"/projects/{c}/start").status_code == 429
        state = v3(capped, acct.api_key, "GET", f"/projects/{c}").json()["state"]["state"]
        assert state != "running"
        # calls into a project already running are not affected
        assert v3(capped, acct.api_key, "POST", f"/projects/{a}/exec", {"command": "true"}).status_code == 200
        # stopping one makes room
        assert v3(capped, acct.api_key, "POST", f"/projects/{a}/stop").status_code == 200
        assert v3(capped, acct.api_key, "POST", f"/projects/{c}/exec", {"command": "true"}).status_code == 200
    finally:
        for p in (a, b, c):
            v3(capped, acct.api_key, "POST", f"/projects/{p}/stop")


def test_admin_exempt(capped: Server) -> None:
    out = capped.cli("account", "create", "--name", "Admin X", "--admin")
    admin = Account(out["account_id"], out["api_key"])
    ids = make_projects(capped, admin, 4)   # one past max_projects
    try:
        for p in ids[:3]:                   # one past max_running_projects
            r = v3(capped, admin.api_key, "POST", f"/projects/{p}/exec", {"command": "true"})
            assert r.status_code == 200, r.text
    finally:
        for p in ids:
            v3(capped, admin.api_key, "POST", f"/projects/{p}/stop")


def test_cli_override_while_serving(capped: Server) -> None:
    acct = capped.new_account("Overridden")
    shown = capped.cli("account", "limits", "--account", acct.account_id, "--set", "max_projects=1")
    assert shown["limits"]["max_projects"] == 1 and shown["overrides"] == {"max_projects": 1}
    assert create(capped, acct.api_key).status_code == 201
    r = create(capped, acct.api_key)
    assert r.status_code == 403 and "max_projects=1" in r.json()["error"], r.text
    shown = capped.cli("account", "limits", "--account", acct.account_id, "--unset", "max_projects")
    assert shown["overrides"] == {}
    assert create(capped, acct.api_key).status_code == 201
    # unlimited for this account
    capped.cli("account", "limits", "--account", acct.account_id, "--set", "max_projects=null")
    make_projects(capped, acct, 3)
    # bad names and values are refused with one JSON error, no traceback
    for bad in ("max_projcts=3", "max_projects=-1", "max_projects=lots"):
        done = subprocess.run([*PROJECTHUB, "account", "limits", "--data-dir", str(capped.data_dir),
                               "--account", acct.account_id, "--set", bad],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and "error" in json.loads(done.stdout), done.stdout + done.stderr
        assert "Traceback" not in done.stderr


def test_defaults_from_environment_and_bad_flag(capped: Server, tmp_path) -> None:
    acct = capped.new_account("Env")
    env = {**os.environ, "PROJECTHUB_ACCOUNT_LIMITS": json.dumps({"max_running_projects": 7})}
    done = subprocess.run([*PROJECTHUB, "account", "limits", "--data-dir", str(capped.data_dir),
                           "--account", acct.account_id], capture_output=True, text=True, env=env, timeout=60)
    assert json.loads(done.stdout)["limits"]["max_running_projects"] == 7, done.stdout + done.stderr
    done = subprocess.run([*PROJECTHUB, "serve", "--data-dir", str(tmp_path), "--port", "1",
                           "--account-limits", '{"max_projcts": 5}'], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "max_projcts" in done.stderr, done.stderr
