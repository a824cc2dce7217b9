"""Resolving presented API keys (reference spec 2.3) against a real SQLite store."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

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


def _no_counter(store: Store) -> None:
    """From now on this store's changes are not counted, as on a store without a revocation
    counter (PostgreSQL): out-of-band changes then wait for the TTL or a refresh."""
    store.revocations.path = None


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)   # the counter is a file beside SQLite
def test_store_revocations_are_seen_at_once(store: Store, resolver: KeyResolver) -> None:
    account = store.create_account()
    row, secret = store.create_api_key(account)
    _, other = store.create_api_key(account)
    assert resolver.resolve(secret) is not None and resolver.resolve(other) is not None
    # another process deletes the key: its Store bumps the counter file this one maps
    Store(store.url).delete_api_key(row["id"])
    assert resolver.peek(secret) is None
    assert resolver.resolve(secret) is None
    assert resolver.resolve(other) is not None   # dropped from the cache too, still valid
    Store(store.url).set_disabled(account, True)
    assert resolver.peek(other) is None and resolver.resolve(other) is None


def test_cache_serves_hits_until_invalidated(store: Store, resolver: KeyResolver) -> None:
    account = store.create_account()
    row, secret = store.create_api_key(account)
    assert resolver.resolve(secret) is not None
    _no_counter(store)
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


# -- refresh-ahead ------------------------------------------------------------------------

def test_refresh_keeps_used_key_served_past_ttl(
        store: Store, resolver: KeyResolver, clocks: Clocks, monkeypatch: pytest.MonkeyPatch) -> None:
    account = store.create_account()
    _, secret = store.create_api_key(account)
    identity = resolver.resolve(secret)
    assert resolver.refresh_due()
    clocks.advance(0.5)
    assert resolver.refresh_recent() == 0  # too young to be worth a check
    clocks.advance(0.7)
    assert resolver.peek(secret) == identity  # used
    assert resolver.refresh_recent() == 1
    clocks.advance(1.5)  # 2.7 s after the resolve, 1.5 s after the refresh
    # The request path must not touch the store at all.
    monkeypatch.setattr(store, "get_api_key", lambda *a: pytest.fail("store read on a hit"))
    assert resolver.peek(secret) == identity


def test_refresh_picks_up_changed_admin_flag_and_expiry(
        store: Store, resolver: KeyResolver, clocks: Clocks) -> None:
    account = store.create_account()
    row, secret = store.create_api_key(account)
    assert not resolver.resolve(secret).is_admin  # type: ignore[union-attr]
    _no_counter(store)
    store.set_admin(account, True)  # out of band: refreshed entries carry the new state
    store.edit_api_key(row["id"], expire=clocks.wall + timedelta(seconds=2))
    clocks.advance(1.0)
    assert resolver.refresh_recent() == 1
    assert resolver.peek(secret).is_admin  # type: ignore[union-attr]
    clocks.wall += timedelta(seconds=1.5)  # past the new expiry: the entry must not be served
    assert resolver.peek(secret) is None


def _set_hash_of(store: Store, key_id: int, other_id: int) -> None:
    from sqlalchemy import select, update
    from projecthub.store.schema import api_keys
    with store.engine.begin() as conn:
        other = conn.execute(select(api_keys.c.hash).where(api_keys.c.id == other_id)).scalar_one()
        conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(hash=other))


@pytest.mark.parametrize("change", ["banned", "deleted", "hash", "collaborator", "expired"])
def test_refresh_drops_key_revoked_out_of_band(
        store: Store, resolver: KeyResolver, clocks: Clocks, change: str) -> None:
    owner = store.create_account()
    account = store.create_account()
    pid = store.create_project(owner)
    store.add_user(pid, account)
    row, secret = store.create_api_key(account, project_id=pid)
    assert resolver.resolve(secret) is not None
    # Changed behind the resolver's back (another process): no invalidation.
    if change == "banned":
        store.set_banned(account, True)
    elif change == "deleted":
        store.delete_api_key(row["id"])
    elif change == "hash":
        other, _ = store.create_api_key(account)
        _set_hash_of(store, row["id"], other["id"])
    elif change == "collaborator":
        store.remove_user(pid, account)
    elif change == "expired":
        store.edit_api_key(row["id"], expire=clocks.wall + timedelta(seconds=0.5))
    clocks.advance(1.0)
    assert resolver.refresh_recent() == 0
    assert resolver.peek(secret) is None  # without the refresh the entry would still serve
    assert resolver.resolve(secret) is None


def test_unused_entry_is_not_refreshed_and_ages_out(
        store: Store, clocks: Clocks) -> None:
    resolver = KeyResolver(store, cache_ttl=2.0, clock=clocks.monotonic, wall_clock=clocks.now,
                           recent_window=1.0)
    account = store.create_account()
    _, secret = store.create_api_key(account)
    assert resolver.resolve(secret) is not None
    clocks.advance(1.5)  # half the TTL old, but last used 1.5 s ago: outside the window
    assert not resolver.refresh_due()
    assert resolver.refresh_recent() == 0
    clocks.advance(0.5)
    assert resolver.peek(secret) is None


def test_invalidation_racing_a_refresh_wins(
        store: Store, resolver: KeyResolver, clocks: Clocks, monkeypatch: pytest.MonkeyPatch) -> None:
    account = store.create_account()
    row, secret = store.create_api_key(account)
    assert resolver.resolve(secret) is not None
    real = store.get_api_key

    def get_api_key(key_id: int) -> dict | None:
        found = real(key_id)  # read the still-valid row...
        store.delete_api_key(key_id)  # ...then the key is deleted and invalidated
        resolver.invalidate_key(key_id)
        return found

    monkeypatch.setattr(store, "get_api_key", get_api_key)
    clocks.advance(1.0)
    assert resolver.refresh_recent() == 0
    monkeypatch.setattr(store, "get_api_key", real)
    assert resolver.peek(secret) is None
    assert resolver.resolve(secret) is None


def test_any_invalidation_during_a_check_skips_its_write(
        store: Store, resolver: KeyResolver, clocks: Clocks, monkeypatch: pytest.MonkeyPatch) -> None:
    # The epoch guard: the entry itself survives (another key was invalidated), but
    # what the check read may predate that invalidation, so it is not re-cached.
    account = store.create_account()
    _, secret = store.create_api_key(account)
    other, _ = store.create_api_key(account)
    identity = resolver.resolve(secret)
    real = store.get_account

    def get_account(account_id: str) -> dict | None:
        found = real(account_id)
        resolver.invalidate_key(other["id"])
        return found

    monkeypatch.setattr(store, "get_account", get_account)
    clocks.advance(1.0)
    assert resolver.refresh_recent() == 0
    assert resolver.peek(secret) == identity  # untouched: still the original entry...
    clocks.advance(1.0)
    assert resolver.peek(secret) is None  # ...which ages out on its original schedule


def test_refreshed_entry_still_ages_out_without_refresh(
        store: Store, resolver: KeyResolver, clocks: Clocks) -> None:
    account = store.create_account()
    row, secret = store.create_api_key(account)
    assert resolver.resolve(secret) is not None
    clocks.advance(1.0)
    assert resolver.refresh_recent() == 1
    _no_counter(store)
    store.set_banned(account, True)  # out of band, and no further refresh runs
    clocks.advance(1.999)
    assert resolver.peek(secret) is not None  # within the bound of the refresh
    clocks.advance(0.001)
    assert resolver.peek(secret) is None  # age == ttl: never served
    assert resolver.resolve(secret) is None


def test_refresh_age_counts_from_before_the_reads(
        store: Store, resolver: KeyResolver, clocks: Clocks, monkeypatch: pytest.MonkeyPatch) -> None:
    account = store.create_account()
    _, secret = store.create_api_key(account)
    assert resolver.resolve(secret) is not None
    real = store.get_account

    def slow_get_account(account_id: str) -> dict | None:
        clocks.advance(0.5)  # the store is slow
        return real(account_id)

    monkeypatch.setattr(store, "get_account", slow_get_account)
    clocks.advance(1.0)
    assert resolver.refresh_recent() == 1  # began at 1.0, finished at 1.5
    clocks.advance(1.5)  # 2.0 s after the check began
    assert resolver.peek(secret) is None


def test_refresh_is_bounded_most_recent_first(store: Store, clocks: Clocks) -> None:
    resolver = KeyResolver(store, cache_ttl=2.0, clock=clocks.monotonic, wall_clock=clocks.now,
                           refresh_limit=2)
    account = store.create_account()
    secrets_ = [store.create_api_key(account)[1] for _ in range(3)]
    for secret in secrets_:
        assert resolver.resolve(secret) is not None
    clocks.advance(1.0)
    for secret in reversed(secrets_):  # secrets_[0] is used last
        clocks.advance(0.1)
        assert resolver.peek(secret) is not None
    assert resolver.refresh_recent() == 2
    clocks.advance(0.8)  # 2.1 s after the resolves
    assert resolver.peek(secrets_[0]) is not None
    assert resolver.peek(secrets_[1]) is not None
    assert resolver.peek(secrets_[2]) is None


def test_zero_ttl_never_refreshes(store: Store, clocks: Clocks) -> None:
    resolver = KeyResolver(store, cache_ttl=0, clock=clocks.monotonic, wall_clock=clocks.now)
    account = store.create_account()
    _, secret = store.create_api_key(account)
    assert resolver.resolve(secret) is not None
    assert resolver.refresh_interval is None
    assert not resolver.refresh_due()
    assert resolver.refresh_recent() == 0
