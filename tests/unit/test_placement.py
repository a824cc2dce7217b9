"""Placement of new projects (hub/placement.py) and the store's side of it: assigned
projects counted in the write transaction, host state up/down (migration 6)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import inspect

from projecthub.hub import placement
from projecthub.store import Store, migrations

GIB = 1 << 30


def _host(cpus: int, memory_gib: float) -> dict[str, object]:
    return {"capacity": {"cpus": cpus, "memory_bytes": int(memory_gib * GIB)}}


def test_weight_is_the_smaller_of_cpu_and_memory_allowances() -> None:
    assert placement.weight(_host(2, 64)) == 8          # 4 projects a CPU
    assert placement.weight(_host(16, 2)) == 2          # 1 GiB a project
    assert placement.weight({}) == 4                    # nothing reported: one CPU
    assert placement.weight({"capacity": {"cpus": "x", "memory_bytes": -1}}) == 4


def test_equal_hosts_fill_evenly_counting_assigned_projects() -> None:
    weights = {"h1": 8.0, "h2": 8.0}
    assigned = {"h1": 0, "h2": 0}
    for _ in range(10):
        assigned[placement.choose(weights, assigned)] += 1
    assert assigned == {"h1": 5, "h2": 5}


def test_a_bigger_host_takes_its_share() -> None:
    weights = {"big": 16.0, "small": 4.0}
    assigned = {"big": 0, "small": 0}
    for _ in range(20):
        assigned[placement.choose(weights, assigned)] += 1
    assert assigned == {"big": 16, "small": 4}


def test_choose_needs_a_host() -> None:
    with pytest.raises(ValueError):
        placement.choose({}, {})


def _projects(store: Store, n: int) -> list[str]:
    owner = store.create_account("P", "Q")
    return [store.create_project(owner, title=f"p{i}") for i in range(n)]


def test_assign_host_counts_assigned_projects_and_keeps_a_placement(store: Store) -> None:
    weights = {"h1": 8.0, "h2": 8.0}
    ids = _projects(store, 6)
    names = [store.assign_host(p, lambda a: placement.choose(weights, a)) for p in ids]
    assert sorted(names) == ["h1"] * 3 + ["h2"] * 3
    # placed once: a later call returns the same host whatever the chooser says
    assert store.assign_host(ids[0], lambda a: "elsewhere") == names[0]
    hosts = {h["name"]: h["host_id"] for h in store.list_hosts()}
    assert set(hosts) == {"h1", "h2"}
    assert store.host_project_counts() == {hosts["h1"]: 3, hosts["h2"]: 3}
    # deleted projects do not count
    store.update_project(ids[0], deleted=True)
    assert sum(store.host_project_counts().values()) == 5
    with pytest.raises(KeyError):
        store.assign_host("00000000-0000-4000-8000-000000000000", lambda a: "h1")


def test_assign_host_from_many_threads_spreads_evenly(store: Store) -> None:
    """Hubs placing at the same moment: the count and the write are one transaction."""
    weights = {"h1": 8.0, "h2": 8.0}
    ids = _projects(store, 10)
    barrier = threading.Barrier(len(ids))
    errors: list[BaseException] = []

    def place(project_id: str) -> None:
        barrier.wait()
        try:
            store.assign_host(project_id, lambda a: placement.choose(weights, a))
        except BaseException as exc:   # asserted below
            errors.append(exc)
    threads = [threading.Thread(target=place, args=(p,)) for p in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(store.host_project_counts().values()) == [5, 5]


def test_touch_host_records_state_and_last_seen(store: Store) -> None:
    host_id = store.ensure_host("h1", address="nats")
    assert store.list_hosts()[0]["state"] is None
    store.touch_host(host_id, "up")
    up = store.list_hosts()[0]
    assert up["state"] == "up" and up["last_seen"] is not None
    store.touch_host(host_id, "down")
    down = store.list_hosts()[0]
    assert down["state"] == "down" and down["last_seen"] == up["last_seen"]   # when last heard


def test_migration_6_adds_host_state_to_an_existing_store(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A version-5 store (hosts without state) keeps its hosts and gains the column."""
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:5])
    monkeypatch.setattr(migrations, "LATEST_VERSION", 5)
    s = Store.for_data_dir(tmp_path)
    assert s.migrate() == 5
    with s.engine.begin() as conn:
        assert "state" not in {c["name"] for c in inspect(conn).get_columns("hosts")}
        conn.exec_driver_sql("INSERT INTO hosts (name, address, created) VALUES ('old', '', '2026-01-01')")
    monkeypatch.undo()
    assert s.migrate() == migrations.LATEST_VERSION
    assert [(h["name"], h["state"]) for h in s.list_hosts()] == [("old", None)]
    s.close()
