"""The value budget of the request decoder (api/requests.py, review finding 2): the counting
pure-Python scanner used for bodies that might hold many values decodes exactly what the C
scanner does, and every body over MAX_JSON_NODES values is refused, whichever path runs."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projecthub.api.requests import MAX_JSON_NODES, HTTPError, decode_json

text = st.text(st.characters(codec="utf-8"), max_size=10)
scalars = st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | \
    st.floats(allow_nan=False, allow_infinity=False) | text
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                      st.dictionaries(text, inner, max_size=4), max_leaves=30)
# Commas inside a string push the cheap upper bound over the budget: the counting scanner runs.
PAD = "," * (MAX_JSON_NODES + 1)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_the_counting_scanner_decodes_like_json_loads(value: object) -> None:
    body = json.dumps({"pad": PAD, "v": value}).encode()
    assert decode_json(body) == json.loads(body)


@pytest.mark.parametrize("item", [b"[]", b"{}", b"1", b"1.5", b'"a"', b"true", b"null"])
def test_more_values_than_the_budget_are_refused_fast(item: bytes) -> None:
    body = b'{"x":[' + b",".join([item] * (MAX_JSON_NODES + 10)) + b"]}"
    start = time.monotonic()
    with pytest.raises(HTTPError) as err:
        decode_json(body)
    assert err.value.status == 400 and f"more than {MAX_JSON_NODES} values" in err.value.message
    assert time.monotonic() - start < 2


def test_16_mib_of_empty_arrays_stops_at_the_budget() -> None:
    body = b'{"x":[' + b"[]," * (16 * 2**20 // 3 - 10) + b"[]]}"
    start = time.monotonic()
    with pytest.raises(HTTPError):
        decode_json(body)
    assert time.monotonic() - start < 1.5     # json.loads alone took ~1.9 s, the old walk ~3 s more


def test_a_big_string_with_brackets_and_commas_is_fine() -> None:
    content = "f(a, [b], {c}),\n" * (2 * 2**20)
    assert decode_json(json.dumps({"content": content}).encode()) == {"content": content}
