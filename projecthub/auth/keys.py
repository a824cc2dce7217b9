"""API key secrets in CoCalc's exact format (reference spec 2.1-2.2).

A secret is ``sk-`` + 16 random alphanumerics + the 6-character base-62 encoding
of the key's row id, so a presented key names its own row and resolving it needs
no scan.  Only a salted, iterated HMAC-SHA512 of the secret is stored, in the
``sha512$<salt>$<iterations>$<digest>`` layout of npm ``password-hash`` so that
hashes are interchangeable with CoCalc's.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string

BASE62_ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
_BASE62_INDEX = {ch: i for i, ch in enumerate(BASE62_ALPHABET)}
_RANDOM_ALPHABET = string.ascii_letters + string.digits

KEY_PREFIX = "sk-"
RANDOM_LEN = 16
ID_LEN = 6
KEY_LEN = len(KEY_PREFIX) + RANDOM_LEN + ID_LEN  # 25
MAX_ROW_ID = 2147483647  # CoCalc rejects decoded ids outside a signed 32-bit int

HASH_ALGORITHM = "sha512"
HASH_ITERATIONS = 1000
SALT_HEX_LEN = 32
HASH_LEN = 173  # 7 + 32 + 1 + 4 + 1 + 128
# Refuse to spend unbounded CPU on a corrupted stored iteration count.
_MAX_ITERATIONS = 100_000


def encode_base62(n: int, width: int = 6) -> str:
    """Base-62 digits of ``n`` (0-9A-Za-z), left-padded with '0' to ``width``."""
    if n < 0:
        raise ValueError("base62 encodes non-negative integers only")
    digits = []
    while n:
        n, r = divmod(n, 62)
        digits.append(BASE62_ALPHABET[r])
    return "".join(reversed(digits)).rjust(width, "0")


def decode_base62(s: str) -> int:
    """Inverse of ``encode_base62``; ValueError for empty input or foreign characters."""
    if not s:
        raise ValueError("empty base62 string")
    n = 0
    for ch in s:
        try:
            n = n * 62 + _BASE62_INDEX[ch]
        except KeyError:
            raise ValueError(f"invalid base62 character {ch!r}") from None
    return n


def generate_secret(row_id: int) -> str:
    """A fresh secret for the api_keys row ``row_id``."""
    if not 0 < row_id <= MAX_ROW_ID:
        raise ValueError(f"api key row id {row_id} out of range")
    random_part = "".join(secrets.choice(_RANDOM_ALPHABET) for _ in range(RANDOM_LEN))
    return KEY_PREFIX + random_part + encode_base62(row_id, ID_LEN)


def key_row_id(key: str) -> int | None:
    """The row id a presented key claims, or None when it cannot be a current-format key."""
    if not isinstance(key, str) or not key.startswith(KEY_PREFIX) or len(key) < 9:
        return None
    try:
        row_id = decode_base62(key[-ID_LEN:])
    except ValueError:
        return None
    return row_id if 0 <= row_id <= MAX_ROW_ID else None


def trunc(secret: str) -> str:
    """Display form kept with the key: first 3 + '...' + last 6 characters."""
    return secret[:3] + "..." + secret[-6:]


def _digest(secret: str, salt: str, iterations: int) -> str:
    key = salt.encode()
    current = secret
    for _ in range(iterations):
        current = hmac.new(key, current.encode(), hashlib.sha512).hexdigest()
    return current


def hash_secret(secret: str) -> str:
    """``sha512$<32 hex salt>$1000$<128 hex digest>`` (173 characters)."""
    salt = secrets.token_hex(SALT_HEX_LEN // 2)
    digest = _digest(secret, salt, HASH_ITERATIONS)
    return f"{HASH_ALGORITHM}${salt}${HASH_ITERATIONS}${digest}"


def verify_secret(secret: str, stored: str) -> bool:
    """True when ``stored`` is a well-formed hash of ``secret``; never raises."""
    if not isinstance(secret, str) or not isinstance(stored, str):
        return False
    parts = stored.split("$")
    if len(parts) != 4:
        return False
    algorithm, salt, iterations_text, _ = parts
    if algorithm != HASH_ALGORITHM or not (iterations_text.isascii() and iterations_text.isdigit()):
        return False
    iterations = int(iterations_text)
    if not 0 < iterations <= _MAX_ITERATIONS:
        return False
    try:
        expected = f"{algorithm}${salt}${iterations_text}${_digest(secret, salt, iterations)}"
        return hmac.compare_digest(expected.encode(), stored.encode())
    except UnicodeEncodeError:  # lone surrogates, e.g. from a JSON "\ud800" escape
        return False
