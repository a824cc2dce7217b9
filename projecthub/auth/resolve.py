"""Turn a presented API key into an ``Identity`` (reference spec 2.3).

Verifying a secret costs one HMAC round (``keys.py`` says why one is enough), but
resolving also reads the key's row, account and collaborator status from the store,
and every API request presents a key, so successful resolutions are cached for a
couple of seconds.  The cache is
keyed by a SHA-256 of the presented key, never the key itself, and entries carry
the key's expiry so expiry is honoured even on a cache hit.  Failures are not
cached: a key created a moment ago must work at once.

When a cached resolution ages out, the key's row, account, collaborator status and
expiry are read again from the store, but the secret is not re-hashed if the stored
hash is the very one it was verified against before (``_verified``): an unchanged hash
cannot stop matching it, and a legacy 1000-round hash costs ~2 ms.  A legacy hash is
replaced by a fast one on its first successful verification (``upgrade.py``).

A presented key that fails costs one store read (its row) and one HMAC round: the
secret is checked before the account and collaborator reads.  After that first read,
further bad secrets for the same row are refused from memory (``rejects``: the row's
stored hash is remembered, one HMAC round on the event loop, no store call), which is
sound because row ids are never reused (AUTOINCREMENT) and a row's hash only ever
changes for the same secret (the legacy upgrade).  ``rejects`` never accepts anything:
a match still takes the full path.

Even those reads cost a request ~1.4 ms, and a client calling every few seconds
would pay them on almost every call.  So entries of keys used recently are
refreshed ahead (``refresh_recent``, run in the background on the store thread):
once half their TTL old they are re-validated the same way, without the secret,
and re-cached as of the moment the check began.  The staleness bound is unchanged:
an entry is still never served once older than the TTL, and a refreshed entry's
age counts from a moment before the store was read.  Keys that fail the check are
dropped, so their next request takes the full path.

Revocations that happen elsewhere (key deleted, rotated or edited, collaborator
removed, account disabled or demoted) are made effective immediately: the server
calls ``invalidate_key`` / ``invalidate_all``, and every store change that takes
access away also bumps the store's revocation counter (``store/revocations.py``),
which this resolver reads (~40 ns, a shared memory page) before it answers from its
cache: a change made by another process drops the whole cache (changes made
through this server are dropped key by key, as before).  So a ``projecthub key
revoke`` or ``account disable`` run by another process is noticed by the very
next request.
The TTL only bounds staleness where the store has no counter (PostgreSQL: another
hub's revocations), or when some path changes the database behind the store's back.
Hubs on NATS tell each other (``hub/events.py``): a key revoked, an account disabled
or a collaborator removed through one hub, or by an admin command given ``--nats``,
drops the entries in every hub within milliseconds; the TTL then bounds only what a
NATS outage hides.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from .keys import is_well_formed, key_row_id, needs_upgrade, verify_secret
from .upgrade import upgrade_hash

if TYPE_CHECKING:  # the store imports auth.keys; avoid an import cycle at runtime
    from ..store import Store

log = logging.getLogger(__name__)

# last_active is informational; writing it on every request would put a database
# write on the hot path, so it is refreshed at most this often per key.
TOUCH_INTERVAL = 60.0
# Above this many cache entries, stale ones are swept on insert.
_SWEEP_THRESHOLD = 4096
# Refresh-ahead: only keys used this recently are kept warm (an idle key costs no
# background reads), and at most this many per refresh pass, most recent first, so
# one pass cannot hold the store thread for long.
RECENT_WINDOW = 10.0
_REFRESH_LIMIT = 256


class SlowCheck:
    """The type of ``SLOW_CHECK``: "this key's hash is a legacy one; verifying it costs
    1000 rounds, ask again with allow_slow=True"."""

    def __repr__(self) -> str:
        return "SLOW_CHECK"


SLOW_CHECK = SlowCheck()


class _SlowCheckNeeded(Exception):
    pass


@dataclass(frozen=True)
class Identity:
    """Who a request acts as.  Account keys set ``account_id``; project keys set only
    ``project_id`` (CoCalc deliberately returns no account for them)."""

    account_id: str | None
    project_id: str | None
    key_id: int | None
    is_admin: bool = False


@dataclass(frozen=True)
class _Entry:
    identity: Identity
    key_id: int
    expire: datetime | None
    cached_at: float


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _digest(key: str) -> str:
    # surrogatepass: a key decoded from JSON may hold lone surrogates; hash, don't crash.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class KeyResolver:
    def __init__(
        self,
        store: Store,
        cache_ttl: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        wall_clock: Callable[[], datetime] = _utcnow,
        touch_interval: float = TOUCH_INTERVAL,
        recent_window: float = RECENT_WINDOW,
        refresh_limit: int = _REFRESH_LIMIT,
    ) -> None:
        self._store = store
        self._ttl = cache_ttl
        self._clock = clock  # monotonic: cache age and touch throttling
        self._wall_clock = wall_clock  # aware UTC: compared with stored expiry
        self._touch_interval = touch_interval
        self._lock = threading.Lock()
        self._cache: dict[str, _Entry] = {}
        # digest of a presented key -> the stored hash it was verified against (see above)
        self._verified: dict[str, str] = {}
        # key row id -> its stored hash as last read (well-formed, fast-format only): lets
        # ``rejects`` refuse bad secrets for a real key id without the store.
        self._row_hashes: dict[int, str] = {}
        self._digests_by_key: dict[int, set[str]] = {}
        self._last_touch: dict[int, float] = {}
        self._recent_window = recent_window
        self._refresh_limit = refresh_limit
        # digest -> when its cache entry last answered a request (refresh-ahead picks
        # from these); holds only digests that are in _cache.
        self._last_used: dict[str, float] = {}
        self._latest_use = float("-inf")  # lets refresh_due skip a pass without the lock
        # Bumped by every invalidation, so a resolution that raced with one is not cached.
        self._epoch = 0
        # /metrics (projecthub_key_cache_hits/misses_total): plain ints, bumped without the lock
        # (a lost increment under a race is fine for a rate, a lock on the hot path is not)
        self.cache_hits = 0
        self.cache_misses = 0
        # The store's revocation counter as last seen (see the module docstring).
        self._revocation_count = store.revocation_count
        self._revocations = self._revocation_count()

    # -- public -------------------------------------------------------------

    def resolve(self, key: str | None, allow_slow: bool = True) -> Identity | None | SlowCheck:
        """The identity behind ``key``, or None for "not authenticated".

        With ``allow_slow=False``, a key whose stored hash is a legacy 1000-round one is
        not verified: the answer is ``SLOW_CHECK``, so the caller can apply the bad-key
        throttle before paying for it (``api/requests.authenticate_key``).

        May write to the store (delete an expired or orphaned key, refresh
        ``last_active``), so call it where store calls are allowed.
        """
        if not isinstance(key, str) or not key:
            return None
        digest = _digest(key)
        now = self._clock()
        with self._lock:
            self._sync_revocations()
            entry = self._fresh_entry(digest, now)
            epoch = self._epoch
            if entry is not None:
                self._mark_used(digest, now)
        if entry is not None:
            self.cache_hits += 1
            if _expired(entry.expire, self._wall_clock()):
                self._revoke(entry.key_id)
                return None
            self._touch(entry.key_id, now)
            return entry.identity

        self.cache_misses += 1
        try:
            found = self._resolve_uncached(key, digest, allow_slow)
        except _SlowCheckNeeded:
            return SLOW_CHECK
        if found is None:
            return None
        identity, key_id, expire = found
        self._touch(key_id, now)
        if self._ttl > 0:
            with self._lock:
                if self._epoch == epoch:
                    self._insert(digest, _Entry(identity, key_id, expire, now))
                    self._mark_used(digest, now)
        return identity

    def rejects(self, key: str | None) -> bool:
        """Memory only, for the event loop: True when ``key`` is certainly not a valid key
        (not in the key format, or its secret does not match the hash last read for its
        row: one HMAC round).  False means "not known to be bad": call ``resolve``."""
        key_id = key_row_id(key) if isinstance(key, str) else None
        if key_id is None:
            return True   # resolve() would answer None without reading anything
        with self._lock:
            stored = self._row_hashes.get(key_id)
        return stored is not None and not verify_secret(key, stored)

    def peek(self, key: str | None) -> Identity | None:
        """Answer from memory only: the cached identity when it is fresh, unexpired
        and needs no ``last_active`` write; otherwise None, meaning "call
        ``resolve`` (on the store thread)".  Lets the event loop skip a thread hop
        on the common path."""
        if not isinstance(key, str) or not key:
            return None
        now = self._clock()
        digest = _digest(key)
        with self._lock:
            self._sync_revocations()
            entry = self._fresh_entry(digest, now)
            if entry is None or _expired(entry.expire, self._wall_clock()):
                return None
            self._mark_used(digest, now)
            last = self._last_touch.get(entry.key_id)
            if last is None or now - last >= self._touch_interval:
                return None
        self.cache_hits += 1
        return entry.identity

    @property
    def refresh_interval(self) -> float | None:
        """How often to call ``refresh_recent``; None when there is no cache.  A
        quarter TTL: an entry becomes due at half its TTL, so it meets at least one
        pass before aging out even when a pass runs late by a quarter TTL."""
        return self._ttl / 4 if self._ttl > 0 else None

    def refresh_due(self) -> bool:
        """Cheap, lock-free check for the event loop: has any key been used within
        the recent window?  If not, ``refresh_recent`` would have nothing to do."""
        return self._ttl > 0 and self._clock() - self._latest_use < self._recent_window

    def refresh_recent(self) -> int:
        """Re-validate, without the secret, the cached entries used within the recent
        window that are at least half their TTL old; re-cache the valid ones as of
        when their check began and drop the others.  Reads the store: run it on the
        store thread.  Returns how many entries were refreshed."""
        if self._ttl <= 0:
            return 0
        now = self._clock()
        with self._lock:
            due = [
                (used, digest, entry)
                for digest, used in self._last_used.items()
                if now - used < self._recent_window
                and (entry := self._cache.get(digest)) is not None
                and self._ttl / 2 <= now - entry.cached_at < self._ttl
            ]
        refreshed = 0
        for _, digest, entry in heapq.nlargest(self._refresh_limit, due, key=lambda d: d[0]):
            with self._lock:
                epoch = self._epoch
                verified = self._verified.get(digest)
            # Taken before the reads: the new entry's age covers everything they saw.
            started = self._clock()
            checked = self._recheck(entry, verified) if verified is not None else None
            with self._lock:
                if self._cache.get(digest) is not entry:
                    continue  # aged out, invalidated or re-resolved meanwhile
                if checked is None:
                    self._drop(digest, entry.key_id)  # the next request resolves in full
                elif self._epoch == epoch:  # an invalidation that raced the reads wins
                    identity, expire = checked
                    self._cache[digest] = replace(entry, identity=identity, expire=expire,
                                                  cached_at=started)
                    refreshed += 1
        return refreshed

    def invalidate_key(self, key_id: int) -> None:
        """Forget cached resolutions of ``key_id`` now (deleted/edited key, removed
        collaborator, banned creator)."""
        with self._lock:
            self._epoch += 1
            for digest in self._digests_by_key.pop(key_id, ()):
                self._cache.pop(digest, None)
                self._last_used.pop(digest, None)
            self._last_touch.pop(key_id, None)
            self._row_hashes.pop(key_id, None)

    def invalidate_all(self) -> None:
        with self._lock:
            self._invalidate_all()

    # -- internals ----------------------------------------------------------

    def _invalidate_all(self) -> None:
        """Caller holds the lock."""
        self._epoch += 1
        self._cache.clear()
        self._digests_by_key.clear()
        self._last_used.clear()
        self._row_hashes.clear()

    def _sync_revocations(self) -> None:
        """Caller holds the lock.  Drop everything cached when the store counted a
        revocation made by another process since the last look (this process's own
        paths drop exactly what they change: ``invalidate_key`` / ``invalidate_all``)."""
        now = self._revocation_count()
        if now != self._revocations:
            seen, self._revocations = self._revocations, now
            if self._store.revoked_elsewhere(seen, now):
                self._invalidate_all()

    def _resolve_uncached(self, key: str, digest: str,
                          allow_slow: bool = True) -> tuple[Identity, int, datetime | None] | None:
        # Spec 2.3 step 2 (legacy plain-text keys in accounts.api_key, matched by
        # string equality) is deliberately NOT supported: we never store secrets in
        # plain text, and there are no legacy keys to honour.
        key_id = key_row_id(key)
        if key_id is None:
            return None
        row = self._store.get_api_key(key_id)
        if row is None:
            return None
        stored = row["hash"]
        if is_well_formed(stored) and not needs_upgrade(stored):  # legacy: never on the loop
            with self._lock:
                if len(self._row_hashes) >= _SWEEP_THRESHOLD:
                    self._row_hashes.clear()   # rare; costs one more read per key
                self._row_hashes[key_id] = stored
        # The secret first: a bad one costs this one read and one HMAC round, no more.
        if not self._secret_matches(key, digest, key_id, row["hash"], allow_slow):
            return None
        account = self._store.get_account(row["account_id"])
        if account is None or account["banned"]:
            return None
        project_id = row["project_id"]
        if project_id is not None and not self._store.is_collaborator(project_id, row["account_id"]):
            # The creator left the project: the key must not outlive their access.
            self._revoke(key_id)
            return None
        if _expired(row["expire"], self._wall_clock()):
            self._revoke(key_id)
            return None
        return _identity(row, account), key_id, row["expire"]

    def _recheck(self, entry: _Entry, verified: str) -> tuple[Identity, datetime | None] | None:
        """What ``_resolve_uncached`` checks, minus the secret: the stored hash must
        still be the one the secret was verified against.  Never revokes: a failing
        key is only dropped from the cache, and its next request revokes as usual."""
        row = self._store.get_api_key(entry.key_id)
        if row is None or row["hash"] != verified:
            return None
        account = self._store.get_account(row["account_id"])
        if account is None or account["banned"]:
            return None
        project_id = row["project_id"]
        if project_id is not None and not self._store.is_collaborator(project_id, row["account_id"]):
            return None
        if _expired(row["expire"], self._wall_clock()):
            return None
        return _identity(row, account), row["expire"]

    def _secret_matches(self, key: str, digest: str, key_id: int, stored_hash: str,
                        allow_slow: bool = True) -> bool:
        with self._lock:
            if self._verified.get(digest) == stored_hash:
                return True
        if not allow_slow and needs_upgrade(stored_hash):
            raise _SlowCheckNeeded
        if not verify_secret(key, stored_hash):
            return False
        if needs_upgrade(stored_hash):  # a legacy 1000-round hash: pay for it only this once
            stored_hash = upgrade_hash(self._store, key_id, key, stored_hash) or stored_hash
        with self._lock:
            if len(self._verified) >= _SWEEP_THRESHOLD:
                self._verified.clear()   # rare; only costs one more hash per key
            self._verified[digest] = stored_hash
        return True

    def _fresh_entry(self, digest: str, now: float) -> _Entry | None:
        """Caller holds the lock."""
        entry = self._cache.get(digest)
        if entry is None:
            return None
        if now - entry.cached_at >= self._ttl:
            self._drop(digest, entry.key_id)
            return None
        return entry

    def _insert(self, digest: str, entry: _Entry) -> None:
        """Caller holds the lock."""
        if len(self._cache) >= _SWEEP_THRESHOLD:
            self._sweep(entry.cached_at)
        self._cache[digest] = entry
        self._digests_by_key.setdefault(entry.key_id, set()).add(digest)

    def _mark_used(self, digest: str, now: float) -> None:
        """Caller holds the lock."""
        self._last_used[digest] = now
        self._latest_use = now

    def _drop(self, digest: str, key_id: int) -> None:
        """Caller holds the lock."""
        self._cache.pop(digest, None)
        self._last_used.pop(digest, None)
        digests = self._digests_by_key.get(key_id)
        if digests is not None:
            digests.discard(digest)
            if not digests:
                del self._digests_by_key[key_id]

    def _sweep(self, now: float) -> None:
        """Caller holds the lock."""
        for digest, entry in list(self._cache.items()):
            if now - entry.cached_at >= self._ttl:
                self._drop(digest, entry.key_id)
        for key_id, last in list(self._last_touch.items()):
            if now - last >= self._touch_interval:
                del self._last_touch[key_id]

    def _revoke(self, key_id: int) -> None:
        self.invalidate_key(key_id)
        self._store.delete_api_key(key_id)

    def _touch(self, key_id: int, now: float) -> None:
        with self._lock:
            last = self._last_touch.get(key_id)
            if last is not None and now - last < self._touch_interval:
                return
            self._last_touch[key_id] = now
        try:
            self._store.touch_api_key(key_id, self._wall_clock())
        except SQLAlchemyError:
            # Bookkeeping only: a busy database must not turn into a failed login.
            log.warning("could not record last_active for api key %s", key_id, exc_info=True)


def _identity(row: dict[str, Any], account: dict[str, Any]) -> Identity:
    if row["project_id"] is not None:
        return Identity(account_id=None, project_id=row["project_id"], key_id=row["id"])
    return Identity(account_id=row["account_id"], project_id=None, key_id=row["id"],
                    is_admin=bool(account["is_admin"]))


def _expired(expire: datetime | None, now: datetime) -> bool:
    return expire is not None and expire <= now
