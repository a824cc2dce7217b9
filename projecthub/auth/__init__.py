"""Authentication: API key secrets and resolving a presented key to an identity."""

from .keys import generate_secret, hash_secret, key_row_id, verify_secret
from .resolve import Identity, KeyResolver

__all__ = [
    "Identity",
    "KeyResolver",
    "generate_secret",
    "hash_secret",
    "key_row_id",
    "verify_secret",
]
