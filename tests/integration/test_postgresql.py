"""One process on PostgreSQL: ``serve --database-url`` driven by the official client, admin
commands with ``--database-url``, ``store migrate --to``, and a database that is unreachable
at start or goes away while the server runs (a real PostgreSQL: tests/pg.py)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.pg import PgServer, _free_port
from tests.server import PROJECTHUB, TEST_ENV, Server, cli

pytestmark = pytest.mark.slow


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROJECTHUB, *args], capture_output=True, text=True, timeout=timeout,
                          env={**TEST_ENV, **os.environ})


def ok(*args: str) -> dict[str, Any]:
    out = run(*args)
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads(out.stdout)


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, out.stderr + out.stdout
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("projecthub: error: "), out.stderr
    return lines[0]


def _pg_server(data_dir: Path, url: str) -> Server:
    return Server(data_dir, extra_args=["--database-url", url])


def _stop(srv: Server, url: str) -> None:
    srv.stop()
    run("stop-all", "--data-dir", str(srv.data_dir), "--database-url", url)


def test_serve_on_postgresql_with_the_official_client(tmp_path: Path, pg_url: str) -> None:
    import cocalc_api
    srv = _pg_server(tmp_path, pg_url).start()
    try:
        assert not (tmp_path / "hub.db").exists()   # the store is the database, homes stay here
        account = ok("account", "create", "--name", "Pg User", "--database-url", pg_url)
        hub = cocalc_api.Hub(api_key=account["api_key"], host=srv.url)
        project_id = hub.projects.create_project(title="on postgres")
        project = cocalc_api.Project(api_key=account["api_key"], host=srv.url, project_id=project_id)
        assert project.system.exec(command="echo hello from postgres")["stdout"] == "hello from postgres\n"
        assert (tmp_path / "projects" / project_id).is_dir()
        # a small upload is recorded for sync.history when it is text; one with a NUL (valid
        # UTF-8, but PostgreSQL's text cannot hold it) is done and answers as such (sync.history
        # skips it; it used to answer 500 after writing the file)
        upload = httpx.put(f"{srv.url}/api/v3/projects/{project_id}/files/nul.bin", content=b"x\x00y",
                           headers={"Authorization": f"Bearer {account['api_key']}"}, timeout=60)
        assert upload.status_code == 201, upload.text
        assert project.system.exec(command="cat nul.bin")["stdout"] == "x\x00y"
        listed = ok("project", "list", "--database-url", pg_url)
        assert project_id in json.dumps(listed)
        # a key revoked by the CLI on the shared database stops working within the key
        # cache's TTL (2 s; no counter file beside a PostgreSQL store: store/revocations.py)
        keys = ok("key", "list", "--database-url", pg_url, "--account", account["account_id"])["keys"]
        assert len(keys) == 1
        ok("key", "revoke", "--id", str(keys[0]["id"]), "--database-url", pg_url)
        time.sleep(2.5)
        with pytest.raises(Exception):
            hub.projects.create_project(title="after revocation")
    finally:
        _stop(srv, pg_url)


def test_admin_commands_refuse_a_database_without_a_store(pg_url: str) -> None:
    line = one_line_error(run("account", "list", "--database-url", pg_url))
    assert "no projecthub store in the database" in line and "--create" in line
    assert ":***@" in line   # never the password
    ok("account", "create", "--name", "First", "--database-url", pg_url, "--create")
    assert len(ok("account", "list", "--database-url", pg_url)["accounts"]) == 1


def test_unreachable_database_at_start_is_one_line_and_exit_2(tmp_path: Path) -> None:
    url = f"postgresql://hub:hunter2@127.0.0.1:{_free_port()}/projecthub"
    started = time.monotonic()
    out = run("serve", "--port", "0", "--data-dir", str(tmp_path), "--sandbox", "none",
              "--database-url", url)
    line = one_line_error(out)
    assert "cannot reach the database" in line and "hunter2" not in out.stderr
    assert time.monotonic() - started < 30
    line = one_line_error(run("key", "list", "--database-url", url))
    assert "cannot reach the database" in line
    line = one_line_error(run("account", "list", "--database-url", "not a url"))
    assert "--database-url" in line


def test_store_migrate_copies_an_embedded_store(tmp_path: Path, pg_url: str, pg_server: PgServer) -> None:
    data = tmp_path / "data"
    admin = ok("account", "create", "--name", "Ada Admin", "--admin", "--data-dir", str(data), "--create")
    user = ok("account", "create", "--name", "Bob User", "--email", "bob@example.org", "--data-dir", str(data))
    project = ok("project", "create", "--account", user["account_id"], "--title", "kept",
                 "--data-dir", str(data))
    project_key = ok("key", "create", "--account", user["account_id"], "--project", project["project_id"],
                     "--data-dir", str(data))
    ok("org", "create", "--name", "lab", "--data-dir", str(data))
    ok("org", "add-user", "--name", "lab", "--user", "bob@example.org", "--data-dir", str(data))
    before = {name: cli(data, name, "list") for name in ("account", "project", "key", "org")}

    copied = ok("store", "migrate", "--data-dir", str(data), "--to", pg_url)
    assert copied["migrated"] is True and copied["rows"]["accounts"] == 2
    assert copied["rows"]["projects"] == 1 and copied["rows"]["api_keys"] == 3
    assert pg_url.split("@")[0].split(":")[-1] not in json.dumps(copied)   # no password
    assert copied["rows"]["organizations"] == 1 and copied["rows"]["organization_members"] == 1
    after = {name: ok(name, "list", "--database-url", pg_url) for name in ("account", "project", "key", "org")}
    assert after == before   # same rows, same ids

    # the sequences moved past the copied ids: a new key gets a new id
    new_key = ok("key", "create", "--account", admin["account_id"], "--database-url", pg_url)
    assert new_key["id"] > project_key["id"]
    # a target that holds a store is refused; --replace copies over it
    line = one_line_error(run("store", "migrate", "--data-dir", str(data), "--to", pg_url))
    assert "already holds a projecthub store" in line and "--replace" in line
    again = ok("store", "migrate", "--data-dir", str(data), "--to", pg_url, "--replace")
    assert again["rows"]["api_keys"] == 3
    assert ok("key", "list", "--database-url", pg_url) == before["key"]

    # keys made before the move still work against a server on the database
    srv = _pg_server(tmp_path / "serve", pg_url)
    (tmp_path / "serve").mkdir()
    srv.start()
    try:
        import cocalc_api
        project_api = cocalc_api.Project(api_key=project_key["api_key"], host=srv.url,
                                         project_id=project["project_id"])
        assert project_api.system.exec(command="echo moved")["stdout"] == "moved\n"
    finally:
        _stop(srv, pg_url)


def test_store_migrate_refuses_bad_targets(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok("account", "create", "--name", "Ada", "--data-dir", str(data), "--create")
    line = one_line_error(run("store", "migrate", "--data-dir", str(data), "--to", f"sqlite:///{tmp_path}/x.db"))
    assert "postgresql://" in line
    url = f"postgresql://hub:hunter2@127.0.0.1:{_free_port()}/projecthub"
    out = run("store", "migrate", "--data-dir", str(data), "--to", url)
    assert "cannot reach the database" in one_line_error(out) and "hunter2" not in out.stderr
    line = one_line_error(run("store", "migrate", "--data-dir", str(tmp_path / "none"), "--to", url))
    assert "no projecthub store" in line


def test_database_lost_while_serving_fails_fast_and_recovers(tmp_path: Path, pg_server: PgServer) -> None:
    import cocalc_api
    pg = PgServer().start()   # a cluster of its own: stopping it disturbs no other test
    url = pg.url()
    srv = _pg_server(tmp_path, url).start()
    try:
        account = ok("account", "create", "--name", "Pg User", "--database-url", url)
        hub = cocalc_api.Hub(api_key=account["api_key"], host=srv.url)
        project_id = hub.projects.create_project(title="survives")
        pg.stop_server()
        time.sleep(2.5)   # past the key cache's TTL: the next call must read the store
        started = time.monotonic()
        with pytest.raises(Exception) as caught:   # the official client raises the server's error
            hub.projects.create_project(title="while the database is down")
        assert "database is unavailable" in str(caught.value)
        native = httpx.get(srv.url + "/api/v3/projects",
                           headers={"Authorization": f"Bearer {account['api_key']}"}, timeout=30)
        assert native.status_code == 503 and "database is unavailable" in native.json()["error"]
        assert time.monotonic() - started < 20
        pg.restart()
        # no hub restart: the pool replaces its dead connections by itself
        project = cocalc_api.Project(api_key=account["api_key"], host=srv.url, project_id=project_id)
        assert project.system.exec(command="echo back")["stdout"] == "back\n"
        assert hub.projects.create_project(title="after")
        log = srv.log()   # answered as above, not as a crash of the request
        assert "Exception in ASGI application" not in log and "unexpected error" not in log
        assert "Traceback" not in log   # the background loops say it in one line too
        assert "store unavailable on /api/v3/projects" in log
    finally:
        try:
            _stop(srv, url)
        finally:
            pg.stop()
