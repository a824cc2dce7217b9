"""CoCalc's ``aggregate`` option (spec 4.12): coalesce identical exec calls.

The key is the stable JSON of every option except ``aggregate``.  For one key:
a finished result with ``aggregate <= stored`` is reused (kept >= 60 s, pruned when an
aggregated call completes); a running call with ``aggregate <= running`` is joined; a
larger aggregate waits for the running one, and all such waiters share one follow-up run.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

KEEP_S = 60.0
Result = dict[str, Any]


def agg_le(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and "value" in a:
        return isinstance(b, dict) and a["value"] == b.get("value")
    try:
        return bool(a <= b)
    except TypeError:
        return False


def aggregate_key(opts: dict[str, Any]) -> str:
    rest = {k: v for k, v in opts.items() if k not in ("aggregate", "cb", "streamCB")}
    return json.dumps(rest, sort_keys=True, default=str)


@dataclass
class _Slot:
    agg: Any
    future: asyncio.Future[Result]
    finished_at: float | None = None
    queued: tuple[Any, asyncio.Future[Result]] | None = None


@dataclass
class Aggregator:
    slots: dict[str, _Slot] = field(default_factory=dict)

    async def run(self, opts: dict[str, Any], call: Callable[[], Awaitable[Result]]) -> Result:
        agg = opts["aggregate"]
        key = aggregate_key(opts)
        slot = self.slots.get(key)
        if slot is not None and agg_le(agg, slot.agg):
            return _copy(await asyncio.shield(slot.future))
        if slot is not None and slot.finished_at is None:
            # Running with a smaller aggregate: queue behind it, coalesced with other waiters.
            if slot.queued is None:
                slot.queued = (agg, asyncio.get_running_loop().create_future())
            elif not agg_le(agg, slot.queued[0]):
                slot.queued = (agg, slot.queued[1])
            return _copy(await asyncio.shield(slot.queued[1]))
        return _copy(await asyncio.shield(self._start(key, agg, call)))

    def _start(self, key: str, agg: Any, call: Callable[[], Awaitable[Result]],
               future: asyncio.Future[Result] | None = None) -> asyncio.Future[Result]:
        loop = asyncio.get_running_loop()
        slot = _Slot(agg, future or loop.create_future())
        self.slots[key] = slot

        async def runner() -> None:
            try:
                slot.future.set_result(await call())
            except Exception as exc:  # noqa: BLE001 - the error is the shared result
                slot.future.set_exception(exc)
            slot.finished_at = time.monotonic()
            self._prune()
            if slot.queued is not None:
                queued_agg, queued_future = slot.queued
                self._start(key, queued_agg, call, queued_future)

        loop.create_task(runner())
        return slot.future

    def _prune(self) -> None:
        now = time.monotonic()
        for key, slot in list(self.slots.items()):
            if slot.finished_at is not None and now - slot.finished_at > KEEP_S and slot.queued is None:
                del self.slots[key]


def _copy(result: Result) -> Result:
    return dict(result)
