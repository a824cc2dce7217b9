"""The registry store on real SQLite files."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text

from projecthub.auth.keys import verify_secret
from projecthub.store import LATEST_VERSION, SchemaTooNewError, Store, UidRangeExhausted
from projecthub.store.schema import schema_version

UTC = timezone.utc


# -- engine and migrations ------------------------------------------------------


def test_for_data_dir_uses_hub_db_and_pragmas(tmp_path: Path) -> None:
    s = Store.for_data_dir(tmp_path / "data")
    s.migrate()
    assert (tmp_path / "data" / "hub.db").exists()
    with s.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    s.close()


def test_migrate_is_idempotent(tmp_path: Path) -> None:
    s = Store.for_data_dir(tmp_path)
    assert s.migrate() == LATEST_VERSION
    account = s.create_account("A", "B")
    assert s.migrate() == LATEST_VERSION
    assert s.get_account(account) is not None
    with s.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema_version)).scalar() == LATEST_VERSION
    s.close()


def test_concurrent_migrate_two_stores_one_file(tmp_path: Path) -> None:
    stores = [Store.for_data_dir(tmp_path) for _ in range(2)]
    barrier = threading.Barrier(len(stores))
    results: list[object] = []

    def run(s: Store) -> None:
        barrier.wait()
        try:
            results.append(s.migrate())
        except Exception as exc:  # recorded, asserted below
            results.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [LATEST_VERSION, LATEST_VERSION]
    with stores[0].engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema_version)).scalar() == LATEST_VERSION
    for s in stores:
        s.close()


def test_concurrent_migrate_separate_processes(tmp_path: Path) -> None:
    code = (
        "import sys; from projecthub.store import Store; "
        "s = Store.for_data_dir(sys.argv[1]); print(s.migrate())"
    )
    root = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    assert [out.strip() for out, _ in outputs] == [str(LATEST_VERSION)] * 4
    s = Store.for_data_dir(tmp_path)
    assert s.migrate() == LATEST_VERSION
    s.close()


def test_migrate_refuses_a_newer_schema(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(insert(schema_version).values(version=LATEST_VERSION + 1, applied=datetime.now(UTC)))
    with pytest.raises(SchemaTooNewError):
        store.migrate()


def test_writes_are_visible_to_another_store(tmp_path: Path, store: Store) -> None:
    account = store.create_account("Ada", "Lovelace")
    other = Store(store.url)
    assert other.get_account(account)["first_name"] == "Ada"
    other.close()


# -- accounts and names ---------------------------------------------------------


def test_accounts(store: Store) -> None:
    a = store.create_account("Ada", "Lovelace", email="Ada@Example.org ", is_admin=True)
    b = store.create_account()
    row = store.get_account(a)
    assert row is not None
    assert row["email"] == "ada@example.org"
    assert row["is_admin"] is True and row["banned"] is False
    assert row["created"].tzinfo == UTC
    assert store.count_accounts() == 2
    assert [r["account_id"] for r in store.list_accounts()] == [a, b]
    assert store.get_account_by_email("ADA@example.org")["account_id"] == a
    store.set_banned(a, True)
    assert store.get_account(a)["banned"] is True
    with pytest.raises(ValueError):
        store.create_account(email="ada@example.org")
    with pytest.raises(ValueError):
        store.set_banned("00000000-0000-0000-0000-000000000000", True)
    assert store.get_account("not-a-uuid") is None
    assert store.get_account("00000000-0000-0000-0000-000000000000") is None


def test_get_names_edge_cases(store: Store) -> None:
    full = store.create_account("Ada", "Lovelace")
    empty = store.create_account("", "")
    half = store.create_account("Grace", "")
    missing = "00000000-0000-0000-0000-000000000000"
    names = store.get_names([full, empty, half, missing, "garbage", "", full, 7])  # type: ignore[list-item]
    assert names == {
        full: {"first_name": "Ada", "last_name": "Lovelace"},
        empty: {"first_name": "No", "last_name": "Name"},
        half: {"first_name": "Grace", "last_name": "Name"},
        missing: {"first_name": "Deleted", "last_name": "User"},
        "garbage": {"first_name": "Deleted", "last_name": "User"},
        "": {"first_name": "Deleted", "last_name": "User"},
    }
    assert store.get_names([]) == {}


def test_get_names_many_ids(store: Store) -> None:
    ids = [store.create_account(f"n{i}", "x") for i in range(3)]
    unknown = [f"00000000-0000-0000-0000-{i:012d}" for i in range(1200)]  # > one IN chunk
    names = store.get_names(unknown + ids)
    assert len(names) == 1203
    assert names[ids[2]] == {"first_name": "n2", "last_name": "x"}


# -- projects and collaborators ---------------------------------------------------


def test_create_get_update_delete_project(store: Store) -> None:
    owner = store.create_account("O", "W")
    pid = store.create_project(owner, "Title", "Desc", settings={"memory_mb": 512})
    project = store.get_project(pid)
    assert project is not None
    assert project["title"] == "Title" and project["description"] == "Desc"
    assert project["settings"] == {"memory_mb": 512}
    assert project["state"] == "stopped" and project["deleted"] is False
    assert project["uid"] is None and project["host_id"] is None
    assert project["users"] == {owner: {"group": "owner"}}
    assert project["created"].tzinfo == UTC

    host = store.ensure_host("local")
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    store.update_project(pid, title="New", state="running", state_time=when, host_id=host,
                         settings={"cpu": 2})
    project = store.get_project(pid)
    assert project["title"] == "New" and project["state"] == "running"
    assert project["state_time"] == when and project["state_time"].tzinfo == UTC
    assert project["host_id"] == host and project["settings"] == {"cpu": 2}

    store.delete_project(pid)
    assert store.get_project(pid)["deleted"] is True

    with pytest.raises(ValueError):
        store.update_project(pid, owner="x")
    with pytest.raises(ValueError):
        store.update_project("00000000-0000-0000-0000-000000000000", title="x")
    with pytest.raises(ValueError):
        store.create_project("00000000-0000-0000-0000-000000000000")
    assert store.get_project("nope") is None


def test_naive_datetimes_are_taken_as_utc(store: Store) -> None:
    owner = store.create_account()
    pid = store.create_project(owner)
    store.update_project(pid, last_edited=datetime(2031, 5, 6, 7, 8, 9))
    assert store.get_project(pid)["last_edited"] == datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


def test_users_groups(store: Store) -> None:
    owner = store.create_account()
    other = store.create_account()
    stranger = store.create_account()
    pid = store.create_project(owner)
    assert store.get_user_group(pid, owner) == "owner"
    assert store.get_user_group(pid, other) is None
    assert not store.is_collaborator(pid, other)

    store.add_user(pid, other)
    store.add_user(pid, other)  # no-op
    assert store.get_user_group(pid, other) == "collaborator"
    assert store.is_collaborator(pid, other) and store.is_collaborator(pid, owner)
    assert not store.is_collaborator(pid, stranger)
    assert not store.is_collaborator(pid, "garbage")

    store.add_user(pid, owner, "collaborator")  # never demotes
    assert store.get_user_group(pid, owner) == "owner"

    store.set_user_hide(pid, other, True)
    assert store.get_project(pid)["users"][other] == {"group": "collaborator", "hide": True}

    with pytest.raises(ValueError, match="cannot remove an owner"):
        store.remove_user(pid, owner)
    store.remove_user(pid, other)
    store.remove_user(pid, other)  # already gone: no-op
    assert not store.is_collaborator(pid, other)

    with pytest.raises(ValueError):
        store.add_user(pid, other, "admin")
    with pytest.raises(ValueError):
        store.add_user(pid, "00000000-0000-0000-0000-000000000000")


def test_list_projects_recent_and_all(store: Store) -> None:
    me = store.create_account()
    someone = store.create_account()
    now = datetime.now(UTC)
    ages = {"fresh": 1, "week": 7, "month": 30, "old": 60, "ancient": 400}
    ids = {}
    for title, days in ages.items():
        pid = store.create_project(me, title)
        store.update_project(pid, last_edited=now - timedelta(days=days))
        ids[title] = pid
    shared = store.create_project(someone, "shared")
    store.update_project(shared, last_edited=now - timedelta(days=3))
    store.add_user(shared, me)
    store.create_project(someone, "not mine")

    recent = [p["title"] for p in store.list_projects(me)]
    assert recent == ["fresh", "shared", "week", "month"]
    everything = [p["title"] for p in store.list_projects(me, recent_days=None, limit=None)]
    assert everything == ["fresh", "shared", "week", "month", "old", "ancient"]
    assert [p["title"] for p in store.list_projects(me, recent_days=None, limit=2)] == ["fresh", "shared"]
    assert [p["title"] for p in store.list_projects(me, recent_days=10)] == ["fresh", "shared", "week"]

    one = store.list_projects(me, recent_days=None, project_id=ids["old"])
    assert [p["project_id"] for p in one] == [ids["old"]]
    assert one[0]["users"] == {me: {"group": "owner"}}
    assert store.list_projects(someone, project_id=ids["old"]) == []
    assert store.list_projects("garbage") == []

    assert {p["title"] for p in store.list_all_projects()} == set(ages) | {"shared", "not mine"}


def test_allocate_uid_stable_lowest_free_and_exhausted(store: Store) -> None:
    owner = store.create_account()
    p1, p2, p3, p4 = (store.create_project(owner) for _ in range(4))
    assert store.allocate_uid(p1, 2000, 2002) == 2000
    assert store.allocate_uid(p1, 2000, 2002) == 2000  # stable
    assert store.allocate_uid(p2, 2000, 2002) == 2001
    assert store.allocate_uid(p3, 2000, 2002) == 2002
    with pytest.raises(UidRangeExhausted):
        store.allocate_uid(p4, 2000, 2002)
    store.update_project(p2, uid=None)  # release
    assert store.allocate_uid(p4, 2000, 2002) == 2001
    assert store.get_project(p4)["uid"] == 2001
    with pytest.raises(ValueError):
        store.update_project(p2, uid=2000)  # unique
    with pytest.raises(ValueError):
        store.allocate_uid("00000000-0000-0000-0000-000000000000", 1, 2)


def test_allocate_uid_unique_under_concurrency(tmp_path: Path, store: Store) -> None:
    owner = store.create_account()
    pids = [store.create_project(owner) for _ in range(16)]
    stores = [Store(store.url) for _ in range(4)]
    got: dict[str, int] = {}
    lock = threading.Lock()

    def work(s: Store, mine: list[str]) -> None:
        for pid in mine:
            uid = s.allocate_uid(pid, 10_000, 10_999)
            with lock:
                got[pid] = uid

    threads = [threading.Thread(target=work, args=(s, pids[i::4])) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got.values()) == list(range(10_000, 10_016))
    for s in stores:
        s.close()


# -- api keys -------------------------------------------------------------------


def test_create_and_read_api_keys(store: Store) -> None:
    owner = store.create_account()
    pid = store.create_project(owner)
    expire = datetime.now(UTC) + timedelta(days=1)
    row, secret = store.create_api_key(owner, name="laptop", expire=expire)
    assert set(row) == {"id", "account_id", "project_id", "name", "trunc", "created", "expire",
                        "last_active"}
    assert row["id"] >= 1 and row["name"] == "laptop" and row["project_id"] is None
    assert row["trunc"] == secret[:3] + "..." + secret[-6:]
    assert row["expire"] == expire and row["last_active"] is None
    stored = store.get_api_key(row["id"])
    assert stored is not None and len(stored["hash"]) == 170  # sha512$salt$1$digest (auth/keys.py)
    assert verify_secret(secret, stored["hash"])
    assert secret not in str(stored)

    prow, _ = store.create_api_key(owner, project_id=pid, name="ci")
    assert prow["id"] > row["id"]
    assert [k["id"] for k in store.list_api_keys(owner)] == [row["id"]]
    assert [k["id"] for k in store.list_api_keys(owner, project_id=pid)] == [prow["id"]]
    assert all("hash" not in k for k in store.list_api_keys(owner))

    with pytest.raises(ValueError):
        store.create_api_key(owner, name="x" * 129)
    with pytest.raises(ValueError):
        store.create_api_key(owner, project_id="00000000-0000-0000-0000-000000000000")
    with pytest.raises(ValueError):
        store.create_api_key("00000000-0000-0000-0000-000000000000")


def test_project_keys_listed_for_any_collaborator(store: Store) -> None:
    owner = store.create_account()
    collab = store.create_account()
    pid = store.create_project(owner)
    store.add_user(pid, collab)
    a, _ = store.create_api_key(owner, project_id=pid)
    b, _ = store.create_api_key(collab, project_id=pid)
    assert [k["id"] for k in store.list_api_keys(collab, project_id=pid)] == [a["id"], b["id"]]


def test_edit_touch_delete_api_key(store: Store) -> None:
    owner = store.create_account()
    row, _ = store.create_api_key(owner, name="a")
    key_id = row["id"]
    when = datetime(2030, 1, 1, tzinfo=UTC)
    store.edit_api_key(key_id, name="b")
    store.edit_api_key(key_id, expire=when)
    assert (store.get_api_key(key_id)["name"], store.get_api_key(key_id)["expire"]) == ("b", when)
    store.edit_api_key(key_id, name="c")  # expire left out: unchanged
    assert store.get_api_key(key_id)["expire"] == when
    store.edit_api_key(key_id, expire=None)  # never expires
    assert store.get_api_key(key_id)["expire"] is None
    with pytest.raises(ValueError, match="no api key with id 9999"):
        store.edit_api_key(9999, name="x")

    store.touch_api_key(key_id, when)
    assert store.get_api_key(key_id)["last_active"] == when

    assert store.delete_api_key(key_id) is True
    assert store.delete_api_key(key_id) is False
    assert store.get_api_key(key_id) is None
    # AUTOINCREMENT: a deleted id is never handed out again (ids live inside secrets).
    assert store.create_api_key(owner)[0]["id"] == key_id + 1


def test_api_key_limit(store: Store) -> None:
    owner = store.create_account()
    store.api_key_limit = 3
    for _ in range(3):
        store.create_api_key(owner)
    with pytest.raises(ValueError) as info:
        store.create_api_key(owner)
    assert str(info.value) == "There is a limit of 3 per account; please delete some api keys."
    store.create_api_key(store.create_account())  # per account


def test_default_api_key_limit_message() -> None:
    s = Store("sqlite://")  # in-memory: only the attribute is needed
    assert s.api_key_limit == 100_000
    s.close()


# -- hosts and settings -----------------------------------------------------------


def test_hosts(store: Store) -> None:
    h = store.ensure_host("alpha", "10.0.0.1")
    assert store.ensure_host("alpha") == h
    assert store.list_hosts()[0]["address"] == "10.0.0.1"
    assert store.ensure_host("alpha", "10.0.0.2") == h
    h2 = store.ensure_host("beta")
    assert h2 != h
    before = store.list_hosts()[0]["last_seen"]
    store.touch_host(h)
    hosts = store.list_hosts()
    assert [x["name"] for x in hosts] == ["alpha", "beta"]
    assert hosts[0]["address"] == "10.0.0.2" and hosts[0]["last_seen"] >= before


def test_settings(store: Store) -> None:
    assert store.get_setting("missing") is None
    assert store.get_setting("missing", 5) == 5
    store.set_setting("limits", {"memory_mb": 1024, "list": [1, 2]})
    assert store.get_setting("limits") == {"memory_mb": 1024, "list": [1, 2]}
    store.set_setting("limits", "replaced")
    assert store.get_setting("limits") == "replaced"
    store.set_setting("flag", False)
    assert store.get_setting("flag", True) is False


def test_foreign_keys_enforced(store: Store) -> None:
    with pytest.raises(Exception):
        with store.engine.begin() as conn:
            conn.execute(
                text("INSERT INTO project_users (project_id, account_id, \"group\", hide) "
                     "VALUES ('x', 'y', 'owner', 0)")
            )


def test_spare_projects_are_invisible_until_claimed(store: Store) -> None:
    owner = store.create_account(first_name="O", last_name="W")
    spare = store.create_spare_project()
    assert store.list_spare_projects() == [spare]
    assert store.get_project(spare) is None                   # nobody's project yet
    assert store.list_projects(owner) == []
    uid = store.allocate_uid(spare, 1000, 1010)                # the host gives it a uid
    with pytest.raises(ValueError):
        store.claim_spare(spare, "00000000-0000-4000-8000-000000000000")   # no such account
    assert store.list_spare_projects() == [spare]              # a failed claim changes nothing
    assert store.claim_spare(spare, owner, title="mine", description="d") is True
    project = store.get_project(spare)
    assert project is not None and project["title"] == "mine" and project["state"] == "stopped"
    assert project["users"] == {owner: {"group": "owner"}} and project["uid"] == uid
    assert store.claim_spare(spare, owner) is False            # only once
    store.discard_spare(spare)                                 # never deletes a claimed project
    assert store.get_project(spare) is not None
    other = store.create_spare_project()
    store.discard_spare(other)
    assert store.list_spare_projects() == []
