"""HubService's background key refresh: runs while keys are in use, survives errors,
stops cleanly."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from projecthub.auth.resolve import KeyResolver
from projecthub.hub.db import AsyncStore
from projecthub.hub.service import HubService
from projecthub.store import Store


class CountingResolver(KeyResolver):
    def __init__(self, *args: Any, fail: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.passes = 0
        self.fail = fail

    def refresh_recent(self) -> int:
        self.passes += 1
        if self.passes <= self.fail:
            raise OperationalError("select", {}, Exception("database is locked"))
        return super().refresh_recent()


def _run(tmp_path: Path, resolver_kwargs: dict[str, Any], body: Any) -> CountingResolver:
    store = Store.for_data_dir(tmp_path)
    store.migrate()
    resolver = CountingResolver(store, **resolver_kwargs)
    db = AsyncStore(store)
    hub = HubService(db, host=None, resolver=resolver)  # type: ignore[arg-type]

    async def main() -> None:
        hub.start_key_refresh()
        try:
            await body(store, hub, resolver)
        finally:
            await hub.stop_key_refresh()
        assert hub._key_refresh is None

    try:
        asyncio.run(main())
    finally:
        db.close()
    return resolver


def test_used_key_stays_cached_while_in_use(tmp_path: Path) -> None:
    async def body(store: Store, hub: HubService, resolver: CountingResolver) -> None:
        _, secret = store.create_api_key(store.create_account())
        identity = await hub.resolve_key(secret)
        assert identity is not None
        for _ in range(8):  # 0.8 s: four TTLs, every lookup answered from memory
            await asyncio.sleep(0.1)
            assert resolver.peek(secret) == identity

    resolver = _run(tmp_path, {"cache_ttl": 0.2}, body)
    assert resolver.passes >= 4


def test_idle_server_does_no_passes(tmp_path: Path) -> None:
    async def body(store: Store, hub: HubService, resolver: CountingResolver) -> None:
        await asyncio.sleep(0.3)

    assert _run(tmp_path, {"cache_ttl": 0.2}, body).passes == 0


def test_errors_are_logged_and_the_loop_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def body(store: Store, hub: HubService, resolver: CountingResolver) -> None:
        _, secret = store.create_api_key(store.create_account())
        assert await hub.resolve_key(secret) is not None
        for _ in range(6):
            await asyncio.sleep(0.1)
            assert await hub.resolve_key(secret) is not None

    with caplog.at_level(logging.WARNING, logger="projecthub.hub"):
        resolver = _run(tmp_path, {"cache_ttl": 0.2, "fail": 2}, body)
    assert resolver.passes > 2
    assert caplog.text.count("refreshing cached api keys failed") == 2


def test_no_task_without_a_cache(tmp_path: Path) -> None:
    async def body(store: Store, hub: HubService, resolver: CountingResolver) -> None:
        assert hub._key_refresh is None

    _run(tmp_path, {"cache_ttl": 0}, body)
