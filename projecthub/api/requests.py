"""Reading requests safely: bounded bodies, the one JSON/form decoder, API keys and the throttle.

Every surface (v3, v1, v2, conat) decodes bodies here, so the rules hold everywhere: a
body that is not strict UTF-8 JSON (or form data), nests deeper than MAX_JSON_DEPTH, has
more than MAX_JSON_NODES values, or holds an unpaired surrogate (``"\\ud800"``) is
HTTPError 400 with a message, before any handler or store sees it; nothing decoded here
can make a later encoder raise.

The work is bounded, not just the bytes: every surface authenticates from the headers
before it reads a body (an anonymous client never gets a body budget); a body that might
hold many values is decoded by the pure-Python scanner, which counts values and stops at
the budget (and lets other threads run while it works); bodies over DECODE_INLINE_BYTES
are decoded in a worker thread, at most DECODE_SLOTS at a time, so the event loop stays
responsive and the memory of decodes in progress stays bounded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import re
from json.decoder import JSONArray, JSONObject
from json.scanner import py_make_scanner
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from ..auth.resolve import SLOW_CHECK
from ..auth.throttle import BadKeyThrottle
from ..auth.keys import key_row_id
from ..errors import RemoteError
from ..observability.audit import audit_event
from ..observability.requestlog import note_identity

if TYPE_CHECKING:
    from ..auth.resolve import Identity

__all__ = ["BadKeyThrottle", "HTTPError", "api_key_from", "authenticate_key", "client_address",
           "decode_json", "decode_object", "decode_params", "parse_form", "parse_json_object", "parse_params", "read_body"]


class HTTPError(Exception):
    """A request that never reaches a handler: answered with ``status`` and ``{"error": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise HTTPError(413, f"request body exceeds the limit of {limit} bytes")
        except ValueError:
            raise HTTPError(400, "invalid Content-Length header")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # chunked bodies have no Content-Length: count as they arrive
            raise HTTPError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# Deepest JSON nesting a request body may have.  Real requests nest a handful of levels;
# the bound keeps every later consumer (json/msgpack encoders, recursive validators) far
# from Python's recursion limit.
MAX_JSON_DEPTH = 64
# Most values (arrays, objects, strings, numbers, literals) a JSON body may hold.  Real
# calls hold a few dozen; a 16 MiB body of ``[[],[],...]`` holds 5.6 million, and building
# them took seconds of CPU and ~800 MiB.
MAX_JSON_NODES = 100_000
# Bodies up to this size are decoded on the event loop (well under a millisecond of work
# per KiB); bigger ones in a worker thread, at most DECODE_SLOTS at once.
DECODE_INLINE_BYTES = 256 * 2**10
DECODE_SLOTS = 2
_decode_slots: asyncio.Semaphore | None = None
# Most fields a form-encoded (v1/v2) body may have.
MAX_FORM_FIELDS = 1000
# A \uD800-\uDFFF escape: the only way a lone surrogate gets into a strictly decoded body.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _no_constant(name: str) -> Any:
    raise HTTPError(400, f"malformed JSON body: {name} is not a JSON number")


def _int64(text: str) -> int:
    if len(text) > 20 or not -2**63 <= (value := int(text)) < 2**63:  # SQLite and msgpack hold 64 bits
        raise HTTPError(400, f"malformed JSON body: integer {text[:40]} is out of range")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: not representable, and no consumer expects inf
        raise HTTPError(400, f"malformed JSON body: number {text[:40]} is out of range")
    return value


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise HTTPError(400, f"malformed JSON body: string contains an unpaired surrogate "
                             f"(\\u{ord(text[exc.start]):04x}); strings must be valid Unicode") from None


_TOO_MANY = f"malformed JSON body: more than {MAX_JSON_NODES} values"


class _CountingDecoder(json.JSONDecoder):
    """The pure-Python scanner with a value budget: every value it builds is counted and
    the decode stops at MAX_JSON_NODES, long before the objects cost much.  Strings are
    still scanned by the C ``scanstring`` (one big string is fast), and being Python code
    the scanner lets the event loop's thread run between values."""

    def __init__(self) -> None:
        super().__init__(parse_constant=_no_constant, parse_float=self._float, parse_int=self._int)
        self.nodes = 0
        self.parse_array = self._array
        self.parse_object = self._object
        self.scan_once = py_make_scanner(self)

    def _count(self) -> None:
        self.nodes += 1
        if self.nodes > MAX_JSON_NODES:
            raise HTTPError(400, _TOO_MANY)

    def _counted(self, scan_once: Any) -> Any:
        def scan(string: str, idx: int) -> Any:
            self._count()
            return scan_once(string, idx)
        return scan

    def _array(self, s_and_end: Any, scan_once: Any) -> Any:
        return JSONArray(s_and_end, self._counted(scan_once))

    def _object(self, s_and_end: Any, strict: bool, scan_once: Any, *rest: Any) -> Any:
        return JSONObject(s_and_end, strict, self._counted(scan_once), *rest)

    def _int(self, text: str) -> int:
        return _int64(text)

    def _float(self, text: str) -> float:
        return _finite_float(text)


def _value_bound(body: bytes) -> int:
    """An upper bound on the number of values in ``body`` (brackets and commas inside
    strings count too), from a few C-speed scans."""
    return body.count(b"[") + body.count(b"{") + body.count(b",") + 1


def _validate(value: Any, check_strings: bool) -> None:
    """Depth (and, when asked, lone surrogates in keys and strings), without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        nodes += len(node) + 1
        if nodes > MAX_JSON_NODES:
            raise HTTPError(400, _TOO_MANY)
        if depth > MAX_JSON_DEPTH:
            raise HTTPError(400, f"malformed JSON body: nested deeper than {MAX_JSON_DEPTH} levels")
        if type(node) is dict:
            if check_strings:
                for key in node:
                    _check_text(key)
            items = node.values()
        else:
            items = node
        for item in items:
            kind = type(item)
            if kind is dict or kind is list:
                stack.append((item, depth + 1))
            elif check_strings and kind is str:
                _check_text(item)


def decode_json(body: bytes) -> Any:
    """The one JSON decoder for request bodies: strict UTF-8, standard JSON only (no NaN or
    Infinity), nesting at most MAX_JSON_DEPTH, no unpaired surrogates anywhere.  Anything
    else is HTTPError 400 with a message saying what is wrong, never another exception."""
    try:
        text = body.decode("utf-8")  # strict: encoded surrogates and stray bytes are refused
    except UnicodeDecodeError as exc:
        raise HTTPError(400, f"malformed JSON body: not valid UTF-8 at byte {exc.start}") from None
    try:
        if _value_bound(body) <= MAX_JSON_NODES:   # few values: the C scanner is safe and fast
            value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_int64)
        else:
            value = _CountingDecoder().decode(text)
    except RecursionError:  # deeper than the C parser goes: far beyond MAX_JSON_DEPTH
        raise HTTPError(400, f"malformed JSON body: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, and ints longer than Python converts
        raise HTTPError(400, f"malformed JSON body: {exc}") from None
    if isinstance(value, (dict, list)):
        # Only walk when it could matter: few brackets cannot nest deep, and without a
        # surrogate escape a strictly decoded text holds no lone surrogate.
        check_strings = _SURROGATE_ESCAPE.search(body) is not None
        if check_strings or body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH:
            _validate(value, check_strings)
    elif isinstance(value, str) and _SURROGATE_ESCAPE.search(body):
        _check_text(value)
    return value


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    value = decode_json(body)
    if not isinstance(value, dict):
        raise HTTPError(400, "the JSON body must be an object")
    return value


async def _off_loop(work: Any, body: bytes) -> Any:
    """Small bodies on the loop; big ones in a worker thread, DECODE_SLOTS at a time (the
    slots bound the memory of decodes in flight as well as the CPU)."""
    global _decode_slots
    if len(body) <= DECODE_INLINE_BYTES:
        return work(body)
    if _decode_slots is None:
        _decode_slots = asyncio.Semaphore(DECODE_SLOTS)
    async with _decode_slots:
        return await asyncio.to_thread(work, body)


async def decode_object(body: bytes) -> dict[str, Any]:
    """``parse_json_object`` without blocking the event loop on a big body."""
    return await _off_loop(parse_json_object, body)


def parse_form(body: bytes) -> dict[str, str]:
    """application/x-www-form-urlencoded, strictly: the body and every percent-decoded
    name and value must be UTF-8 (so no lone surrogate can come out), at most
    MAX_FORM_FIELDS fields; the last value of a repeated name wins."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=MAX_FORM_FIELDS)
    except UnicodeDecodeError:
        raise HTTPError(400, "malformed form body: not valid UTF-8 (after percent-decoding)") from None
    except ValueError as exc:  # max_num_fields exceeded
        raise HTTPError(400, f"malformed form body: {exc}") from None
    return dict(pairs)


def parse_params(request: Request, body: bytes) -> dict[str, Any]:
    """JSON or form-urlencoded, whichever the Content-Type says (v1 accepts both)."""
    content_type = request.headers.get("content-type", "")
    if "application/x-www-form-urlencoded" in content_type:
        return parse_form(body)
    return parse_json_object(body)


async def decode_params(request: Request, body: bytes) -> dict[str, Any]:
    """``parse_params`` without blocking the event loop on a big body."""
    return await _off_loop(lambda data: parse_params(request, data), body)


def api_key_from(request: Request) -> str:
    """Spec 1.3: Bearer token, or Basic with the key as the user name."""
    header = request.headers.get("authorization")
    if not header:
        raise RemoteError("You must provide authentication via an API key.")
    parts = header.split(None, 1)
    scheme = parts[0]
    token = parts[1].strip() if len(parts) > 1 else ""
    if scheme.lower() == "bearer":
        return token
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(token, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return ""  # undecodable credentials are simply a key that resolves to nobody
        return decoded.split(":", 1)[0]
    raise RemoteError(f"Unknown authorization type '{scheme}'")


def client_address(request: Request) -> str:
    """The TCP peer, or the proxy-reported client when the operator trusts the proxy
    (uvicorn rewrites ``client`` only then: ``projecthub serve --forwarded-allow-ips``)."""
    return request.client.host if request.client else "?"


async def authenticate_key(request: Request, key: str) -> Identity | None:
    """Resolve ``key`` for any surface, with the bad-key throttle (``auth/throttle.py``):
    the cheap checks first (memory and one HMAC round; else one row read and one HMAC
    round); a legacy hash's 1000 rounds only after the address has waited out its
    penalty; every failure recorded and answered after the address's delay."""
    hub = request.app.state.hub
    resolver = hub.resolver
    identity = resolver.peek(key)
    if identity is None and not resolver.rejects(key):  # rejects: from memory, one HMAC
        identity = await hub.db.run(resolver.resolve, key, False)
    throttle: BadKeyThrottle = request.app.state.throttle
    address = client_address(request)
    if identity is SLOW_CHECK:
        delay = throttle.penalty(address)
        if delay:
            await asyncio.sleep(delay)
        identity = await hub.db.run(resolver.resolve, key)
    if identity is None:
        throttle.record_failure(address)
        # never the key itself: only the row id its format names (None for garbage)
        audit_event("auth_failure", path=request.scope["path"][:200], client=address,
                    key_id=key_row_id(key) if isinstance(key, str) else None)
        delay = throttle.penalty(address)
        if delay:
            await asyncio.sleep(delay)
    else:
        note_identity(request.scope, identity)   # for the request log (observability/requestlog.py)
    return identity
