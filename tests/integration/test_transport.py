"""Transport and authentication (spec 1.2-1.10, 2; checklist 1-9), through the real server."""

from __future__ import annotations

import base64
import re
import socket
import time
import uuid
from datetime import datetime, timedelta, timezone

import cocalc_api
import httpx
import pytest

from projecthub.auth.keys import verify_secret
from projecthub.store import Store
from tests.server import Server


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def post(server: Server, path: str, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=headers or {}, timeout=60)


def test_ping_with_basic_and_bearer(server: Server, account) -> None:
    for headers in (basic(account.api_key), {"Authorization": f"Bearer {account.api_key}"}):
        response = post(server, "/api/conat/hub", {"name": "system.ping", "args": [{}]}, headers)
        assert response.status_code == 200
        assert isinstance(response.json()["now"], int)


def test_official_client_hub_ping_and_test(hub, account) -> None:
    assert isinstance(hub.system.ping()["now"], int)
    result = hub.system.test()
    assert result["account_id"] == account.account_id
    assert isinstance(result["server_time"], int)


def test_missing_header(server: Server) -> None:
    for path in ("/api/conat/project", "/api/conat/hub"):
        response = post(server, path, {"name": "system.ping", "args": [{}]})
        assert response.status_code == 200
        assert response.json() == {"error": "You must provide authentication via an API key."}


def test_unknown_scheme(server: Server) -> None:
    response = post(server, "/api/conat/hub", {"name": "system.ping"}, {"Authorization": "Digest abc"})
    assert response.json() == {"error": "Unknown authorization type 'Digest'"}


@pytest.mark.parametrize("key", ["invalid_key", "sk-AAAAAAAAAAAAAAAA000001", "sk-short", ""])
def test_bad_keys(server: Server, key: str) -> None:
    hub_resp = post(server, "/api/conat/hub", {"name": "system.ping"}, basic(key))
    assert hub_resp.json() == {"error": "must be signed in and MUST provide an api key (cookies are not allowed)"}
    proj_resp = post(server, "/api/conat/project", {"name": "system.ping"}, basic(key))
    assert proj_resp.json() == {"error": "must sign in as project or account"}


def test_official_client_raises_on_bad_key(server: Server) -> None:
    with pytest.raises(RuntimeError, match="must be signed in and MUST provide an api key"):
        cocalc_api.Hub(api_key="sk-nope", host=server.url).system.ping()


def test_account_key_needs_project_id(server: Server, account) -> None:
    response = post(server, "/api/conat/project", {"name": "system.ping"}, basic(account.api_key))
    assert response.json() == {"error": "must specify project_id or use project-specific api key"}


def test_non_collaborator_rejected(server: Server, account, project_id: str) -> None:
    other = server.new_account("Other")
    response = post(server, "/api/conat/project",
                    {"name": "system.ping", "project_id": project_id}, basic(other.api_key))
    assert response.json() == {"error": "user must be a collaborator on the project"}


def test_malformed_project_id(server: Server, account) -> None:
    response = post(server, "/api/conat/project",
                    {"name": "system.ping", "project_id": "not-a-uuid"}, basic(account.api_key))
    assert response.json() == {"error": "invalid account_id or project_id -- all must be valid uuid's"}


def test_project_key_scope(server: Server, account, project_id: str) -> None:
    key = server.cli("key", "create", "--account", account.account_id, "--project", project_id)["api_key"]
    project = cocalc_api.Project(api_key=key, host=server.url)  # no project_id
    assert isinstance(project.system.ping()["now"], int)
    assert project.system.test()["project_id"] == project_id
    other_project = cocalc_api.Hub(api_key=account.api_key, host=server.url).projects.create_project(title="b")
    response = post(server, "/api/conat/project",
                    {"name": "system.ping", "project_id": other_project}, basic(key))
    assert response.json() == {"error": "project specific api key must match requested project"}
    with pytest.raises(RuntimeError, match="must be signed in and MUST provide an api key"):
        cocalc_api.Hub(api_key=key, host=server.url).system.test()


def test_project_system_ping_test_with_account_key(project, project_id: str) -> None:
    assert isinstance(project.system.ping()["now"], int)
    result = project.system.test()
    assert result["project_id"] == project_id
    assert isinstance(result["server_time"], int)


def test_system_test_injects_project_id_over_client_value(server: Server, account, project_id: str) -> None:
    response = post(server, "/api/conat/project",
                    {"name": "system.test", "args": ["junk"], "project_id": project_id}, basic(account.api_key))
    assert response.json()["project_id"] == project_id


def test_unknown_function_and_ping(server: Server, account, project_id: str) -> None:
    body = {"name": "system.noSuchThing", "args": [{}], "project_id": project_id}
    assert post(server, "/api/conat/project", body, basic(account.api_key)).json() == {
        "error": "Error: unknown function 'system.noSuchThing'"}
    assert post(server, "/api/conat/hub", {"name": "nope.nope"}, basic(account.api_key)).json() == {
        "error": "Error: unknown function 'nope.nope'"}
    pong = post(server, "/api/conat/project", {"name": "ping", "project_id": project_id}, basic(account.api_key))
    assert pong.json() == "pong"


def test_key_format_and_stored_hash(server: Server, account) -> None:
    assert re.fullmatch(r"sk-[A-Za-z0-9]{16}[0-9A-Za-z]{6}", account.api_key)
    store = Store.for_data_dir(server.data_dir)
    try:
        from projecthub.auth.keys import key_row_id
        row = store.get_api_key(key_row_id(account.api_key))
    finally:
        store.close()
    # one HMAC round in password-hash's layout (auth/keys.py: a 95-bit secret needs no slow KDF)
    assert re.fullmatch(r"sha512\$[0-9a-f]{32}\$1\$[0-9a-f]{128}", row["hash"])
    assert len(row["hash"]) == 170
    assert verify_secret(account.api_key, row["hash"])
    assert account.api_key not in str(row)


def test_manage_api_keys_create_get_edit_delete(hub, server: Server) -> None:
    body = {"name": "system.manageApiKeys", "args": [{"action": "create", "name": "ci key"}]}
    key_headers = {"Authorization": f"Bearer {hub.api_key}"}
    created = post(server, "/api/conat/hub", body, key_headers).json()
    assert isinstance(created, list) and len(created) == 1
    record = created[0]
    assert {"id", "account_id", "expire", "created", "name", "last_active", "trunc", "secret"} <= set(record)
    secret = record["secret"]
    assert record["trunc"] == secret[:3] + "..." + secret[-6:]
    assert cocalc_api.Hub(api_key=secret, host=server.url).system.ping()
    listed = post(server, "/api/conat/hub", {"name": "system.manageApiKeys", "args": [{"action": "get"}]},
                  key_headers).json()
    assert any(k["id"] == record["id"] for k in listed)
    assert all("secret" not in k for k in listed)
    edit = {"name": "system.manageApiKeys", "args": [{"action": "edit", "id": record["id"], "name": "renamed"}]}
    assert post(server, "/api/conat/hub", edit, key_headers).json() is None
    missing = {"name": "system.manageApiKeys", "args": [{"action": "edit", "id": 99999999, "name": "x"}]}
    assert post(server, "/api/conat/hub", missing, key_headers).json() == {"error": "Error: no api key with id 99999999"}
    delete = {"name": "system.manageApiKeys", "args": [{"action": "delete", "id": record["id"]}]}
    assert post(server, "/api/conat/hub", delete, key_headers).json() is None
    # a deleted key stops working at once, despite the verification cache
    response = post(server, "/api/conat/hub", {"name": "system.ping"}, {"Authorization": f"Bearer {secret}"})
    assert response.json()["error"].startswith("must be signed in")


def test_expired_key_rejected_and_deleted(server: Server, account) -> None:
    soon = (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()
    out = server.cli("key", "create", "--account", account.account_id, "--expire", soon)
    assert cocalc_api.Hub(api_key=out["api_key"], host=server.url).system.ping()
    import time
    time.sleep(1.5)
    response = post(server, "/api/conat/hub", {"name": "system.ping"}, basic(out["api_key"]))
    assert response.json()["error"].startswith("must be signed in")
    store = Store.for_data_dir(server.data_dir)
    try:
        assert store.get_api_key(out["id"]) is None
    finally:
        store.close()


def test_orphaned_project_key_rejected_and_deleted(server: Server, hub, account, project_id: str) -> None:
    collaborator = server.new_account("Collab")
    hub.projects.add_collaborator(project_id, collaborator.account_id)
    key = server.cli("key", "create", "--account", collaborator.account_id, "--project", project_id)
    project = cocalc_api.Project(api_key=key["api_key"], host=server.url)
    assert project.system.test()["project_id"] == project_id
    hub.projects.remove_collaborator(project_id, collaborator.account_id)
    response = post(server, "/api/conat/project", {"name": "system.ping"}, basic(key["api_key"]))
    assert response.json() == {"error": "must sign in as project or account"}
    store = Store.for_data_dir(server.data_dir)
    try:
        assert store.get_api_key(key["id"]) is None
    finally:
        store.close()


def test_banned_account_rejected(server: Server) -> None:
    victim = server.new_account("Banned")
    assert cocalc_api.Hub(api_key=victim.api_key, host=server.url).system.ping()
    store = Store.for_data_dir(server.data_dir)
    try:
        store.set_banned(victim.account_id, True)
    finally:
        store.close()
    import time
    time.sleep(2.2)  # the server trusts a verified key for at most key_cache_ttl (2 s)
    response = post(server, "/api/conat/hub", {"name": "system.ping"}, basic(victim.api_key))
    assert response.json()["error"].startswith("must be signed in")


# -- bad input ------------------------------------------------------------------------------

def test_malformed_json_is_400(server: Server, account) -> None:
    response = httpx.post(server.url + "/api/conat/hub", content=b"{nope", headers={
        **basic(account.api_key), "Content-Type": "application/json"})
    assert response.status_code == 400
    assert "malformed JSON" in response.json()["error"]


def test_body_not_object_is_400(server: Server, account) -> None:
    response = post(server, "/api/conat/hub", [1, 2], basic(account.api_key))
    assert response.status_code == 400
    assert response.json() == {"error": "the JSON body must be an object"}


def test_args_not_list_and_name_not_string(server: Server, account) -> None:
    response = post(server, "/api/conat/hub", {"name": "system.ping", "args": {"a": 1}}, basic(account.api_key))
    assert response.json() == {"error": "Error: 'args' must be an array"}
    response = post(server, "/api/conat/hub", {"name": 42}, basic(account.api_key))
    assert response.json() == {"error": "Error: 'name' must be a non-empty string"}


def test_oversized_body_is_413(server: Server, account) -> None:
    big = b'{"name": "system.ping", "pad": "' + b"x" * (17 * 2**20) + b'"}'
    response = httpx.post(server.url + "/api/conat/hub", content=big, headers={
        **basic(account.api_key), "Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 413


def test_wrong_types_in_hub_args(server: Server, account) -> None:
    response = post(server, "/api/conat/hub", {"name": "projects.createProject", "args": [{"title": 5}]},
                    basic(account.api_key))
    assert response.json() == {"error": "Error: title and description must be strings"}
    response = post(server, "/api/conat/hub", {"name": "projects.state", "args": [{"project_id": "x"}]},
                    basic(account.api_key))
    assert "valid uuid" in response.json()["error"]


def test_get_requests_are_not_calls(server: Server, account) -> None:
    response = httpx.get(server.url + "/api/conat/hub", headers=basic(account.api_key))
    assert response.status_code == 405


def test_repeated_bad_keys_are_slowed_but_good_keys_are_not(tmp_path) -> None:
    server = Server(tmp_path).start()  # its own server: the throttle is per client address
    account = server.new_account()
    for _ in range(40):
        post(server, "/api/conat/hub", {"name": "system.ping"}, basic("sk-wrongwrongwrongwr000001"))
    started = time.monotonic()
    post(server, "/api/conat/hub", {"name": "system.ping"}, basic("sk-wrongwrongwrongwr000001"))
    slowed = time.monotonic() - started
    started = time.monotonic()
    ok = post(server, "/api/conat/hub", {"name": "system.ping"}, basic(account.api_key))
    fast = time.monotonic() - started
    server.stop()
    assert isinstance(ok.json()["now"], int)
    assert slowed > 0.2
    assert fast < slowed


def test_random_uuid_project_that_does_not_exist(server: Server, account) -> None:
    response = post(server, "/api/conat/project", {"name": "system.ping", "project_id": str(uuid.uuid4())},
                    basic(account.api_key))
    assert response.json() == {"error": "user must be a collaborator on the project"}


def _get_on(sock: socket.socket) -> bytes:
    """One GET /healthz on an open connection; b"" if the server had closed it."""
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        data = b""
        while not data.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data
    except (BrokenPipeError, ConnectionResetError):
        return b""


def test_idle_keep_alive_connection_outlives_uvicorns_five_seconds(server: Server) -> None:
    # A client calling every few seconds reuses its connection instead of reconnecting.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        assert _get_on(sock).startswith(b"HTTP/1.1 200")
        time.sleep(5.5)
        assert _get_on(sock).startswith(b"HTTP/1.1 200")


def test_keep_alive_is_configurable(tmp_path) -> None:
    own = Server(tmp_path, extra_args=["--sandbox", "none", "--spare-projects", "0",
                                       "--keep-alive", "1"]).start()
    try:
        with socket.create_connection(("127.0.0.1", own.port), timeout=10) as sock:
            assert _get_on(sock).startswith(b"HTTP/1.1 200")
            time.sleep(2.0)
            assert _get_on(sock) == b""   # closed by the server after 1 s idle
    finally:
        own.stop()
