"""Resolving presented API keys (reference spec 2.3) against a real SQLite store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from projecthub.auth.keys import encode_base62
from projecthub.auth.resolve import Identity, KeyResolver
from projecthub.store import Store

UTC = timezone.utc


class Clocks:
    """Monotonic and wall clocks the test moves by hand."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)

    def monotonic(self) -> float:
        return self.mono

    def now(self) -> datetime:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.for_data_dir(tmp_path)
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def resolver(store: Store, clocks: Clocks) -> KeyResolver:
    return KeyResolver(store, cache_ttl=2.0, clock=clocks.monotonic, wall_clock=clocks.now)


def forged(secret: str) -> str:
    """Same row id, different random part."""
    middle = "A" * 16 if secret[3:19] != "A" * 16 else "B" * 16
    return secret[:3] + middle + secret[19:]


def test_account_key(store: Store, resolver: KeyResolver) -> None:
    account = store.create_account("A", "B")
    row, secret = store.create_api_key(account)
    assert resolver.resolve(secret) == Identity(
        account_id=account, project_id=None, key_id=row["id"], is_admin=False
    )


def test_admin_account_key(store: Store, resolver: KeyResolver) -> None:
    admin = store.create_account(is_admin=True)
    _, secret = store.create_api_key(admin)
    identity = resolver.resolve(secret)
    assert identity is not None and identity.is_admin


def test_project_key_has_no_account(store: Store, resolver: KeyResolver) -> None:
    account = store.create_account(is_admin=True)
    pid = store.create_project(account)
    row, secret = store.create_api_key(account, project_id=pid)
    assert resolver.resolve(secret) == Identity(
        account_id=None, project_id=pid, key_id=row["id"], is_admin=False
    )


@pytest.mark.parametrize(
    "key",
    [None, "", 12345, b"sk-abc", "sk_abcdefghijklmnop000001", "Bearer x", "sk-00001",
     "sk-abcdefghijklmnop0000-1", "sk-abcdefghijklmnopzzzzzz", "sk-\ud800\ud800\ud800000001"],
)
def test_malformed_keys_rejected(store: Store, resolver: KeyResolver, key: object) -> None:
    account = store.create_account()
    store.create_api_key(account)  # row 1 exists
    assert resolver.resolve(key) is None  # type: ignore[arg-type]


def test_wrong_secret_with_valid_row_id(store: Store, resolver: KeyResolver) -> None:
    account = store.create_account()
    row, secret = store.create_api_key(account)
    assert resolver.resolve(forged(secret)) is None
    assert store.get_api_key(row["id"]) is not None  # a bad guess must not delete the key
    assert resolver.resolve(secret) is not None


def test_unknown_id(store: Store, resolver: KeyResolver) -> None:
    account = store.create_account()
    row, secret = store.create_api_key(account)
    unknown = secret[:-6] + encode_base62(row["id"] + 50)
    assert resolver.resolve(unknown) is None


def test_failures_are_not_cached(store: Store, resolver: KeyResolver) -> None:
    account = store.create_account()
    first, _ = store.create_api_key(account)
    # Present a key for the next row before it exists...
    guess = "sk-" + "x" * 16 + encode_base62(first["id"] + 1)
    assert resolver.resolve(guess) is None
    # ...then create that row: its real secret must work at once.
    row, secret = store.create_api_key(account)
    assert row["id"] == first["id"] + 1
    assert resolver.resolve(secret) is not None


def test_expired_key_is_deleted_on_use(store: Store, resolver: KeyResolver, clocks: Clocks) -> None:
    account = store.create_account()
    row, secret = store.create_api_key(account, expire=clocks.wall - timedelta(seconds=1))
    assert resolver.resolve(secret) is None
    assert store.get_api_key(row["id"]) is None


def test_key_expiring_exactly_now_is_rejected(
    store: Store, resolver: KeyResolver, clocks: Clocks
) -> None:
    account = store.create_account()
    row, secret = store.create_api_key(account, expire=clocks.wall)
    assert resolver.resolve(secret) is None
    assert store.get_api_key(row["id"]) is None


def test_expiry_honoured_for_cached_entry(
    store: Store, resolver: KeyResolver, clocks: Clocks
) -> None:
    account = store.create_account()
    row, secret = store.create_api_key(account, expire=clocks.wall + timedelta(seconds=10))
    assert resolver.resolve(secret) is not None
    # Wall time passes the expiry while the cache entry is still young by the
    # monotonic clock (e.g. a wall-clock jump): the entry must not be trusted.
    clocks.wall += timedelta(seconds=11)
    assert resolver.peek(secret) is None
    assert resolver.resolve(secret) is None
    assert store.get_api_key(row["id"]) is None


def test_orphaned_project_key_is_deleted(store: Store, resolver: KeyResolver) -> None:
    owner = store.create_account()
    collab = store.create_account()
    pid = store.create_project(owner)
    store.add_user(pid, collab)
    row, secret = store.create_api_key(collab, project_id=pid)
    assert resolver.resolve(secret) is not None
    store.remove_user(pid, collab)
    resolver.invalidate_key(row["id"])  # what the server does on removal
    assert resolver.resolve(secret) is None
    assert store.get_api_key(row["id"]) is None


def test_banned_account_rejected(store: Store, resolver: KeyResolver) -> None:
    account = store.create_account()
    pid = store.create_project(account)
    row, secret = store.create_api_key(account)
    prow, psecret = store.create_api_key(account, project_id=pid)
    assert resolver.resolve(secret) is not None
    store.set_banned(account, True)
    resolver.invalidate_all()
    assert resolver.resolve(secret) is None
    assert resolver.resolve(psecret) is None
    # Banning rejects, it does not delete: unbanning restores access.
    assert store.get_api_key(row["id"]) is not None
    store.set_banned(account, False)
    assert resolver.resolve(secret) is not None


def test_cache_serves_hits_until_invalidated(store: Store, resolver: KeyResolver) -> None:
    account = store.create_account()
    row, secret = store.create_api_key(account)
    assert resolver.resolve(secret) is not None
    store.delete_api_key(row["id"])
    # Still cached: this is what spares the 1000-round hash per request...
    assert resolver.resolve(secret) is not None
    # ...and why the server must invalidate on delete.
    resolver.invalidate_key(row["id"])
    assert resolver.resolve(secret) is None
    assert resolver.peek(secret) is None


def test_cache_entry_ages_out(store: Store, resolver: KeyResolver, clocks: Clocks) -> None:
    account = store.create_account()
    row, secret = store.create_api_key(account)
    assert resolver.resolve(secret) is not None
    store.delete_api_key(row["id"])
    clocks.advance(2.0)
    assert resolver.resolve(secret) is None


def test_zero_ttl_disables_cache(store: Store, clocks: Clocks) -> None:
    resolver = KeyResolver(store, cache_ttl=0, clock=clocks.monotonic, wall_clock=clocks.now)
    account = store.create_account()
    row, secret = store.create_api_key(account)
    assert resolver.resolve(secret) is not None
    store.delete_api_key(row["id"])
    assert resolver.resolve(secret) is None


def test_cache_holds_no_raw_secret(store: Store, resolver: KeyResolver) -> None:
    account = store.create_account()
    _, secret = store.create_api_key(account)
    resolver.resolve(secret)
    assert secret not in repr(vars(resolver))
    assert secret[3:19] not in repr(vars(resolver))


def test_last_active_is_throttled(store: Store, resolver: KeyResolver, clocks: Clocks) -> None:
    account = store.create_account()
    row, secret = store.create_api_key(account)
    start = clocks.wall
    resolver.resolve(secret)
    assert store.get_api_key(row["id"])["last_active"] == start

    clocks.advance(30)  # cache expired, but touch interval not yet
    resolver.resolve(secret)
    assert store.get_api_key(row["id"])["last_active"] == start

    clocks.advance(31)
    resolver.resolve(secret)
    assert store.get_api_key(row["id"])["last_active"] == start + timedelta(seconds=61)


def test_peek_answers_only_from_memory(store: Store, resolver: KeyResolver, clocks: Clocks) -> None:
    account = store.create_account()
    _, secret = store.create_api_key(account)
    assert resolver.peek(secret) is None  # not cached yet
    identity = resolver.resolve(secret)
    assert resolver.peek(secret) == identity
    assert resolver.peek(forged(secret)) is None
    clocks.advance(2.0)
    assert resolver.peek(secret) is None  # aged out


def test_concurrent_resolves(store: Store) -> None:
    resolver = KeyResolver(store)
    account = store.create_account()
    secrets_ = [store.create_api_key(account)[1] for _ in range(4)]
    errors: list[BaseException] = []

    def work(secret: str) -> None:
        try:
            for i in range(20):
                assert resolver.resolve(secret) is not None
                if i % 5 == 0:
                    resolver.invalidate_all()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in secrets_ * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_aged_out_entry_rechecks_the_store_but_not_the_hash(
        store: Store, resolver: KeyResolver, clocks: Clocks, monkeypatch: pytest.MonkeyPatch) -> None:
    import projecthub.auth.resolve as resolve_mod
    calls = []
    real = resolve_mod.verify_secret
    monkeypatch.setattr(resolve_mod, "verify_secret", lambda *a: calls.append(1) or real(*a))
    account = store.create_account()
    row, secret = store.create_api_key(account)
    assert resolver.resolve(secret) is not None and len(calls) == 1
    clocks.advance(2.0)
    assert resolver.resolve(secret) is not None and len(calls) == 1   # same stored hash: no rehash
    store.set_banned(account, True)          # not invalidated: the aged-out check must see it
    clocks.advance(2.0)
    assert resolver.resolve(secret) is None
    store.set_banned(account, False)
    # The stored hash changes (the key was re-issued under the same row id): old secret fails.
    store.create_api_key(account)
    from sqlalchemy import select, update
    from projecthub.store.schema import api_keys
    with store.engine.begin() as conn:
        other_hash = conn.execute(select(api_keys.c.hash).where(api_keys.c.id == row["id"] + 1)).scalar_one()
        conn.execute(update(api_keys).where(api_keys.c.id == row["id"]).values(hash=other_hash))
    clocks.advance(2.0)
    assert resolver.resolve(secret) is None and len(calls) == 2
    assert resolver.resolve(forged(secret)) is None   # a different secret is always hashed
