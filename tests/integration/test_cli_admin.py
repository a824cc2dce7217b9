"""key list|revoke|rotate, account list|disable|enable, project list|delete against a running
server: a key revoked, rotated or disabled by the CLI (another process) stops working on the
very next request, on v3 and on the CoCalc surfaces, although the server cached it."""

from __future__ import annotations

import time
from typing import Any

import cocalc_api
import httpx

from tests.server import Server

HUB_REFUSAL = "must be signed in and MUST provide an api key (cookies are not allowed)"


def v3(server: Server, key: str, method: str = "GET", path: str = "/api/v3/projects",
       body: Any = None) -> httpx.Response:
    return httpx.request(method, server.url + path, json=body, timeout=60,
                         headers={"Authorization": f"Bearer {key}"})


def conat_hub(server: Server, key: str) -> Any:
    r = httpx.post(server.url + "/api/conat/hub", json={"name": "system.test", "args": [{}]},
                   auth=(key, ""), timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def warm(server: Server, key: str, account_id: str) -> None:
    """Both surfaces accept the key, and it is now in the server's key cache."""
    for _ in range(3):
        assert v3(server, key).status_code == 200
        assert conat_hub(server, key)["account_id"] == account_id


def refused(server: Server, key: str) -> None:
    r = v3(server, key)
    assert r.status_code == 401, r.text
    assert conat_hub(server, key) == {"error": HUB_REFUSAL}


def test_revoke_is_seen_by_the_next_request(server: Server) -> None:
    account = server.new_account("Revoked")
    keys = [server.cli("key", "create", "--account", account.account_id, "--name", f"k{i}")
            for i in range(3)]
    for key in keys:
        warm(server, key["api_key"], account.account_id)
        revoked = server.cli("key", "revoke", "--id", str(key["id"]))
        done = time.monotonic()
        assert revoked == {"id": key["id"], "revoked": True, "account_id": account.account_id,
                           "project_id": None}
        refused(server, key["api_key"])   # no sleep: the very next request
        assert time.monotonic() - done < 1.0
    listed = server.cli("key", "list", "--account", account.account_id)["keys"]
    assert [k["id"] for k in listed] == [_id_of(server, account.api_key)]
    warm(server, account.api_key, account.account_id)   # the account's other key still works


def _id_of(server: Server, key: str) -> int:
    from projecthub.auth.keys import key_row_id
    key_id = key_row_id(key)
    assert key_id is not None
    return key_id


def test_rotate_gives_a_working_key_and_kills_the_old_one(server: Server) -> None:
    account = server.new_account("Rotated")
    old = server.cli("key", "create", "--account", account.account_id, "--name", "ci",
                     "--expire", "2099-01-01T00:00:00Z")
    warm(server, old["api_key"], account.account_id)
    new = server.cli("key", "rotate", "--id", str(old["id"]))
    assert new["replaces"] == old["id"] and new["id"] != old["id"] and new["api_key"] != old["api_key"]
    assert new["expire"] == "2099-01-01T00:00:00.000Z"
    refused(server, old["api_key"])
    warm(server, new["api_key"], account.account_id)
    [row] = [k for k in server.cli("key", "list", "--account", account.account_id)["keys"]
             if k["id"] == new["id"]]
    assert row["name"] == "ci" and "api_key" not in row and "hash" not in row


def test_disabled_account_is_refused_everywhere_at_once(server: Server) -> None:
    account = server.new_account("Disabled")
    hub = cocalc_api.Hub(api_key=account.api_key, host=server.url)
    project_id = hub.projects.create_project(title="kept")
    project_key = server.cli("key", "create", "--account", account.account_id, "--project", project_id)
    project = cocalc_api.Project(api_key=project_key["api_key"], host=server.url)
    assert project.system.ping()
    warm(server, account.api_key, account.account_id)

    row = server.cli("account", "disable", "--account", account.account_id)
    assert row["disabled"] is True and row["account_id"] == account.account_id
    refused(server, account.api_key)
    r = httpx.post(server.url + "/api/conat/project", json={"name": "system.ping", "args": []},
                   auth=(project_key["api_key"], ""), timeout=60)
    assert r.json() == {"error": "must sign in as project or account"}
    r = httpx.post(server.url + "/api/v2/exec", json={"project_id": project_id, "command": "true"},
                   auth=(account.api_key, ""), timeout=60)
    assert "error" in r.json()
    listed = {a["account_id"]: a for a in server.cli("account", "list")["accounts"]}
    assert listed[account.account_id]["disabled"] is True
    assert listed[account.account_id]["keys"] == 2 and listed[account.account_id]["projects"] == 1

    assert server.cli("account", "enable", "--account", account.account_id)["disabled"] is False
    warm(server, account.api_key, account.account_id)   # keys and projects were kept
    assert project.system.ping()


def test_project_list_and_delete(server: Server) -> None:
    account = server.new_account("Projects")
    hub = cocalc_api.Hub(api_key=account.api_key, host=server.url)
    project_id = hub.projects.create_project(title="to delete")
    project = cocalc_api.Project(api_key=account.api_key, host=server.url, project_id=project_id)
    assert project.system.exec(command="echo hi")["stdout"] == "hi\n"   # running now
    [listed] = server.cli("project", "list", "--account", account.account_id)["projects"]
    assert listed["project_id"] == project_id and listed["owner"] == account.account_id
    assert listed["title"] == "to delete" and listed["deleted"] is False

    deleted = server.cli("project", "delete", "--project", project_id)
    assert deleted["project_id"] == project_id and deleted["deleted"] is True
    assert deleted["stopped"] is True and deleted["deleted_time"].endswith("Z")
    assert server.cli("project", "list", "--account", account.account_id)["projects"] == []
    [gone] = server.cli("project", "list", "--account", account.account_id, "--deleted")["projects"]
    assert gone["deleted"] is True
    r = v3(server, account.api_key, "POST", f"/api/v3/projects/{project_id}/exec", {"command": "true"})
    assert r.status_code in (403, 404, 409, 410), r.text


def test_manage_api_keys_with_the_official_client_as_the_readme_shows(server: Server) -> None:
    account = server.new_account("Official client")
    hub = cocalc_api.Hub(api_key=account.api_key, host=server.url)
    project_id = hub.projects.create_project(title="keys")
    manage = lambda **opts: hub.call("system.manageApiKeys", [opts])  # noqa: E731
    listed = manage(action="get")
    assert [k["trunc"] for k in listed] == [account.api_key[:3] + "..." + account.api_key[-6:]]
    assert all("secret" not in k and "hash" not in k for k in listed)
    [key] = manage(action="create", name="ci", expire="2030-01-01T00:00:00Z")
    assert key["secret"].startswith("sk-") and key["name"] == "ci"
    [scoped] = manage(action="create", project_id=project_id, name="one project")
    assert scoped["project_id"] == project_id
    assert manage(action="edit", id=key["id"], name="ci-2") is None
    assert {k["name"] for k in manage(action="get")} == {"ci-2", account_name(listed)}
    warm(server, key["secret"], account.account_id)
    assert manage(action="delete", id=key["id"]) is None
    refused(server, key["secret"])
    try:
        manage(action="delete", id=key["id"])
    except RuntimeError as exc:
        assert str(exc) == f"Error: no api key with id {key['id']}"
    else:
        raise AssertionError("deleting a deleted key must fail")


def account_name(listed: list[dict[str, Any]]) -> str:
    return listed[0]["name"]
