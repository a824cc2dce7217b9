"""Daemons outlive the hub: a restarted server adopts them instead of starting duplicates."""

from __future__ import annotations

import signal
from pathlib import Path

import cocalc_api
import psutil
import pytest

from tests.server import Server


def assert_clean_stop(server: Server, sig: int) -> None:
    """uvicorn finishes its graceful shutdown, then re-raises the signal for the exit status."""
    code = server.stop(sig)
    assert code in (0, -sig), code
    assert "Application shutdown complete." in server.log()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_restart_reuses_running_daemon(tmp_path: Path, how: int) -> None:
    server = Server(tmp_path).start()
    try:
        account = server.new_account()
        hub = cocalc_api.Hub(api_key=account.api_key, host=server.url)
        project_id = hub.projects.create_project(title="survivor")
        project = cocalc_api.Project(api_key=account.api_key, host=server.url, project_id=project_id)
        project.system.exec(command="echo marker > kept.txt")
        before = hub.projects.status(project_id)
        if how == signal.SIGKILL:
            server.process.kill()
            server.process.wait(10)
        else:
            assert_clean_stop(server, signal.SIGTERM)
        assert psutil.pid_exists(before["project.pid"]), "the daemon must survive the hub"

        server.start()
        after = hub.projects.status(project_id)
        assert after["project.pid"] == before["project.pid"]
        assert after["instance_id"] == before["instance_id"]
        assert hub.projects.state(project_id)["state"] == "running"
        assert project.system.exec(command="cat kept.txt")["stdout"] == "marker\n"
        hub.projects.stop(project_id)
        assert not psutil.pid_exists(before["project.pid"]) or \
            psutil.Process(before["project.pid"]).status() == psutil.STATUS_ZOMBIE
    finally:
        if server.process and server.process.poll() is None:
            server.stop()
        server.cli("stop-all")


def test_sigint_shuts_down_cleanly(tmp_path: Path) -> None:
    server = Server(tmp_path).start()
    assert_clean_stop(server, signal.SIGINT)


def test_first_start_creates_admin_and_prints_key_once(tmp_path: Path) -> None:
    server = Server(tmp_path).start()
    try:
        log = server.log()
        assert "Its API key is shown only this once" in log
        key = next(line.strip() for line in log.splitlines() if line.strip().startswith("sk-"))
        assert cocalc_api.Hub(api_key=key, host=server.url).system.test()["account_id"]
        server.stop()
        server.start()
        assert server.log().count("Its API key is shown only this once") == 1
    finally:
        server.stop()
