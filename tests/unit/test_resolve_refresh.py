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


# -- collaborator answers: the same refresh-ahead, on the same loop ---------------------------

def _run_collab(tmp_path: Path, body: Any) -> None:
    store = Store.for_data_dir(tmp_path)
    store.migrate()
    db = AsyncStore(store)
    hub = HubService(db, host=None, resolver=KeyResolver(store, cache_ttl=0.2),  # type: ignore[arg-type]
                     collab_ttl_s=0.4)
    owner = store.create_account()
    member = store.create_account()
    project_id = store.create_project(owner)
    store.add_user(project_id, member)
    _, secret = store.create_api_key(member)

    async def main() -> None:
        hub.start_key_refresh()
        try:
            assert await hub.resolve_key(secret) is not None
            await body(store, hub, project_id, member, secret)
        finally:
            await hub.stop_key_refresh()

    try:
        asyncio.run(main())
    finally:
        db.close()


def _count_store_checks(hub: HubService) -> list[int]:
    calls = [0]
    real = hub.db.is_collaborator

    async def counting(*args: Any) -> bool:
        calls[0] += 1
        return await real(*args)

    hub.db.is_collaborator = counting  # type: ignore[method-assign]
    return calls


def test_collaborator_answer_refreshed_while_in_use(tmp_path: Path) -> None:
    async def body(store: Store, hub: HubService, project_id: str, member: str, secret: str) -> None:
        assert await hub.is_collaborator(project_id, member)
        calls = _count_store_checks(hub)
        for _ in range(12):  # 1.2 s: three TTLs, every answer from memory
            await asyncio.sleep(0.1)
            assert await hub.resolve_key(secret) is not None   # keeps the refresh loop busy
            assert await hub.is_collaborator(project_id, member)
        assert calls[0] == 0

    _run_collab(tmp_path, body)


def test_collaborator_removed_out_of_band_is_seen_within_the_ttl(tmp_path: Path) -> None:
    async def body(store: Store, hub: HubService, project_id: str, member: str, secret: str) -> None:
        assert await hub.is_collaborator(project_id, member)
        other = Store.for_data_dir(tmp_path)   # another connection, as another process would
        try:
            other.remove_user(project_id, member)
        finally:
            other.close()
        removed_at = asyncio.get_running_loop().time()
        while await hub.is_collaborator(project_id, member):
            await hub.resolve_key(secret)
            await asyncio.sleep(0.02)
        assert asyncio.get_running_loop().time() - removed_at <= 0.4 + 0.1

    _run_collab(tmp_path, body)


def test_a_drop_during_a_collaborator_refresh_wins(tmp_path: Path) -> None:
    async def body(store: Store, hub: HubService, project_id: str, member: str, secret: str) -> None:
        assert await hub.is_collaborator(project_id, member)
        real = store.is_collaborator

        def racing(*args: Any) -> bool:
            hub._forget_collaborators(project_id)   # membership changed while we read
            return real(*args)

        store.is_collaborator = racing  # type: ignore[method-assign]
        await asyncio.sleep(0.35)   # past half the TTL: a refresh pass ran and raced
        store.is_collaborator = real  # type: ignore[method-assign]
        assert (project_id, member) not in hub._collab_cache

    _run_collab(tmp_path, body)
