"""Upper bounds of every free-text field the hub stores, and the one check that enforces them.

A 10 MiB project title was once accepted: it then rode along in every project listing.
Each string a caller can put into the registry (titles, descriptions, key names, account
names, e-mail addresses) is bounded here, in characters, and checked by the store itself
(so no surface can forget) as well as by the hub before it (for a clean 400 /
``{"error"}`` that names the field and its maximum).  NUL and unpaired surrogates are
refused too: PostgreSQL rejects NUL in text, and SQLite cannot encode a lone surrogate.
"""

from __future__ import annotations

from typing import Final

TITLE_MAX: Final = 1024
DESCRIPTION_MAX: Final = 16384
API_KEY_NAME_MAX: Final = 128
NAME_MAX: Final = 254          # first_name, last_name (as the schema's String(254))
EMAIL_MAX: Final = 254         # RFC 5321's path limit

MAX_CHARS: Final[dict[str, int]] = {
    "title": TITLE_MAX,
    "description": DESCRIPTION_MAX,
    "name": API_KEY_NAME_MAX,      # an API key's name
    "first_name": NAME_MAX,
    "last_name": NAME_MAX,
    "email": EMAIL_MAX,
}


class FieldTooLong(ValueError):
    """A stored string field is too long or not storable text; the message names it."""


def check_text(field: str, value: object, max_chars: int | None = None) -> str:
    """``value`` if it is a storable string of at most the field's maximum characters."""
    limit = MAX_CHARS[field] if max_chars is None else max_chars
    if not isinstance(value, str):
        raise FieldTooLong(f"{field} must be a string of at most {limit} characters")
    if len(value) > limit:
        raise FieldTooLong(f"{field} must be at most {limit} characters (got {len(value)})")
    if "\x00" in value:
        raise FieldTooLong(f"{field} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FieldTooLong(f"{field} must be valid Unicode text (no unpaired surrogates)") from None
    return value
