"""RemoteHost's host-state bookkeeping (hub/remote_host.py): up/down written on a change,
last_seen refreshed at most every few seconds, nobody judged down by a hub that just
started, and a call to a down host's project refused at once naming it.  The heartbeats
come from a stand-in fabric (the real one runs in tests/integration/test_cluster_placement.py)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import update

from projecthub.errors import RemoteError
from projecthub.host.sandbox import ProjectLimits
from projecthub.hub.db import AsyncStore
from projecthub.hub.remote_host import RemoteHost
from projecthub.store import Store
from projecthub.store.schema import hosts


class _Heartbeats:
    """What RemoteHost reads of the fabric for host states: the live hosts."""

    def __init__(self) -> None:
        self.live: dict[str, dict[str, Any]] = {}
        self.hosts: dict[str, Any] = {}

    def live_hosts(self) -> dict[str, dict[str, Any]]:
        return dict(self.live)


def _states(store: Store) -> dict[str, str | None]:
    return {h["name"]: h["state"] for h in store.list_hosts()}


def test_states_are_written_on_change_and_last_seen_rarely(store: Store) -> None:
    writes: list[tuple[int, str | None]] = []
    touch = store.touch_host

    def counted(host_id: int, state: str | None = None) -> None:
        writes.append((host_id, state))
        touch(host_id, state)
    store.touch_host = counted   # type: ignore[method-assign]
    h1, h2 = store.ensure_host("h1", "nats"), store.ensure_host("h2", "nats")
    beats = _Heartbeats()
    remote = RemoteHost(beats, AsyncStore(store), ProjectLimits())  # type: ignore[arg-type]

    async def scenario() -> None:
        beats.live = {"h1": {}}
        await remote._sync_host_states()          # just started: h2 not judged yet
        assert _states(store) == {"h1": "up", "h2": None}
        remote._started = time.monotonic() - 60
        await remote._sync_host_states()
        assert _states(store) == {"h1": "up", "h2": "down"}
        assert len(writes) == 2
        for _ in range(5):                         # nothing changed: nothing written
            await remote._sync_host_states()
        assert len(writes) == 2
        with store.engine.begin() as conn:         # last_seen 6 s old: one touch
            conn.execute(update(hosts).where(hosts.c.host_id == h1).values(
                last_seen=datetime.now(timezone.utc) - timedelta(seconds=6)))
        await remote._sync_host_states()
        assert writes[2:] == [(h1, "up")]
        with pytest.raises(RemoteError, match=rf"^Error: host h2 \(id {h2}\) is down: no heartbeat for \d+ s"):
            remote._check_up("h2")
        remote._check_up("h1")
        beats.live = {"h2": {}}                    # h1 goes quiet, h2 comes back
        await remote._sync_host_states()
        assert _states(store) == {"h1": "down", "h2": "up"}
    try:
        asyncio.run(scenario())
    finally:
        remote.db.close()
