"""Legacy 1000-round key hashes keep working and are upgraded to one round on first use;
a bad secret costs one row read and one HMAC round, never the account reads."""

from __future__ import annotations


import pytest
from sqlalchemy import select, update

from projecthub.auth import keys
from projecthub.auth.resolve import SLOW_CHECK, KeyResolver
from projecthub.store import Store
from projecthub.store.schema import api_keys


def _legacy_hash(secret: str) -> str:
    salt = "0123456789abcdef0123456789abcdef"
    return f"sha512${salt}$1000${keys._digest(secret, salt, 1000)}"


def _stored_hash(store: Store, key_id: int) -> str:
    with store.engine.begin() as conn:
        return conn.execute(select(api_keys.c.hash).where(api_keys.c.id == key_id)).scalar_one()


def test_new_keys_are_stored_with_one_round(store: Store) -> None:
    row, secret = store.create_api_key(store.create_account())
    stored = _stored_hash(store, row["id"])
    assert stored.split("$")[2] == "1" and keys.verify_secret(secret, stored)


def test_legacy_hash_verifies_once_then_is_upgraded(store: Store) -> None:
    account = store.create_account()
    row, secret = store.create_api_key(account)
    with store.engine.begin() as conn:   # as written by an older projecthub (or CoCalc)
        conn.execute(update(api_keys).where(api_keys.c.id == row["id"]).values(hash=_legacy_hash(secret)))
    resolver = KeyResolver(store, cache_ttl=0)   # no cache: every resolve reads the row
    assert resolver.resolve(secret).account_id == account   # type: ignore[union-attr]
    upgraded = _stored_hash(store, row["id"])
    assert upgraded.split("$")[2] == "1" and keys.verify_secret(secret, upgraded)
    # still the same key: a fresh resolver (another process, a restart) accepts it too
    assert KeyResolver(store, cache_ttl=0).resolve(secret).account_id == account  # type: ignore[union-attr]
    assert KeyResolver(store, cache_ttl=0).resolve(secret[:3] + "x" * 16 + secret[19:]) is None


def test_a_wrong_secret_for_a_legacy_hash_does_not_upgrade(store: Store) -> None:
    row, secret = store.create_api_key(store.create_account())
    legacy = _legacy_hash(secret)
    with store.engine.begin() as conn:
        conn.execute(update(api_keys).where(api_keys.c.id == row["id"]).values(hash=legacy))
    assert KeyResolver(store, cache_ttl=0).resolve(secret[:3] + "y" * 16 + secret[19:]) is None
    assert _stored_hash(store, row["id"]) == legacy


def test_bad_secret_reads_only_the_key_row(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    row, secret = store.create_api_key(store.create_account())
    reads: list[str] = []
    for name in ("get_api_key", "get_account", "is_collaborator"):
        real = getattr(store, name)
        monkeypatch.setattr(store, name, lambda *a, _n=name, _r=real: reads.append(_n) or _r(*a))
    assert KeyResolver(store, cache_ttl=0).resolve(secret[:3] + "z" * 16 + secret[19:]) is None
    assert reads == ["get_api_key"]


def test_slow_legacy_check_is_deferred_when_asked(store: Store) -> None:
    account = store.create_account()
    row, secret = store.create_api_key(account)
    with store.engine.begin() as conn:
        conn.execute(update(api_keys).where(api_keys.c.id == row["id"]).values(hash=_legacy_hash(secret)))
    resolver = KeyResolver(store, cache_ttl=0)
    assert resolver.resolve(secret, allow_slow=False) is SLOW_CHECK       # nothing hashed yet
    assert resolver.resolve(secret[:3] + "q" * 16 + secret[19:], allow_slow=False) is SLOW_CHECK
    assert resolver.resolve("sk-nonsense", allow_slow=False) is None       # no row: cheap "no"
    assert resolver.resolve(secret).account_id == account                 # type: ignore[union-attr]
    # upgraded: from now on the cheap check answers for good and bad secrets alike
    assert resolver.resolve(secret, allow_slow=False).account_id == account  # type: ignore[union-attr]
    assert resolver.resolve(secret[:3] + "q" * 16 + secret[19:], allow_slow=False) is None


def test_rejects_bad_secrets_from_memory_after_one_read(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    account = store.create_account()
    row, secret = store.create_api_key(account)
    resolver = KeyResolver(store, cache_ttl=0)
    bad = secret[:3] + "w" * 16 + secret[19:]
    assert resolver.rejects("not-a-key") and resolver.rejects("")
    assert not resolver.rejects(bad)              # row never read: not known to be bad
    assert resolver.resolve(bad) is None          # one read, remembers the row's hash
    assert resolver.rejects(bad)
    assert not resolver.rejects(secret)           # never accepts: a match takes the full path
    assert resolver.resolve(secret).account_id == account  # type: ignore[union-attr]
    resolver.invalidate_key(row["id"])            # a deleted/edited key: forget the hash too
    assert not resolver.rejects(bad)


def test_rejects_never_remembers_a_legacy_or_placeholder_hash(store: Store) -> None:
    row, secret = store.create_api_key(store.create_account())
    resolver = KeyResolver(store, cache_ttl=0)
    bad = secret[:3] + "v" * 16 + secret[19:]
    for stored in ("", _legacy_hash(secret)):     # "" is what a row holds while being created
        with store.engine.begin() as conn:
            conn.execute(update(api_keys).where(api_keys.c.id == row["id"]).values(hash=stored))
        assert resolver.resolve(bad, allow_slow=False) in (None, SLOW_CHECK)
        assert not resolver.rejects(bad)
