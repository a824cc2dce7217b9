"""Hub project functions through the official client (spec 7; checklist 33-34)."""

from __future__ import annotations

import uuid

import cocalc_api
import httpx
import psutil
import pytest

from tests.server import Server


def test_create_project_returns_uuid(hub) -> None:
    project_id = hub.projects.create_project(title="hello")
    assert str(uuid.UUID(project_id)) == project_id


def test_lifecycle_start_state_status_stop(hub, project_id: str) -> None:
    assert hub.projects.state(project_id)["state"] == "stopped"
    assert hub.projects.start(project_id) is None
    state = hub.projects.state(project_id)
    assert state["state"] == "running"
    assert isinstance(state["time"], str)
    status = hub.projects.status(project_id)
    assert isinstance(status, dict)
    daemon_pid = status["project.pid"]
    assert psutil.pid_exists(daemon_pid)
    assert hub.projects.stop(project_id) is None
    assert hub.projects.state(project_id)["state"] == "stopped"
    assert not psutil.pid_exists(daemon_pid) or psutil.Process(daemon_pid).status() == psutil.STATUS_ZOMBIE


def test_project_call_auto_starts(hub, project, project_id: str) -> None:
    assert hub.projects.state(project_id)["state"] == "stopped"
    assert project.system.ping()["now"] > 0
    assert hub.projects.state(project_id)["state"] == "running"


def test_touch_starts_and_returns_none(hub, project_id: str) -> None:
    assert hub.projects.touch(project_id) is None
    assert hub.projects.state(project_id)["state"] == "running"


def test_delete_project(hub, project_id: str) -> None:
    hub.projects.start(project_id)
    assert hub.projects.delete(project_id) is None
    listed = hub.projects.get(all=True, project_id=project_id)
    assert listed == [] or listed[0]["deleted"] is True


def test_get_lists_projects_with_default_fields(hub, project_id: str, account) -> None:
    projects = hub.projects.get()
    mine = [p for p in projects if p["project_id"] == project_id]
    assert len(mine) == 1
    row = mine[0]
    assert set(row) == {"project_id", "title", "last_edited", "created", "state", "deleted", "users"}
    assert row["title"] == "test project"
    assert row["state"]["state"] in ("stopped", "running")
    assert row["users"][account.account_id]["group"] == "owner"
    assert hub.projects.get(all=True, project_id=project_id)[0]["project_id"] == project_id


def test_user_query_raw_shape(server: Server, account, project_id: str) -> None:
    body = {"name": "db.userQuery",
            "args": [{"query": {"projects": [{"project_id": None, "title": None}]}}]}
    result = httpx.post(server.url + "/api/conat/hub", json=body,
                        headers={"Authorization": f"Bearer {account.api_key}"}).json()
    assert {"project_id": project_id, "title": "test project"} in result["projects"]
    accounts = {"name": "db.userQuery", "args": [{"query": {"accounts": {"account_id": None, "first_name": None}}}]}
    result = httpx.post(server.url + "/api/conat/hub", json=accounts,
                        headers={"Authorization": f"Bearer {account.api_key}"}).json()
    assert result == {"accounts": {"account_id": account.account_id, "first_name": "Test"}}


def test_add_and_remove_collaborator(server: Server, hub, project_id: str) -> None:
    other = server.new_account("Other Person")
    other_project = cocalc_api.Project(api_key=other.api_key, host=server.url, project_id=project_id)
    with pytest.raises(RuntimeError, match="user must be a collaborator on the project"):
        other_project.system.ping()
    assert hub.projects.add_collaborator(project_id, other.account_id) == {"project_id": [project_id]}
    assert other_project.system.ping()["now"] > 0
    other_hub = cocalc_api.Hub(api_key=other.api_key, host=server.url)
    assert any(p["project_id"] == project_id for p in other_hub.projects.get())
    assert hub.projects.remove_collaborator(project_id, other.account_id) is None
    with pytest.raises(RuntimeError, match="user must be a collaborator on the project"):
        other_project.system.ping()


def test_owner_cannot_be_removed(hub, account, project_id: str) -> None:
    with pytest.raises(RuntimeError, match="owner"):
        hub.projects.remove_collaborator(project_id, account.account_id)


def test_non_member_cannot_start(server: Server, project_id: str) -> None:
    stranger = cocalc_api.Hub(api_key=server.new_account("Stranger").api_key, host=server.url)
    with pytest.raises(RuntimeError, match="must be collaborator on project to start it"):
        stranger.projects.start(project_id)
    with pytest.raises(RuntimeError, match="must be an owner to delete a project"):
        stranger.projects.delete(project_id)


def test_get_names(server: Server, hub, account) -> None:
    unknown = str(uuid.uuid4())
    names = hub.system.get_names([account.account_id, unknown])
    assert names[account.account_id] == {"first_name": "Test", "last_name": "User"}
    assert names[unknown] == {"first_name": "Deleted", "last_name": "User"}


def test_projects_record_their_host(server: Server, project_id: str) -> None:
    import socket

    from projecthub.store import Store
    store = Store.for_data_dir(server.data_dir)
    try:
        hosts = {h["host_id"]: h["name"] for h in store.list_hosts()}
        assert hosts[store.get_project(project_id)["host_id"]] == socket.gethostname()
    finally:
        store.close()
