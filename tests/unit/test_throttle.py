"""The bad-key throttle's arithmetic (auth/throttle.py), on a hand-moved clock."""

from __future__ import annotations

from projecthub.auth import throttle as throttle_mod
from projecthub.auth.throttle import BadKeyThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_allowance_then_doubling_then_cap() -> None:
    clock = Clock()
    t = BadKeyThrottle(30, clock=clock)
    for _ in range(30):
        t.record_failure("a")
        assert t.penalty("a") == 0.0
    delays = []
    for _ in range(8):
        t.record_failure("a")
        delays.append(t.penalty("a"))
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert t.penalty("b") == 0.0   # per address


def test_failures_age_out_after_a_minute() -> None:
    clock = Clock()
    t = BadKeyThrottle(2, clock=clock)
    for _ in range(5):
        t.record_failure("a")
    assert t.penalty("a") > 0
    clock.now += 61
    assert t.penalty("a") == 0.0


def test_memory_is_bounded_under_an_address_spray(monkeypatch) -> None:
    monkeypatch.setattr(throttle_mod, "MAX_TRACKED", 100)
    t = BadKeyThrottle(1, clock=Clock())
    for i in range(1000):
        t.record_failure(f"10.0.{i // 250}.{i % 250}")
    assert len(t._failures) <= 100
    for _ in range(1000):
        t.record_failure("one")
    assert len(t._failures["one"]) <= 1 + 64
