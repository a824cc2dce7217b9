"""Properties of the one request decoder (api/requests.py) every surface uses: whatever the
bytes, the answer is a value every later consumer can encode, or HTTPError 400 with a
message; never another exception (which would be a 500)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from projecthub.api.requests import (MAX_FORM_FIELDS, MAX_JSON_DEPTH, HTTPError, decode_json,
                                     parse_form, parse_json_object)

# Every code point, lone surrogates included: what a JSON "\uXXXX" escape can produce.
any_text = st.text(st.characters(codec=None, categories=None), max_size=20)
json_scalars = st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | \
    st.floats(allow_nan=False, allow_infinity=False) | any_text
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(any_text, inner, max_size=4), max_leaves=30)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _safe(value: Any) -> None:
    """What every consumer needs: strict UTF-8 JSON encodes it, and it is shallow."""
    json.dumps(value, ensure_ascii=False).encode("utf-8")
    assert _depth(value) <= MAX_JSON_DEPTH


@SETTINGS
@given(st.binary(max_size=200))
@example(b'"\\ud800"')
@example(b'{"title": "\\udfff"}')
@example(b'\xed\xa0\x80')  # a surrogate encoded directly in UTF-8
@example(b"[" * 100_000 + b"]" * 100_000)
@example(b'{"a": NaN}')
@example(b'[1e999]')
@example(b"9" * 5000)
def test_any_bytes_decode_to_a_safe_value_or_400(body: bytes) -> None:
    try:
        value = decode_json(body)
    except HTTPError as exc:
        assert exc.status == 400 and exc.message
        return
    _safe(value)


@SETTINGS
@given(json_values)
def test_json_round_trips_exactly_when_it_is_valid(value: Any) -> None:
    body = json.dumps(value).encode()  # ensure_ascii: surrogates travel as \uXXXX escapes
    valid = all(_valid_unicode(s) for s in _strings(value)) and _depth(value) <= MAX_JSON_DEPTH
    if valid:
        assert decode_json(body) == value
    else:
        with pytest.raises(HTTPError) as info:
            decode_json(body)
        assert info.value.status == 400


@SETTINGS
@given(st.integers(1, 3 * MAX_JSON_DEPTH), st.sampled_from(["[", '{"k":']))
def test_depth_is_bounded_exactly(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    body = (opener * depth + "1" + closer * depth).encode()
    if depth <= MAX_JSON_DEPTH:
        assert _depth(decode_json(body)) == depth
    else:
        with pytest.raises(HTTPError, match="nested deeper"):
            decode_json(body)


@SETTINGS
@given(any_text, any_text)
def test_surrogate_anywhere_in_an_object_is_400(key: str, text: str) -> None:
    for body in (json.dumps({key: text}), json.dumps({"a": [{"b": text}], key: 1})):
        if _valid_unicode(key) and _valid_unicode(text):
            assert parse_json_object(body.encode())
        else:
            with pytest.raises(HTTPError, match="unpaired surrogate"):
                parse_json_object(body.encode())


@SETTINGS
@given(st.binary(max_size=200))
@example(b"command=%ED%A0%80")
@example(b"a=%ff&b=1")
@example(b"&".join(b"f%d=1" % i for i in range(MAX_FORM_FIELDS + 1)))
def test_form_bodies_decode_to_valid_strings_or_400(body: bytes) -> None:
    try:
        params = parse_form(body)
    except HTTPError as exc:
        assert exc.status == 400 and exc.message
        return
    for key, value in params.items():
        assert _valid_unicode(key) and _valid_unicode(value)


@SETTINGS
@given(st.dictionaries(any_text, any_text, max_size=5))
def test_form_round_trips_valid_text(fields: dict[str, str]) -> None:
    body = "&".join(f"{quote(k, errors='surrogatepass')}={quote(v, errors='surrogatepass')}"
                    for k, v in fields.items()).encode()
    if all(_valid_unicode(k) and _valid_unicode(v) for k, v in fields.items()):
        assert parse_form(body) == fields
    else:
        with pytest.raises(HTTPError):
            parse_form(body)
