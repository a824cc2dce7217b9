"""The CLI contract: one JSON object on stdout, with or without a running server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cocalc_api

from tests.server import Server, cli


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "projecthub.cli", *args], capture_output=True, text=True,
                          timeout=60)


def test_cli_without_server(tmp_path: Path) -> None:
    account = cli(tmp_path, "account", "create", "--name", "Ada Lovelace", "--admin", "--create")
    assert set(account) == {"account_id", "api_key"}
    assert re.fullmatch(r"sk-[A-Za-z0-9]{22}", account["api_key"])
    project = cli(tmp_path, "project", "create", "--account", account["account_id"], "--title", "T")
    assert set(project) == {"project_id"}
    key = cli(tmp_path, "key", "create", "--account", account["account_id"], "--project",
              project["project_id"], "--name", "bound", "--expire", "2099-01-01T00:00:00Z")
    assert set(key) == {"id", "api_key", "project_id"}
    assert key["project_id"] == project["project_id"]
    plain = cli(tmp_path, "key", "create", "--account", account["account_id"])
    assert plain["project_id"] is None


def test_cli_while_server_runs(server: Server) -> None:
    account = server.new_account("Live Server")
    project = server.cli("project", "create", "--account", account.account_id, "--title", "from cli")
    key = server.cli("key", "create", "--account", account.account_id, "--project", project["project_id"])
    client = cocalc_api.Project(api_key=key["api_key"], host=server.url)
    assert client.system.test()["project_id"] == project["project_id"]


def test_cli_errors_are_json_not_tracebacks(tmp_path: Path) -> None:
    out = run("key", "create", "--data-dir", str(tmp_path), "--account", "nope", "--create")
    assert out.returncode == 2
    assert out.stderr == "projecthub: error: no account with id nope\n"
    assert "error" in json.loads(out.stdout)
    account = cli(tmp_path, "account", "create", "--name", "X")
    out = run("key", "create", "--data-dir", str(tmp_path), "--account", account["account_id"],
              "--expire", "not-a-date")
    assert out.returncode != 0 and "error" in json.loads(out.stdout)


def test_doctor_reports_layers(tmp_path: Path) -> None:
    out = run("doctor", "--data-dir", str(tmp_path), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["layers"], report


def test_require_isolation_refuses_when_a_layer_is_missing(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "projecthub.cli", "serve", "--data-dir", str(tmp_path),
                          "--port", "0", "--sandbox", "none", "--require-isolation"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "refusing to start" in out.stderr and "[MISSING] bwrap" in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_layer_is_announced_loudly(tmp_path: Path) -> None:
    server = Server(tmp_path, extra_args=["--sandbox", "none"]).start()
    try:
        assert "NOT ALL ISOLATION LAYERS ARE ENFORCED" in server.log()
    finally:
        server.stop()
        server.cli("stop-all")   # its spare project's daemon (and mounted image) outlive it


def test_project_limits_cli(tmp_path: Path) -> None:
    account = cli(tmp_path, "account", "create", "--name", "L", "--create")
    project = cli(tmp_path, "project", "create", "--account", account["account_id"])
    shown = cli(tmp_path, "project", "limits", "--project", project["project_id"],
                "--set", "memory_bytes=1G", "--set", "pids=256")
    assert shown["limits"]["memory_bytes"] == 2**30 and shown["limits"]["pids"] == 256
    again = cli(tmp_path, "project", "limits", "--project", project["project_id"])
    assert again["overrides"] == {"memory_bytes": "1G", "pids": 256}
    bad = run("project", "limits", "--data-dir", str(tmp_path), "--project", project["project_id"],
              "--set", "pids=0")
    assert bad.returncode != 0 and "pids" in json.loads(bad.stdout)["error"]


def test_invalid_default_limits_refuse_to_start(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "projecthub.cli", "serve", "--data-dir", str(tmp_path),
                          "--port", "0", "--default-limits", '{"pids": -5}'],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "pids" in out.stderr and "Traceback" not in out.stderr


def test_keep_alive_below_one_second_refuses_to_start(tmp_path: Path) -> None:
    for args, env in ((["--keep-alive", "0"], {}), ([], {"PROJECTHUB_KEEP_ALIVE_S": "-3"})):
        out = subprocess.run([sys.executable, "-m", "projecthub.cli", "serve", "--data-dir", str(tmp_path),
                              "--port", "0", *args], capture_output=True, text=True, timeout=60,
                             env={**os.environ, **env})
        assert out.returncode == 2 and "--keep-alive must be >= 1" in out.stderr
        assert "Traceback" not in out.stderr
