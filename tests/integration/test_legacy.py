"""Legacy v1 project_exec (spec 5, the seed examples) and v2 exec (spec 4.15, its e2e flow)."""

from __future__ import annotations

import re
import time

import httpx

from tests.server import Server


def v1(server: Server, key: str, **kwargs) -> httpx.Response:
    return httpx.post(server.url + "/api/v1/project_exec", auth=(key, ""), timeout=60, **kwargs)


def test_v1_seed_pwd_in_home_and_private(server: Server, account, project, project_id: str) -> None:
    home = project.system.exec(command="pwd")["stdout"]
    project.system.exec(command="mkdir -p Private")
    out = v1(server, account.api_key, data={"command": "pwd", "project_id": project_id}).json()
    assert out["event"] == "project_exec_output"
    assert out["stdout"] == home and out["stderr"] == "" and out["exit_code"] == 0
    assert re.fullmatch(r"[0-9a-f-]{36}", out["id"])
    out = v1(server, account.api_key, data={"command": "pwd", "path": "Private", "project_id": project_id}).json()
    assert out["stdout"] == home.rstrip("\n") + "/Private\n"


def test_v1_seed_args_and_max_output(server: Server, account, project_id: str) -> None:
    out = v1(server, account.api_key, json={"command": "echo", "args": ["xyz", "abc"], "project_id": project_id})
    assert out.json()["stdout"] == "xyz abc\n"
    out = v1(server, account.api_key,
             json={"command": "echo", "args": ["xyz", "abc"], "max_output": 3, "project_id": project_id})
    assert out.json()["stdout"] == "xyz (truncated at 3 characters)"


def test_v1_seed_timeout(server: Server, account, project_id: str) -> None:
    started = time.monotonic()
    out = v1(server, account.api_key, json={"command": "sleep 5", "timeout": 2, "project_id": project_id}).json()
    elapsed = time.monotonic() - started
    assert out["event"] == "error"
    assert re.fullmatch(r"Error executing command 'sleep 5' with args '' -- killed command "
                        r"'bash /tmp/cocalc-[A-Za-z0-9]{6}/a\.sh'", out["error"]), out
    assert 1.8 < elapsed < 3.5


def test_v1_echoes_given_id(server: Server, account, project_id: str) -> None:
    out = v1(server, account.api_key, data={"command": "true", "project_id": project_id, "id": "my-id"}).json()
    assert out["id"] == "my-id"


def test_v1_auth_and_parameter_failures_are_400(server: Server, account) -> None:
    response = httpx.post(server.url + "/api/v1/project_exec", data={"command": "pwd"})
    assert response.status_code == 400
    assert response.json()["error"] == "You must provide authentication via an API key."
    assert v1(server, "sk-badbadbadbadbadba000001", data={"command": "pwd", "project_id": "x"}).status_code == 400
    response = v1(server, account.api_key, data={"command": "pwd"})
    assert response.status_code == 400 and "project_id" in response.json()["error"]
    response = httpx.post(server.url + "/api/v1/nonsense", auth=(account.api_key, ""))
    assert response.status_code == 400 and response.json()["error"] == "unknown endpoint 'nonsense'"


def test_v2_exec_blocking(server: Server, account, project_id: str) -> None:
    out = httpx.post(server.url + "/api/v2/exec", auth=(account.api_key, ""), timeout=60,
                     json={"project_id": project_id, "command": "date", "args": ["-Is"]}).json()
    assert out["exit_code"] == 0 and out["stderr"] == "" and out["type"] == "blocking"
    assert re.match(r"\d{4}-\d\d-\d\dT", out["stdout"])


def test_v2_exec_async_e2e_flow(server: Server, account, project_id: str) -> None:
    script = 'echo $TEST_ENV; for i in $(seq 1 10); do echo "i=$i"; sleep 0.2; done'
    started = httpx.post(server.url + "/api/v2/exec", auth=(account.api_key, ""), timeout=60, json={
        "project_id": project_id, "command": script, "bash": True, "env": {"TEST_ENV": "123"},
        "async_call": True, "timeout": 10}).json()
    assert started["type"] == "async" and started["job_id"]
    assert started["status"] in ("running", "completed")
    done = httpx.post(server.url + "/api/v2/exec", auth=(account.api_key, ""), timeout=60, json={
        "project_id": project_id, "async_get": started["job_id"], "async_await": True,
        "async_stats": True}).json()
    assert done["status"] == "completed" and done["exit_code"] == 0
    assert done["job_id"] == started["job_id"]
    assert done["stdout"].split("\n")[0] == "123"
    assert "i=10" in done["stdout"]


def test_v2_errors_are_wrapped(server: Server, account, project_id: str) -> None:
    out = httpx.post(server.url + "/api/v2/exec", auth=(account.api_key, ""), timeout=60, json={
        "project_id": project_id, "command": "false"}).json()
    assert out["error"].startswith("Error executing command 'false' with args 'undefined' -- command ''false'")


def test_v2_project_key_and_strangers(server: Server, account, project_id: str) -> None:
    key = server.cli("key", "create", "--account", account.account_id, "--project", project_id)["api_key"]
    out = httpx.post(server.url + "/api/v2/exec", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                     json={"project_id": project_id, "command": "echo", "args": ["ok"]}).json()
    assert out["stdout"] == "ok\n"
    stranger = server.new_account("Stranger")
    out = httpx.post(server.url + "/api/v2/exec", auth=(stranger.api_key, ""), timeout=60,
                     json={"project_id": project_id, "command": "echo"}).json()
    assert out == {"error": "user must be a collaborator on the project"}
    out = httpx.post(server.url + "/api/v2/exec", timeout=60, json={"project_id": project_id, "command": "echo"})
    assert out.json() == {"error": "You must provide authentication via an API key."}
