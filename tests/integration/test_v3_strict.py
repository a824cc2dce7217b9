"""A strict, self-describing /api/v3 (issue 16 items 4-5): unknown fields are 422 naming the
field, a reused Idempotency-Key with another body is 422, a running job has no exit code,
a bad kernel name is 400, every time is ISO 8601 UTC, and the OpenAPI document generated
from the request models is valid and complete.  Real server, real sandboxes."""

from __future__ import annotations

import re
import time
import uuid

import httpx
from openapi_spec_validator import validate

from tests.server import Server

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def v3(server: Server, key: str, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, server.url + "/api/v3" + path, headers={
        "Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}, timeout=kwargs.pop("timeout", 60), **kwargs)


def test_unknown_fields_are_422_naming_the_field(server: Server, account, project_id: str) -> None:
    exec_path = f"/projects/{project_id}/exec"
    started = time.monotonic()
    r = v3(server, account.api_key, "POST", exec_path, json={"command": "sleep 5", "timout": 3})
    assert r.status_code == 422, r.text
    assert r.json() == {"error": "unknown field 'timout'"}
    assert time.monotonic() - started < 3   # refused, not run with the default timeout
    for path, method, body in [
        ("/projects", "POST", {"title": "t", "tilte": "x"}),
        ("/projects", "POST", {"limits": {"memroy_bytes": "1G"}}),
        (f"/projects/{project_id}/limits", "PUT", {"gpus": 1}),
        (f"/projects/{project_id}/sessions", "POST", {"kernal": "python3"}),
        ("/keys", "POST", {"name": "k", "expires": "2099-01-01T00:00:00Z"}),
    ]:
        r = v3(server, account.api_key, method, path, json=body)
        assert r.status_code == 422, (path, r.text)
        unknown = next(k for k in (body if "limits" not in body else body["limits"]) if k not in (
            "title", "name"))
        assert f"unknown field '" in r.json()["error"] and unknown in r.json()["error"], r.text
    # query strings too
    r = v3(server, account.api_key, "GET", f"/projects/{project_id}/jobs/x/output?strem=stderr")
    assert r.status_code == 422 and "strem" in r.json()["error"], r.text
    r = v3(server, account.api_key, "GET", f"/projects/{project_id}?verbose=1")
    assert r.status_code == 422 and "verbose" in r.json()["error"], r.text
    # wrong types and ranges stay 400, naming the field
    for body, field in [({"command": "true", "timeout": "3"}, "timeout"),
                        ({"command": "true", "timeout": True}, "timeout"),
                        ({"command": "true", "max_output": -1}, "max_output"),
                        ({"command": "true", "args": [1]}, "args"),
                        ({"command": "true", "env": {"A=B": "x"}}, "env"),
                        ({"args": []}, "command"), ({"command": ""}, "command")]:
        r = v3(server, account.api_key, "POST", exec_path, json=body)
        assert r.status_code == 400 and field in r.json()["error"], (body, r.text)
    # what was valid stays valid: 1000.0 is an integer, async is a field
    r = v3(server, account.api_key, "POST", exec_path, json={"command": "echo ok", "max_output": 1000.0,
                                                             "timeout": 10, "env": {"A": "1"}})
    assert r.status_code == 200 and r.json()["stdout"] == "ok\n", r.text


def test_idempotency_key_reused_with_another_body_is_422(server: Server, account, project_id: str) -> None:
    key = "idem-" + uuid.uuid4().hex
    path = f"/projects/{project_id}/exec"
    first = v3(server, account.api_key, "POST", path, headers={"Idempotency-Key": key},
               json={"command": "echo once-$RANDOM"})
    assert first.status_code == 200, first.text
    again = v3(server, account.api_key, "POST", path, headers={"Idempotency-Key": key},
               json={"command": "echo once-$RANDOM"})
    assert again.status_code == 200 and again.json()["job_id"] == first.json()["job_id"]
    assert again.json()["stdout"] == first.json()["stdout"]   # ran once
    other = v3(server, account.api_key, "POST", path, headers={"Idempotency-Key": key},
               json={"command": "rm -rf ~/important"})
    assert other.status_code == 422, other.text
    assert "Idempotency-Key" in other.json()["error"] and "different" in other.json()["error"]
    # a changed option is a different body too
    other = v3(server, account.api_key, "POST", path, headers={"Idempotency-Key": key},
               json={"command": "echo once-$RANDOM", "timeout": 5})
    assert other.status_code == 422, other.text


def test_running_job_has_null_exit_code_and_iso_times(server: Server, account, project_id: str) -> None:
    job = v3(server, account.api_key, "POST", f"/projects/{project_id}/exec",
             json={"command": "sleep 3; exit 7", "async": True}).json()
    assert job["status"] == "running" and job["exit_code"] is None, job
    assert ISO.match(job["start"]), job
    time.sleep(1.5)
    record = v3(server, account.api_key, "GET", f"/projects/{project_id}/jobs/{job['job_id']}?stats=true").json()
    assert record["status"] == "running" and record["exit_code"] is None, record
    for sample in record.get("stats", []):
        assert ISO.match(sample["timestamp"]), sample
    listed = v3(server, account.api_key, "GET", f"/projects/{project_id}/jobs").json()
    mine = next(j for j in listed if j["job_id"] == job["job_id"])
    assert ISO.match(mine["start"]), mine
    done = v3(server, account.api_key, "GET", f"/projects/{project_id}/jobs/{job['job_id']}?wait=20").json()
    assert done["status"] == "completed" and done["exit_code"] == 7, done
    assert ISO.match(done["start"]) and done["elapsed_s"] > 2, done
    # yield_after: a running record too
    yielded = v3(server, account.api_key, "POST", f"/projects/{project_id}/exec",
                 json={"command": "sleep 2", "yield_after": 0.2}).json()
    assert yielded["status"] == "running" and yielded["exit_code"] is None, yielded
    project = v3(server, account.api_key, "GET", f"/projects/{project_id}").json()
    assert ISO.match(project["created"]) and ISO.match(project["last_edited"]), project
    assert ISO.match(project["status"]["started"]) and "start_ts" not in project["status"], project


def test_bad_kernel_is_400_and_session_times_are_iso(server: Server, account, project_id: str) -> None:
    r = v3(server, account.api_key, "POST", f"/projects/{project_id}/sessions",
           json={"kernel": "no-such-kernel"}, timeout=120)
    assert r.status_code == 400, r.text
    assert "no-such-kernel" in r.json()["error"]
    created = v3(server, account.api_key, "POST", f"/projects/{project_id}/sessions", json={}, timeout=120)
    assert created.status_code == 201, created.text
    session = created.json()
    assert ISO.match(session["created"]) and ISO.match(session["last_used"]), session
    listed = v3(server, account.api_key, "GET", f"/projects/{project_id}/sessions").json()
    assert all(ISO.match(s["created"]) for s in listed)
    r = v3(server, account.api_key, "POST", f"/projects/{project_id}/sessions/{session['session_id']}/execute",
           json={"code": "1+1", "timout_s": 3})
    assert r.status_code == 422 and "timout_s" in r.json()["error"], r.text
    assert v3(server, account.api_key, "DELETE",
              f"/projects/{project_id}/sessions/{session['session_id']}").status_code == 204


def test_openapi_is_valid_and_complete(server: Server) -> None:
    doc = httpx.get(server.url + "/api/v3/openapi.json", timeout=30).json()
    validate(doc)
    schemas = doc["components"]["schemas"]
    for field in ("spawn_error", "oom_killed", "type", "pid", "elapsed_s", "stats", "exit_code", "killed_by"):
        assert field in schemas["ExecResult"]["properties"], field
    assert schemas["ExecRequest"]["additionalProperties"] is False
    limits = schemas["LimitsRequest"]["properties"]
    assert any(s.get("minimum") == 32 * 2**20 for s in limits["memory_bytes"]["anyOf"])
    assert any(s.get("minimum") == 8 for s in limits["pids"]["anyOf"])
    assert "/healthz" in doc["paths"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for code, response in op["responses"].items():
                content = response.get("content", {})
                if code.startswith("2") and code != "204":
                    assert content, (method, path, code)
                for media, body in content.items():
                    assert body["schema"] != {"type": "object"}, (method, path, code)
                    if media == "text/event-stream":
                        assert "stdout" in response["description"] or "output" in response["description"]
                if code.startswith(("4", "5")):
                    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    events = doc["paths"]["/api/v3/projects/{project_id}/jobs/{job_id}/events"]["get"]
    text = events["responses"]["200"]["description"]
    for word in ("stdout", "stderr", "stats", "done", "error", "MiB", "Last-Event-ID"):
        assert word in text, word


def test_operations_without_a_body_refuse_fields(server: Server, account) -> None:
    project_id = v3(server, account.api_key, "POST", "/projects", json={"title": "nobody"}).json()["project_id"]
    r = v3(server, account.api_key, "POST", f"/projects/{project_id}/start", json={"force": True})
    assert r.status_code == 422 and r.json() == {"error": "unknown field 'force'"}, r.text
    r = v3(server, account.api_key, "DELETE", f"/projects/{project_id}", json={"purge": True})
    assert r.status_code == 422 and "purge" in r.json()["error"], r.text
    r = v3(server, account.api_key, "POST", f"/projects/{project_id}/stop", content=b"[1]")
    assert r.status_code == 400, r.text
    # an empty body or {} is fine
    assert v3(server, account.api_key, "POST", f"/projects/{project_id}/stop", json={}).status_code == 200
    assert v3(server, account.api_key, "POST", f"/projects/{project_id}/stop").status_code == 200
    assert v3(server, account.api_key, "DELETE", f"/projects/{project_id}").status_code == 204
