"""A ProjectContext in tmp_path, tracked by the MarkerTracker (no cgroups needed); a migrated store."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from projecthub.project.context import ProjectContext
from projecthub.project.tracking_fallback import MarkerTracker
from projecthub.store import Store
from tests.pg import PgServer

_TRACKER: MarkerTracker | None = None


def _tracker() -> MarkerTracker:
    # One per test process: becoming a subreaper is a property of the process anyway.
    global _TRACKER
    if _TRACKER is None:
        _TRACKER = MarkerTracker()
    return _TRACKER


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def ctx(tmp_path: Path) -> ProjectContext:
    home = tmp_path / "home"
    home.mkdir()
    project_id = "00000000-0000-4000-8000-000000000001"
    return ProjectContext(
        project_id=project_id, home=home, state_dir=tmp_path / "state",
        tmp_dir=tmp_path / "tmp", tracker=_tracker(),
        base_env=ProjectContext.default_base_env(project_id, home),
    )


@pytest.fixture(scope="session")
def _pg_store_url(pg_server: PgServer) -> str:
    """One migrated store on the session's PostgreSQL, emptied before each test that uses it
    (a fresh schema and its migration cost ~0.2-0.6 s a test; emptying it ~20 ms)."""
    url = pg_server.new_database()
    s = Store(url)
    s.migrate()
    s.close()
    return url


def _empty(url: str) -> None:
    from sqlalchemy import delete, text
    from projecthub.store import LATEST_VERSION
    from projecthub.store.schema import metadata, schema_version
    names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables if t is not schema_version)
    s = Store(url)
    try:
        with s.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
            conn.execute(delete(schema_version).where(schema_version.c.version > LATEST_VERSION))
    finally:
        s.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A migrated, empty store, closed afterwards: SQLite in a fresh data dir, and the same
    tests again on the session's real PostgreSQL (tests/pg.py)."""
    if request.param == "sqlite":
        s = Store.for_data_dir(tmp_path)
    else:
        url = request.getfixturevalue("_pg_store_url")
        _empty(url)
        s = Store(url)
    s.migrate()
    yield s
    s.close()
