"""The store on a real PostgreSQL (tests/pg.py) where it differs from SQLite: several hubs
(processes) migrating one empty database at once, several hubs handing out ids, uids and
projects at once, and a database that is unreachable or goes away and comes back.
(Every other store test runs on both backends through the ``store`` fixture.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from projecthub.store import LATEST_VERSION, Store, StoreUnavailable
from projecthub.store.engine import display_url, normalize_url
from projecthub.store.schema import schema_version
from tests.pg import PgServer, _free_port

ROOT = Path(__file__).resolve().parents[2]

_MIGRATE = "import sys; from projecthub.store import Store; print(Store(sys.argv[1]).migrate())"

# One "hub": a process of its own with its own engine and pool, doing what hubs do at once
# on one database: new keys, new projects under one owner's cap, uids for them.
_HAMMER = """
import json, sys
from projecthub.store import AccountLimitReached, Store
url, owner, rounds, cap = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = Store(url)
out = {"keys": [], "projects": [], "uids": [], "refused": 0}
for _ in range(rounds):
    row, _secret = s.create_api_key(owner)
    out["keys"].append(row["id"])
    try:
        pid = s.create_project(owner, max_owned=cap)
    except AccountLimitReached:
        out["refused"] += 1
        continue
    out["projects"].append(pid)
    out["uids"].append(s.allocate_uid(pid, 50_000, 59_999))
s.close()
print(json.dumps(out))
"""


def _run_all(argvs: list[list[str]], timeout: float = 120) -> list[str]:
    procs = [subprocess.Popen([sys.executable, "-c", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for argv in argvs]
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * len(procs), [err[-2000:] for _, err in outputs]
    return [out for out, _ in outputs]


def test_postgresql_urls_mean_psycopg() -> None:
    assert normalize_url("postgresql://u:p@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:////x/hub.db").drivername == "sqlite"
    assert "secret" not in display_url("postgresql://u:secret@h/db")


def test_many_hubs_migrate_one_empty_database_at_once(pg_url: str) -> None:
    outputs = _run_all([[_MIGRATE, pg_url] for _ in range(6)])
    assert [o.strip() for o in outputs] == [str(LATEST_VERSION)] * 6
    s = Store(pg_url)
    with s.engine.connect() as conn:
        versions = list(conn.execute(select(schema_version.c.version).order_by(schema_version.c.version))
                        .scalars())
    assert versions == list(range(1, LATEST_VERSION + 1))   # each step applied exactly once
    assert s.migrate() == LATEST_VERSION
    s.close()


def test_concurrent_hubs_never_hand_out_the_same_id(pg_url: str) -> None:
    s = Store(pg_url)
    s.migrate()
    owner = s.create_account()
    rounds, cap, hubs = 40, 50, 3
    outputs = _run_all([[_HAMMER, pg_url, owner, str(rounds), str(cap)] for _ in range(hubs)])
    results = [json.loads(o) for o in outputs]
    keys = [k for r in results for k in r["keys"]]
    projects = [p for r in results for p in r["projects"]]
    uids = [u for r in results for u in r["uids"]]
    assert len(keys) == rounds * hubs and len(set(keys)) == len(keys)
    # the owner's cap held although three hubs counted and inserted at once
    assert len(projects) == cap and len(set(projects)) == cap
    assert sum(r["refused"] for r in results) == rounds * hubs - cap
    assert sorted(uids) == list(range(50_000, 50_000 + cap))   # unique and gap-free
    assert s.count_owned_projects(owner) == cap
    assert sorted(k["id"] for k in s.list_all_api_keys(owner)) == sorted(keys)
    s.close()


def test_unreachable_database_is_one_clear_error() -> None:
    url = f"postgresql://hub:hunter2@127.0.0.1:{_free_port()}/projecthub"
    s = Store(url)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        s.migrate()
    assert time.monotonic() - started < 10
    assert "unavailable" in str(caught.value) and "hunter2" not in str(caught.value)
    assert "refused" in caught.value.reason.lower() and "\n" not in caught.value.reason
    s.close()


@pytest.mark.slow
def test_lost_database_fails_fast_and_recovers(pg_server: PgServer) -> None:
    # a cluster of its own: stopping the session's would disturb the other tests
    pg = PgServer().start()
    try:
        s = Store(pg.url())
        s.migrate()
        account = s.create_account("Ada")
        pg.stop_server()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            s.get_account(account)
        with pytest.raises(StoreUnavailable):
            s.create_account("Bob")
        assert time.monotonic() - started < 12
        pg.restart()
        # the pooled connections died with the server: pre-ping replaces them, no restart needed
        assert s.get_account(account)["first_name"] == "Ada"
        assert s.get_account(s.create_account("Bob"))["first_name"] == "Bob"
        s.close()
    finally:
        pg.stop()
