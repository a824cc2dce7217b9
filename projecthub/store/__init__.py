"""Persistent registry of the hub (SQLite by default, PostgreSQL for scale-out)."""

from .migrations import LATEST_VERSION, SchemaTooNewError
from .bounds import FieldTooLong
from .engine import StoreUnavailable
from .store import API_KEYS_PER_ACCOUNT, AccountLimitReached, Store, UidRangeExhausted

__all__ = [
    "API_KEYS_PER_ACCOUNT",
    "AccountLimitReached",
    "FieldTooLong",
    "LATEST_VERSION",
    "SchemaTooNewError",
    "StoreUnavailable",
    "Store",
    "UidRangeExhausted",
]
