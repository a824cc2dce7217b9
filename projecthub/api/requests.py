"""Reading requests safely: bounded bodies, JSON or form decoding, API keys from headers."""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from ..errors import RemoteError


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


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"malformed JSON body: {exc}")
    if not isinstance(value, dict):
        raise HTTPError(400, "the JSON body must be an object")
    return value


def parse_params(request: Request, body: bytes) -> dict[str, Any]:
    """JSON or form-urlencoded, whichever the Content-Type says (v1 accepts both)."""
    content_type = request.headers.get("content-type", "")
    if "application/x-www-form-urlencoded" in content_type:
        try:
            return dict(parse_qsl(body.decode(), keep_blank_values=True))
        except UnicodeDecodeError:
            raise HTTPError(400, "form body is not valid UTF-8")
    return parse_json_object(body)


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


class BadKeyThrottle:
    """Slows down clients that keep presenting bad keys, without touching good requests.

    Only failed authentications are delayed, and only for the address that keeps failing,
    so a client with a valid key is never locked out by someone else's guessing.
    """

    def __init__(self, limit_per_minute: int) -> None:
        self.limit = limit_per_minute
        self._failures: dict[str, deque[float]] = {}

    def delay_for(self, client: str) -> float:
        now = time.monotonic()
        window = self._failures.setdefault(client, deque())
        window.append(now)
        while window and window[0] < now - 60:
            window.popleft()
        excess = len(window) - self.limit
        if len(self._failures) > 10000:  # bound memory under a spray of addresses
            self._failures = {client: window}
        return 0.0 if excess <= 0 else min(0.05 * (2 ** min(excess, 10)), 5.0)
