"""The fabric over a real Unix socket: multiplexing, streams, cancellation, failures."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from projecthub.errors import RemoteError
from projecthub.fabric.local import ConnectionLost, DaemonRestarting, FabricClient, say_goodbye, serve


class Handler:
    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.budgets: list[float | None] = []

    async def call(self, name: str, args: list[Any], budget: float | None) -> Any:
        self.budgets.append(budget)
        if name == "echo":
            return args
        if name == "sleep":
            try:
                await asyncio.sleep(args[0])
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return "slept"
        if name == "fail":
            raise RemoteError("plain text error", job_id="j1")
        if name == "bug":
            raise KeyError("oops")
        raise RemoteError(f"Error: unknown function '{name}'")

    def stream(self, name: str, args: list[Any]) -> AsyncIterator[Any]:
        async def numbers() -> AsyncIterator[Any]:
            for i in range(args[0]):
                yield {"i": i}
            if name == "stream_fail":
                raise RemoteError("stream broke")
        return numbers()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_requests_are_multiplexed_and_errors_keep_their_text(tmp_path: Path) -> None:
    async def main() -> None:
        handler = Handler()
        server = await serve(tmp_path / "d.sock", handler)
        client = await FabricClient.connect(tmp_path / "d.sock")
        slow = asyncio.ensure_future(client.call("sleep", [0.5], 3.0))
        assert await client.call("echo", [1, "two", {"x": None}]) == [1, "two", {"x": None}]
        assert not slow.done()  # a slow call never blocks a quick one
        assert await slow == "slept"
        with pytest.raises(RemoteError) as info:
            await client.call("fail", [])
        assert info.value.message == "plain text error" and info.value.extra == {"job_id": "j1"}
        with pytest.raises(RemoteError, match="KeyError"):
            await client.call("bug", [])
        assert 3.0 in handler.budgets
        await client.close()
        server.close()
    run(main())


def test_streams_and_cancellation(tmp_path: Path) -> None:
    async def main() -> None:
        handler = Handler()
        server = await serve(tmp_path / "d.sock", handler)
        client = await FabricClient.connect(tmp_path / "d.sock")
        assert [item async for item in client.stream("numbers", [3])] == [{"i": 0}, {"i": 1}, {"i": 2}]
        with pytest.raises(RemoteError, match="stream broke"):
            async for _ in client.stream("stream_fail", [1]):
                pass
        task = asyncio.ensure_future(client.call("sleep", [30], None))
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.wait_for(handler.cancelled.wait(), 5)  # the far side stopped working too
        await client.close()
        server.close()
    run(main())


def test_connection_loss_fails_pending_calls(tmp_path: Path) -> None:
    async def main() -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)  # a request arrives; the "daemon" dies before answering
            writer.close()

        server = await asyncio.start_unix_server(hang_up, path=str(tmp_path / "d.sock"))
        client = await FabricClient.connect(tmp_path / "d.sock")
        with pytest.raises(ConnectionLost):
            await client.call("sleep", [30], None)
        assert client.closed
        with pytest.raises(ConnectionLost):
            await client.call("echo", [])
        server.close()
    run(main())


def test_long_socket_paths_work(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "daemon.sock"
    assert len(str(path)) > 108

    async def main() -> None:
        server = await serve(path, Handler())
        assert path.exists() and oct(os.stat(path).st_mode & 0o777) == "0o600"
        client = await FabricClient.connect(path)
        assert await client.call("echo", ["far"]) == ["far"]
        await client.close()
        server.close()
    run(main())


def test_frame_buffer_reassembles_split_and_batched_frames() -> None:
    from projecthub.fabric.messages import FrameBuffer, encode
    frames = [encode({"t": "res", "id": i, "ok": True, "result": "é" * i}) for i in range(1, 6)]
    wire = b"".join(frames)
    buf = FrameBuffer()
    got = []
    for i in range(0, len(wire), 3):          # byte dribbles, headers split too
        got.extend(buf.feed(wire[i:i + 3]))
    assert [m["id"] for m in got] == [1, 2, 3, 4, 5] and got[2]["result"] == "ééé"
    assert [m["id"] for m in FrameBuffer().feed(wire)] == [1, 2, 3, 4, 5]   # all in one read


def test_frame_buffer_keeps_a_partial_frame_when_the_receive_buffer_is_reused() -> None:
    # The protocol receives into one buffer shared by all connections: a frame split over
    # two receives must survive the buffer being overwritten in between.
    from projecthub.fabric.messages import FrameBuffer, encode
    wire = encode({"t": "res", "id": 1, "ok": True, "result": "a" * 50}) + encode({"t": "end", "id": 2})
    receive = bytearray(256)
    buf = FrameBuffer()
    cut = len(wire) - 10
    receive[:cut] = wire[:cut]
    first = buf.feed(memoryview(receive)[:cut])
    receive[:] = b"\xff" * len(receive)               # the next receive lands in the same buffer
    receive[:10] = wire[cut:]
    second = buf.feed(memoryview(receive)[:10])
    assert [m["id"] for m in first] == [1] and first[0]["result"] == "a" * 50
    assert second == [{"t": "end", "id": 2}]
    assert buf.feed(memoryview(receive)[:0]) == []


def test_frame_buffer_rejects_bad_frames() -> None:
    from projecthub.fabric.messages import HEADER, MAX_FRAME, FrameBuffer, FrameError
    with pytest.raises(FrameError):
        FrameBuffer().feed(HEADER.pack(MAX_FRAME + 1))
    with pytest.raises(FrameError):
        FrameBuffer().feed(HEADER.pack(2) + b"[]")
    with pytest.raises(FrameError):
        FrameBuffer().feed(HEADER.pack(3) + b"{x}")


def test_big_streams_keep_back_pressure_and_order(tmp_path: Path) -> None:
    class Big(Handler):
        def stream(self, name: str, args: list[Any]) -> AsyncIterator[Any]:
            async def chunks() -> AsyncIterator[Any]:
                for i in range(args[0]):
                    yield {"i": i, "data": "x" * 200_000}   # fills the socket buffer: pauses writing
            return chunks()

    async def main() -> None:
        server = await serve(tmp_path / "d.sock", Big())
        client = await FabricClient.connect(tmp_path / "d.sock")
        items = []
        async for item in client.stream("big", [60]):
            items.append(item["i"])
            if len(items) % 10 == 0:
                await asyncio.sleep(0.01)   # a slow reader
        assert items == list(range(60))
        assert await client.call("echo", ["after"]) == ["after"]
        await client.close()
        server.close()
    run(main())


def test_garbage_from_a_client_closes_only_that_connection(tmp_path: Path) -> None:
    async def main() -> None:
        server = await serve(tmp_path / "d.sock", Handler())
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "d.sock"))
        writer.write(b"\x00\x00\x00\x03{x}")
        assert await asyncio.wait_for(reader.read(), 5) == b""   # the daemon hung up on it
        writer.close()
        client = await FabricClient.connect(tmp_path / "d.sock")
        assert await client.call("echo", [1]) == [1]            # others are served as before
        await client.close()
        server.close()
    run(main())


class Counting(Handler):
    """A producer that counts what it was asked for, and notices when it is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.produced = 0
        self.closed = asyncio.Event()

    def stream(self, name: str, args: list[Any]) -> AsyncIterator[Any]:
        async def chunks() -> AsyncIterator[Any]:
            try:
                for i in range(args[0]):
                    self.produced += 1
                    yield {"i": i, "data": "x" * 100_000}
            finally:
                self.closed.set()
        return chunks()


def test_a_stalled_consumer_stops_the_producer_within_one_window(tmp_path: Path) -> None:
    """Per-stream credit: the daemon stops producing while the hub's consumer stalls,
    other calls on the same connection go on, and closing the stream closes the producer."""
    async def main() -> None:
        handler = Counting()
        server = await serve(tmp_path / "d.sock", handler)
        client = await FabricClient.connect(tmp_path / "d.sock")
        stream = client.stream("big", [10_000], window=1 << 20)
        first = await stream.__anext__()
        assert first["i"] == 0
        await asyncio.sleep(0.5)            # stall: the far side has all the time it wants
        assert handler.produced <= 13, handler.produced   # 1 MiB window / 100 kB items + 1
        assert await client.call("echo", ["still"]) == ["still"]   # nothing else is paused
        # draining resumes the flow, in order
        got = [first["i"]] + [(await stream.__anext__())["i"] for _ in range(100)]
        assert got == list(range(101))
        await stream.aclose()               # a disconnect: cancel reaches the producer
        await asyncio.wait_for(handler.closed.wait(), 5)
        assert handler.produced < 130
        await client.close()
        server.close()
    run(main())


def test_a_daemon_ignoring_flow_control_cannot_fill_the_client(tmp_path: Path) -> None:
    """The daemon runs as the project user: the hub enforces the window itself."""
    from projecthub.fabric.messages import FrameBuffer, encode

    async def main() -> None:
        seen: list[dict[str, Any]] = []

        async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            frames = FrameBuffer()
            sub = None
            while sub is None:
                for message in frames.feed(await reader.read(65536)):
                    sub = message
            item = encode({"t": "item", "id": sub["id"], "data": "y" * 100_000})
            for _ in range(100):        # 10 MB against a 256 KiB window
                writer.write(item)
            await writer.drain()
            while data := await reader.read(65536):
                seen.extend(frames.feed(data))

        server = await asyncio.start_unix_server(flood, path=str(tmp_path / "d.sock"))
        client = await FabricClient.connect(tmp_path / "d.sock")
        count = 0
        with pytest.raises(RemoteError, match="flow-control window"):
            async for _ in client.stream("big", [], window=256 * 1024):
                count += 1
                await asyncio.sleep(0.05)   # a slow consumer
        assert count <= 4
        await asyncio.sleep(0.1)
        assert any(m.get("t") == "cancel" for m in seen)
        await client.close()
        server.close()
    run(main())


def test_a_result_over_the_frame_limit_is_an_error_not_a_broken_connection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import projecthub.fabric.local as local
    monkeypatch.setattr(local, "MAX_FRAME", 1000)   # the daemon's side of the check

    async def main() -> None:
        server = await serve(tmp_path / "d.sock", Handler())
        client = await FabricClient.connect(tmp_path / "d.sock")
        with pytest.raises(RemoteError, match="too large to send"):
            await client.call("echo", ["z" * 5000])
        assert await client.call("echo", ["small"]) == ["small"]
        await client.close()
        server.close()
    run(main())


def test_bye_refuses_late_requests_unstarted_and_settles_after_the_ack(tmp_path: Path) -> None:
    """A server restarting in place (project/recycle.py) says ``bye``: requests already on
    the wire are refused unstarted (DaemonRestarting: safe to resend), the client sends
    nothing more on that connection, and ``say_goodbye`` returns once it acknowledged and
    every reply is written."""
    async def main() -> None:
        handler = Handler()
        connections: set[Any] = set()
        server = await serve(tmp_path / "d.sock", handler, connections=connections)
        client = await FabricClient.connect(tmp_path / "d.sock")
        assert await client.call("echo", [1]) == [1]
        assert len(connections) == 1
        slow = asyncio.ensure_future(client.call("sleep", [0.3], 3.0))   # in flight: finishes
        await asyncio.sleep(0.05)
        # a request the client sends after the server's bye but before it reads it
        (connection,) = connections
        connection.say_bye()
        client._protocol.send({"t": "req", "id": 999, "name": "echo", "args": [2], "budget": None})
        future = asyncio.get_running_loop().create_future()
        client._pending[999] = future
        with pytest.raises(DaemonRestarting):
            await asyncio.wait_for(future, 2)
        assert client.closed and client.restarting
        with pytest.raises(DaemonRestarting):        # never sent on this connection again
            await client.call("echo", [3])
        with pytest.raises(DaemonRestarting):
            async for _ in client.stream("numbers", [2]):
                pass
        assert not connection.settled(), "a request is still running"
        assert await slow == "slept"
        assert await say_goodbye(connections, 2.0)
        assert handler.budgets.count(None) == 1 and len(handler.budgets) == 2, "echo 2 never ran"
        await client.close()
        server.close()
        await server.wait_closed()
    run(main())


def test_refusal_marker_is_ignored_without_a_bye(tmp_path: Path) -> None:
    """Only a server that said ``bye`` may have a request resent: a reply that merely
    carries the marker (from a daemon's error fields, say) is an ordinary error."""
    class Marking(Handler):
        async def call(self, name: str, args: list[Any], budget: float | None) -> Any:
            raise RemoteError("Error: plain", daemon_restarting=True)

    async def main() -> None:
        server = await serve(tmp_path / "d.sock", Marking())
        client = await FabricClient.connect(tmp_path / "d.sock")
        with pytest.raises(RemoteError) as info:
            await client.call("x", [])
        assert not isinstance(info.value, ConnectionLost) and info.value.message == "Error: plain"
        assert not client.closed
        await client.close()
        server.close()
        await server.wait_closed()
    run(main())


def test_say_goodbye_gives_up_on_a_client_that_never_acknowledges(tmp_path: Path) -> None:
    async def main() -> None:
        import socket as socket_mod
        connections: set[Any] = set()
        server = await serve(tmp_path / "d.sock", Handler(), connections=connections)
        raw = socket_mod.socket(socket_mod.AF_UNIX)
        raw.connect(str(tmp_path / "d.sock"))   # speaks no fabric: never answers bye-ack
        for _ in range(100):
            if connections:
                break
            await asyncio.sleep(0.01)
        assert not await say_goodbye(connections, 0.3)
        raw.close()
        server.close()
        await server.wait_closed()
    run(main())
