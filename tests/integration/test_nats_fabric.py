"""The fabric over a real nats-server: calls, chunking, flow-controlled streams, failures.

A hub (``NatsFabric``) and hosts (``HostServer``) connect with the credentials
``projecthub nats-config`` writes, so every test also runs under the real permissions."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

import pytest

from projecthub.errors import RemoteError
from projecthub.fabric.nats_client import HostUnavailable, NatsFabric
from projecthub.fabric.nats_server import HostServer
from projecthub.fabric.nats_wire import HOST_LOST_S, connect, host_inbox_prefix
from tests.nats import MAX_PAYLOAD, NatsServer, nats_server  # noqa: F401

ITEM = 16 * 1024


class Handler:
    """A host-side handler whose streams count what they produced."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.produced = 0
        self.closed = asyncio.Event()
        self.started = asyncio.Event()

    async def call(self, name: str, args: list[Any], budget: float | None) -> Any:
        if name == "echo":
            return {"host": self.name, "args": args}
        if name == "big":
            return "x" * args[0]
        if name == "hang":
            self.started.set()
            await asyncio.sleep(3600)
        raise RemoteError(f"Error: no such call {name}", code=7)

    async def stream(self, name: str, args: list[Any]) -> AsyncIterator[Any]:
        try:
            for i in range(args[0]):
                self.produced += 1
                yield {"i": i, "pad": "y" * args[1]}
        finally:
            self.closed.set()


async def _hub(nats: NatsServer) -> NatsFabric:
    nc = await connect(nats.url, name="hub", creds=nats.hub_creds())
    return await NatsFabric(nc).start()


async def _host(nats: NatsServer, name: str, handler: Handler) -> HostServer:
    nc = await connect(nats.url, name=name, creds=nats.host_creds(name),
                       inbox_prefix=host_inbox_prefix(name))
    return await HostServer(nc, name, handler, lambda: {"projects": 0}).start()


async def _close(*parts: Any) -> None:
    for part in parts:
        await part.close()
        await part.nc.close()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_call_result_and_error(nats_server: NatsServer) -> None:
    async def main() -> None:
        hub, host = await _hub(nats_server), await _host(nats_server, "h1", Handler("h1"))
        try:
            assert await hub.call("h1", "echo", [1, "two"]) == {"host": "h1", "args": [1, "two"]}
            with pytest.raises(RemoteError) as err:
                await hub.call("h1", "nope", [])
            assert err.value.message == "Error: no such call nope" and err.value.extra == {"code": 7}
        finally:
            await _close(host, hub)
    run(main())


def test_payloads_over_max_payload_are_chunked_both_ways(nats_server: NatsServer) -> None:
    async def main() -> None:
        hub, host = await _hub(nats_server), await _host(nats_server, "h1", Handler("h1"))
        try:
            size = 5 * MAX_PAYLOAD + 123
            assert await hub.call("h1", "big", [size]) == "x" * size
            arg = "z" * (3 * MAX_PAYLOAD)
            assert (await hub.call("h1", "echo", [arg]))["args"] == [arg]
            items = [item async for item in hub.stream("h1", "count", [3, 2 * MAX_PAYLOAD])]
            assert [i["i"] for i in items] == [0, 1, 2] and len(items[2]["pad"]) == 2 * MAX_PAYLOAD
        finally:
            await _close(host, hub)
    run(main())


def test_slow_consumer_bounds_the_producer_and_cancel_stops_it(nats_server: NatsServer) -> None:
    async def main() -> None:
        handler = Handler("h1")
        hub, host = await _hub(nats_server), await _host(nats_server, "h1", handler)
        window = 8 * ITEM
        try:
            stream = hub.stream("h1", "count", [10_000, ITEM], window)
            taken = 0
            async for _ in stream:
                taken += 1
                await asyncio.sleep(0.01)   # a slow reader
                # never more than the window (plus one item) ahead of what was taken,
                # whatever the producer could do
                assert handler.produced - taken <= window // ITEM + 2
                if taken == 40:
                    break
            await stream.aclose()
            await asyncio.wait_for(handler.closed.wait(), 5)   # cancel reached the producer
            produced = handler.produced
            await asyncio.sleep(0.3)
            assert handler.produced == produced < 100
        finally:
            await _close(host, hub)
    run(main())


def test_unserved_host_fails_at_once_naming_it(nats_server: NatsServer) -> None:
    async def main() -> None:
        hub = await _hub(nats_server)
        try:
            started = time.monotonic()
            with pytest.raises(HostUnavailable, match="host h2 is not connected"):
                await hub.call("h2", "echo", [])
            with pytest.raises(HostUnavailable, match="host h2"):
                async for _ in hub.stream("h2", "count", [1, 1]):
                    pass
            assert time.monotonic() - started < 1.0
        finally:
            await _close(hub)
    run(main())


def test_host_gone_mid_call_fails_fast_naming_it(nats_server: NatsServer) -> None:
    async def main() -> None:
        handler = Handler("h2")
        hub, host = await _hub(nats_server), await _host(nats_server, "h2", handler)
        try:
            call = asyncio.ensure_future(hub.call("h2", "hang", []))
            await asyncio.wait_for(handler.started.wait(), 5)
            gone = time.monotonic()
            await host.nc.close()          # the host vanishes: no answer, no heartbeat
            with pytest.raises(HostUnavailable, match="host h2 stopped answering"):
                await call
            assert time.monotonic() - gone < HOST_LOST_S + 2
            with pytest.raises(HostUnavailable, match="host h2"):   # and later calls at once
                await asyncio.wait_for(hub.call("h2", "echo", []), 1.0)
        finally:
            await host.close()
            await _close(hub)
    run(main())


def test_an_answer_dropped_by_a_full_subscription_fails_its_call(nats_server: NatsServer) -> None:
    """nats-py drops what does not fit a subscription's queue (SlowConsumerError): the call
    whose answer was dropped fails with a clear error instead of waiting for ever."""
    async def main() -> None:
        handler = Handler("h1")
        hub, host = await _hub(nats_server), await _host(nats_server, "h1", handler)
        try:
            call = asyncio.ensure_future(hub.call("h1", "hang", []))
            await asyncio.wait_for(handler.started.wait(), 5)
            (request_id,) = list(hub._pending)
            from nats.errors import SlowConsumerError
            hub.on_nats_error(SlowConsumerError(subject=f"_R.h1.{hub.hub_id}.{request_id}", reply="",
                                                sid=1, sub=None))
            with pytest.raises(RemoteError, match="answer from host h1 was lost"):
                await call
        finally:
            await _close(host, hub)
    run(main())


def test_a_request_dropped_by_a_full_host_subscription_is_answered(nats_server: NatsServer) -> None:
    async def main() -> None:
        handler = Handler("h1")
        hub, host = await _hub(nats_server), await _host(nats_server, "h1", handler)
        try:
            from nats.errors import SlowConsumerError
            call = asyncio.ensure_future(hub.call("h1", "hang", []))
            await asyncio.wait_for(handler.started.wait(), 5)
            (request_id,) = list(hub._pending)
            # as if nats-py had dropped this request on the host for want of room
            host.on_nats_error(SlowConsumerError(subject="ph.host.h1.call",
                                                 reply=f"_R.h1.{hub.hub_id}.{request_id}", sid=1, sub=None))
            with pytest.raises(RemoteError, match="host h1 fell behind"):
                await asyncio.wait_for(call, 5)
        finally:
            await _close(host, hub)
    run(main())


def test_a_host_shutting_down_answers_what_it_was_doing(nats_server: NatsServer) -> None:
    async def main() -> None:
        handler = Handler("h1")
        hub, host = await _hub(nats_server), await _host(nats_server, "h1", handler)
        try:
            call = asyncio.ensure_future(hub.call("h1", "hang", []))
            await asyncio.wait_for(handler.started.wait(), 5)
            started = time.monotonic()
            await host.close()
            with pytest.raises(RemoteError, match="host h1 is shutting down"):
                await asyncio.wait_for(call, 5)
            assert time.monotonic() - started < 1.0   # not after the heartbeat timeout
        finally:
            await host.nc.close()
            await _close(hub)
    run(main())


def test_nats_lost_at_run_time_fails_fast_and_recovers(tmp_path: Any) -> None:
    """The NATS server goes away under a hub and a host: calls fail at once with a clear
    error; when it is back (same address), both reconnect on their own and calls work."""
    import shutil

    from tests.conftest import require
    from tests.server import free_port
    require("nats-server binary (Debian package nats-server)", shutil.which("nats-server") is not None)
    server = NatsServer(tmp_path, free_port()).start()

    async def main() -> None:
        hub, host = await _hub(server), await _host(server, "h1", Handler("h1"))
        try:
            assert (await hub.call("h1", "echo", []))["host"] == "h1"
            await asyncio.to_thread(server.stop)
            for _ in range(50):
                if not hub.nc.is_connected:
                    break
                await asyncio.sleep(0.05)
            started = time.monotonic()
            with pytest.raises(HostUnavailable, match="not connected to NATS"):
                await hub.call("h1", "echo", [])
            assert time.monotonic() - started < 0.5
            await asyncio.to_thread(server.start)
            deadline = time.monotonic() + 20
            while True:   # both reconnect by themselves; the host heartbeats again
                try:
                    assert (await hub.call("h1", "echo", [], None, 2))["host"] == "h1"
                    break
                except HostUnavailable:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
        finally:
            await _close(host, hub)
    try:
        run(main())
    finally:
        server.stop()
