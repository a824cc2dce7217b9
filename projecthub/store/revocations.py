"""A counter, shared by every process that opens one SQLite store, of changes that take away
access: a key deleted, rotated or edited, an account disabled or demoted, a collaborator removed.

Why: the hub caches key resolutions for a couple of seconds (``auth/resolve.py``), and a
revocation made by *another* process (``projecthub key revoke`` while the server runs) cannot
call the server's ``invalidate_*``.  The store bumps this counter after each such commit; the
key resolver compares it with the value it last saw before it answers from its cache, and a
change drops the whole cache, so the next request of every key reads the store again.

Reading it must cost next to nothing: it is checked on every request.  The counter is 8 bytes
in a file beside the database (``hub.db.revocations``, 0600 in the private data dir), and
readers map that file read-only and read the shared page: ~40 ns, against ~1.7 µs for a
``stat`` of a marker file.  Writers increment it under ``flock``, after their transaction
committed (bumping first could let a reader re-cache the old state it reads next).

Changes made by the reader's own process are not counted against it (``changed_elsewhere``):
the server's own paths already drop exactly the keys they change (``invalidate_key``), and a
whole-cache drop on each of them would let any user, deleting their own keys in a loop, make
every other key's next request pay a store read (~1.4 ms on the one store thread each).

A torn or stale read can only cause a spurious invalidation or see the change on the next
request, microseconds later.  Stores that are not a SQLite file (PostgreSQL, in-memory) have
no counter (``value`` is always 0): there, revocations by another process take effect within
the cache TTL, revocations inside the server at once.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import struct
import threading
from pathlib import Path

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

_COUNTER = struct.Struct("<Q")
SUFFIX = ".revocations"


def counter_path(url: str) -> Path | None:
    """The counter file of the store at ``url``: beside a SQLite file, else None."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    if parsed.database.startswith("file:"):   # a URI filename: no plain path to sit beside
        return None
    return Path(parsed.database + SUFFIX)


class RevocationCounter:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._map: mmap.mmap | None = None
        self._lock = threading.Lock()
        self._unpack = _COUNTER.unpack_from
        # values this process's own bumps wrote (see changed_elsewhere)
        self._own: set[int] = set()

    def _open(self) -> int:
        assert self.path is not None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            if os.fstat(fd).st_size < _COUNTER.size:   # new: 8 zero bytes (never shrinks)
                os.ftruncate(fd, _COUNTER.size)
        except OSError:
            os.close(fd)
            raise
        return fd

    def value(self) -> int:
        """The current count; the first call maps the file (creating it if needed)."""
        mapped = self._map
        if mapped is None:
            if self.path is None:
                return 0
            with self._lock:
                if self._map is None:
                    try:
                        fd = self._open()
                        try:
                            self._map = mmap.mmap(fd, _COUNTER.size, prot=mmap.PROT_READ)
                        finally:
                            os.close(fd)
                    except OSError as exc:
                        log.warning("revocations made by other processes will take effect only "
                                    "after the key cache's TTL: cannot map %s: %s", self.path, exc)
                        self.path = None
                        return 0
                mapped = self._map
        return self._unpack(mapped, 0)[0]

    def bump(self) -> None:
        """Count one more revocation (call it after the transaction committed)."""
        if self.path is None:
            return
        try:
            fd = self._open()
        except OSError as exc:
            log.warning("could not record a revocation in %s: %s", self.path, exc)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            (count,) = _COUNTER.unpack(os.pread(fd, _COUNTER.size, 0))
            written = (count + 1) % 2**64
            os.pwrite(fd, _COUNTER.pack(written), 0)
        finally:
            os.close(fd)   # releases the flock
        # Recorded only after the write: a reader in between takes it for another process's
        # change (a spurious invalidation), never the other way round.
        with self._lock:
            if len(self._own) > 100_000:
                self._own.clear()   # only costs spurious invalidations
            self._own.add(written)

    def changed_elsewhere(self, seen: int, now: int) -> bool:
        """Did another process bump the counter between the values ``seen`` and ``now``?
        True unless every step in between was one of this process's own bumps."""
        if now < seen or now - seen > 4096:
            return True
        with self._lock:
            own = self._own
            foreign = any(value not in own for value in range(seen + 1, now + 1))
            self._own = {value for value in own if value > now}
        return foreign
