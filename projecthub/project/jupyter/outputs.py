"""Turning kernel messages into CoCalc output items, with the output limits (spec 6.2, 6.3).

One ``OutputCollector`` per cell: CoCalc copies its limits for every cell, so both
the per-cell and the "global" counters effectively start from zero for each cell.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

# Keys CoCalc deletes from every message's content before keeping it.
_STRIP_KEYS = ("execution_state", "execution_count", "payload", "code", "status", "source")

DEFAULT_LIMITS: dict[str, int] = {
    "timeout_ms_per_cell": 30000,
    "max_output_per_cell": 1000000,
    "max_output": 5000000,
}


@dataclass(frozen=True)
class Limits:
    timeout_ms_per_cell: int = DEFAULT_LIMITS["timeout_ms_per_cell"]
    max_output_per_cell: int | None = DEFAULT_LIMITS["max_output_per_cell"]
    max_output: int | None = DEFAULT_LIMITS["max_output"]

    @classmethod
    def from_opts(cls, raw: dict[str, Any] | None) -> "Limits":
        raw = raw or {}

        def pick(key: str) -> Any:
            value = raw.get(key)
            return DEFAULT_LIMITS[key] if value is None else value

        return cls(
            timeout_ms_per_cell=int(pick("timeout_ms_per_cell")),
            max_output_per_cell=_optional_int(pick("max_output_per_cell")),
            max_output=_optional_int(pick("max_output")),
        )


def _optional_int(value: Any) -> int | None:
    return None if value is None or value is False else int(value)


def truncation_notice(kind: str, limit: int) -> dict[str, Any]:
    # The only item with an ``output_type``; ``text`` is a list (CoCalc quirk, kept).
    return {"name": "stdout", "output_type": "stream",
            "text": [f"Output truncated since it exceeded the {kind} output limit of {limit} characters"]}


def shape_content(msg: dict[str, Any]) -> dict[str, Any] | None:
    """The output item for one kernel message, or None when nothing is left of it."""
    content = msg.get("content")
    if not isinstance(content, dict) or "comm_id" in content:
        return None  # widget traffic is not output
    item = {k: v for k, v in content.items() if k not in _STRIP_KEYS}
    item = {k: v for k, v in item.items() if not (isinstance(v, dict) and not v)}
    return item or None


def _json_len(item: dict[str, Any]) -> int:
    # CoCalc measures JSON.stringify output: compact separators, non-ASCII kept.
    return len(json.dumps(item, separators=(",", ":"), ensure_ascii=False))


class OutputCollector:
    """Collects one cell's output items; ``on_item`` sees each kept item as it arrives."""

    def __init__(self, limits: Limits | None = None,
                 on_item: Callable[[dict[str, Any]], None] | None = None,
                 repeat_notice: bool = True) -> None:
        self.limits = limits or Limits()
        self.items: list[dict[str, Any]] = []
        self._on_item = on_item
        # CoCalc repeats the truncation notice for every further message; the native
        # API says it once (a print loop would otherwise return 100k identical notices).
        self._repeat_notice = repeat_notice
        self._truncated = False
        self._cell_chars = 0
        self._total_chars = 0

    def add_item(self, item: dict[str, Any]) -> None:
        self.items.append(item)
        if self._on_item is not None:
            self._on_item(item)

    def add_message(self, msg: dict[str, Any]) -> None:
        msg_type = msg.get("msg_type") or msg.get("header", {}).get("msg_type")
        item = shape_content(msg)
        if item is None:
            return
        if msg_type == "clear_output":
            self.items.clear()
            self.add_item({"wait": bool(item.get("wait", False))})
            return
        size = _json_len(item)
        self._cell_chars += size
        self._total_chars += size
        if msg_type != "error":  # errors are always delivered, whatever the limits
            cell_cap, total_cap = self.limits.max_output_per_cell, self.limits.max_output
            if cell_cap is not None and self._cell_chars > cell_cap:
                item = truncation_notice("cell", cell_cap)
            elif total_cap is not None and self._total_chars > total_cap:
                item = truncation_notice("global", total_cap)
            else:
                self.add_item(item)
                return
            if self._truncated and not self._repeat_notice:
                return
            self._truncated = True
        self.add_item(item)
