"""The fabric's wire format: length-prefixed JSON frames, multiplexed by request id.

One frame = 4-byte big-endian length + UTF-8 JSON object.  Frame kinds (field ``t``):

* ``req``    client -> server: ``{id, name, args, budget}``; exactly one ``res`` answers it.
* ``sub``    client -> server: ``{id, name, args, window}``; answered by ``item`` frames then
  one ``end``.  ``window`` is the stream's credit in bytes of ``item`` frame bodies.
* ``credit`` client -> server: ``{id, n}``: the consumer drained ``n`` more bytes, so the
  server may send that much more.
* ``cancel`` client -> server: ``{id}``; the server cancels that request or stream.
* ``res``    ``{id, ok: true, result}`` or ``{id, ok: false, error: {...}}``.
* ``item``   ``{id, data}`` one element of a stream.
* ``end``    ``{id}`` or ``{id, error: {...}}``: the stream is over.
* ``bye``    server -> client: ``{}``: the server is about to restart in place (a project
  daemon dropping what Jupyter left in its memory, ``project/recycle.py``).  The client
  sends no further request on this connection, answers ``bye-ack``, and resends on a new
  connection whatever the server refuses from now on: such a refusal is an error with
  ``"daemon_restarting": true``, and means the request never started.
* ``bye-ack`` client -> server: ``{}``: no frame follows it on this connection.

Flow control is per stream, not per connection: every stream of a project shares one
connection, so pausing the transport for one slow reader would stall all the others.  The
server sends an ``item`` only while its credit for that stream is positive (so it can
overshoot by one item) and waits for ``credit`` frames otherwise; the client grants credit
as its consumer drains, and treats an item that arrives with no credit left as a protocol
violation.  A stream therefore holds at most ``window`` + one item on the client side,
whatever the far side produces, and a slow consumer slows the producer.  ``res`` frames
are bounded by ``MAX_FRAME``: a server never sends a bigger one (it answers an error).

``budget`` is the caller's remaining wait in seconds (``null`` = none), so the far side can
act before the caller gives up (e.g. turn a long exec into a job).  The same dicts can ride
on NATS subjects later; only the framing here is Unix-socket specific.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

HEADER = struct.Struct(">I")
# A frame larger than this is a protocol error, not a big reply.  The daemon's own caps keep
# every legitimate reply far below it (exec output, file reads: see project/execution/capture.py
# and project/files.py); it bounds what one call can make the hub hold.
MAX_FRAME = 64 * 2**20
# A stream's credit window: what the hub may hold of one stream (plus one item).
STREAM_WINDOW = 1 * 2**20


class FrameError(Exception):
    pass


# One encoder for every frame: json.dumps with non-default options builds a new
# JSONEncoder per call.
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


# A lone surrogate: what ``os.listdir``, ``os.readlink``, ``os.environ`` ... return (PEP 383
# surrogateescape) for bytes that are not UTF-8, e.g. a file named b"bad\xff".
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def encode(message: dict[str, Any]) -> bytes:
    """One frame.  Text that is not valid Unicode (lone surrogates) is sent with each such
    code point replaced by U+FFFD: consistently, on every frame, instead of failing the call
    (the hub's HTTP answers and CoCalc's clients need real text, and a request with a lone
    surrogate is refused at the API anyway, so escaping them could never round-trip)."""
    text = _encode_json(message)
    try:
        body = text.encode()
    except UnicodeEncodeError:   # JSON syntax is ASCII: a surrogate can only be inside a string
        body = _LONE_SURROGATE.sub(REPLACEMENT, text).encode()
    return HEADER.pack(len(body)) + body


def decode(body: bytes | bytearray | memoryview) -> dict[str, Any]:
    """One frame's JSON body (UTF-8, as ``encode`` writes it) -> the message dict.
    Decoding to str first skips json.loads' encoding detection on bytes."""
    message = json.loads(str(body, "utf-8", "surrogatepass"))
    if not isinstance(message, dict):
        raise FrameError("frame is not a JSON object")
    return message


class FrameBuffer:
    """Incremental frame parser: feed received chunks, get every complete message.
    Raises FrameError on an oversized or malformed frame.  After each ``feed``,
    ``sizes[i]`` is the body size of the i-th message it returned (flow control counts it).

    A chunk is parsed in place when nothing is pending from earlier chunks (the usual
    case: one whole frame per receive), so only a partial frame at its end is copied."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.sizes: list[int] = []

    def feed(self, data: bytes | bytearray | memoryview) -> list[dict[str, Any]]:
        if self._buf:
            self._buf += data
            data = self._buf
        view = memoryview(data)
        out: list[dict[str, Any]] = []
        sizes: list[int] = []
        self.sizes = sizes
        start = 0
        size = len(view)
        try:
            while size - start >= HEADER.size:
                (length,) = HEADER.unpack_from(view, start)
                if length > MAX_FRAME:
                    raise FrameError(f"frame of {length} bytes exceeds the {MAX_FRAME} byte limit")
                end = start + HEADER.size + length
                if end > size:
                    break
                try:
                    out.append(decode(view[start + HEADER.size:end]))
                    sizes.append(length)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise FrameError(f"malformed frame: {exc}") from exc
                start = end
            rest = view[start:]
            if data is self._buf:
                rest.release()
                view.release()   # a bytearray cannot be resized while exported
                del self._buf[:start]
            elif start < size:
                self._buf += rest
        finally:
            view.release()
        return out
