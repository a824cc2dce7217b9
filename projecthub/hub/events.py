"""Hub-to-hub notifications on NATS: what one hub changed, every other hub learns at once.

Hubs are stateless apart from the database, but each keeps short-lived caches in front of it:
the key resolver's identities (``auth/resolve.py``, ``--key-cache-ttl``, 2 s), collaborator
answers (``service.py``, 5 s), project specs (``remote_host.py``, 2 s) and which projects run
(host heartbeats, every second).  A change made through one hub would reach the others only
when those age out; so after its store write commits, the hub that made it publishes one
small message on ``ph.hubs.events`` and every other hub drops or corrects the cached answer on
receipt (within milliseconds on one NATS server).  Messages are JSON objects::

    {"kind": "keys.changed", "hub": "<sender id>", "key_id": 12}
    {"kind": "account.changed", "hub": "...", "account_id": "..."}      disable/enable, role
    {"kind": "limits.changed", "hub": "...", "project_id": "..."}       or "account_id": "..."
    {"kind": "project.state", "hub": "...", "project_id": "...", "running": false}
    {"kind": "project.moved", "hub": "...", "project_id": "..."}        projecthub project move
    {"kind": "collaborators.changed", "hub": "...", "project_id": "..."}

A message is a hint to drop a cache, never a grant: every kind only takes cached answers
away (or, for ``project.state``, sets what ``is_running`` answers until the next heartbeat),
and what is read next comes from the store.  Only the hubs' NATS user may publish on the
subject (``fabric/nats_config.py``): a host cannot forge one.  A receiver ignores its own
messages, anything malformed, of an unknown kind or over ``MAX_EVENT_BYTES``; its
subscription holds at most ``MAX_PENDING`` unread messages (nats-py drops the rest and
reports a slow consumer, which the hub treats like a reconnect).

Publishing never fails the user's request: the change is already committed, so a NATS
outage is logged and the caches' TTLs bound how stale another hub can be.  Events missed
while a hub was disconnected cannot be replayed, so a hub drops all its caches when it
reconnects (``resync``).  Admin commands that write the shared database from outside any hub
(``projecthub key revoke --nats URL``...) publish the same messages with ``announce``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from ..fabric.nats_wire import HUBS_EVENTS, Credentials

log = logging.getLogger("projecthub.hub.events")

KINDS = frozenset({"keys.changed", "account.changed", "limits.changed", "project.state",
                   "project.moved", "collaborators.changed"})
# Kinds that name one project and are meaningless without it.
_NEED_PROJECT = frozenset({"project.state", "project.moved", "collaborators.changed"})
MAX_EVENT_BYTES = 4096      # a real message is ~150 bytes
MAX_PENDING = 4096          # unread messages per hub before NATS drops (then: resync)
_ID_LEN = 128               # ids are uuids and short hub ids; anything longer is not ours


@dataclass(frozen=True)
class HubEvent:
    kind: str
    hub: str
    project_id: str | None = None
    account_id: str | None = None
    key_id: int | None = None
    running: bool | None = None


def encode_event(event: HubEvent) -> bytes:
    body: dict[str, Any] = {"kind": event.kind, "hub": event.hub}
    for name in ("project_id", "account_id", "key_id", "running"):
        value = getattr(event, name)
        if value is not None:
            body[name] = value
    return json.dumps(body, separators=(",", ":")).encode()


def decode_event(data: bytes) -> HubEvent | None:
    """The event in ``data``, or None when it is not a well-formed event of a known kind."""
    if len(data) > MAX_EVENT_BYTES:
        return None
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(raw, dict):
        return None
    kind, hub = raw.get("kind"), raw.get("hub")
    if kind not in KINDS or not _short_str(hub):
        return None
    project_id, account_id = raw.get("project_id"), raw.get("account_id")
    key_id, running = raw.get("key_id"), raw.get("running")
    if project_id is not None and not _short_str(project_id):
        return None
    if account_id is not None and not _short_str(account_id):
        return None
    if key_id is not None and (not isinstance(key_id, int) or isinstance(key_id, bool)):
        return None
    if running is not None and not isinstance(running, bool):
        return None
    if kind in _NEED_PROJECT and project_id is None:
        return None
    if kind == "project.state" and running is None:
        return None
    return HubEvent(kind, hub, project_id, account_id, key_id, running)


def _short_str(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _ID_LEN


class NoEvents:
    """The embedded server (``projecthub serve``): one hub, nobody to tell."""

    hub_id = "local"
    on_event: Callable[[HubEvent], None] | None = None
    on_resync: Callable[[], None] | None = None

    def publish(self, kind: str, **fields: Any) -> None:
        return None


class HubEvents:
    """One hub's end of the bus on an open NATS connection (the fabric's)."""

    def __init__(self, nc: Any, hub_id: str, max_pending: int = MAX_PENDING) -> None:
        self.nc = nc
        self.hub_id = hub_id
        self.max_pending = max_pending
        # set by HubService: apply one event from another hub; drop every cache
        self.on_event: Callable[[HubEvent], None] | None = None
        self.on_resync: Callable[[], None] | None = None
        self.received = 0      # applied events (tests, /metrics later)
        self._sub: Any = None
        self._sending: set[asyncio.Task[None]] = set()

    async def start(self) -> "HubEvents":
        self._sub = await self.nc.subscribe(HUBS_EVENTS, cb=self._on_message,
                                            pending_msgs_limit=self.max_pending,
                                            pending_bytes_limit=self.max_pending * MAX_EVENT_BYTES)
        return self

    async def close(self) -> None:
        for task in list(self._sending):
            task.cancel()
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:   # the connection is going away anyway
                pass
            self._sub = None

    def publish(self, kind: str, **fields: Any) -> None:
        """Tell every other hub; never raises and never waits (call it after the store write
        committed).  A message that cannot go out is logged: the caches' TTLs bound the rest."""
        assert kind in KINDS, kind
        payload = encode_event(HubEvent(kind, self.hub_id, **fields))
        try:
            task = asyncio.get_running_loop().create_task(self._send(kind, payload))
        except RuntimeError:   # no loop (cannot happen in the hub): nothing to send with
            log.warning("hub event %s not sent: no event loop", kind)
            return
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, kind: str, payload: bytes) -> None:
        try:
            if not self.nc.is_connected:
                raise ConnectionError("not connected to NATS")
            await self.nc.publish(HUBS_EVENTS, payload)
        except Exception as exc:
            log.warning("could not tell other hubs (%s): %s: %s; they see the change when their "
                        "caches age out", kind, type(exc).__name__, exc)

    async def _on_message(self, msg: Any) -> None:
        event = decode_event(msg.data)
        if event is None:
            log.warning("ignored a malformed hub event (%d bytes)", len(msg.data))
            return
        if event.hub == self.hub_id or self.on_event is None:
            return
        self.received += 1
        try:
            self.on_event(event)
        except Exception:   # a bug in one cache must not stop the others from hearing
            log.exception("applying hub event %s failed", event.kind)

    def on_nats_error(self, exc: Exception) -> None:
        """The connection's error callback: NATS dropped events for this hub (its bounded
        queue was full), so some were missed."""
        if type(exc).__name__ == "SlowConsumerError" and getattr(exc, "subject", "") == HUBS_EVENTS:
            self.resync("NATS dropped hub events (this hub fell behind)")

    def resync(self, why: str) -> None:
        """Events may have been missed (reconnected, or NATS dropped some for a slow
        consumer): drop every cache; the next reads come from the store."""
        log.warning("hub events: %s; dropping cached keys, limits and running state", why)
        if self.on_resync is not None:
            try:
                self.on_resync()
            except Exception:
                log.exception("dropping caches after %s failed", why)


async def announce_async(url: str, creds: Credentials | None, kind: str, timeout_s: float = 5.0,
                         **fields: Any) -> None:
    """Publish one event from outside any hub (an admin command) and wait until the server
    has it.  Raises NatsUnavailable / TimeoutError on failure."""
    from ..fabric.nats_wire import connect
    nc = await connect(url, name="projecthub-admin", creds=creds)
    try:
        sender = f"admin-{uuid.uuid4().hex[:12]}"
        await nc.publish(HUBS_EVENTS, encode_event(HubEvent(kind, sender, **fields)))
        await asyncio.wait_for(nc.flush(), timeout_s)
    finally:
        await nc.close()


def announce(url: str, creds_file: str | None, kind: str, **fields: Any) -> str | None:
    """``announce_async`` for the CLI: None when sent, else why not (one line)."""
    from ..fabric.nats_wire import load_credentials
    assert kind in KINDS, kind
    try:
        creds = load_credentials(creds_file) if creds_file else None
        asyncio.run(asyncio.wait_for(announce_async(url, creds, kind, **fields), 10))
    except Exception as exc:   # NatsUnavailable, a bad creds file, a timeout
        return str(exc) or type(exc).__name__
    return None
