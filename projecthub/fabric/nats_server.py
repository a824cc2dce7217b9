"""The host's end of the NATS fabric: serve a ``Handler`` (``local.Handler``) on the host's
own subjects, and heartbeat.

Each ``req`` and ``sub`` runs as its own task, as on the Unix socket.  A stream's producer is
asked for the next item only while the hub's credit for that stream is positive (at most
one item over), so a slow consumer slows the producer and nothing queues here.  Requests
are keyed by their reply subject (``_R.<host>.<hub>.<n>``): ``credit`` and ``cancel`` name
it, and a hub that stops heartbeating gets everything it asked cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Callable, Coroutine

from ..errors import RemoteError, error_text
from .local import Handler, _Credit, _MAX_CREDIT
from .messages import FrameError
from .nats_wire import (HEARTBEAT_INTERVAL_S, HUB_LOST_S, HUBS_HEARTBEAT, REPLY_PREFIX,
                        Reassembler, check_host_name, chunks, heartbeat_subject, host_subject, settle)

log = logging.getLogger(__name__)


class HostServer:
    def __init__(self, nc: Any, host: str, handler: Handler,
                 heartbeat_info: Callable[[], dict[str, Any]] | None = None) -> None:
        self.nc = nc
        self.host = check_host_name(host)
        self.handler = handler
        self.heartbeat_info = heartbeat_info or (lambda: {})
        self._reply_prefix = f"{REPLY_PREFIX}.{host}."
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._credits: dict[str, _Credit] = {}
        self._hubs: dict[str, float] = {}          # hub id -> last heard (monotonic)
        self._chunks = Reassembler()
        self._subs: list[Any] = []
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> "HostServer":
        for kind, cb in (("call", self._on_call), ("stream", self._on_stream), ("ctl", self._on_ctl)):
            # nats-py's bounds (128 MiB) in front of the callbacks, which only start tasks
            self._subs.append(await self.nc.subscribe(host_subject(self.host, kind), cb=cb))
        self._subs.append(await self.nc.subscribe(HUBS_HEARTBEAT, cb=self._on_hub_heartbeat))
        await settle(self.nc)
        loop = asyncio.get_running_loop()
        self._background = [loop.create_task(self._heartbeat()), loop.create_task(self._watch_hubs())]
        return self

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        # What is still running gets an answer now, not a hub waiting for our heartbeat to stop.
        error = {"error": f"Error: host {self.host} is shutting down; try again"}
        for reply, task in list(self._tasks.items()):
            task.cancel()
            stream = reply in self._credits
            with contextlib.suppress(Exception):
                await self._publish(reply, {"t": "end", "error": error} if stream
                                    else {"t": "res", "ok": False, "error": error})
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.nc.flush(timeout=2)

    def on_nats_error(self, exc: Exception) -> None:
        """The connection's error callback: a request nats-py dropped because this host fell
        behind (SlowConsumerError) is answered with an error, so its hub does not wait."""
        reply = getattr(exc, "reply", "") or ""
        if type(exc).__name__ != "SlowConsumerError" or not reply.startswith(self._reply_prefix):
            return
        self._chunks.forget(reply)
        error = {"error": f"Error: host {self.host} fell behind and dropped the request; try again"}
        message = {"t": "end", "error": error} if str(getattr(exc, "subject", "")).endswith(".stream") \
            else {"t": "res", "ok": False, "error": error}
        task = asyncio.get_running_loop().create_task(self._publish(reply, message))
        self._background.append(task)
        task.add_done_callback(self._background.remove)

    # -- liveness -----------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        subject = heartbeat_subject(self.host)
        while True:
            try:
                info = {"host": self.host, **self.heartbeat_info()}
                for payload in chunks(info, self.nc.max_payload):
                    await self.nc.publish(subject, payload)
            except Exception as exc:   # NATS down: it reconnects; the next beat tries again
                log.debug("heartbeat not sent: %s", exc)
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    async def _on_hub_heartbeat(self, msg: Any) -> None:
        try:
            done = self._chunks.feed(msg.subject, msg.data)
        except FrameError:
            return
        hub = done[0].get("hub") if done else None
        if isinstance(hub, str):
            self._hubs[hub] = time.monotonic()

    async def _watch_hubs(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)
            now = time.monotonic()
            gone = {hub for hub, seen in self._hubs.items() if now - seen > HUB_LOST_S}
            for reply, task in list(self._tasks.items()):
                if _hub_of(reply) in gone:
                    log.info("hub %s went quiet; cancelling %s", _hub_of(reply), reply)
                    task.cancel()
            for hub in gone:
                del self._hubs[hub]

    # -- requests -------------------------------------------------------------------------------
    def _accept(self, msg: Any) -> dict[str, Any] | None:
        reply = msg.reply
        if not reply or not reply.startswith(self._reply_prefix) or reply in self._tasks:
            return None   # we could not answer there anyway (NATS permissions)
        try:
            done = self._chunks.feed(reply, msg.data)
        except FrameError as exc:
            log.warning("dropped a malformed request: %s", exc)
            return None
        if done is None:
            return None
        self._hubs.setdefault(_hub_of(reply), time.monotonic())
        return done[0]

    async def _on_call(self, msg: Any) -> None:
        message = self._accept(msg)
        if message is not None and message.get("t") == "req":
            self._start(msg.reply, self._answer(msg.reply, message))

    async def _on_stream(self, msg: Any) -> None:
        message = self._accept(msg)
        if message is None or message.get("t") != "sub":
            return
        window = message.get("window")
        if not (isinstance(window, int) and not isinstance(window, bool) and window > 0):
            await self._publish(msg.reply, {"t": "end", "error": {"error": "Error: a stream needs a window"}})
            return
        self._credits[msg.reply] = _Credit(min(window, _MAX_CREDIT))
        self._start(msg.reply, self._feed(msg.reply, message))

    async def _on_ctl(self, msg: Any) -> None:
        try:
            done = self._chunks.feed(msg.subject, msg.data)
        except FrameError:
            return
        if done is None:
            return
        message = done[0]
        reply = message.get("id")
        if not isinstance(reply, str):
            return
        if message.get("t") == "credit":
            credit = self._credits.get(reply)
            n = message.get("n")
            if credit is not None and isinstance(n, int) and 0 < n <= _MAX_CREDIT:
                credit.add(n)
        elif message.get("t") == "cancel":
            task = self._tasks.get(reply)
            if task is not None:
                task.cancel()

    def _start(self, reply: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks[reply] = task

        def forget(_t: object) -> None:
            self._tasks.pop(reply, None)
            self._credits.pop(reply, None)
        task.add_done_callback(forget)

    async def _publish(self, reply: str, message: dict[str, Any]) -> int:
        """Send ``message`` (chunked if big); its body size, which credit counts."""
        size = 0
        for payload in chunks(message, self.nc.max_payload):
            size += len(payload) - 1
            await self.nc.publish(reply, payload)
        return size

    async def _answer(self, reply: str, message: dict[str, Any]) -> None:
        name, args, budget = message.get("name"), message.get("args"), message.get("budget")
        try:
            if not isinstance(name, str) or not isinstance(args, list):
                raise RemoteError("Error: malformed request")
            result = await self.handler.call(name, args, budget if isinstance(budget, (int, float)) else None)
            answer: dict[str, Any] = {"t": "res", "ok": True, "result": result}
        except asyncio.CancelledError:
            return
        except RemoteError as exc:
            answer = {"t": "res", "ok": False, "error": exc.to_json()}
        except Exception as exc:   # a handler bug still gets an answer, never silence
            log.exception("handler %s failed", name)
            answer = {"t": "res", "ok": False, "error": {"error": error_text(exc)}}
        try:
            await self._publish(reply, answer)
        except RemoteError as exc:   # too large, or not encodable
            await self._publish(reply, {"t": "res", "ok": False, "error": exc.to_json()})
        except (TypeError, ValueError) as exc:
            await self._publish(reply, {"t": "res", "ok": False, "error": {
                "error": f"Error: the result cannot be sent: {type(exc).__name__}"}})

    async def _feed(self, reply: str, message: dict[str, Any]) -> None:
        name, args = message.get("name"), message.get("args")
        credit = self._credits[reply]
        try:
            if not isinstance(name, str) or not isinstance(args, list):
                raise RemoteError("Error: malformed request")
            items = self.handler.stream(name, args)
            try:
                while True:
                    await credit.wait()   # before asking the producer for more
                    try:
                        item = await items.__anext__()
                    except StopAsyncIteration:
                        break
                    credit.available -= await self._publish(reply, {"t": "item", "data": item})
                    del item
            finally:
                aclose = getattr(items, "aclose", None)
                if aclose is not None:   # close the producer now (daemon stream, files)
                    with contextlib.suppress(Exception):
                        await aclose()
        except asyncio.CancelledError:
            return
        except RemoteError as exc:
            await self._publish(reply, {"t": "end", "error": exc.to_json()})
            return
        except Exception as exc:
            log.exception("stream %s failed", name)
            await self._publish(reply, {"t": "end", "error": {"error": error_text(exc)}})
            return
        await self._publish(reply, {"t": "end"})


def _hub_of(reply: str) -> str:
    parts = reply.split(".")
    return parts[2] if len(parts) > 3 else ""
