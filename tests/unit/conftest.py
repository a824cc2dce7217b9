"""A ProjectContext in tmp_path, tracked by the MarkerTracker (no cgroups needed); a migrated store."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from projecthub.project.context import ProjectContext
from projecthub.project.tracking_fallback import MarkerTracker
from projecthub.store import Store

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


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A migrated store, closed afterwards: SQLite in a fresh data dir, and the same tests
    again on a fresh database of the session's real PostgreSQL (tests/pg.py)."""
    if request.param == "sqlite":
        s = Store.for_data_dir(tmp_path)
    else:
        s = Store(request.getfixturevalue("pg_url"))
    s.migrate()
    yield s
    s.close()
