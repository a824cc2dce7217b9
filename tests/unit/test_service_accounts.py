"""HubService.list_accounts / set_account_disabled: admins only, no secrets, and a disabled
account's keys stop resolving at once (also from the key cache)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from projecthub.auth.resolve import KeyResolver
from projecthub.errors import RemoteError
from projecthub.hub.db import AsyncStore
from projecthub.hub.service import HubService
from projecthub.store import Store


def _run(tmp_path: Path, body: Any) -> None:
    store = Store.for_data_dir(tmp_path)
    store.migrate()
    db = AsyncStore(store)
    hub = HubService(db, host=None, resolver=KeyResolver(store, cache_ttl=60))  # type: ignore[arg-type]
    try:
        asyncio.run(body(store, hub))
    finally:
        db.close()


def test_list_accounts_admin_only_and_without_secrets(tmp_path: Path) -> None:
    async def body(store: Store, hub: HubService) -> None:
        admin = store.create_account("Ada", "Admin", email="ada@example.org", is_admin=True)
        user = store.create_account("Bob", "User")
        _, secret = store.create_api_key(user)
        rows = await hub.list_accounts(admin)
        assert [r["account_id"] for r in rows] == [admin, user]
        assert rows[0] == {"account_id": admin, "first_name": "Ada", "last_name": "Admin",
                           "email": "ada@example.org", "is_admin": True, "disabled": False,
                           "created": rows[0]["created"]}
        assert rows[0]["created"].endswith("Z")
        assert secret not in repr(rows) and "hash" not in repr(rows)
        with pytest.raises(RemoteError) as info:
            await hub.list_accounts(user)
        assert info.value.message == "Error: only an admin may list accounts"
        assert info.value.extra["status"] == 403

    _run(tmp_path, body)


def test_disable_and_enable(tmp_path: Path) -> None:
    async def body(store: Store, hub: HubService) -> None:
        admin = store.create_account(is_admin=True)
        user = store.create_account()
        _, secret = store.create_api_key(user)
        assert await hub.resolve_key(secret) is not None   # now cached for 60 s
        row = await hub.set_account_disabled(admin, user, True)
        assert row["account_id"] == user and row["disabled"] is True
        assert hub.resolver.peek(secret) is None
        assert await hub.resolve_key(secret) is None
        assert (await hub.set_account_disabled(admin, user, False))["disabled"] is False
        assert await hub.resolve_key(secret) is not None

        for who, target, message in [
            (user, admin, "Error: only an admin may disable or enable accounts"),
            (admin, admin, "Error: an admin cannot disable their own account"),
            (admin, "00000000-0000-4000-8000-000000000009",
             "Error: no account with id 00000000-0000-4000-8000-000000000009"),
            (admin, "nope", "Error: no account with id nope"),
        ]:
            with pytest.raises(RemoteError) as info:
                await hub.set_account_disabled(who, target, True)
            assert info.value.message == message
        assert store.get_account(admin)["banned"] is False   # type: ignore[index]

    _run(tmp_path, body)
