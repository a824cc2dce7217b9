"""idle_timeout_s: parsing, bad input naming the limit, and what counts as raising it."""

from __future__ import annotations

import pytest

from projecthub.host.sandbox import ProjectLimits
from projecthub.hub.service import _raised_limits


def test_default_is_30_minutes_and_values_parse() -> None:
    assert ProjectLimits().idle_timeout_s == 1800
    assert ProjectLimits().to_json()["idle_timeout_s"] == 1800
    for value, seconds in ((5, 5), (2.5, 2.5), ("90", 90), ("30s", 30), ("5m", 300), ("2h", 7200),
                           ("1d", 86400), (0, 0), ("0", 0), (None, 0)):
        assert ProjectLimits.merged(ProjectLimits(), {"idle_timeout_s": value}).idle_timeout_s == seconds


@pytest.mark.parametrize("value, says", [
    (-1, "positive"), ("-5", "positive"), (True, "boolean"), (False, "boolean"), ("soon", "expected"),
    ([], "expected"), ({}, "expected"), (float("nan"), "expected"), (float("inf"), "between"),
    (0.5, "between"), (10**400, "between"), ("1e3", "expected"), ("x" * 10_000, "expected"),
])
def test_invalid_values_name_the_limit(value, says) -> None:
    with pytest.raises(ValueError) as e:
        ProjectLimits.merged(ProjectLimits(), {"idle_timeout_s": value})
    message = str(e.value)
    assert message.startswith("idle_timeout_s:") and says in message and len(message) < 200, message


def test_raising_means_longer_or_never() -> None:
    def raised(now, new):
        return "idle_timeout_s" in _raised_limits(ProjectLimits(idle_timeout_s=now),
                                                  ProjectLimits(idle_timeout_s=new))
    assert not raised(1800, 5) and not raised(1800, 1800) and not raised(0, 60)   # tighter
    assert raised(5, 60) and raised(1800, 0) and not raised(0, 0)                # longer / never
