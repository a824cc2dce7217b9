"""Who may mutate a project: the real attacks of issue 14 item 8, against a real server.

A collaborator deleted the owner's project, and a project-scoped key deleted its own
project.  Only the owner (or an admin) may delete a project, change its limits or remove
other collaborators; nobody removes the owner; a project key never deletes, re-owns,
creates projects or manages keys.  Every mutating hub function is tried as a
collaborator and as a project key here (docs/security.md has the permission table).
None of this starts a sandbox: the checks happen before any daemon would.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.server import Account, Server


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def hub_call(server: Server, key: str, name: str, *args: Any) -> Any:
    """One conat hub call; returns the decoded body (CoCalc errors are HTTP 200 {"error"})."""
    r = httpx.post(server.url + "/api/conat/hub", json={"name": name, "args": list(args)},
                   headers=_auth(key), timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def v3(server: Server, key: str, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, server.url + "/api/v3" + path, json=body, headers=_auth(key), timeout=60)


def is_error(value: Any) -> bool:
    return isinstance(value, dict) and "error" in value


def project_alive(server: Server, owner: Account, project_id: str) -> bool:
    r = v3(server, owner.api_key, "GET", f"/projects/{project_id}")
    return r.status_code == 200


@pytest.fixture
def shared(server: Server) -> tuple[Account, Account, Account, str]:
    """(owner, collaborator, second collaborator, project) -- fresh accounts, nothing started."""
    owner, collab, other = (server.new_account(n) for n in ("Owner O", "Collab C", "Collab D"))
    r = v3(server, owner.api_key, "POST", "/projects", {"title": "owned by O"})
    assert r.status_code == 201, r.text
    project_id = r.json()["project_id"]
    for member in (collab, other):
        out = hub_call(server, owner.api_key, "projects.addCollaborator",
                       {"opts": {"project_id": project_id, "account_id": member.account_id}})
        assert out == {"project_id": [project_id]}, out
    return owner, collab, other, project_id


def project_key(server: Server, account: Account, project_id: str) -> tuple[int, str]:
    out = hub_call(server, account.api_key, "system.manageApiKeys",
                   {"action": "create", "project_id": project_id, "name": "project key"})
    assert isinstance(out, list), out
    return out[0]["id"], out[0]["secret"]


def test_collaborator_cannot_delete_the_owners_project(server: Server, shared) -> None:
    owner, collab, _, project_id = shared
    out = hub_call(server, collab.api_key, "projects.deleteProject", {"project_id": project_id})
    assert is_error(out) and "owner" in out["error"], out
    r = v3(server, collab.api_key, "DELETE", f"/projects/{project_id}")
    assert r.status_code == 403, r.text
    assert "owner" in r.json()["error"]
    assert project_alive(server, owner, project_id)
    # the owner still may
    assert v3(server, owner.api_key, "DELETE", f"/projects/{project_id}").status_code == 204
    assert not project_alive(server, owner, project_id)


def test_project_key_cannot_delete_its_project(server: Server, shared) -> None:
    owner, collab, _, project_id = shared
    for creator in (owner, collab):
        _, secret = project_key(server, creator, project_id)
        r = v3(server, secret, "DELETE", f"/projects/{project_id}")
        assert r.status_code == 403, r.text
        assert "project API key" in r.json()["error"]
        # the hub surface refuses project keys outright (CoCalc spec 2.4)
        out = httpx.post(server.url + "/api/conat/hub", headers=_auth(secret), timeout=30,
                         json={"name": "projects.deleteProject", "args": [{"project_id": project_id}]}).json()
        assert is_error(out), out
        assert project_alive(server, owner, project_id)


def test_project_key_never_creates_reowns_or_manages(server: Server, shared) -> None:
    owner, _, _, project_id = shared
    _, secret = project_key(server, owner, project_id)
    assert v3(server, secret, "POST", "/projects", {"title": "by a project key"}).status_code == 403
    assert v3(server, secret, "GET", "/projects").status_code == 403
    assert v3(server, secret, "PUT", f"/projects/{project_id}/limits", {"pids": 64}).status_code == 403
    for name, arg in [
        ("projects.createProject", {"title": "x"}),
        ("system.manageApiKeys", {"action": "create", "name": "escalate"}),
        ("system.manageApiKeys", {"action": "create", "project_id": project_id}),
        ("projects.addCollaborator", {"opts": {"project_id": project_id, "account_id": owner.account_id}}),
        ("projects.removeCollaborator", {"opts": {"project_id": project_id, "account_id": owner.account_id}}),
    ]:
        out = httpx.post(server.url + "/api/conat/hub", headers=_auth(secret), timeout=30,
                         json={"name": name, "args": [arg]}).json()
        assert is_error(out), (name, out)
    users = v3(server, owner.api_key, "GET", f"/projects/{project_id}").json()["users"]
    assert users[owner.account_id]["group"] == "owner"


def test_nobody_removes_the_owner(server: Server, shared) -> None:
    owner, collab, _, project_id = shared
    for who in (collab, owner):
        out = hub_call(server, who.api_key, "projects.removeCollaborator",
                       {"opts": {"project_id": project_id, "account_id": owner.account_id}})
        assert is_error(out), out
    admin = server.cli("account", "create", "--name", "Admin A", "--admin")
    out = hub_call(server, admin["api_key"], "projects.removeCollaborator",
                   {"opts": {"project_id": project_id, "account_id": owner.account_id}})
    assert is_error(out) and "owner" in out["error"], out
    # re-adding the owner as a collaborator does not demote it
    hub_call(server, collab.api_key, "projects.addCollaborator",
             {"opts": {"project_id": project_id, "account_id": owner.account_id}})
    users = v3(server, owner.api_key, "GET", f"/projects/{project_id}").json()["users"]
    assert users[owner.account_id]["group"] == "owner"


def test_collaborator_removes_only_itself(server: Server, shared) -> None:
    owner, collab, other, project_id = shared
    out = hub_call(server, collab.api_key, "projects.removeCollaborator",
                   {"opts": {"project_id": project_id, "account_id": other.account_id}})
    assert is_error(out) and "owner" in out["error"], out
    users = v3(server, owner.api_key, "GET", f"/projects/{project_id}").json()["users"]
    assert other.account_id in users
    assert hub_call(server, collab.api_key, "projects.removeCollaborator",
                    {"opts": {"project_id": project_id, "account_id": collab.account_id}}) is None
    assert hub_call(server, owner.api_key, "projects.removeCollaborator",
                    {"opts": {"project_id": project_id, "account_id": other.account_id}}) is None
    users = v3(server, owner.api_key, "GET", f"/projects/{project_id}").json()["users"]
    assert set(users) == {owner.account_id}


def test_only_owner_changes_limits(server: Server, shared) -> None:
    owner, collab, _, project_id = shared
    before = v3(server, owner.api_key, "GET", f"/projects/{project_id}/limits").json()
    r = v3(server, collab.api_key, "PUT", f"/projects/{project_id}/limits",
           {"memory_bytes": 8 * 2**20, "pids": 2})   # "tightening" the owner's project to nothing
    assert r.status_code == 403, r.text
    assert v3(server, owner.api_key, "GET", f"/projects/{project_id}/limits").json() == before
    assert v3(server, owner.api_key, "PUT", f"/projects/{project_id}/limits", {"pids": 100}).status_code == 200


def test_collaborator_cannot_edit_the_owners_project_key(server: Server, shared) -> None:
    owner, collab, _, project_id = shared
    key_id, secret = project_key(server, owner, project_id)
    out = hub_call(server, collab.api_key, "system.manageApiKeys",
                   {"action": "edit", "id": key_id, "project_id": project_id, "name": "mine now",
                    "expire": None})
    assert is_error(out), out
    keys = hub_call(server, owner.api_key, "system.manageApiKeys", {"action": "get", "project_id": project_id})
    assert [k["name"] for k in keys if k["id"] == key_id] == ["project key"]
    # deleting any key of the project stays allowed to collaborators (CoCalc spec 2.5)
    assert hub_call(server, collab.api_key, "system.manageApiKeys",
                    {"action": "delete", "id": key_id, "project_id": project_id}) is None
    assert v3(server, secret, "GET", f"/projects/{project_id}").status_code == 401


def test_no_keys_for_a_deleted_project(server: Server, shared) -> None:
    owner, _, _, project_id = shared
    assert v3(server, owner.api_key, "DELETE", f"/projects/{project_id}").status_code == 204
    out = hub_call(server, owner.api_key, "system.manageApiKeys",
                   {"action": "create", "project_id": project_id, "name": "late"})
    assert is_error(out), out


def test_admin_may_delete_any_project(server: Server, shared) -> None:
    owner, _, _, project_id = shared
    admin = server.cli("account", "create", "--name", "Admin B", "--admin")
    assert hub_call(server, admin["api_key"], "projects.deleteProject", {"project_id": project_id}) is None
    assert not project_alive(server, owner, project_id)


def test_collaborator_keeps_member_rights(server: Server, shared) -> None:
    """What collaborators may still do (CoCalc semantics): inspect, add collaborators."""
    owner, collab, _, project_id = shared
    newcomer = server.new_account("Newcomer N")
    out = hub_call(server, collab.api_key, "projects.addCollaborator",
                   {"opts": {"project_id": project_id, "account_id": newcomer.account_id}})
    assert out == {"project_id": [project_id]}, out
    state = hub_call(server, collab.api_key, "projects.state", {"project_id": project_id})
    assert isinstance(state, dict) and "state" in state and "error" not in state
