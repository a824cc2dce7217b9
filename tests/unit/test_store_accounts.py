"""Store: per-account state (migration 2), project caps counted in the write, string bounds."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import inspect

from projecthub.store import AccountLimitReached, FieldTooLong, Store, migrations
from projecthub.store.bounds import DESCRIPTION_MAX, TITLE_MAX


def test_version_1_database_migrates_to_account_settings(tmp_path: Path, monkeypatch) -> None:
    old = Store.for_data_dir(tmp_path)
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
    monkeypatch.setattr(migrations, "LATEST_VERSION", 1)
    assert old.migrate() == 1
    owner = old.create_account(first_name="Old")
    project = old.create_project(owner, title="before")
    assert "account_settings" not in inspect(old.engine).get_table_names()
    monkeypatch.undo()
    assert old.migrate() == migrations.LATEST_VERSION >= 2
    assert old.get_account_limits(owner) == {}
    old.set_account_limits(owner, {"max_projects": 5})
    assert old.get_account_limits(owner) == {"max_projects": 5}
    assert old.owned_project_ids(owner) == [project]
    old.close()


def test_max_owned_counts_live_owned_projects_only(store: Store) -> None:
    owner, other = store.create_account(), store.create_account()
    first = store.create_project(owner, max_owned=2)
    store.create_project(owner, max_owned=2)
    with pytest.raises(AccountLimitReached) as info:
        store.create_project(owner, max_owned=2)
    assert (info.value.name, info.value.limit) == ("max_projects", 2)
    shared = store.create_project(other)
    store.add_user(shared, owner)               # collaborations do not count
    store.delete_project(first)                 # deleted ones do not count
    store.create_project(owner, max_owned=2)
    scratch = store.create_jupyter_project(owner, "[Jupyter API scratch]")
    assert store.create_jupyter_project(owner, "[Jupyter API scratch]") == scratch   # one per account
    assert store.count_owned_projects(owner) == 2   # the scratch project is not counted
    assert store.project_owner(scratch) == owner
    assert store.get_project(scratch)["users"][owner] == {"group": "owner", "hide": True}
    store.delete_project(scratch)
    assert store.create_jupyter_project(owner, "[Jupyter API scratch]") != scratch


def test_concurrent_creates_cannot_overshoot(store: Store) -> None:
    owner = store.create_account()
    made, refused = [], []

    def create() -> None:
        try:
            made.append(store.create_project(owner, max_owned=5))
        except AccountLimitReached:
            refused.append(1)
    threads = [threading.Thread(target=create) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 5 and len(refused) == 7


def test_string_fields_bounded(store: Store) -> None:
    owner = store.create_account()
    with pytest.raises(FieldTooLong, match=f"title must be at most {TITLE_MAX}"):
        store.create_project(owner, title="x" * (TITLE_MAX + 1))
    with pytest.raises(FieldTooLong, match="description"):
        store.create_project(owner, description="x" * (DESCRIPTION_MAX + 1))
    pid = store.create_project(owner, title="x" * TITLE_MAX)
    with pytest.raises(FieldTooLong, match="title"):
        store.update_project(pid, title="\x00")
    with pytest.raises(FieldTooLong, match="title"):
        store.update_project(pid, title="\ud800")
    with pytest.raises(FieldTooLong, match="first_name"):
        store.create_account(first_name="n" * 255)
    with pytest.raises(FieldTooLong, match="name"):
        store.create_api_key(owner, name="k" * 129)
    assert [p["project_id"] for p in store.list_projects(owner)] == [pid]
