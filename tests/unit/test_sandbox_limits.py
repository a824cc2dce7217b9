"""ProjectLimits: defaults, overrides, validation errors that name the limit."""

from __future__ import annotations

import pytest

from projecthub.host.sandbox import ProjectLimits


def test_defaults_and_json_round_trip():
    d = ProjectLimits()
    assert d.memory_bytes == 2 * 2**30 and d.pids == 512 and d.network is False
    assert ProjectLimits.from_json(d.to_json()) == d


def test_overrides_apply_and_none_lifts_a_limit():
    d = ProjectLimits(cpu_cores=1.0)
    m = ProjectLimits.merged(d, {"memory_bytes": "512M", "pids": None, "cpu_cores": 1.5, "network": True})
    assert m.memory_bytes == 512 * 2**20 and m.pids is None and m.cpu_cores == 1.5 and m.network
    assert m.tmp_bytes == d.tmp_bytes
    assert ProjectLimits.merged(d, {"tmp_bytes": "1GiB"}).tmp_bytes == 2**30
    assert ProjectLimits.merged(d, {}) == d


@pytest.mark.parametrize("overrides, name", [
    ({"memory": 1}, "memory"),
    ({"memory_bytes": -1}, "memory_bytes"),
    ({"memory_bytes": "lots"}, "memory_bytes"),
    ({"memory_bytes": 1024}, "memory_bytes"),
    ({"pids": 0}, "pids"),
    ({"pids": True}, "pids"),
    ({"pids": 2.5}, "pids"),
    ({"cpu_cores": 0}, "cpu_cores"),
    ({"cpu_cores": "fast"}, "cpu_cores"),
    ({"cpu_cores": float("nan")}, "cpu_cores"),
    ({"cpu_shares": 1}, "cpu_shares"),
    ({"tmp_bytes": 10}, "tmp_bytes"),
    ({"network": "yes"}, "network"),
])
def test_invalid_values_name_the_limit(overrides, name):
    with pytest.raises(ValueError) as e:
        ProjectLimits.merged(ProjectLimits(), overrides)
    assert str(e.value).startswith(name + ":"), str(e.value)


def test_constructor_validates_too():
    with pytest.raises(ValueError, match="^pids:"):
        ProjectLimits(pids=-5)


def test_uid_allocator_is_stable_and_follows_the_caller(tmp_path):
    from projecthub.host.sandbox.users import UidAllocator
    a = UidAllocator(tmp_path, (1000, 1009))
    u = a.uid_for("p1")
    assert 1000 <= u <= 1009 and UidAllocator(tmp_path, (1000, 1009)).uid_for("p1") == u
    assert a.uid_for("p2") != u
    assert a.uid_for("p1", 1005) == 1005 and a.uid_for("p1") == 1005
    with pytest.raises(ValueError, match="^uid:"):
        a.uid_for("p3", 5)
    assert len({a.uid_for(f"q{i}") for i in range(7)} | {1005, a.uid_for("p2")}) == 9
