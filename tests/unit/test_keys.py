"""API key secret format and hashing (reference spec 2.1-2.2)."""

from __future__ import annotations

import re

import pytest

from projecthub.auth.keys import (
    MAX_ROW_ID,
    decode_base62,
    encode_base62,
    generate_secret,
    hash_secret,
    key_row_id,
    trunc,
    needs_upgrade,
    verify_secret,
)

KEY_RE = re.compile(r"^sk-[A-Za-z0-9]{16}[0-9A-Za-z]{6}$")
# One HMAC round: the secret is ~95 random bits, a slow KDF only fed denial of service (keys.py).
HASH_RE = re.compile(r"^sha512\$[0-9a-f]{32}\$1\$[0-9a-f]{128}$")

# Computed with Node's crypto (what npm password-hash uses), not with our code:
#   h = secret; 1000 times: h = createHmac("sha512", salt).update(h).digest("hex")
NODE_SECRET = "sk-abcdefghijklmnop00001a"
NODE_HASH = (
    "sha512$0123456789abcdef0123456789abcdef$1000$"
    "671918bf1852a901635050e50f7b2bf70d061ff4ce4c522b57239d2fa7f07ec0"
    "c68985e5d2589a4a736716b62359d614e0311ed0f357dfb4c9f87cb19c288dcb"
)


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "000000"), (9, "000009"), (10, "00000A"), (35, "00000Z"), (36, "00000a"),
     (61, "00000z"), (62, "000010"), (106, "00001i"), (62**6 - 1, "zzzzzz")],
)
def test_base62_known_values(n: int, text: str) -> None:
    assert encode_base62(n) == text
    assert decode_base62(text) == n


def test_base62_round_trip_and_width() -> None:
    for n in [1, 2, 61, 62, 3843, 3844, 123456789, MAX_ROW_ID]:
        assert decode_base62(encode_base62(n)) == n
    assert encode_base62(5, width=3) == "005"
    assert encode_base62(62**6) == "1000000"  # wider than width: not truncated


@pytest.mark.parametrize("bad", ["", "abc-", "00 001", "é"])
def test_decode_base62_rejects_foreign_characters(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_base62(bad)


def test_encode_base62_rejects_negative() -> None:
    with pytest.raises(ValueError):
        encode_base62(-1)


def test_generate_secret_format() -> None:
    for row_id in [1, 90, 62**3, MAX_ROW_ID]:
        secret = generate_secret(row_id)
        assert len(secret) == 25
        assert KEY_RE.match(secret)
        assert secret.endswith(encode_base62(row_id))
        assert key_row_id(secret) == row_id
    assert generate_secret(7) != generate_secret(7)  # 16 random characters


@pytest.mark.parametrize("row_id", [0, -1, MAX_ROW_ID + 1])
def test_generate_secret_rejects_bad_ids(row_id: int) -> None:
    with pytest.raises(ValueError):
        generate_secret(row_id)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("sk-abcdefghijklmnop00001a", 98),
        ("sk-000001", 1),  # shortest accepted: 9 characters
        ("sk-00001", None),  # 8 characters
        ("sk_abcdefghijklmnop00001a", None),  # legacy prefix: not a current key
        ("pk-abcdefghijklmnop00001a", None),
        ("sk-abcdefghijklmnop0000-a", None),  # not base62
        ("sk-abcdefghijklmnopzzzzzz", None),  # 62**6-1 > 2147483647
        ("sk-abcdefghijklmnop2LKcb1", MAX_ROW_ID),
        ("sk-abcdefghijklmnop2LKcb2", None),
        ("", None),
    ],
)
def test_key_row_id(key: str, expected: int | None) -> None:
    assert key_row_id(key) == expected


def test_key_row_id_non_string() -> None:
    assert key_row_id(None) is None  # type: ignore[arg-type]
    assert key_row_id(12345) is None  # type: ignore[arg-type]


def test_trunc() -> None:
    assert trunc("sk-abcdefghijklmnop00001a") == "sk-...00001a"
    assert len(trunc(generate_secret(5))) <= 16


def test_hash_format() -> None:
    secret = generate_secret(3)
    stored = hash_secret(secret)
    assert len(stored) == 170
    assert HASH_RE.match(stored)
    assert not needs_upgrade(stored)
    assert hash_secret(secret) != stored  # fresh salt each time


def test_verify_matches_node_reference_vector() -> None:
    # a legacy (and CoCalc) 1000-round hash still verifies, and is marked for upgrade
    assert verify_secret(NODE_SECRET, NODE_HASH)
    assert not verify_secret(NODE_SECRET[:-1] + "b", NODE_HASH)
    assert needs_upgrade(NODE_HASH)
    assert not needs_upgrade("") and not needs_upgrade(None)  # type: ignore[arg-type]


def test_one_round_matches_the_password_hash_layout() -> None:
    # what npm password-hash (CoCalc's verifier) computes for iterations=1
    import hashlib
    import hmac
    salt = "0123456789abcdef0123456789abcdef"
    digest = hmac.new(salt.encode(), NODE_SECRET.encode(), hashlib.sha512).hexdigest()
    assert verify_secret(NODE_SECRET, f"sha512${salt}$1${digest}")


def test_verify_true_and_false() -> None:
    secret = generate_secret(42)
    stored = hash_secret(secret)
    assert verify_secret(secret, stored)
    assert not verify_secret(secret + "x", stored)
    assert not verify_secret(generate_secret(42), stored)
    assert not verify_secret("", stored)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "sha512",
        NODE_HASH.replace("$1000$", "$abc$"),
        NODE_HASH.replace("$1000$", "$0$"),
        NODE_HASH.replace("$1000$", "$-5$"),
        NODE_HASH.replace("$1000$", "$99999999$"),  # absurd cost: refused, not computed
        NODE_HASH.replace("$1000$", "$1001$"),  # more than a legacy hash costs: refused
        NODE_HASH.replace("sha512$", "md5$"),
        NODE_HASH + "$extra",
        NODE_HASH[:-1],
        NODE_HASH.upper(),
    ],
)
def test_verify_malformed_stored_values(stored: str) -> None:
    assert verify_secret(NODE_SECRET, stored) is False


def test_verify_odd_inputs_never_raise() -> None:
    assert verify_secret(None, NODE_HASH) is False  # type: ignore[arg-type]
    assert verify_secret(NODE_SECRET, None) is False  # type: ignore[arg-type]
    assert verify_secret("sk-\ud800", NODE_HASH) is False
    assert verify_secret(NODE_SECRET, "sha512$\ud800$1000$x") is False
