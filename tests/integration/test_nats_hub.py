"""End to end over a real nats-server: the official client -> ``projecthub hub --nats`` ->
NATS -> ``projecthub host`` -> the project's daemon.  The hub runs no user code; the host
never opens the database."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from projecthub.fabric.nats_config import HUB_USER
from projecthub.host.ledger import LEDGER_NAME
from tests.integration.test_nats_host import start_host, stop_host
from tests.nats import NatsServer, nats_server  # noqa: F401
from tests.server import Server


@pytest.fixture
def cluster(nats_server: NatsServer, tmp_path: Path) -> Iterator[tuple[Server, subprocess.Popen[str], Path]]:
    host_dir = tmp_path / "h1"
    host = start_host(nats_server, "h1", host_dir)
    hub_dir = tmp_path / "hub"
    hub_dir.mkdir()
    hub = Server(hub_dir, command="hub", extra_args=[
        "--nats", nats_server.url, "--nats-creds", str(nats_server.creds_file(HUB_USER))])
    try:
        hub.start()
        yield hub, host, host_dir
    finally:
        if hub.process is not None:
            hub.stop()
        stop_host(host, host_dir)


def _wait(predicate: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_exec_through_hub_nats_host(cluster: Any) -> None:
    import cocalc_api
    hub, host, host_dir = cluster
    account = hub.new_account()
    api = cocalc_api.Hub(api_key=account.api_key, host=hub.url)
    project_id = api.projects.create_project(title="on h1")
    project = cocalc_api.Project(api_key=account.api_key, host=hub.url, project_id=project_id)
    # the first call may come before the host's first heartbeat reached the hub
    result = _wait(lambda: _try(lambda: project.system.exec(command="echo hi; id -u")), 60)
    out, uid = result["stdout"].split()
    assert out == "hi" and int(uid) > 0 and result["exit_code"] == 0
    # it runs on h1: its home is in the host's data dir, and the host's heartbeat lists it
    assert (host_dir / "projects" / project_id).is_dir()
    assert not (host_dir / "hub.db").exists()   # the host never opened a store
    big = project.system.exec(command="head -c 300000 /dev/zero | tr '\\0' x")
    assert big["stdout"] == "x" * 300000   # over the test server's 64 KiB max_payload: chunked
    api.projects.stop(project_id)   # through the hub, to the host: its daemon goes away
    ledger = json.loads((host_dir / LEDGER_NAME).read_text())
    assert ledger[project_id]["state"] == "stopped"
    assert not (host_dir / "run" / project_id / "host.json").exists()


def _try(fn: Any) -> Any:
    try:
        return fn()
    except Exception:
        return None


def test_a_lost_host_fails_fast_naming_it_and_its_return_readopts(cluster: Any, nats_server: NatsServer) -> None:
    import cocalc_api
    hub, host, host_dir = cluster
    account = hub.new_account()
    api = cocalc_api.Hub(api_key=account.api_key, host=hub.url)
    project_id = api.projects.create_project(title="on h1")
    project = cocalc_api.Project(api_key=account.api_key, host=hub.url, project_id=project_id)
    _wait(lambda: _try(lambda: project.system.exec(command="true")), 60)
    daemon = json.loads((host_dir / "run" / project_id / "host.json").read_text())["pid"]

    host.kill()   # the host process dies; its project's daemon does not
    host.wait(10)
    started = time.monotonic()
    with pytest.raises(Exception, match="host h1"):
        project.system.exec(command="true")
    assert time.monotonic() - started < 6   # within the heartbeat timeout, never a hang
    assert Path(f"/proc/{daemon}").exists()

    again = start_host(nats_server, "h1", host_dir)   # the same host comes back
    try:
        result = _wait(lambda: _try(lambda: project.system.exec(command="echo back")), 60)
        assert result["stdout"] == "back\n"
        # the same daemon, adopted, not a new one
        assert json.loads((host_dir / "run" / project_id / "host.json").read_text())["pid"] == daemon
        admin_key = hub.cli("account", "create", "--name", "Admin", "--admin")["api_key"]
        report = httpx.get(hub.url + "/api/v3/admin/server", headers={"Authorization": f"Bearer {admin_key}"})
        assert report.status_code == 200 and report.json()["isolation"]["hub_only"] is True
    finally:
        stop_host(again, host_dir)
