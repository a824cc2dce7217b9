"""Request log, audit log and /metrics against a real server on loopback (issue 16 items 2, 3).

One server writes its JSON log to --log-file and serves keyless metrics on --metrics-port;
the tests make calls and read the lines back (the log is written by a thread: poll)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from tests.server import Account, Server, cli, free_port


def wait_for(find: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = find()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def lines(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("obshub")
    server = Server(data_dir, extra_args=["--log-file", str(data_dir / "json.log"), "--spare-projects", "0",
                                          "--metrics-port", str(free_port())])
    server.start()
    try:
        yield server
    finally:
        server.stop()
        cli(data_dir, "stop-all")


@pytest.fixture(scope="module")
def admin(hub: Server) -> Account:
    out = hub.cli("account", "create", "--name", "Ad Min", "--admin")
    return Account(out["account_id"], out["api_key"])


@pytest.fixture(scope="module")
def user(hub: Server) -> Account:
    return hub.new_account("Plain User")


def log_of(hub: Server) -> list[dict[str, Any]]:
    return lines(hub.data_dir / "json.log")


def find(hub: Server, timeout: float = 10.0, **fields: Any) -> dict[str, Any] | None:
    def match() -> dict[str, Any] | None:
        for entry in log_of(hub):
            if all(entry.get(k) == v for k, v in fields.items()):
                return entry
        return None
    return wait_for(match, timeout)


def v3(hub: Server, key: str, method: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
    return httpx.request(method, hub.url + "/api/v3" + path, json=body, timeout=kw.pop("timeout", 60),
                         headers={"Authorization": f"Bearer {key}"}, **kw)


def new_project(hub: Server, key: str) -> str:
    r = v3(hub, key, "POST", "/projects", {})
    assert r.status_code == 201, r.text
    return r.json()["project_id"]


def test_request_log_lines_for_v3_and_conat(hub: Server, user: Account) -> None:
    project_id = new_project(hub, user.api_key)
    r = v3(hub, user.api_key, "POST", f"/projects/{project_id}/exec", {"command": "true"})
    assert r.status_code == 200, r.text
    entry = find(hub, logger="projecthub.requests", surface="v3", project_id=project_id,
                 function="POST /projects/{project_id}/exec")
    assert entry, log_of(hub)[-5:]
    assert entry["status"] == 200 and entry["account_id"] == user.account_id and isinstance(entry["key_id"], int)
    assert entry["method"] == "POST" and entry["bytes_in"] > 0 and entry["bytes_out"] == len(r.content)
    assert 0 < entry["duration_ms"] < 60_000 and entry["ts"].endswith("Z") and entry["event"] == "request"
    r = hub.post("/api/conat/project", {"project_id": project_id, "name": "system.exec",
                                        "args": [{"command": "echo", "args": ["hi"]}]}, key=user.api_key)
    assert r.json()["stdout"] == "hi\n", r.text
    entry = find(hub, logger="projecthub.requests", surface="conat-project", function="system.exec",
                 project_id=project_id)
    assert entry and entry["account_id"] == user.account_id and entry["status"] == 200
    r = hub.post("/api/conat/hub", {"name": "system.ping", "args": []}, key=user.api_key)
    assert find(hub, logger="projecthub.requests", surface="conat-hub", function="system.ping")
    # an unknown conat name never becomes a function label (client input, unbounded)
    hub.post("/api/conat/hub", {"name": "nope.x" * 5, "args": []}, key=user.api_key)
    assert not any("nope.x" in json.dumps(e) for e in log_of(hub))


def test_stream_is_logged_when_it_ends(hub: Server, user: Account) -> None:
    project_id = new_project(hub, user.api_key)
    job = v3(hub, user.api_key, "POST", f"/projects/{project_id}/exec",
             {"command": "for i in 1 2 3; do echo line$i; sleep 0.3; done", "async": True}).json()
    r = v3(hub, user.api_key, "GET", f"/projects/{project_id}/jobs/{job['job_id']}/events")
    assert r.status_code == 200 and "line3" in r.text
    entry = find(hub, logger="projecthub.requests", function="GET /projects/{project_id}/jobs/{job_id}/events",
                 project_id=project_id)
    assert entry and entry["status"] == 200 and entry["bytes_out"] == len(r.content)
    assert entry["duration_ms"] >= 500   # the whole stream, not just its headers


def test_no_secret_in_any_line(hub: Server, user: Account, admin: Account) -> None:
    project_id = new_project(hub, user.api_key)
    v3(hub, user.api_key, "POST", f"/projects/{project_id}/exec", {"command": "echo", "args": ["x"]})
    created = v3(hub, user.api_key, "POST", "/keys", {"name": "temp"})
    assert created.status_code in (200, 201), created.text
    secret = created.json()["secret"]
    v3(hub, secret, "GET", "/projects")
    httpx.get(hub.url + "/api/v3/projects", headers={"Authorization": "Bearer " + secret[:-1] + "x"})
    httpx.post(hub.url + "/api/v3/tokens/redeem?token=tok-secret-123", timeout=10)
    httpx.get(hub.url + "/metrics", headers={"Authorization": f"Bearer {admin.api_key}"})
    assert find(hub, logger="projecthub.audit", event="key_created", account_id=user.account_id)
    assert find(hub, logger="projecthub.audit", event="auth_failure", reason="sign-in token")
    time.sleep(0.5)
    text = (hub.data_dir / "json.log").read_text() + (hub.data_dir / "audit.log").read_text()
    for needle in (user.api_key, admin.api_key, secret, secret[:-1] + "x", "tok-secret-123", "Bearer"):
        assert needle not in text


def test_audit_auth_failure(hub: Server) -> None:
    r = httpx.get(hub.url + "/api/v3/projects", headers={"Authorization": "Bearer sk-aaaaaaaaaaaaaaaa00000Z"})
    assert r.status_code == 401
    entry = find(hub, logger="projecthub.audit", event="auth_failure", path="/api/v3/projects")
    assert entry and entry["client"] == "127.0.0.1"
    assert "sk-aaaaaaaaaaaaaaaa00000Z" not in json.dumps(entry)
    assert wait_for(lambda: any(e.get("event") == "auth_failure" for e in lines(hub.data_dir / "audit.log")))
    assert (hub.data_dir / "audit.log").stat().st_mode & 0o777 == 0o600   # private, like the store


def test_audit_keys_limits_projects(hub: Server, user: Account) -> None:
    created = v3(hub, user.api_key, "POST", "/keys", {"name": "audited"}).json()
    key_id = created["id"]
    assert find(hub, logger="projecthub.audit", event="key_created", key_id=key_id, account_id=user.account_id)
    r = v3(hub, user.api_key, "DELETE", f"/keys/{key_id}")
    assert r.status_code in (200, 204), r.text
    assert find(hub, logger="projecthub.audit", event="key_revoked", key_id=key_id)
    project_id = new_project(hub, user.api_key)
    assert find(hub, logger="projecthub.audit", event="project_created", project_id=project_id,
                account_id=user.account_id)
    r = v3(hub, user.api_key, "PUT", f"/projects/{project_id}/limits", {"pids": 300})
    assert r.status_code == 200, r.text
    entry = find(hub, logger="projecthub.audit", event="limit_changed", project_id=project_id)
    assert entry and entry["limits"] == {"pids": 300} and entry["account_id"] == user.account_id
    assert v3(hub, user.api_key, "DELETE", f"/projects/{project_id}").status_code in (200, 204)
    entry = find(hub, logger="projecthub.audit", event="project_deleted", project_id=project_id)
    assert entry and entry["account_id"] == user.account_id
    # the same events from the CLI land in the data dir's audit.log
    key = hub.cli("key", "create", "--account", user.account_id)
    hub.cli("key", "revoke", "--id", str(key["id"]))
    hub.cli("account", "disable", "--account", user.account_id)
    hub.cli("account", "enable", "--account", user.account_id)
    audit = lines(hub.data_dir / "audit.log")
    assert {"key_created", "key_revoked", "account_disabled", "account_enabled"} <= {
        e["event"] for e in audit if e.get("by") == "cli"}
    assert key["api_key"] not in (hub.data_dir / "audit.log").read_text()


def test_audit_timeout_kill(hub: Server, user: Account) -> None:
    project_id = new_project(hub, user.api_key)
    r = v3(hub, user.api_key, "POST", f"/projects/{project_id}/exec", {"command": "sleep 10", "timeout": 1})
    assert r.status_code == 200 and r.json()["killed_by"] == "timeout", r.text
    entry = find(hub, logger="projecthub.audit", event="timeout_kill", project_id=project_id)
    assert entry and entry["account_id"] == user.account_id and entry["function"]
    # the CoCalc surface: system.exec answers with an error carrying killed_by
    r = hub.post("/api/conat/project", {"project_id": project_id, "name": "system.exec",
                                        "args": [{"command": "sleep", "args": ["10"], "timeout": 1}]},
                 key=user.api_key)
    assert "error" in r.json(), r.text
    assert wait_for(lambda: sum(1 for e in log_of(hub) if e.get("event") == "timeout_kill"
                                and e.get("project_id") == project_id) >= 2)
    assert any(e.get("event") == "timeout_kill" for e in lines(hub.data_dir / "audit.log"))
    # an async job killed for its timeout: seen in its event stream, written once however often read
    job = v3(hub, user.api_key, "POST", f"/projects/{project_id}/exec",
             {"command": "sleep 10", "timeout": 1, "async": True}).json()
    for _ in range(2):
        r = v3(hub, user.api_key, "GET", f"/projects/{project_id}/jobs/{job['job_id']}/events")
        assert r.status_code == 200 and "done" in r.text, r.text
    v3(hub, user.api_key, "GET", f"/projects/{project_id}/jobs/{job['job_id']}")
    assert find(hub, logger="projecthub.audit", event="timeout_kill", job_id=job["job_id"])
    time.sleep(0.3)
    assert sum(1 for e in log_of(hub) if e.get("event") == "timeout_kill" and e.get("job_id") == job["job_id"]) == 1


def test_audit_oom_kill(hub: Server, user: Account) -> None:
    from tests.security.conftest import require_cgroup, require_sandbox
    require_sandbox()
    require_cgroup("memory")
    project_id = new_project(hub, user.api_key)
    assert v3(hub, user.api_key, "PUT", f"/projects/{project_id}/limits",
              {"memory_bytes": 128 * 2**20}).status_code == 200
    hog = "x = []\nwhile True:\n    x.append(bytearray(8 * 2**20))\n"
    r = v3(hub, user.api_key, "POST", f"/projects/{project_id}/exec",
           {"command": "python3", "args": ["-c", hog], "bash": False, "timeout": 30})
    assert r.status_code == 200 and r.json()["killed_by"] == "oom", r.text
    entry = find(hub, logger="projecthub.audit", event="oom_kill", project_id=project_id)
    assert entry and entry["account_id"] == user.account_id


def test_metrics_access(hub: Server, user: Account, admin: Account) -> None:
    project_id = new_project(hub, user.api_key)
    assert v3(hub, user.api_key, "POST", f"/projects/{project_id}/exec", {"command": "true"}).status_code == 200
    assert httpx.get(hub.url + "/metrics").status_code == 401
    assert httpx.get(hub.url + "/metrics", headers={"Authorization": "Bearer sk-nope"}).status_code == 401
    r = httpx.get(hub.url + "/metrics", headers={"Authorization": f"Bearer {user.api_key}"})
    assert r.status_code == 403 and "error" in r.json()
    r = httpx.get(hub.url + "/metrics", headers={"Authorization": f"Bearer {admin.api_key}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert ('projecthub_requests_total{function="POST /projects/{project_id}/exec",status="200",'
            'surface="v3"}') in text
    assert "projecthub_request_duration_seconds_bucket" in text
    for name in ("projecthub_running_projects", "projecthub_running_kernels", "projecthub_running_jobs",
                 "projecthub_exec_timeouts_total", "projecthub_oom_kills_total",
                 "projecthub_sandbox_failures_total", "projecthub_key_cache_hits_total",
                 "projecthub_key_cache_misses_total"):
        assert name in text, name
    running = [line for line in text.splitlines() if line.startswith("projecthub_running_projects ")]
    assert running and float(running[0].split()[1]) >= 1
    # the keyless listener: loopback, /metrics only
    port = int(hub.extra_args[hub.extra_args.index("--metrics-port") + 1])
    r = httpx.get(f"http://127.0.0.1:{port}/metrics")
    assert r.status_code == 200 and "projecthub_requests_total" in r.text
    assert httpx.get(f"http://127.0.0.1:{port}/api/v3/projects").status_code == 404
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 404


def test_sandbox_start_failure_is_audited(hub: Server, user: Account) -> None:
    """A project whose disk limit the data disk cannot back fails to start (host/sandbox/disk.py)."""
    project_id = new_project(hub, user.api_key)
    hub.cli("project", "limits", "--project", project_id, "--set", "disk_bytes=15T")
    r = v3(hub, user.api_key, "POST", f"/projects/{project_id}/start")
    assert r.status_code >= 400, r.text
    entry = find(hub, logger="projecthub.audit", event="sandbox_start_failure", project_id=project_id)
    assert entry and entry.get("error"), r.text


def test_log_file_rotation_and_no_request_log(tmp_path: Path) -> None:
    log_file = tmp_path / "rot.log"
    server = Server(tmp_path, extra_args=["--log-file", str(log_file), "--log-max-bytes", "4000",
                                          "--log-backups", "2", "--spare-projects", "0", "--no-metrics"])
    server.start()
    try:
        for _ in range(60):
            httpx.get(server.url + "/healthz")
        assert wait_for(lambda: Path(str(log_file) + ".2").exists())
        assert not Path(str(log_file) + ".3").exists()
        for path in (log_file, Path(str(log_file) + ".1")):
            assert path.stat().st_size <= 4000 + 1000
            lines(path)   # every line is JSON
        admin = server.cli("account", "create", "--name", "A B", "--admin")["api_key"]
        assert httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {admin}"}).status_code == 404
    finally:
        server.stop()
        cli(tmp_path, "stop-all")
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    server = Server(quiet, extra_args=["--log-file", str(quiet / "q.log"), "--no-request-log",
                                       "--spare-projects", "0"])
    server.start()
    try:
        httpx.get(server.url + "/healthz")
        httpx.get(server.url + "/api/v3/projects", headers={"Authorization": "Bearer sk-bad"})
        assert wait_for(lambda: any(e.get("event") == "auth_failure" for e in lines(quiet / "q.log")))
        assert not any(e.get("logger") == "projecthub.requests" for e in lines(quiet / "q.log"))
    finally:
        server.stop()
        cli(quiet, "stop-all")


def test_json_log_on_stdout_banner_on_stderr(tmp_path: Path) -> None:
    import os
    import re
    import subprocess

    from tests.server import PROJECTHUB, TEST_ENV
    port = free_port()
    proc = subprocess.Popen([*PROJECTHUB, "serve", "--port", str(port), "--data-dir", str(tmp_path),
                             "--spare-projects", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**TEST_ENV, **os.environ})
    try:
        assert wait_for(lambda: _up(port), 30)
        httpx.get(f"http://127.0.0.1:{port}/healthz")
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
        cli(tmp_path, "stop-all")
    assert "Created the admin account" in err.decode() and "{" not in err.decode().split("\n\n")[1]
    stdout = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert any(e.get("logger") == "projecthub.requests" and e.get("path") == "/healthz" for e in stdout)
    assert not re.search(r"sk-[A-Za-z0-9]{22}", out.decode())   # the admin key: only in the banner


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
