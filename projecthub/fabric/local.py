"""Fabric over a Unix socket: one persistent, multiplexed connection per project daemon.

``FabricClient`` is what the host holds for each running daemon; ``serve`` is what the
daemon runs.  Many requests and streams share the connection, each tagged with an id, so a
slow exec never blocks a ping.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol

from ..errors import RemoteError, error_text
from .messages import FrameError, encode, read_frame

log = logging.getLogger(__name__)

_STREAM_END = object()
# Unix sockets carry big replies (a 1 MB exec output) in one frame; the default 64 KiB
# StreamReader limit only matters for readline(), but a large buffer avoids many wakeups.
_READ_LIMIT = 4 * 2**20
_MAX_UNIX_PATH = 100  # bytes; the kernel's limit is 108 including the terminator


class ConnectionLost(RemoteError):
    def __init__(self, detail: str = "connection to the project daemon was lost") -> None:
        super().__init__(detail)


class FabricClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, asyncio.Queue[Any]] = {}
        self._closed = False
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(cls, path: str | os.PathLike[str]) -> "FabricClient":
        path = os.fspath(path)
        if len(path.encode()) < _MAX_UNIX_PATH:
            reader, writer = await asyncio.open_unix_connection(path, limit=_READ_LIMIT)
            return cls(reader, writer)
        # sun_path holds only 108 bytes, and data dirs can be deep: reach the socket through
        # a short /proc/self/fd/N/<name> alias of its directory instead.
        directory = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY)
        try:
            short = f"/proc/self/fd/{directory}/{os.path.basename(path)}"
            reader, writer = await asyncio.open_unix_connection(short, limit=_READ_LIMIT)
        finally:
            os.close(directory)
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        return self._closed

    async def call(self, name: str, args: list[Any], budget: float | None = None) -> Any:
        """Request/reply.  ``budget`` only informs the daemon; the caller bounds the wait."""
        if self._closed:
            raise ConnectionLost()
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._writer.write(encode({"t": "req", "id": request_id, "name": name,
                                       "args": args, "budget": budget}))
            return await future
        except asyncio.CancelledError:
            self._send_cancel(request_id)
            raise
        finally:
            self._pending.pop(request_id, None)

    async def stream(self, name: str, args: list[Any]) -> AsyncIterator[Any]:
        """Yield stream items until the far side ends it; closing the iterator cancels it."""
        if self._closed:
            raise ConnectionLost()
        request_id = next(self._ids)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._streams[request_id] = queue
        finished = False
        try:
            self._writer.write(encode({"t": "sub", "id": request_id, "name": name, "args": args}))
            while True:
                item = await queue.get()
                if item is _STREAM_END:
                    finished = True
                    return
                if isinstance(item, RemoteError):
                    finished = True
                    raise item
                yield item
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._send_cancel(request_id)

    def _send_cancel(self, request_id: int) -> None:
        if not self._closed:
            with contextlib.suppress(Exception):
                self._writer.write(encode({"t": "cancel", "id": request_id}))

    async def _read_loop(self) -> None:
        try:
            while True:
                message = await read_frame(self._reader)
                if message is None:
                    break
                self._dispatch(message)
        except (ConnectionError, FrameError, asyncio.IncompleteReadError, ValueError) as exc:
            log.warning("fabric connection failed: %s", exc)
        finally:
            self._fail_all()

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("t")
        request_id = message.get("id")
        if kind == "res":
            future = self._pending.get(request_id)  # type: ignore[arg-type]
            if future is None or future.done():
                return
            if message.get("ok"):
                future.set_result(message.get("result"))
            else:
                future.set_exception(_error_from(message.get("error")))
        elif kind in ("item", "end"):
            queue = self._streams.get(request_id)  # type: ignore[arg-type]
            if queue is None:
                return
            if kind == "item":
                queue.put_nowait(message.get("data"))
            elif message.get("error") is not None:
                queue.put_nowait(_error_from(message["error"]))
            else:
                queue.put_nowait(_STREAM_END)

    def _fail_all(self) -> None:
        self._closed = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionLost())
        for queue in self._streams.values():
            queue.put_nowait(ConnectionLost())

    async def close(self) -> None:
        self._closed = True
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        self._reader_task.cancel()
        with contextlib.suppress(BaseException):
            await self._reader_task


def _error_from(payload: Any) -> RemoteError:
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        extra = {k: v for k, v in payload.items() if k != "error"}
        return RemoteError(payload["error"], **extra)
    return RemoteError(str(payload))


class Handler(Protocol):
    async def call(self, name: str, args: list[Any], budget: float | None) -> Any: ...

    def stream(self, name: str, args: list[Any]) -> AsyncIterator[Any]: ...


class _Connection:
    """Server side of one client connection: runs each request as its own task."""

    def __init__(self, handler: Handler, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.handler = handler
        self.reader = reader
        self.writer = writer
        self.tasks: dict[int, asyncio.Task[None]] = {}

    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode(message))

    async def run(self) -> None:
        try:
            while True:
                message = await read_frame(self.reader)
                if message is None:
                    break
                kind, request_id = message.get("t"), message.get("id")
                if not isinstance(request_id, int):
                    continue
                if kind == "req":
                    self._start(request_id, self._answer(request_id, message))
                elif kind == "sub":
                    self._start(request_id, self._feed(request_id, message))
                elif kind == "cancel":
                    task = self.tasks.get(request_id)
                    if task:
                        task.cancel()
        except (ConnectionError, FrameError, asyncio.IncompleteReadError, ValueError) as exc:
            log.info("fabric client went away: %s", exc)
        finally:
            for task in list(self.tasks.values()):
                task.cancel()
            self.writer.close()

    def _start(self, request_id: int, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self.tasks[request_id] = task
        task.add_done_callback(lambda _t: self.tasks.pop(request_id, None))

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
        self.send({"t": "res", "id": request_id, "ok": True, "result": result})
        await self.writer.drain()

    async def _feed(self, request_id: int, message: dict[str, Any]) -> None:
        name = message.get("name")
        args = message.get("args")
        try:
            if not isinstance(name, str) or not isinstance(args, list):
                raise RemoteError("Error: malformed request")
            async for item in self.handler.stream(name, args):
                self.send({"t": "item", "id": request_id, "data": item})
                await self.writer.drain()  # back-pressure: a slow reader slows the stream
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


async def serve(path: str | os.PathLike[str], handler: Handler,
                on_connect: Callable[[], None] | None = None) -> asyncio.AbstractServer:
    """Listen on a Unix socket; the socket file is replaced atomically if stale."""
    path = os.fspath(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if on_connect:
            on_connect()
        await _Connection(handler, reader, writer).run()

    if len(path.encode()) < _MAX_UNIX_PATH:
        server = await asyncio.start_unix_server(accept, path=path, limit=_READ_LIMIT)
    else:  # bind through a short alias of the directory, as connect() does
        directory = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY)
        try:
            short = f"/proc/self/fd/{directory}/{os.path.basename(path)}"
            server = await asyncio.start_unix_server(accept, path=short, limit=_READ_LIMIT)
        finally:
            os.close(directory)
    os.chmod(path, 0o600)  # only the project uid (and root) may talk to the daemon
    return server
