"""Per-project resource limits: server defaults, per-project overrides, validation.

``None`` means "not enforced" for every numeric limit.  Validation errors are
``ValueError`` whose message starts with the limit's name, so an API layer can
hand them to the user unchanged.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}

# Lower bounds below which a project cannot even start its daemon (python + bwrap).
_MIN_MEMORY = 32 * 2**20
_MIN_PIDS = 8
# Upper bounds the kernel accepts: a larger value is refused here with a clear message
# instead of failing the project's start with EINVAL from the cgroup file.
_MAX_PIDS = 4_194_304 - 128         # PID_MAX_LIMIT, less the daemon's headroom (PIDS_HEADROOM)
_MAX_BYTES = 2**50                  # 1 PiB: far above any machine, below page_counter's max
_MIN_TMP = 1 * 2**20
# disk_bytes: ext4 needs a few MiB of metadata; the upper bound is ext4's file size limit
# for the sparse image (4 KiB blocks), so a typo fails here and not inside mkfs.
_MIN_DISK = 16 * 2**20
_MAX_DISK = 16 * 2**40 - 2**30
_MAX_CPU_CORES = 4096.0
_CPU_SHARES_RANGE = (2, 262144)  # kernel bounds for cpu.shares
_MAX_IDLE_S = 366 * 86400          # idle_timeout_s: a year; 0 (never) is the way to say "more"
_DURATION_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass
class ProjectLimits:
    memory_bytes: int | None = 2 * 2**30
    pids: int | None = 512
    cpu_cores: float | None = None      # CFS quota, e.g. 1.5 cores
    cpu_shares: int | None = 1024       # relative weight (v2: mapped to cpu.weight)
    tmp_bytes: int | None = 512 * 2**20
    network: bool = False               # False = own netns with loopback only (no egress)
    # home + daemon state + run dir, in a sparse per-project ext4 image (disk.py); None =
    # not enforced (a project that already has an image keeps it at its current size)
    # 2 GiB: hubs never overcommit the data disk (disk.py), so the default decides how many
    # projects run at once (~35 on 80 GiB free); raise it per project or by --default-limits.
    disk_bytes: int | None = 2 * 2**30
    # Seconds without API activity after which the hub stops the project (hub/lifecycle.py);
    # 0 = never.  Running async jobs and open Jupyter sessions count as activity.
    idle_timeout_s: int | float = 1800

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for f in fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name)))

    @classmethod
    def merged(cls, defaults: "ProjectLimits", overrides: dict[str, Any] | None) -> "ProjectLimits":
        """``defaults`` with ``overrides`` applied; an override of ``None`` lifts the limit."""
        values = defaults.to_json()
        known = set(values)
        for key, value in (overrides or {}).items():
            if key not in known:
                raise ValueError(f"{key}: unknown limit (known: {', '.join(sorted(known))})")
            values[key] = value
        return cls(**values)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ProjectLimits":
        return cls.merged(cls(), data)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_size(name: str, value: Any) -> int:
    """Bytes from an int or a string like ``512M`` / ``2GiB`` (binary units)."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a size in bytes, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise ValueError(f"{name}: expected a size in bytes like 536870912 or '512M', got {value!r}")


def parse_duration(name: str, value: Any, *, max_s: float, min_s: float = 0.0,
                   zero: str = "never") -> int | float:
    """Seconds from a number or a string like ``90``, ``30s``, ``5m``, ``2h``, ``7d``.  0 is
    always accepted (it means ``zero`` to the caller).  Whole seconds come back as ``int``."""
    try:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    except ValueError:   # an int too long to print (sys.int_info.str_digits_check_threshold)
        shown = "a number too large to print"
    expected = f"{name}: expected a number of seconds like 1800 or '30m' (0 = {zero}), got"
    if isinstance(value, bool):
        raise ValueError(f"{expected} a boolean")
    seconds: float | None = None
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:   # an int beyond float range: surely out of range
            seconds = math.inf if value > 0 else -math.inf
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            seconds = float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "").lower()]
    if seconds is None or math.isnan(seconds):
        raise ValueError(f"{expected} {shown}")
    if seconds < 0:
        raise ValueError(f"{name}: must be 0 ({zero}) or a positive number of seconds, got {shown}")
    if seconds != 0 and not min_s <= seconds <= max_s:
        raise ValueError(f"{name}: must be 0 ({zero}) or between {min_s:g} and {max_s:.0f} seconds, "
                         f"got {shown}")
    return int(seconds) if seconds.is_integer() else seconds


def _coerce(name: str, value: Any) -> Any:
    if name == "network":
        if not isinstance(value, bool):
            raise ValueError(f"network: expected true or false, got {value!r}")
        return value
    if name == "idle_timeout_s":
        return 0 if value is None else parse_duration(name, value, max_s=_MAX_IDLE_S, min_s=1.0)
    if value is None:
        return None
    if name in ("memory_bytes", "tmp_bytes"):
        n = parse_size(name, value)
        lo = _MIN_MEMORY if name == "memory_bytes" else _MIN_TMP
        if n < lo:
            raise ValueError(f"{name}: must be at least {lo} bytes ({lo // 2**20} MiB), got {n}")
        if n > _MAX_BYTES:
            raise ValueError(f"{name}: must be at most {_MAX_BYTES} bytes (1 PiB), got {n}")
        return n
    if name == "disk_bytes":
        n = parse_size(name, value)
        if not _MIN_DISK <= n <= _MAX_DISK:
            raise ValueError(f"disk_bytes: must be between {_MIN_DISK // 2**20} MiB and 16 TiB, got {n}")
        return n
    if name == "pids":
        n = _int(name, value)
        if not _MIN_PIDS <= n <= _MAX_PIDS:
            raise ValueError(f"pids: must be between {_MIN_PIDS} and {_MAX_PIDS}, got {n}")
        return n
    if name == "cpu_shares":
        n = _int(name, value)
        lo, hi = _CPU_SHARES_RANGE
        if not lo <= n <= hi:
            raise ValueError(f"cpu_shares: must be between {lo} and {hi}, got {n}")
        return n
    if name == "cpu_cores":
        if isinstance(value, bool):
            raise ValueError("cpu_cores: expected a number of cores like 1.5, got a boolean")
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"cpu_cores: expected a number of cores like 1.5, got {value!r}") from None
        if not math.isfinite(x) or x < 0.01 or x > _MAX_CPU_CORES:
            raise ValueError(f"cpu_cores: must be between 0.01 and {_MAX_CPU_CORES:g}, got {value!r}")
        return x
    raise ValueError(f"{name}: unknown limit")


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ValueError(f"{name}: expected an integer, got {value!r}")
