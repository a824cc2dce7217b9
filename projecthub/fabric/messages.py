"""The fabric's wire format: length-prefixed JSON frames, multiplexed by request id.

One frame = 4-byte big-endian length + UTF-8 JSON object.  Frame kinds (field ``t``):

* ``req``    client -> server: ``{id, name, args, budget}``; exactly one ``res`` answers it.
* ``sub``    client -> server: ``{id, name, args}``; answered by ``item`` frames then one ``end``.
* ``cancel`` client -> server: ``{id}``; the server cancels that request or stream.
* ``res``    ``{id, ok: true, result}`` or ``{id, ok: false, error: {...}}``.
* ``item``   ``{id, data}`` one element of a stream.
* ``end``    ``{id}`` or ``{id, error: {...}}``: the stream is over.

``budget`` is the caller's remaining wait in seconds (``null`` = none), so the far side can
act before the caller gives up (e.g. turn a long exec into a job).  The same dicts can ride
on NATS subjects later; only the framing here is Unix-socket specific.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 2**20  # a frame larger than this is a protocol error, not a big reply


class FrameError(Exception):
    pass


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    return HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """Next frame, or None at a clean end of stream."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise FrameError("truncated frame header") from exc
        return None
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise FrameError(f"frame of {length} bytes exceeds the {MAX_FRAME} byte limit")
    body = await reader.readexactly(length)
    message = json.loads(body)
    if not isinstance(message, dict):
        raise FrameError("frame is not a JSON object")
    return message
