"""The hub's end of the NATS fabric: calls and streams to hosts by name.

``NatsFabric`` is one hub's view of every host: it sends ``req``/``sub`` messages on the
host's subjects, receives every answer on one wildcard subscription
(``_R.*.<hub>.>``, see ``nats_wire``), and tracks each host's heartbeat.  What the local
fabric gets from a socket closing, it gets from time: a host not heard from for
``HOST_LOST_S`` is gone, and its pending calls and streams fail with an error naming it; a
call to a host nobody serves fails at once (NATS's "no responders" status).

Streams are flow controlled exactly as on the Unix socket (``messages.py``): the hub grants
each stream a byte window and tops it up only as its consumer drains, so a stalled reader
costs this hub at most one window (plus one item) per stream, and the host stops producing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from ..errors import RemoteError
from .local import _STREAM_END, _error_from, _Stream
from .messages import STREAM_WINDOW, FrameError
from .nats_wire import (HEARTBEAT_INTERVAL_S, HOST_LOST_S, HUBS_HEARTBEAT, REPLY_PREFIX,
                        Reassembler, check_host_name, chunks, heartbeat_subject, host_subject, settle)

log = logging.getLogger(__name__)

_NO_RESPONDERS = "503"


class HostUnavailable(RemoteError):
    """The host cannot be reached: nobody serves it, or it stopped heartbeating.  The native
    API answers it 503 (the request was fine; try again when the host is back)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=503)


@dataclass
class _Pending:
    host: str
    sent: float                       # monotonic time the request went out
    future: asyncio.Future[Any] | None = None
    stream: _Stream | None = None


@dataclass
class HostSeen:
    last_seen: float                  # monotonic
    info: dict[str, Any] = field(default_factory=dict)


class NatsFabric:
    def __init__(self, nc: Any, hub_id: str | None = None) -> None:
        self.nc = nc
        self.hub_id = hub_id or uuid.uuid4().hex[:12]
        self.hosts: dict[str, HostSeen] = {}
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._chunks = Reassembler()
        self._subs: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        # Called with a host's name the first time this hub hears it (the hub registers it).
        self.on_new_host: Callable[[str], None] | None = None

    async def start(self) -> "NatsFabric":
        # Answers are pushed to a queue-free callback; their bound is the credit window.
        # nats-py's queue in front of the callback keeps its bounds (128 MiB): the callback
        # only files each answer under its request, where the credit window bounds it.  If
        # this hub falls that far behind, the answer that did not fit fails its request
        # (``on_nats_error``) instead of vanishing.
        self._subs.append(await self.nc.subscribe(f"{REPLY_PREFIX}.*.{self.hub_id}.*",
                                                  cb=self._on_reply))
        self._subs.append(await self.nc.subscribe(heartbeat_subject("*"), cb=self._on_heartbeat))
        await settle(self.nc)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeat()), loop.create_task(self._watchdog())]
        return self

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._fail_where(lambda p: True, RemoteError("Error: the hub's NATS fabric was closed"))

    def on_nats_error(self, exc: Exception) -> None:
        """The connection's error callback: an answer dropped because this hub's subscription
        was full (nats-py's SlowConsumerError) fails the request it belonged to."""
        subject = getattr(exc, "subject", "") or ""
        if type(exc).__name__ != "SlowConsumerError" or not subject.startswith(REPLY_PREFIX + "."):
            return
        _, host, _, token = (subject.split(".", 3) + ["", "", ""])[:4]
        pending = self._pending.pop(int(token), None) if token.isdigit() else None
        if pending is None:
            return
        error = RemoteError(f"Error: an answer from host {host} was lost: the hub fell behind reading NATS")
        if pending.future is not None and not pending.future.done():
            pending.future.set_exception(error)
        if pending.stream is not None:
            pending.stream.push(error)

    # -- liveness ---------------------------------------------------------------------------
    def live_hosts(self) -> dict[str, dict[str, Any]]:
        now = time.monotonic()
        return {name: seen.info for name, seen in self.hosts.items() if now - seen.last_seen < HOST_LOST_S}

    async def _on_heartbeat(self, msg: Any) -> None:
        host = msg.subject.rsplit(".", 1)[-1]   # the subject, not the body: NATS checked it
        try:
            info, _ = self._chunks.feed(msg.subject, msg.data) or ({}, 0)
        except FrameError:
            info = {}
        new = host not in self.hosts
        self.hosts[host] = HostSeen(time.monotonic(), info)
        if new and self.on_new_host is not None:
            self.on_new_host(host)

    async def _heartbeat(self) -> None:
        """Hosts cancel what a hub asked once it stops heartbeating (it crashed mid-stream)."""
        payload = b"=" + f'{{"hub":"{self.hub_id}"}}'.encode()
        while True:
            with contextlib.suppress(Exception):
                await self.nc.publish(HUBS_HEARTBEAT, payload)
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL_S / 2)
            now = time.monotonic()

            def lost(p: _Pending) -> bool:
                seen = self.hosts.get(p.host)
                last = max(p.sent, seen.last_seen if seen else 0.0)
                return now - last > HOST_LOST_S
            for host in {p.host for p in self._pending.values() if lost(p)}:
                self._fail_where(lambda p, h=host: p.host == h and lost(p), HostUnavailable(
                    f"Error: host {host} stopped answering (no heartbeat for {HOST_LOST_S:.1f} s)"))

    def _fail_where(self, match: Any, error: RemoteError) -> None:
        for request_id, pending in list(self._pending.items()):
            if not match(pending):
                continue
            if pending.future is not None and not pending.future.done():
                pending.future.set_exception(error)
            if pending.stream is not None:
                pending.stream.push(error)
            self._pending.pop(request_id, None)

    def _check_reachable(self, host: str) -> None:
        if not self.nc.is_connected:
            raise HostUnavailable(f"Error: host {host} cannot be reached: the hub is not connected to NATS")
        seen = self.hosts.get(host)
        if seen is not None and time.monotonic() - seen.last_seen > HOST_LOST_S:
            raise HostUnavailable(f"Error: host {host} is down (no heartbeat for "
                                  f"{time.monotonic() - seen.last_seen:.0f} s)")

    # -- calls and streams ------------------------------------------------------------------
    async def _send(self, host: str, kind: str, message: dict[str, Any], reply: str) -> None:
        subject = host_subject(host, kind)
        for payload in chunks(message, self.nc.max_payload):
            await self.nc.publish(subject, payload, reply=reply)

    def _reply_subject(self, host: str, request_id: int) -> str:
        return f"{REPLY_PREFIX}.{host}.{self.hub_id}.{request_id}"

    async def call(self, host: str, name: str, args: list[Any], budget: float | None = None,
                   timeout: float | None = None) -> Any:
        """Request/reply to ``host``.  Fails fast when nobody serves it or it goes quiet;
        ``timeout`` (seconds) bounds the whole wait besides."""
        check_host_name(host)
        self._check_reachable(host)
        request_id = next(self._ids)
        reply = self._reply_subject(host, request_id)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(host, time.monotonic(), future=future)
        try:
            await self._send(host, "call", {"t": "req", "id": request_id, "name": name,
                                            "args": args, "budget": budget}, reply)
            if timeout is None:
                return await future
            try:
                return await asyncio.wait_for(future, timeout)
            except asyncio.TimeoutError:
                await self._cancel(host, reply)
                raise HostUnavailable(f"timeout: host {host} did not answer {name} within {timeout:g} s") from None
        except asyncio.CancelledError:
            await asyncio.shield(self._cancel(host, reply))
            raise
        finally:
            self._pending.pop(request_id, None)
            self._chunks.forget(reply)

    async def stream(self, host: str, name: str, args: list[Any],
                     window: int = STREAM_WINDOW) -> AsyncIterator[Any]:
        """Stream items from ``host``; closing the iterator cancels the producer there."""
        check_host_name(host)
        self._check_reachable(host)
        request_id = next(self._ids)
        reply = self._reply_subject(host, request_id)
        state = _Stream(window)
        self._pending[request_id] = _Pending(host, time.monotonic(), stream=state)
        finished = False
        taken = 0
        try:
            await self._send(host, "stream", {"t": "sub", "id": request_id, "name": name,
                                              "args": args, "window": window}, reply)
            while True:
                if taken >= window // 4:
                    state.granted += taken
                    await self._send(host, "ctl", {"t": "credit", "id": reply, "n": taken}, "")
                    taken = 0
                item, size = await state.get()
                if item is _STREAM_END:
                    finished = True
                    return
                if isinstance(item, RemoteError):
                    finished = True
                    raise item
                taken += size
                yield item
        finally:
            self._pending.pop(request_id, None)
            self._chunks.forget(reply)
            state.items.clear()
            if not finished:
                await asyncio.shield(self._cancel(host, reply))

    async def _cancel(self, host: str, reply: str) -> None:
        with contextlib.suppress(Exception):
            await self._send(host, "ctl", {"t": "cancel", "id": reply}, "")

    async def _on_reply(self, msg: Any) -> None:
        _, host, _, token = msg.subject.split(".", 3)
        pending = self._pending.get(int(token)) if token.isdigit() else None
        if pending is None or pending.host != host:
            return   # late, cancelled, or not ours: never buffered
        headers = msg.headers or {}
        if headers.get("Status") == _NO_RESPONDERS:
            self._pending.pop(int(token), None)
            error = HostUnavailable(f"Error: host {host} is not connected (nothing serves it on NATS)")
            if pending.future is not None and not pending.future.done():
                pending.future.set_exception(error)
            if pending.stream is not None:
                pending.stream.push(error)
            return
        seen = self.hosts.get(host)
        if seen is not None:   # every chunk is a sign of life (a big answer outlasts a heartbeat)
            seen.last_seen = time.monotonic()
        try:
            done = self._chunks.feed(msg.subject, msg.data)
        except FrameError as exc:
            done = ({"t": "broken", "error": {"error": f"Error: bad message from host {host}: {exc}"}}, 0)
        if done is None:
            return
        message, size = done
        kind = message.get("t")
        if pending.future is not None:
            if pending.future.done():
                return
            if kind == "res" and message.get("ok"):
                pending.future.set_result(message.get("result"))
            else:
                pending.future.set_exception(_error_from(message.get("error")))
            return
        state = pending.stream
        if state is None:
            return
        if kind == "item":
            if state.received >= state.granted:
                # The host ignored flow control: never buffer for it; end the stream here.
                log.warning("fabric: host %s sent a stream past its window; cancelled", host)
                self._pending.pop(int(token), None)
                state.items.clear()
                state.push(RemoteError(f"Error: host {host} sent a stream past its flow-control "
                                       "window; the stream was cancelled"))
                return
            state.received += size
            state.push(message.get("data"), size)
        elif kind == "end" and message.get("error") is None:
            state.push(_STREAM_END)
        else:
            state.push(_error_from(message.get("error")))
