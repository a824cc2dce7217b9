"""Turn a presented API key into an ``Identity`` (reference spec 2.3).

Verifying a secret costs 1000 HMAC rounds (~2 ms), and every API request presents
a key, so successful resolutions are cached for a couple of seconds.  The cache is
keyed by a SHA-256 of the presented key, never the key itself, and entries carry
the key's expiry so expiry is honoured even on a cache hit.  Failures are not
cached: a key created a moment ago must work at once.

When a cached resolution ages out, the key's row, account, collaborator status and
expiry are read again from the store, but the secret is not re-hashed if the stored
hash is the very one it was verified against before (``_verified``): the hash is what
made the secret cost 1000 rounds, and an unchanged hash cannot stop matching it.  So
a client that calls every few seconds pays store reads, not ~5 ms of hashing per call.

Revocations that happen elsewhere (key deleted or edited, collaborator removed,
account banned) are made effective immediately by the server calling
``invalidate_key`` / ``invalidate_all``; the TTL only bounds staleness when some
path forgets to.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from .keys import key_row_id, verify_secret

if TYPE_CHECKING:  # the store imports auth.keys; avoid an import cycle at runtime
    from ..store import Store

log = logging.getLogger(__name__)

# last_active is informational; writing it on every request would put a database
# write on the hot path, so it is refreshed at most this often per key.
TOUCH_INTERVAL = 60.0
# Above this many cache entries, stale ones are swept on insert.
_SWEEP_THRESHOLD = 4096


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
        self._digests_by_key: dict[int, set[str]] = {}
        self._last_touch: dict[int, float] = {}
        # Bumped by every invalidation, so a resolution that raced with one is not cached.
        self._epoch = 0

    # -- public -------------------------------------------------------------

    def resolve(self, key: str | None) -> Identity | None:
        """The identity behind ``key``, or None for "not authenticated".

        May write to the store (delete an expired or orphaned key, refresh
        ``last_active``), so call it where store calls are allowed.
        """
        if not isinstance(key, str) or not key:
            return None
        digest = _digest(key)
        now = self._clock()
        with self._lock:
            entry = self._fresh_entry(digest, now)
            epoch = self._epoch
        if entry is not None:
            if _expired(entry.expire, self._wall_clock()):
                self._revoke(entry.key_id)
                return None
            self._touch(entry.key_id, now)
            return entry.identity

        found = self._resolve_uncached(key, digest)
        if found is None:
            return None
        identity, key_id, expire = found
        self._touch(key_id, now)
        if self._ttl > 0:
            with self._lock:
                if self._epoch == epoch:
                    self._insert(digest, _Entry(identity, key_id, expire, now))
        return identity

    def peek(self, key: str | None) -> Identity | None:
        """Answer from memory only: the cached identity when it is fresh, unexpired
        and needs no ``last_active`` write; otherwise None, meaning "call
        ``resolve`` (on the store thread)".  Lets the event loop skip a thread hop
        on the common path."""
        if not isinstance(key, str) or not key:
            return None
        now = self._clock()
        with self._lock:
            entry = self._fresh_entry(_digest(key), now)
            if entry is None or _expired(entry.expire, self._wall_clock()):
                return None
            last = self._last_touch.get(entry.key_id)
            if last is None or now - last >= self._touch_interval:
                return None
            return entry.identity

    def invalidate_key(self, key_id: int) -> None:
        """Forget cached resolutions of ``key_id`` now (deleted/edited key, removed
        collaborator, banned creator)."""
        with self._lock:
            self._epoch += 1
            for digest in self._digests_by_key.pop(key_id, ()):
                self._cache.pop(digest, None)
            self._last_touch.pop(key_id, None)

    def invalidate_all(self) -> None:
        with self._lock:
            self._epoch += 1
            self._cache.clear()
            self._digests_by_key.clear()

    # -- internals ----------------------------------------------------------

    def _resolve_uncached(self, key: str, digest: str) -> tuple[Identity, int, datetime | None] | None:
        # Spec 2.3 step 2 (legacy plain-text keys in accounts.api_key, matched by
        # string equality) is deliberately NOT supported: we never store secrets in
        # plain text, and there are no legacy keys to honour.
        key_id = key_row_id(key)
        if key_id is None:
            return None
        row = self._store.get_api_key(key_id)
        if row is None:
            return None
        account = self._store.get_account(row["account_id"])
        if account is None or account["banned"]:
            return None
        if not self._secret_matches(key, digest, row["hash"]):
            return None
        project_id = row["project_id"]
        if project_id is not None and not self._store.is_collaborator(project_id, row["account_id"]):
            # The creator left the project: the key must not outlive their access.
            self._revoke(key_id)
            return None
        if _expired(row["expire"], self._wall_clock()):
            self._revoke(key_id)
            return None
        if project_id is not None:
            identity = Identity(account_id=None, project_id=project_id, key_id=key_id)
        else:
            identity = Identity(
                account_id=row["account_id"],
                project_id=None,
                key_id=key_id,
                is_admin=bool(account["is_admin"]),
            )
        return identity, key_id, row["expire"]

    def _secret_matches(self, key: str, digest: str, stored_hash: str) -> bool:
        with self._lock:
            if self._verified.get(digest) == stored_hash:
                return True
        if not verify_secret(key, stored_hash):
            return False
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

    def _drop(self, digest: str, key_id: int) -> None:
        """Caller holds the lock."""
        self._cache.pop(digest, None)
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


def _expired(expire: datetime | None, now: datetime) -> bool:
    return expire is not None and expire <= now
