"""Re-hash a legacy (1000-round) API key hash in the fast format on its next successful use.

The secret is needed to compute the new hash, and the server only ever sees it when the
key is presented, so the upgrade happens lazily, in the resolver, right after the old
hash verified.  The update is a compare-and-swap on the old hash: a key deleted or
re-created meanwhile is never overwritten.  It lives here rather than in the store
because it is part of how keys are verified (``keys.py``), and it needs only the
store's public engine and schema.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

from .keys import hash_secret

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger(__name__)


def upgrade_hash(store: Store, key_id: int, secret: str, old_hash: str) -> str | None:
    """Store a fast-format hash of ``secret`` in place of ``old_hash``; the new hash, or
    None when the row changed meanwhile or the write failed (the old hash keeps working)."""
    from ..store.schema import api_keys  # the store imports auth.keys: import lazily
    new_hash = hash_secret(secret)
    try:
        with store.engine.begin() as conn:
            done = conn.execute(update(api_keys)
                                .where(api_keys.c.id == key_id, api_keys.c.hash == old_hash)
                                .values(hash=new_hash)).rowcount
    except SQLAlchemyError:
        # Bookkeeping only (e.g. a full disk): the legacy hash still verifies next time.
        log.warning("could not upgrade the hash of api key %s", key_id, exc_info=True)
        return None
    return new_hash if done else None
