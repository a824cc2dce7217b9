"""The fabric's NATS wire: subjects, credentials, chunking, and the connection itself.

The messages are the local fabric's (``messages.py``: ``req``/``res``, ``sub``/``item``/
``end``, ``credit``, ``cancel``); only the transport differs.  Subjects, per host ``H``:

* ``ph.host.H.call``    hub -> host: a ``req``; the reply subject is where ``res`` goes;
* ``ph.host.H.stream``  hub -> host: a ``sub``; ``item``/``end`` go to its reply subject;
* ``ph.host.H.ctl``     hub -> host: ``credit`` and ``cancel`` (``id`` = the reply subject);
* ``_R.H.<hub>.<n>``    host -> hub: answers.  A host may publish only under its own
  ``_R.H.``, so a reply a hub accepts on ``_R.H.…`` was sent with H's credentials;
* ``ph.heartbeat.H``    host -> hubs: liveness, capacity and load, every second;
* ``ph.hubs.heartbeat`` hub -> hosts: liveness of hubs (a host cancels what a gone hub asked);
* ``ph.hubs.events``    hub -> hubs: cache invalidations (``hub/events.py``); hubs only.

``nats_config.py`` writes the server permissions that make these boundaries hold.

One NATS message carries one fabric message: a flag byte, then the JSON body.  A body over
the server's ``max_payload`` is split in order into chunks (``+``... then ``.``), which the
receiver reassembles per reply subject (NATS keeps one publisher's order on one subject);
a reassembled message is bounded by ``MAX_FRAME`` like a local frame, and so is the number
of messages being reassembled at once.
"""

from __future__ import annotations

import json
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import RemoteError
from .messages import MAX_FRAME, FrameError, decode, encode

SUBJECT_PREFIX = "ph"
REPLY_PREFIX = "_R"
HEARTBEAT_INTERVAL_S = 1.0
# A host not heard from for this long is gone: its pending calls and streams fail.
HOST_LOST_S = 3.5
HUB_LOST_S = 3.5

_WHOLE, _MORE, _LAST = b"=", b"+", b"."
# Room for NATS's own header fields and our flag byte under max_payload.
_CHUNK_MARGIN = 512
# Messages being reassembled at once per receiver; more means a peer is misbehaving.
MAX_PARTIAL = 64

HOST_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def check_host_name(name: str) -> str:
    """Host names become subject tokens and user names: a strict alphabet, no wildcards."""
    if not isinstance(name, str) or not HOST_NAME.fullmatch(name):
        raise ValueError(f"invalid host id {name!r}: use 1-63 of a-z, 0-9 and '-', "
                         "starting with a letter or digit")
    return name


def host_subject(host: str, kind: str) -> str:
    return f"{SUBJECT_PREFIX}.host.{host}.{kind}"


def heartbeat_subject(host: str) -> str:
    return f"{SUBJECT_PREFIX}.heartbeat.{host}"


HUBS_HEARTBEAT = f"{SUBJECT_PREFIX}.hubs.heartbeat"
HUBS_EVENTS = f"{SUBJECT_PREFIX}.hubs.events"


def host_inbox_prefix(host: str) -> str:
    return f"_INBOX.host.{host}"


HUB_INBOX_PREFIX = "_INBOX.hub"


def chunks(message: dict[str, Any], max_payload: int) -> Iterator[bytes]:
    """The NATS payloads that carry ``message``: one, or ordered chunks of a big body."""
    body = memoryview(encode(message))[4:]   # the JSON body, without the local length prefix
    if len(body) > MAX_FRAME:
        raise RemoteError(f"Error: the message is too large to send ({len(body)} bytes; the limit "
                          f"is {MAX_FRAME} bytes per message)")
    room = max(1024, max_payload - _CHUNK_MARGIN)
    if len(body) <= room:
        yield _WHOLE + body
        return
    for start in range(0, len(body), room):
        part = body[start:start + room]
        yield (_LAST if start + room >= len(body) else _MORE) + part


class Reassembler:
    """Chunks in, whole messages out, keyed by the sender's reply/stream subject.
    ``feed`` returns (message, body size) when a message is complete, None while it is not;
    raises FrameError on a malformed or oversized message (the caller drops it)."""

    def __init__(self, max_partial: int = MAX_PARTIAL) -> None:
        self._partial: OrderedDict[str, bytearray] = OrderedDict()
        self._max_partial = max_partial

    def feed(self, key: str, payload: bytes) -> tuple[dict[str, Any], int] | None:
        flag, body = payload[:1], memoryview(payload)[1:]
        if flag == _WHOLE:
            self._partial.pop(key, None)
            return _decode(body), len(body)
        if flag not in (_MORE, _LAST):
            raise FrameError("unknown message flag")
        buf = self._partial.get(key)
        if buf is None:
            if len(self._partial) >= self._max_partial:
                self._partial.popitem(last=False)   # the oldest incomplete message is dropped
            buf = self._partial[key] = bytearray()
        if len(buf) + len(body) > MAX_FRAME:
            del self._partial[key]
            raise FrameError(f"message exceeds the {MAX_FRAME} byte limit")
        buf += body
        if flag == _MORE:
            return None
        del self._partial[key]
        return _decode(buf), len(buf)

    def forget(self, key: str) -> None:
        self._partial.pop(key, None)


def _decode(body: bytes | bytearray | memoryview) -> dict[str, Any]:
    try:
        return decode(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError(f"malformed message: {exc}") from None


# -- credentials -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Credentials:
    """A NATS user and password, read from a ``--nats-creds`` file: JSON
    ``{"user": "...", "password": "..."}``, written by ``projecthub nats-config`` (mode 0600)."""
    user: str
    password: str


def load_credentials(path: str | Path) -> Credentials:
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read the NATS credentials file {path}: {exc.strerror}") from None
    except ValueError:
        raise ValueError(f"the NATS credentials file {path} is not JSON") from None
    if not (isinstance(raw, dict) and isinstance(raw.get("user"), str)
            and isinstance(raw.get("password"), str)):
        raise ValueError(f"the NATS credentials file {path} needs string fields 'user' and 'password'")
    return Credentials(raw["user"], raw["password"])


async def settle(nc: Any) -> None:
    """Until the server has every subscription made so far.  One ``flush`` is not enough:
    nats-py (2.16) writes its PING straight to the socket, ahead of the SUBs still queued for
    its flusher task, so the PONG can come back before the server has seen them (a host that
    heartbeats before its request subjects exist answers "no responders"; a hub whose answer
    subscription is late loses the answer).  The flusher runs as soon as the loop does, so it
    has written the SUBs by the time the first PONG is read: the second PING follows them."""
    await nc.flush()
    await nc.flush()


class NatsUnavailable(RemoteError):
    pass


async def connect(url: str, *, name: str, creds: Credentials | None = None,
                  inbox_prefix: str = HUB_INBOX_PREFIX, connect_timeout_s: float = 3.0,
                  on_error: Callable[[Exception], Any] | None = None,
                  on_reconnect: Callable[[], Any] | None = None) -> Any:
    """A NATS connection that reconnects on its own at run time, but fails at once (one clear
    NatsUnavailable) when the server cannot be reached at start.  ``on_reconnect`` is called
    after each reconnection (what was published meanwhile was missed)."""
    import nats

    connected = False

    async def error_cb(exc: Exception) -> None:
        if not connected:
            return   # a failure at start is raised below, once
        if on_error is not None:
            on_error(exc)
        else:
            print(f"projecthub: NATS: {type(exc).__name__}: {exc}", file=sys.stderr)

    async def reconnected_cb() -> None:
        if on_reconnect is not None:
            on_reconnect()

    options: dict[str, Any] = dict(
        servers=[url], name=name, connect_timeout=connect_timeout_s, allow_reconnect=True,
        # one retry at start: an unreachable server is an error now, not an endless loop
        max_reconnect_attempts=1, reconnect_time_wait=0.2, error_cb=error_cb,
        reconnected_cb=reconnected_cb,
        inbox_prefix=inbox_prefix)
    if creds is not None:
        options.update(user=creds.user, password=creds.password)
    try:
        nc = await nats.connect(**options)
    except Exception as exc:   # unreachable, refused, authorization violation, bad URL
        detail = str(exc) or type(exc).__name__
        raise NatsUnavailable(f"Error: cannot connect to NATS at {url}: {detail}") from None
    connected = True
    # Once up, a lost server is retried for ever (calls fail fast meanwhile: nats_client.py).
    nc.options["max_reconnect_attempts"] = -1
    return nc
