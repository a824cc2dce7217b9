"""Store: project lifecycle columns (migration 3): stop reasons, deletion time, purge state."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import inspect

from projecthub.store import Store, migrations, schema


def test_a_fresh_database_has_exactly_the_latest_schema(tmp_path: Path) -> None:
    """Step 1 replays the frozen version-1 tables; later steps bring them to schema.py."""
    store = Store.for_data_dir(tmp_path)
    assert store.migrate() == migrations.LATEST_VERSION >= 3
    insp = inspect(store.engine)
    for table in schema.metadata.sorted_tables:
        assert [c["name"] for c in insp.get_columns(table.name)] == [c.name for c in table.columns]
    store.close()


def test_version_2_database_gains_the_lifecycle_columns(tmp_path: Path, monkeypatch) -> None:
    old = Store.for_data_dir(tmp_path)
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:2])
    monkeypatch.setattr(migrations, "LATEST_VERSION", 2)
    assert old.migrate() == 2
    with old.engine.begin() as conn:   # rows written by the version-2 code: no new columns
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        for pid, deleted in (("00000000-0000-4000-8000-000000000001", True),
                             ("00000000-0000-4000-8000-000000000002", False)):
            conn.exec_driver_sql(
                "INSERT INTO projects (project_id, title, description, created, last_edited, deleted,"
                " state, settings) VALUES (?, '', '', ?, ?, ?, 'stopped', '{}')", (pid, now, now, deleted))
    assert "purged" not in [c["name"] for c in inspect(old.engine).get_columns("projects")]
    monkeypatch.undo()
    before = datetime.now(timezone.utc)
    assert old.migrate() == migrations.LATEST_VERSION
    gone = old.get_project("00000000-0000-4000-8000-000000000001")
    live = old.get_project("00000000-0000-4000-8000-000000000002")
    # a project deleted before the upgrade gets its whole grace period from now
    assert gone["deleted_time"] >= before - timedelta(seconds=1) and gone["purged"] is None
    assert live["deleted_time"] is None and live["state_reason"] is None
    assert [r["project_id"] for r in old.unpurged_deleted_projects()] == [gone["project_id"]]
    old.close()


def test_deletion_time_purge_queue_and_settings(tmp_path: Path) -> None:
    store = Store.for_data_dir(tmp_path)
    store.migrate()
    owner = store.create_account()
    a, b, c = (store.create_project(owner, title=t) for t in "abc")
    store.update_project(c, settings={"limits": {"idle_timeout_s": 5}})
    store.delete_project(a)
    first = store.get_project(a)["deleted_time"]
    assert first is not None
    store.delete_project(a)   # deleting again keeps the first deletion time
    assert store.get_project(a)["deleted_time"] == first
    store.delete_project(b)
    assert [r["project_id"] for r in store.unpurged_deleted_projects()] == [a, b]
    assert store.unpurged_deleted_projects(first - timedelta(seconds=1)) == []
    assert [r["project_id"] for r in store.unpurged_deleted_projects(first)] == [a]
    store.update_project(a, purged=datetime.now(timezone.utc))
    assert [r["project_id"] for r in store.unpurged_deleted_projects()] == [b]
    store.update_project(c, state="stopped", state_reason="idle: no activity for 5 s")
    assert store.get_project(c)["state_reason"] == "idle: no activity for 5 s"
    assert store.project_settings([c, a, "not-a-uuid"]) == {
        c: {"limits": {"idle_timeout_s": 5}}, a: {}}
    store.close()
