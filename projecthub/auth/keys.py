"""API key secrets in CoCalc's exact format (reference spec 2.1-2.2), and their stored hashes.

A secret is ``sk-`` + 16 random alphanumerics + the 6-character base-62 encoding
of the key's row id, so a presented key names its own row and resolving it needs
no scan.  Only a salted HMAC-SHA512 of the secret is stored, in the
``sha512$<salt>$<iterations>$<digest>`` layout of npm ``password-hash``, so that
hashes stay interchangeable with CoCalc's (its verifier reads the iteration count
from the stored value).

Why one round, not CoCalc's 1000: a slow KDF exists to make offline guessing of
*low-entropy* secrets (human passwords) expensive after a database leak.  Our
secrets are 16 characters drawn by ``secrets.choice`` from 62: about 95 bits of
CSPRNG output.  Even at 10**12 guesses a second, finding one takes ~10**9 years
with a single fast round, so the extra rounds add nothing against a leak.  What they
did add was a lever for denial of service: every presented secret for a real key id
cost the server 1000 HMAC rounds (~2 ms) on the store thread, so a few dozen
clients spraying bad secrets slowed every other user down.  One round costs ~2 µs.

Hashes written before this change (1000 rounds) still verify (``verify_secret``
reads the count), and ``needs_upgrade`` tells the resolver to re-hash them in the
fast format on their next successful use (``auth/upgrade.py``).  Iteration counts
above 1000 are refused, never computed: a corrupted or hostile stored value must not
buy unbounded CPU.
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
HASH_ITERATIONS = 1  # see the module docstring: a fast hash for a high-entropy secret
LEGACY_ITERATIONS = 1000  # CoCalc's count, and ours before: still verified, then upgraded
SALT_HEX_LEN = 32
HASH_LEN = 170  # 7 + 32 + 1 + 1 + 1 + 128 (the column holds 173: legacy hashes)
# Refuse to spend more CPU than a legacy hash on a corrupted stored iteration count.
_MAX_ITERATIONS = LEGACY_ITERATIONS


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
    """``sha512$<32 hex salt>$1$<128 hex digest>`` (170 characters)."""
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


def is_well_formed(stored: str) -> bool:
    """True for a complete ``sha512$<salt>$<n>$<128 hex>`` value (not the empty
    placeholder a row holds for a moment while its key is being created)."""
    parts = stored.split("$") if isinstance(stored, str) else []
    return (len(parts) == 4 and parts[0] == HASH_ALGORITHM and len(parts[3]) == 128
            and parts[2].isascii() and parts[2].isdigit())


def needs_upgrade(stored: str) -> bool:
    """True for a well-formed hash that is not in the current (fast) format."""
    parts = stored.split("$") if isinstance(stored, str) else []
    return len(parts) == 4 and parts[0] == HASH_ALGORITHM and parts[2] != str(HASH_ITERATIONS)
