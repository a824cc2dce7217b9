"""Shared fixtures: one real server per test session, fresh accounts per test."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.pg import PgServer
from tests.server import Account, Server, ensure_project_env

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_sessionstart(session: pytest.Session) -> None:
    # the project environment every test server mounts (numpy, ipykernel...): once per checkout
    ensure_project_env()


def require(capability: str, available: bool) -> None:
    """Skip locally when a capability is missing; under CI=true that is a failure."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"required capability missing under CI=true: {capability}")
    pytest.skip(f"missing capability: {capability}")


def have_bwrap() -> bool:
    if shutil.which("bwrap") is None:
        return False
    return subprocess.run(["bwrap", "--ro-bind", "/", "/", "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL for the session (tests/pg.py), stopped at the end, also on failure."""
    ok, what = PgServer.available()
    require(what, ok)
    pg = PgServer().start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL, dropped afterwards."""
    url = pg_server.new_database()
    yield url
    pg_server.drop_database(url)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("hub")
    srv = Server(data_dir).start()
    yield srv
    srv.stop()
    _stop_all_projects(srv)


def _stop_all_projects(srv: Server) -> None:
    """Daemons outlive the hub by design: the suite stops them explicitly."""
    srv.cli("stop-all")


@pytest.fixture
def account(server: Server) -> Account:
    return server.new_account()


@pytest.fixture
def hub(server: Server, account: Account):
    import cocalc_api
    return cocalc_api.Hub(api_key=account.api_key, host=server.url)


@pytest.fixture
def project_id(hub) -> str:
    return hub.projects.create_project(title="test project")


@pytest.fixture
def project(server: Server, account: Account, project_id: str):
    import cocalc_api
    return cocalc_api.Project(api_key=account.api_key, host=server.url, project_id=project_id)


def data_dir_of(server: Server) -> Path:
    return server.data_dir
