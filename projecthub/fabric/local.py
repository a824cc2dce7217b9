"""Fabric over a Unix socket: one persistent, multiplexed connection per project daemon.

``FabricClient`` is what the host holds for each running daemon; ``serve`` is what the
daemon runs.  Many requests and streams share the connection, each tagged with an id, so a
slow exec never blocks a ping.

Streams are flow controlled per stream (see ``messages``): the client grants each stream a
credit window and tops it up as its consumer drains, and the server's ``_feed`` waits for
credit before it asks the producer for the next item.  So a stalled SSE reader costs the
hub at most one window per stream, the daemon holds nothing extra (job output stays in its
file), and other calls on the same connection are never paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import threading
from collections import deque
from typing import Any, AsyncIterator, Callable, Coroutine, Protocol

from ..errors import RemoteError, error_text
from .messages import HEADER, MAX_FRAME, STREAM_WINDOW, FrameBuffer, FrameError, encode

log = logging.getLogger(__name__)

_STREAM_END = object()
_MAX_UNIX_PATH = 100  # bytes; the kernel's limit is 108 including the terminator


class ConnectionLost(RemoteError):
    def __init__(self, detail: str = "connection to the project daemon was lost") -> None:
        super().__init__(detail)


class DaemonRestarting(ConnectionLost):
    """The server said ``bye`` (it restarts in place) and refused this request before it
    started: resending it on a new connection is safe, whatever it does."""

    def __init__(self) -> None:
        super().__init__("the project daemon is restarting; the request did not start")


# What a server that said ``bye`` answers to every request it still reads.  A client honours
# the marker only on a connection that got ``bye`` (see FabricClient._dispatch).
_RESTARTING = {"error": "Error: the project daemon is restarting; the request did not start",
               "daemon_restarting": True}


_RECEIVE_SIZE = 256 * 1024
_per_thread = threading.local()


def _receive_buffer() -> memoryview:
    try:
        return _per_thread.receive  # type: ignore[no-any-return]
    except AttributeError:
        _per_thread.receive = memoryview(bytearray(_RECEIVE_SIZE))
        return _per_thread.receive  # type: ignore[no-any-return]


class _FrameProtocol(asyncio.BufferedProtocol):
    """Frames parsed straight from the receive buffer and handed to ``on_message``: no
    StreamReader, no reader task, no coroutine resumption per frame (every exec crosses
    the fabric twice, so each saved loop hop counts).  ``drain`` gives writers the same
    back-pressure as ``StreamWriter.drain``.

    A buffered protocol: a plain ``Protocol`` gets a fresh 256 KiB bytes object per
    receive, which glibc serves with mmap + mremap + munmap (three syscalls and a page
    fault for a 100-byte frame).  The receive buffer is shared by every connection of the
    thread: ``buffer_updated`` runs right after the receive into it and copies out what
    it does not parse, so a server with 200 daemons holds one buffer, not 200."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._frames = FrameBuffer()
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return _receive_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            messages = self._frames.feed(_receive_buffer()[:nbytes])
        except FrameError as exc:
            self.on_broken(exc)
            if self.transport is not None:
                self.transport.close()
            return
        for message, size in zip(messages, self._frames.sizes):
            self.on_message(message, size)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake_writers()
        self.on_lost(exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_writers()

    def _wake_writers(self) -> None:
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    def send(self, message: dict[str, Any]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(message))

    def send_frame(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    async def drain(self) -> None:
        if self.lost:
            raise ConnectionResetError("Connection lost")
        if not self._paused:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- for subclasses
    def on_message(self, message: dict[str, Any], size: int) -> None:
        raise NotImplementedError

    def on_broken(self, exc: Exception) -> None:
        log.warning("fabric connection failed: %s", exc)

    def on_lost(self, exc: Exception | None) -> None:
        pass


class _ClientProtocol(_FrameProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.client: FabricClient | None = None

    def on_message(self, message: dict[str, Any], size: int) -> None:
        if self.client is not None:
            self.client._dispatch(message, size)

    def on_lost(self, exc: Exception | None) -> None:
        if self.client is not None:
            self.client._fail_all()
            self.client._notify_lost()


class _Stream:
    """Client side of one stream: received items not yet taken by the consumer, and the
    credit accounting that bounds them (``granted`` and ``received`` count frame bytes)."""

    __slots__ = ("items", "window", "granted", "received", "waiter")

    def __init__(self, window: int) -> None:
        self.items: deque[tuple[Any, int]] = deque()
        self.window = window
        self.granted = window
        self.received = 0
        self.waiter: asyncio.Future[None] | None = None

    def push(self, item: Any, size: int = 0) -> None:
        self.items.append((item, size))
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def get(self) -> tuple[Any, int]:
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.items.popleft()


class FabricClient:
    def __init__(self, protocol: _ClientProtocol) -> None:
        self._protocol = protocol
        protocol.client = self
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, _Stream] = {}
        self._closed = protocol.lost
        self._closed_here = False
        self._restarting = False   # the server said ``bye``: resend elsewhere, never here
        # Called once when the far side goes away (not after our own close()): the host
        # uses it to clean up after a daemon that died.
        self.on_lost: Callable[[], None] | None = None
        if self._closed:
            self._fail_all()

    @classmethod
    async def from_socket(cls, sock: "socket.socket") -> "FabricClient":
        """Wrap an already connected (and, by the caller, verified) socket."""
        sock.setblocking(False)
        _, protocol = await asyncio.get_running_loop().create_unix_connection(_ClientProtocol, sock=sock)
        return cls(protocol)

    @classmethod
    async def connect(cls, path: str | os.PathLike[str]) -> "FabricClient":
        loop = asyncio.get_running_loop()
        path = os.fspath(path)
        if len(path.encode()) < _MAX_UNIX_PATH:
            _, protocol = await loop.create_unix_connection(_ClientProtocol, path)
            return cls(protocol)
        # sun_path holds only 108 bytes, and data dirs can be deep: reach the socket through
        # a short /proc/self/fd/N/<name> alias of its directory instead.
        directory = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY)
        try:
            short = f"/proc/self/fd/{directory}/{os.path.basename(path)}"
            _, protocol = await loop.create_unix_connection(_ClientProtocol, short)
        finally:
            os.close(directory)
        return cls(protocol)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def restarting(self) -> bool:
        """The far side said it restarts in place: closed for new calls, yet not dead."""
        return self._restarting

    async def call(self, name: str, args: list[Any], budget: float | None = None) -> Any:
        """Request/reply.  ``budget`` only informs the daemon; the caller bounds the wait."""
        if self._closed:
            raise DaemonRestarting() if self._restarting else ConnectionLost()
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._protocol.send({"t": "req", "id": request_id, "name": name,
                                 "args": args, "budget": budget})
            return await future
        except asyncio.CancelledError:
            self._send_cancel(request_id)
            raise
        finally:
            self._pending.pop(request_id, None)

    async def stream(self, name: str, args: list[Any], window: int = STREAM_WINDOW) -> AsyncIterator[Any]:
        """Yield stream items until the far side ends it; closing the iterator cancels it.

        At most ``window`` bytes of item frames (plus one item) are held here: credit is
        given back only for what the consumer took, so a consumer that stops asking (a
        stalled HTTP client) stops the daemon's feed instead of filling the hub."""
        if self._closed:
            raise DaemonRestarting() if self._restarting else ConnectionLost()
        request_id = next(self._ids)
        state = _Stream(window)
        self._streams[request_id] = state
        finished = False
        taken = 0    # bytes handed to the consumer and not yet given back as credit
        try:
            self._protocol.send({"t": "sub", "id": request_id, "name": name, "args": args,
                                 "window": window})
            while True:
                # The consumer is back for more, so what it took is drained: top up the
                # credit in quarter windows (fewer frames, the pipe stays full).
                if taken >= window // 4 and not self._closed:
                    state.granted += taken
                    self._protocol.send({"t": "credit", "id": request_id, "n": taken})
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
            self._streams.pop(request_id, None)
            state.items.clear()
            if not finished:
                self._send_cancel(request_id)

    def _send_cancel(self, request_id: int) -> None:
        if not self._closed:
            with contextlib.suppress(Exception):
                self._protocol.send({"t": "cancel", "id": request_id})

    def _refused(self, error: Any) -> bool:
        """A request the server turned away unstarted because it restarts (after ``bye``)."""
        return self._restarting and isinstance(error, dict) and error.get("daemon_restarting") is True

    def _dispatch(self, message: dict[str, Any], size: int = 0) -> None:
        kind = message.get("t")
        request_id = message.get("id")
        if kind == "res":
            future = self._pending.get(request_id)  # type: ignore[arg-type]
            if future is None or future.done():
                return
            if message.get("ok"):
                future.set_result(message.get("result"))
            elif self._refused(message.get("error")):
                future.set_exception(DaemonRestarting())
            else:
                future.set_exception(_error_from(message.get("error")))
        elif kind in ("item", "end"):
            state = self._streams.get(request_id)  # type: ignore[arg-type]
            if state is None:
                return
            if kind == "item":
                if state.received >= state.granted:
                    # The daemon sent past its credit: never buffer for it (it runs as the
                    # project user and is not trusted to behave).  End the stream here.
                    log.warning("fabric: stream %s ignored flow control; cancelled", request_id)
                    del self._streams[request_id]  # type: ignore[arg-type]
                    state.items.clear()
                    state.push(RemoteError("Error: the project daemon sent a stream past its "
                                           "flow-control window; the stream was cancelled"))
                    self._send_cancel(request_id)  # type: ignore[arg-type]
                    return
                state.received += size
                state.push(message.get("data"), size)
            elif self._refused(message.get("error")):
                state.push(DaemonRestarting())
            elif message.get("error") is not None:
                state.push(_error_from(message["error"]))
            else:
                state.push(_STREAM_END)
        elif kind == "bye" and not self._closed:
            # New calls go to a new connection (the host reconnects: ``closed``); what was
            # sent before this point is still answered here, refused or not.
            self._restarting = True
            self._closed = True
            self._protocol.send({"t": "bye-ack"})

    def _fail_all(self) -> None:
        self._closed = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionLost())
        for state in self._streams.values():
            state.push(ConnectionLost())

    def _notify_lost(self) -> None:
        callback, self.on_lost = self.on_lost, None
        if callback is not None and not self._closed_here:
            try:
                callback()
            except Exception:
                log.exception("on_lost callback failed")

    async def close(self) -> None:
        self._closed = True
        self._closed_here = True
        self._protocol.close()
        await asyncio.sleep(0)   # let connection_lost run (it fails what is still pending)


def _error_from(payload: Any) -> RemoteError:
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        extra = {k: v for k, v in payload.items() if k != "error"}
        return RemoteError(payload["error"], **extra)
    return RemoteError(str(payload))


class Handler(Protocol):
    async def call(self, name: str, args: list[Any], budget: float | None) -> Any: ...

    def stream(self, name: str, args: list[Any]) -> AsyncIterator[Any]: ...


class _Credit:
    """Server side of one stream's flow control: bytes it may still send (may go negative
    by one item), and a waiter woken by ``credit`` frames."""

    __slots__ = ("available", "waiter")

    def __init__(self, window: int) -> None:
        self.available = window
        self.waiter: asyncio.Future[None] | None = None

    def add(self, n: int) -> None:
        self.available += n
        if self.available > 0 and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self) -> None:
        while self.available <= 0:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None


_MAX_CREDIT = 1 << 40   # a sanity bound on one credit frame


def _too_large(what: str, size: int) -> RemoteError:
    return RemoteError(f"Error: the {what} is too large to send ({size} bytes; the limit is "
                       f"{MAX_FRAME} bytes per message)")


class _Connection(_FrameProtocol):
    """Server side of one client connection: runs each request as its own task."""

    def __init__(self, handler: Handler, on_connect: Callable[[], None] | None,
                 registry: "set[_Connection] | None" = None) -> None:
        super().__init__()
        self.handler = handler
        self.on_connect = on_connect
        self.registry = registry
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.credits: dict[int, _Credit] = {}
        self.leaving = False   # we said ``bye``: refuse every new request, unstarted
        self.acked = False     # the client answered ``bye-ack``: nothing more will come

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.registry is not None:
            self.registry.add(self)
        if self.on_connect:
            self.on_connect()

    def say_bye(self) -> None:
        self.leaving = True
        self.send({"t": "bye"})

    def settled(self) -> bool:
        """Nothing more can arrive and everything owed is written (or the client is gone)."""
        if self.lost or self.transport is None:
            return True
        return (self.acked and not self.tasks
                and self.transport.get_write_buffer_size() == 0)

    def on_message(self, message: dict[str, Any], size: int) -> None:
        kind, request_id = message.get("t"), message.get("id")
        if kind == "bye-ack" and self.leaving:
            self.acked = True
            return
        if not isinstance(request_id, int):
            return
        if self.leaving and kind in ("req", "sub"):
            # Sent before the client read our ``bye``: refuse it unstarted, so it is resent
            # to the restarted server instead of lost with this connection.
            reply = ({"t": "res", "id": request_id, "ok": False, "error": _RESTARTING}
                     if kind == "req" else {"t": "end", "id": request_id, "error": _RESTARTING})
            self.send(reply)
            return
        if kind == "req":
            self._start(request_id, self._answer(request_id, message))
        elif kind == "credit":
            credit = self.credits.get(request_id)
            n = message.get("n")
            if credit is not None and isinstance(n, int) and 0 < n <= _MAX_CREDIT:
                credit.add(n)
        elif kind == "sub":
            window = message.get("window")
            # A client without a window (an older hub) gets the old unpaced stream.
            if isinstance(window, int) and not isinstance(window, bool) and window > 0:
                self.credits[request_id] = _Credit(min(window, _MAX_CREDIT))
            self._start(request_id, self._feed(request_id, message))
        elif kind == "cancel":
            task = self.tasks.get(request_id)
            if task:
                task.cancel()

    def on_broken(self, exc: Exception) -> None:
        log.info("fabric client went away: %s", exc)

    def on_lost(self, exc: Exception | None) -> None:
        if self.registry is not None:
            self.registry.discard(self)
        for task in list(self.tasks.values()):
            task.cancel()

    def _start(self, request_id: int, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks[request_id] = task

        def forget(_t: object) -> None:
            self.tasks.pop(request_id, None)
            self.credits.pop(request_id, None)
        task.add_done_callback(forget)

    async def _answer(self, request_id: int, message: dict[str, Any]) -> None:
        name = message.get("name")
        args = message.get("args")
        budget = message.get("budget")
        try:
            if not isinstance(name, str) or not isinstance(args, list):
                raise RemoteError("Error: malformed request")
            result = await self.handler.call(name, args, budget if isinstance(budget, (int, float)) else None)
        except asyncio.CancelledError:
            return
        except RemoteError as exc:
            self.send({"t": "res", "id": request_id, "ok": False, "error": exc.to_json()})
            return
        except Exception as exc:  # a bug in a handler must not kill the connection
            log.exception("handler %s failed", name)
            self.send({"t": "res", "id": request_id, "ok": False, "error": {"error": error_text(exc)}})
            return
        try:   # a result that cannot be encoded still gets an answer, never silence
            frame = encode({"t": "res", "id": request_id, "ok": True, "result": result})
        except Exception as exc:   # e.g. a value JSON has no form for
            log.exception("result of %s cannot be encoded", name)
            frame = encode({"t": "res", "id": request_id, "ok": False,
                            "error": {"error": f"Error: the result cannot be sent: {type(exc).__name__}"}})
        if len(frame) - HEADER.size > MAX_FRAME:
            # The peer would drop the whole connection (every call of the project) on it.
            error = _too_large("result", len(frame) - HEADER.size).to_json()
            frame = encode({"t": "res", "id": request_id, "ok": False, "error": error})
        self.send_frame(frame)
        del frame, result
        with contextlib.suppress(ConnectionError):
            await self.drain()

    async def _feed(self, request_id: int, message: dict[str, Any]) -> None:
        name = message.get("name")
        args = message.get("args")
        try:
            if not isinstance(name, str) or not isinstance(args, list):
                raise RemoteError("Error: malformed request")
            credit = self.credits.get(request_id)
            items = self.handler.stream(name, args)
            try:
                while True:
                    if credit is not None:
                        await credit.wait()   # before asking the producer for more
                    try:
                        item = await items.__anext__()
                    except StopAsyncIteration:
                        break
                    frame = encode({"t": "item", "id": request_id, "data": item})
                    del item
                    if len(frame) - HEADER.size > MAX_FRAME:
                        raise _too_large("stream item", len(frame) - HEADER.size)
                    self.send_frame(frame)
                    if credit is not None:
                        credit.available -= len(frame) - HEADER.size
                    del frame
                    await self.drain()  # and the socket's own back-pressure
            finally:
                aclose = getattr(items, "aclose", None)
                if aclose is not None:   # close the producer now (files, tasks), not at GC
                    with contextlib.suppress(Exception):
                        await aclose()
        except asyncio.CancelledError:
            return
        except RemoteError as exc:
            self.send({"t": "end", "id": request_id, "error": exc.to_json()})
            return
        except Exception as exc:
            log.exception("stream %s failed", name)
            self.send({"t": "end", "id": request_id, "error": {"error": error_text(exc)}})
            return
        self.send({"t": "end", "id": request_id})


async def serve(path: "str | os.PathLike[str] | socket.socket", handler: Handler,
                on_connect: Callable[[], None] | None = None,
                connections: "set[_Connection] | None" = None) -> asyncio.AbstractServer:
    """Listen on a Unix socket; the socket file is replaced atomically if stale.

    Given a socket object (a project daemon's: bound by the host, inherited), only listen
    on it: the caller of ``listen()`` is whom the host's SO_PEERCRED check sees.
    ``connections``, when given, holds the open connections (for ``say_goodbye``)."""
    loop = asyncio.get_running_loop()

    def factory() -> _Connection:
        return _Connection(handler, on_connect, connections)

    if isinstance(path, socket.socket):
        return await loop.create_unix_server(factory, sock=path)
    path = os.fspath(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)

    if len(path.encode()) < _MAX_UNIX_PATH:
        server = await loop.create_unix_server(factory, path=path)
    else:  # bind through a short alias of the directory, as connect() does
        directory = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY)
        try:
            short = f"/proc/self/fd/{directory}/{os.path.basename(path)}"
            server = await loop.create_unix_server(factory, path=short)
        finally:
            os.close(directory)
    os.chmod(path, 0o600)  # only the project uid (and root) may talk to the daemon
    return server


async def say_goodbye(connections: "set[_Connection]", timeout_s: float) -> bool:
    """Tell every client this server restarts in place (``bye``), then wait until each one
    acknowledged or went away, every request it sent before has finished (refused ones at
    once) and every reply is written.  True when all did within ``timeout_s``: from then on
    closing the connections loses nothing."""
    for connection in list(connections):
        connection.say_bye()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not all(c.settled() for c in list(connections)):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.005)
    return True
