"""Store: the revocation counter shared by every process on one SQLite store, key rotation,
the operator's key listing."""

from __future__ import annotations

import os
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from projecthub.auth.keys import key_row_id
from projecthub.store import Store
from projecthub.store.revocations import RevocationCounter, counter_path


def test_counter_file_beside_the_database() -> None:
    assert counter_path("sqlite:////srv/d/hub.db") == Path("/srv/d/hub.db.revocations")
    assert counter_path("sqlite://") is None
    assert counter_path("sqlite:///:memory:") is None
    assert counter_path("postgresql://u@h/db") is None
    assert RevocationCounter(None).value() == 0
    RevocationCounter(None).bump()   # nothing to count into: a no-op


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)   # the counter is a file beside SQLite
def test_every_access_removing_change_is_counted(store: Store, tmp_path: Path) -> None:
    owner, member = store.create_account(), store.create_account()
    project = store.create_project(owner)
    store.add_user(project, member)
    row, _ = store.create_api_key(member)
    other, _ = store.create_api_key(member)
    seen = store.revocation_count()
    path = tmp_path / "hub.db.revocations"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_size == 8

    def counted(change) -> None:
        nonlocal seen
        change()
        assert store.revocation_count() > seen, change
        seen = store.revocation_count()

    counted(lambda: store.delete_api_key(row["id"]))
    counted(lambda: store.rotate_api_key(other["id"]))
    counted(lambda: store.edit_api_key(store.list_all_api_keys(member)[0]["id"], name="n"))
    counted(lambda: store.set_disabled(member, True))
    counted(lambda: store.set_disabled(member, False))
    counted(lambda: store.set_admin(owner, True))
    counted(lambda: store.remove_user(project, member))
    # nothing taken away: not counted (creating keys, a no-op delete)
    store.create_api_key(owner)
    store.delete_api_key(10**6)
    assert store.revocation_count() == seen


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)   # the counter is a file beside SQLite
def test_other_process_bump_is_seen_through_the_mapping(store: Store) -> None:
    before = store.revocation_count()
    pid = os.fork()
    if pid == 0:   # another process with its own Store on the same file
        try:
            Store(store.url).revocations.bump()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert store.revocation_count() == before + 1


def test_rotate_keeps_account_project_name_expiry(store: Store) -> None:
    account = store.create_account()
    project = store.create_project(account)
    expire = datetime.now(timezone.utc) + timedelta(days=3)
    row, secret = store.create_api_key(account, project_id=project, name="ci", expire=expire)
    new, new_secret = store.rotate_api_key(row["id"])
    assert new["id"] != row["id"] and key_row_id(new_secret) == new["id"] and new_secret != secret
    assert (new["account_id"], new["project_id"], new["name"]) == (account, project, "ci")
    assert abs((new["expire"] - expire).total_seconds()) < 1
    assert store.get_api_key(row["id"]) is None
    assert "hash" not in new
    later, _ = store.rotate_api_key(new["id"], expire=None)
    assert later["expire"] is None
    with pytest.raises(ValueError, match="no api key with id"):
        store.rotate_api_key(row["id"])


def test_list_all_api_keys(store: Store) -> None:
    a, b = store.create_account(), store.create_account()
    project = store.create_project(b)
    ka, _ = store.create_api_key(a)
    kb, _ = store.create_api_key(b)
    kp, _ = store.create_api_key(b, project_id=project)
    assert [k["id"] for k in store.list_all_api_keys()] == [ka["id"], kb["id"], kp["id"]]
    assert [k["id"] for k in store.list_all_api_keys(b)] == [kb["id"], kp["id"]]
    assert [k["id"] for k in store.list_all_api_keys(project_id=project)] == [kp["id"]]
    assert all("hash" not in k for k in store.list_all_api_keys())


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)   # the counter is a file beside SQLite
def test_own_changes_are_not_taken_for_another_process(store: Store) -> None:
    start = store.revocation_count()
    account = store.create_account()
    row, _ = store.create_api_key(account)
    store.delete_api_key(row["id"])
    assert store.revocation_count() == start + 1
    assert store.revoked_elsewhere(start, start + 1) is False   # this process's own
    other = Store(store.url)
    other.set_disabled(account, True)   # another process (its own Store, same file)
    now = store.revocation_count()
    assert now == start + 2
    assert store.revoked_elsewhere(start + 1, now) is True
    store.set_disabled(account, False)
    assert store.revoked_elsewhere(now, now + 1) is False
    # (each check forgets the own steps it covered: one reader, moving forward)
    store.set_disabled(account, True)
    assert store.revoked_elsewhere(start, store.revocation_count()) is True   # a foreign step inside
    assert store.revoked_elsewhere(now + 1, now) is True   # went backwards: never trust it


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)   # the counter is a file beside SQLite
def test_a_user_deleting_keys_does_not_flush_everyone(store: Store) -> None:
    """Deletes made through the server drop only that key (the server calls invalidate_key);
    other keys stay cached (no store read on their next request)."""
    from projecthub.auth.resolve import KeyResolver
    resolver = KeyResolver(store, cache_ttl=60, touch_interval=3600)
    account = store.create_account()
    _, kept = store.create_api_key(account)
    assert resolver.resolve(kept) is not None and resolver.peek(kept) is not None
    for _ in range(5):
        row, _ = store.create_api_key(account)
        store.delete_api_key(row["id"])
        resolver.invalidate_key(row["id"])
    assert resolver.peek(kept) is not None
    Store(store.url).delete_api_key(10**6)   # a no-op elsewhere: nothing counted
    assert resolver.peek(kept) is not None
    row, _ = store.create_api_key(account)
    Store(store.url).delete_api_key(row["id"])   # elsewhere: everything dropped
    assert resolver.peek(kept) is None and resolver.resolve(kept) is not None
