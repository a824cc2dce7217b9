"""The native /api/v3 API: rich exec results, jobs, SSE streams, idempotency, durability."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.server import Server


def v3(server: Server, key: str, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, server.url + "/api/v3" + path, headers={
        "Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}, timeout=kwargs.pop("timeout", 60), **kwargs)


def sse_events(response_text: str) -> list[tuple[str | None, str, dict]]:
    events = []
    for block in response_text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = fields.get(name, "") + value
        if "event" in fields:
            events.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
    return events


def test_openapi_document(server: Server) -> None:
    doc = httpx.get(server.url + "/api/v3/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert "/api/v3/projects/{project_id}/exec" in doc["paths"]


def test_auth_errors_have_real_statuses(server: Server, account, project_id: str) -> None:
    assert httpx.get(server.url + "/api/v3/projects").status_code == 401
    assert v3(server, "sk-nopenopenopenopeno000001", "GET", "/projects").status_code == 401
    stranger = server.new_account("Stranger")
    assert v3(server, stranger.api_key, "POST", f"/projects/{project_id}/exec",
              json={"command": "true"}).status_code == 403
    assert v3(server, account.api_key, "POST", "/projects/not-a-uuid/exec", json={}).status_code == 400


def test_create_project_and_rich_exec(server: Server, account) -> None:
    created = v3(server, account.api_key, "POST", "/projects", json={"title": "native"})
    assert created.status_code == 201
    project_id = created.json()["project_id"]
    result = v3(server, account.api_key, "POST", f"/projects/{project_id}/exec", json={
        "command": "printf abcdef; printf err >&2; exit 3", "max_output": 4}).json()
    assert result["exit_code"] == 3 and result["signal"] is None
    assert result["stdout"] == "abcd" and result["stdout_truncated"] is True and result["stdout_bytes"] == 6
    assert result["stderr"] == "err" and result["stderr_bytes"] == 3 and result["stderr_truncated"] is False
    assert result["timed_out"] is False and result["killed_by"] is None
    assert result["wall_s"] > 0 and result["cpu_user_s"] >= 0 and result["max_rss_bytes"] > 0
    timed = v3(server, account.api_key, "POST", f"/projects/{project_id}/exec",
               json={"command": "echo before; sleep 30", "timeout": 0.5}).json()
    assert timed["timed_out"] is True and timed["killed_by"] == "timeout" and timed["stdout"] == "before\n"
    signalled = v3(server, account.api_key, "POST", f"/projects/{project_id}/exec",
                   json={"command": "kill -TERM $$", "bash": True}).json()
    assert signalled["signal"] == "SIGTERM" and signalled["killed_by"] == "signal"
    v3(server, account.api_key, "DELETE", f"/projects/{project_id}")


def test_bad_native_input(server: Server, account, project_id: str) -> None:
    response = v3(server, account.api_key, "POST", f"/projects/{project_id}/exec", json={"command": 5})
    assert response.status_code == 400 and "command" in response.json()["error"]
    response = v3(server, account.api_key, "POST", f"/projects/{project_id}/exec", content=b"{broken",
                  headers={"Content-Type": "application/json"})
    assert response.status_code == 400


def test_yield_after_returns_job_with_partial_output(server: Server, account, project_id: str) -> None:
    result = v3(server, account.api_key, "POST", f"/projects/{project_id}/exec", json={
        "command": "echo early; sleep 1.5; echo late", "yield_after": 0.5}).json()
    assert result["status"] == "running" and result["job_id"]
    assert result["stdout"] == "early\n"
    final = v3(server, account.api_key, "GET", f"/projects/{project_id}/jobs/{result['job_id']}",
               params={"wait": 10}).json()
    assert final["status"] == "completed" and final["stdout"] == "early\nlate\n" and final["exit_code"] == 0


def test_idempotency_key_never_runs_twice(server: Server, account, project_id: str) -> None:
    body = {"command": "echo run >> runs.txt; cat runs.txt | wc -l"}
    headers = {"Idempotency-Key": "once-only-123"}
    first = v3(server, account.api_key, "POST", f"/projects/{project_id}/exec", json=body, headers=headers).json()
    second = v3(server, account.api_key, "POST", f"/projects/{project_id}/exec", json=body, headers=headers).json()
    assert first["stdout"] == "1\n" and second["stdout"] == "1\n"
    assert first["job_id"] == second["job_id"]
    third = v3(server, account.api_key, "POST", f"/projects/{project_id}/exec", json=body).json()
    assert third["stdout"] == "2\n"


def test_sse_stream_and_resume(server: Server, account, project_id: str) -> None:
    job = v3(server, account.api_key, "POST", f"/projects/{project_id}/exec", json={
        "command": "for i in 1 2 3; do echo line$i; sleep 0.2; done; echo oops >&2", "async": True}).json()
    job_id = job["job_id"]
    events = sse_events(v3(server, account.api_key, "GET", f"/projects/{project_id}/jobs/{job_id}/events").text)
    kinds = [kind for _, kind, _ in events]
    assert kinds[-1] == "done" and kinds.count("done") == 1
    stdout = "".join(data["data"] for _, kind, data in events if kind == "stdout")
    assert stdout == "line1\nline2\nline3\n"
    assert "".join(data["data"] for _, kind, data in events if kind == "stderr") == "oops\n"
    assert events[-1][2]["record"]["exit_code"] == 0
    # resume after "line1\n" (6 bytes) with ?offset= and with Last-Event-ID
    resumed = sse_events(v3(server, account.api_key, "GET", f"/projects/{project_id}/jobs/{job_id}/events",
                            params={"offset": 6, "stderr_offset": 5}).text)
    assert "".join(d["data"] for _, k, d in resumed if k == "stdout") == "line2\nline3\n"
    assert not [d for _, k, d in resumed if k == "stderr"]
    first_id = next(i for i, k, _ in events if k == "stdout")
    by_header = sse_events(v3(server, account.api_key, "GET", f"/projects/{project_id}/jobs/{job_id}/events",
                              headers={"Last-Event-ID": first_id}).text)
    out_offset = int(first_id.split(":")[0])
    assert "".join(d["data"] for _, k, d in by_header if k == "stdout") == stdout.encode()[out_offset:].decode()
    assert by_header[-1][1] == "done"


def test_full_output_by_byte_range_beyond_cap(server: Server, account, project_id: str) -> None:
    job = v3(server, account.api_key, "POST", f"/projects/{project_id}/exec", json={
        "command": "seq 1 100000", "async": True, "max_output": 10}).json()
    done = v3(server, account.api_key, "GET", f"/projects/{project_id}/jobs/{job['job_id']}",
              params={"wait": 20}).json()
    assert done["status"] == "completed"
    expected = "".join(f"{i}\n" for i in range(1, 100001))
    assert done["stdout_bytes"] == len(expected)
    chunk = v3(server, account.api_key, "GET", f"/projects/{project_id}/jobs/{job['job_id']}/output",
               params={"stream": "stdout", "offset": 100000, "length": 50}).json()
    assert chunk["data"] == expected[100000:100050] and chunk["total"] == len(expected)


def test_kill_and_list_jobs(server: Server, account, project_id: str) -> None:
    job = v3(server, account.api_key, "POST", f"/projects/{project_id}/exec",
             json={"command": "sleep 60", "async": True}).json()
    assert any(j["job_id"] == job["job_id"] for j in v3(server, account.api_key, "GET",
                                                          f"/projects/{project_id}/jobs").json())
    killed = v3(server, account.api_key, "DELETE", f"/projects/{project_id}/jobs/{job['job_id']}").json()
    assert killed == {"job_id": job["job_id"], "killed": True}
    final = v3(server, account.api_key, "GET", f"/projects/{project_id}/jobs/{job['job_id']}",
               params={"wait": 10}).json()
    assert final["status"] != "running"
    assert v3(server, account.api_key, "GET", f"/projects/{project_id}/jobs/nope").status_code == 404


def test_limits_endpoint_validates(server: Server, account, project_id: str) -> None:
    limits = v3(server, account.api_key, "GET", f"/projects/{project_id}/limits").json()
    assert "memory_bytes" in limits and "pids" in limits
    updated = v3(server, account.api_key, "PUT", f"/projects/{project_id}/limits", json={"pids": 100})
    assert updated.status_code == 200 and updated.json()["pids"] == 100
    bad = v3(server, account.api_key, "PUT", f"/projects/{project_id}/limits", json={"pids": 0})
    assert bad.status_code == 400 and "pids" in bad.json()["error"]
    unknown = v3(server, account.api_key, "PUT", f"/projects/{project_id}/limits", json={"gpus": 3})
    assert unknown.status_code == 422 and "gpus" in unknown.json()["error"]   # unknown field: 422


def test_job_survives_hub_restart_and_budget_becomes_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROJECTHUB_MAX_CALL_TIMEOUT_S", "2")
    server = Server(tmp_path).start()
    try:
        account = server.new_account()
        project_id = v3(server, account.api_key, "POST", "/projects", json={"title": "durable"}).json()["project_id"]
        # a blocking CoCalc exec that outlives the call budget becomes a job, not an orphan
        body = {"name": "system.exec", "project_id": project_id,
                "args": [{"command": "sleep 3; echo finished", "timeout": 30}]}
        error = httpx.post(server.url + "/api/conat/project", json=body, timeout=60,
                           headers={"Authorization": f"Bearer {account.api_key}"}).json()
        assert "timeout" in error["error"] and error["job_id"], error
        server.process.kill()
        server.process.wait(10)
        server.start()
        poll = {"name": "system.exec", "project_id": project_id,
                "args": [{"async_get": error["job_id"], "async_await": True}]}
        done = httpx.post(server.url + "/api/conat/project", json=poll, timeout=60,
                          headers={"Authorization": f"Bearer {account.api_key}"}).json()
        if done.get("status") == "running":  # the 2 s budget may end the await early: poll again
            time.sleep(2)
            done = httpx.post(server.url + "/api/conat/project", json=poll, timeout=60,
                              headers={"Authorization": f"Bearer {account.api_key}"}).json()
        assert done["status"] == "completed" and done["stdout"] == "finished\n"
    finally:
        server.stop()
        server.cli("stop-all")


def test_only_admins_raise_limits_above_defaults(server: Server, account, project_id: str) -> None:
    defaults = v3(server, account.api_key, "GET", f"/projects/{project_id}/limits").json()
    higher = {"memory_bytes": defaults["memory_bytes"] * 2}
    denied = v3(server, account.api_key, "PUT", f"/projects/{project_id}/limits", json=higher)
    assert denied.status_code == 403 and "memory_bytes" in denied.json()["error"]
    assert v3(server, account.api_key, "PUT", f"/projects/{project_id}/limits",
              json={"network": True}).status_code == 403
    lower = v3(server, account.api_key, "PUT", f"/projects/{project_id}/limits",
               json={"memory_bytes": defaults["memory_bytes"] // 2})
    assert lower.status_code == 200
    admin = server.cli("account", "create", "--name", "Root Admin", "--admin")
    assert v3(server, admin["api_key"], "PUT", f"/projects/{project_id}/limits",
              json=higher).status_code == 403  # an admin who is not on the project is refused first
    import cocalc_api
    cocalc_api.Hub(api_key=account.api_key, host=server.url).projects.add_collaborator(
        project_id, admin["account_id"])
    raised = v3(server, admin["api_key"], "PUT", f"/projects/{project_id}/limits", json=higher)
    assert raised.status_code == 200 and raised.json()["memory_bytes"] == higher["memory_bytes"]


def test_rejected_create_leaves_no_project_and_types_are_checked(server: Server, account) -> None:
    before = {p["project_id"] for p in v3(server, account.api_key, "GET", "/projects").json()}
    bad = v3(server, account.api_key, "POST", "/projects", json={"title": "x", "limits": {"pids": -3}})
    assert bad.status_code == 400 and "pids" in bad.json()["error"]
    assert {p["project_id"] for p in v3(server, account.api_key, "GET", "/projects").json()} == before
    assert v3(server, account.api_key, "POST", "/projects", json={"start": "yes"}).status_code == 400


@pytest.mark.parametrize("body, needle", [
    ({}, "command"),
    ({"command": "echo", "async": {}}, "async"),
    ({"command": "echo", "timeout": 1e300}, "timeout"),
    ({"command": "echo", "env": {"": "x"}}, "env"),
    ({"command": "echo", "args": [1]}, "args"),
])
def test_native_exec_field_validation(server: Server, account, project_id: str, body: dict, needle: str) -> None:
    response = v3(server, account.api_key, "POST", f"/projects/{project_id}/exec", json=body)
    assert response.status_code == 400 and needle in response.json()["error"]


def test_405_lists_allowed_methods(server: Server, account) -> None:
    response = v3(server, account.api_key, "PATCH", "/projects")
    assert response.status_code == 405
    assert set(response.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
