"""A host's NATS credentials reach only its own subjects (fabric/nats_config.py).

A compromised host h1 (its machine, its credentials) tries to read h2's requests, answer in
h2's name, call h2 itself and read every answer; the real nats-server refuses each with a
permissions violation, and the hub still gets h2's own answer.  The hub calls both."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import pytest

from projecthub.fabric.nats_client import NatsFabric
from projecthub.fabric.nats_server import HostServer
from projecthub.fabric.nats_wire import Credentials, NatsUnavailable, connect, host_inbox_prefix
from projecthub.hub.events import HubEvents
from tests.nats import NatsServer, nats_server  # noqa: F401


class Gate:
    """h2's handler: answers ``wait`` only once released (so h1 has time to forge one)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def call(self, name: str, args: list[Any], budget: float | None) -> Any:
        if name == "wait":
            self.asked.set()
            await self.release.wait()
        return {"host": self.name}

    async def stream(self, name: str, args: list[Any]) -> AsyncIterator[Any]:
        yield {"host": self.name}


class Errors:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, exc: Exception) -> None:
        self.seen.append(str(exc))

    async def violation(self, subject: str) -> None:
        """Wait until the server reported a permissions violation naming ``subject``."""
        for _ in range(100):
            if any("permissions violation" in e.lower() and f"\"{subject.lower()}\"" in e.lower()
                   for e in self.seen):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"no permissions violation for {subject}: {self.seen}")


def test_a_host_cannot_read_answer_for_or_call_another_host(nats_server: NatsServer) -> None:
    async def main() -> None:
        hub = await NatsFabric(await connect(nats_server.url, name="hub",
                                             creds=nats_server.hub_creds())).start()
        hub_events: list[Any] = []
        bus = await HubEvents(hub.nc, hub.hub_id).start()
        bus.on_event = hub_events.append
        gates = {h: Gate(h) for h in ("h1", "h2")}
        hosts = {}
        for h in gates:
            nc = await connect(nats_server.url, name=h, creds=nats_server.host_creds(h),
                               inbox_prefix=host_inbox_prefix(h))
            hosts[h] = await HostServer(nc, h, gates[h]).start()
        errors = Errors()
        evil = await connect(nats_server.url, name="h1-evil", creds=nats_server.host_creds("h1"),
                             inbox_prefix=host_inbox_prefix("h1"), on_error=errors)
        try:
            # the hub calls both hosts
            assert await hub.call("h1", "echo", []) == {"host": "h1"}
            assert [i async for i in hub.stream("h2", "s", [])] == [{"host": "h2"}]

            # h1 cannot read h2's requests, nor any answer, nor h2's heartbeat, nor the hubs'
            # events (which keys were revoked)
            seen: list[Any] = []

            async def spy(msg: Any) -> None:
                seen.append(msg.subject)
            for subject in ("ph.host.h2.call", "ph.host.h2.>", "ph.host.>", "_R.>", "_R.h2.>",
                            "ph.heartbeat.h2", "_INBOX.host.h2.>", "ph.hubs.events", "ph.hubs.>", ">"):
                await evil.subscribe(subject, cb=spy)
                await errors.violation(subject)

            # h1 cannot answer in h2's name: its forged reply is refused, the hub gets h2's own
            call = asyncio.ensure_future(hub.call("h2", "wait", []))
            await asyncio.wait_for(gates["h2"].asked.wait(), 5)
            for n in range(1, 10):
                forged = f"_R.h2.{hub.hub_id}.{n}"
                await evil.publish(forged, b'={"t":"res","ok":true,"result":{"host":"forged"}}')
            await errors.violation(f"_R.h2.{hub.hub_id}.1")
            await asyncio.sleep(0.2)
            assert not call.done()
            gates["h2"].release.set()
            assert await asyncio.wait_for(call, 5) == {"host": "h2"}

            # h1 cannot call h2, nor send it credit or cancels, nor pose as a hub: neither its
            # heartbeat nor its events (a forged "project.state" or "project.moved" would make
            # every hub believe a project stopped or moved)
            for subject in ("ph.host.h2.call", "ph.host.h2.ctl", "ph.hubs.heartbeat", "ph.hubs.events"):
                await evil.publish(subject, b'={"t":"req","id":1,"name":"wait","args":[]}', reply="_R.h1.x.1")
                await errors.violation(subject)
            await evil.publish("ph.hubs.events", b'{"kind":"project.state","hub":"h","project_id":"p",'
                                                 b'"running":false}')
            await evil.flush()
            await asyncio.sleep(0.2)
            assert seen == [] and hub_events == []
        finally:
            await evil.close()
            for host in hosts.values():
                await host.close()
                await host.nc.close()
            await bus.close()
            await hub.close()
            await hub.nc.close()
    asyncio.run(asyncio.wait_for(main(), 60))


def test_wrong_password_is_refused_with_one_clear_error(nats_server: NatsServer) -> None:
    async def main() -> None:
        with pytest.raises(NatsUnavailable, match=f"cannot connect to NATS at {nats_server.url}"):
            await connect(nats_server.url, name="x", creds=Credentials("host-h1", "not-the-password"))
    asyncio.run(asyncio.wait_for(main(), 30))
