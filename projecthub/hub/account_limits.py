"""Per-account caps: how many projects an account may own, and how many of them may run.

One account once made 198 projects with 166 running daemons (+4.5 GB): nothing stopped it.
Server-wide defaults come from ``projecthub serve --account-limits JSON`` (or
``$PROJECTHUB_ACCOUNT_LIMITS``); the operator overrides them per account with
``projecthub account limits`` (stored in ``account_settings.limits``).  Admins are exempt.

- ``max_projects``: live (not deleted) projects the account owns.  Its Jupyter API
  scratch project does not count (one per account, made by the server).
- ``max_running_projects``: projects the account owns whose daemon runs.  Starting one
  more, by whatever call would start it (start, touch, exec, jupyter, a session, a
  stream, by the owner or by a collaborator), is refused; nothing is stopped to make
  room (the least recently used project may hold the owner's unsaved work).

``null`` means unlimited.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

DEFAULT_MAX_PROJECTS: Final = 100
DEFAULT_MAX_RUNNING_PROJECTS: Final = 10
NAMES: Final = ("max_projects", "max_running_projects")


@dataclass(frozen=True)
class AccountLimits:
    max_projects: int | None = DEFAULT_MAX_PROJECTS
    max_running_projects: int | None = DEFAULT_MAX_RUNNING_PROJECTS

    @staticmethod
    def check(overrides: Any) -> dict[str, int | None]:
        """Validated overrides: known names only, each a non-negative integer or null."""
        if not isinstance(overrides, dict):
            raise ValueError("account limits must be a JSON object")
        out: dict[str, int | None] = {}
        for name, value in overrides.items():
            if name not in NAMES:
                raise ValueError(f"unknown account limit {name!r} (known: {', '.join(NAMES)})")
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 0 <= value <= 10**9):
                raise ValueError(f"{name} must be a non-negative integer or null (unlimited)")
            out[name] = value
        return out

    @classmethod
    def from_json(cls, value: Any) -> "AccountLimits":
        """Server defaults: the built-in ones, with the given fields replaced."""
        return cls(**cls.check(value or {}))

    def merged(self, overrides: Any) -> "AccountLimits":
        return AccountLimits(**{**asdict(self), **self.check(overrides or {})})

    def to_json(self) -> dict[str, int | None]:
        return asdict(self)
