"""Legacy v1 project_exec (spec 5, the seed examples) and v2 exec (spec 4.15, its e2e flow)."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.server import Server

# Seed 003 (CoCalc's v1 docs, "Setting a timeout for the command"), byte for byte.  Only the
# script path differs between runs and servers: SEED_KILL_PATH is replaced by ours.
SEED_TIMEOUT_ERROR = ("Error executing command 'sleep 5' with args '' -- killed command "
                      "'bash /tmp/f-11757-1677-8ei2z0.t4fex0qkt9', , ")
SEED_KILL_PATH = "/tmp/f-11757-1677-8ei2z0.t4fex0qkt9"
OUR_SCRIPT = re.compile(r"/tmp/cocalc-[A-Za-z0-9]{6}/a\.sh")


def seed_text(error: str) -> str:
    """The seed's text with our script path in place of the seed's."""
    found = OUR_SCRIPT.search(error)
    assert found, error
    return SEED_TIMEOUT_ERROR.replace(SEED_KILL_PATH, found.group(0))


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
    assert out["error"] == seed_text(out["error"]), out
    assert set(out) == {"event", "id", "error", "stdout", "stderr", "killed_by"}, out
    assert out["event"] == "error" and re.fullmatch(r"[0-9a-f-]{36}", out["id"])
    assert (out["stdout"], out["stderr"], out["killed_by"]) == ("", "", "timeout")
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
    # args not sent: '' as v1's default [] renders (seed 003), never 'undefined'
    assert out == {"error": "Error executing command 'false' with args '' -- command ''false' (args=)' "
                            "exited with nonzero code 1 -- stderr=''"}, out


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


# -- issue 16 item 8: timeouts with partial output, the seed's kill suffix, args '', 405 ----------

PARTIAL = "echo partial; echo oops >&2; sleep 5"


def test_v1_v2_timeout_carries_partial_output_like_conat(server: Server, project, project_id: str) -> None:
    """A timeout on every surface: CoCalc's text, plus the partial stdout/stderr and killed_by
    that conat's system.exec carries.  The official client's own HTTP client (its Basic auth
    with key:"") reaches v1 and v2 as well."""
    client = project.client
    conat = client.post(server.url + "/api/conat/project", timeout=60, json={
        "project_id": project_id, "name": "system.exec", "args": [{"command": PARTIAL, "timeout": 1}],
        "timeout": 5000}).json()
    script = OUR_SCRIPT.search(conat["error"]).group(0)
    partial = {"stdout": "partial\n", "stderr": "oops\n", "killed_by": "timeout"}
    # conat keeps today's E3 (no ", , "), as the official client sees it
    assert conat == {"error": f"killed command 'bash {script}'", **partial}, conat
    with pytest.raises(RuntimeError) as raised:
        project.system.exec(command=PARTIAL, timeout=1)
    assert str(raised.value) == f"killed command 'bash {OUR_SCRIPT.search(str(raised.value)).group(0)}'"

    wrapped = "Error executing command '{}' with args '' -- killed command 'bash {}', , "
    out = client.post(server.url + "/api/v1/project_exec", timeout=60, json={
        "command": PARTIAL, "timeout": 1, "project_id": project_id}).json()
    assert list(out) == ["event", "id", "error", "stdout", "stderr", "killed_by"], out
    script = OUR_SCRIPT.search(out["error"]).group(0)
    assert out == {"event": "error", "id": out["id"], "error": wrapped.format(PARTIAL, script), **partial}
    out = client.post(server.url + "/api/v2/exec", timeout=60, json={
        "command": PARTIAL, "timeout": 1, "project_id": project_id}).json()
    script = OUR_SCRIPT.search(out["error"]).group(0)
    assert out == {"error": wrapped.format(PARTIAL, script), **partial}, out
    # a form-encoded v1 request (the seed's curl -d style) gets the same
    out = v1(server, project.api_key, data={"command": PARTIAL, "timeout": "1", "project_id": project_id}).json()
    script = OUR_SCRIPT.search(out["error"]).group(0)
    assert out == {"event": "error", "id": out["id"], "error": wrapped.format(PARTIAL, script), **partial}


def test_v1_v2_direct_mode_timeout_text_is_exact(server: Server, account, project_id: str) -> None:
    """Direct (non-bash) mode has no random script path: the whole text is fixed."""
    body = {"command": "sleep", "args": ["5", "5"], "timeout": 1, "project_id": project_id}
    expected = "Error executing command 'sleep' with args '5,5' -- killed command 'sleep 5 5', , "
    out = v1(server, account.api_key, json=body).json()
    assert (out["event"], out["error"], out["stdout"], out["stderr"], out["killed_by"]) == (
        "error", expected, "", "", "timeout"), out
    out = httpx.post(server.url + "/api/v2/exec", auth=(account.api_key, ""), timeout=60, json=body).json()
    assert out == {"error": expected, "stdout": "", "stderr": "", "killed_by": "timeout"}, out


def test_v1_v2_errors_other_than_a_kill_have_no_suffix(server: Server, account, project_id: str) -> None:
    """The seed's ", , " belongs to the kill text only; v1 and v2 render missing args alike."""
    text = "Error executing command 'false' with args '' -- command ''false' (args=)' exited with nonzero code 1 -- stderr=''"
    out = v1(server, account.api_key, data={"command": "false", "project_id": project_id}).json()
    assert out == {"event": "error", "id": out["id"], "error": text}, out
    out = httpx.post(server.url + "/api/v2/exec", auth=(account.api_key, ""), timeout=60,
                     json={"command": "false", "project_id": project_id}).json()
    assert out == {"error": text}, out
    out = httpx.post(server.url + "/api/v2/exec", auth=(account.api_key, ""), timeout=60,
                     json={"command": "false", "args": ["a", "b"], "project_id": project_id}).json()
    assert out == {"error": "Error executing command 'false' with args 'a,b' -- command ''false' (args=a b)' "
                            "exited with nonzero code 1 -- stderr=''"}, out


def test_v1_project_exec_other_methods_are_405(server: Server, account) -> None:
    for method in ("GET", "HEAD", "PUT", "DELETE", "PATCH"):
        response = httpx.request(method, server.url + "/api/v1/project_exec", auth=(account.api_key, ""),
                                 timeout=30)
        assert response.status_code == 405, (method, response.text)
        assert response.headers["allow"] == "POST", (method, response.headers)
        if method != "HEAD":
            assert response.json() == {"error": f"method {method} not allowed on /api/v1/project_exec"}
    # without credentials too: the method is wrong whoever asks
    response = httpx.get(server.url + "/api/v1/project_exec", timeout=30)
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    response = httpx.get(server.url + "/api/v2/exec", auth=(account.api_key, ""), timeout=30)
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    response = httpx.get(server.url + "/api/v1/nonsense", auth=(account.api_key, ""), timeout=30)
    assert response.status_code == 400 and response.json()["error"] == "unknown endpoint 'nonsense'"
