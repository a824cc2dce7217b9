"""The hub event bus (hub/events.py): what is accepted, what is ignored, and its bounds, on a
real nats-server with the hubs' credentials."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from projecthub.fabric.nats_wire import HUBS_EVENTS, connect
from projecthub.hub.events import (MAX_EVENT_BYTES, HubEvent, HubEvents, announce, decode_event,
                                   encode_event)
from tests.nats import NatsServer, nats_server  # noqa: F401

PID = "0b7c2d0e-6f3a-4a57-9d55-1f0b6c7d8e9f"


def test_round_trip_of_every_kind() -> None:
    for event in (HubEvent("keys.changed", "hub-a", key_id=12), HubEvent("keys.changed", "hub-a"),
                  HubEvent("account.changed", "hub-a", account_id=PID),
                  HubEvent("limits.changed", "hub-a", project_id=PID),
                  HubEvent("limits.changed", "hub-a", account_id=PID),
                  HubEvent("project.state", "hub-a", project_id=PID, running=False),
                  HubEvent("project.moved", "hub-a", project_id=PID),
                  HubEvent("collaborators.changed", "hub-a", project_id=PID)):
        assert decode_event(encode_event(event)) == event


def test_malformed_events_are_ignored() -> None:
    bad: list[Any] = [
        b"", b"not json", b"\xff\xfe", b"[1]", b'"x"', b"{}",
        {"kind": "keys.changed"},                                   # no sender
        {"kind": "keys.changed", "hub": ""},
        {"kind": "keys.changed", "hub": 5},
        {"kind": "grant.admin", "hub": "h"},                        # unknown kind
        {"kind": "keys.changed", "hub": "h", "key_id": "12"},
        {"kind": "keys.changed", "hub": "h", "key_id": True},
        {"kind": "project.state", "hub": "h", "project_id": PID},    # running missing
        {"kind": "project.state", "hub": "h", "project_id": PID, "running": "no"},
        {"kind": "project.moved", "hub": "h"},                       # needs a project
        {"kind": "limits.changed", "hub": "h", "project_id": ["x"]},
        {"kind": "limits.changed", "hub": "h", "account_id": "a" * 500},
        {"kind": "keys.changed", "hub": "h" * 500},
    ]
    for raw in bad:
        data = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
        assert decode_event(data) is None, raw
    deep = b"[" * 100000 + b"]" * 100000
    assert decode_event(deep) is None
    big = json.dumps({"kind": "keys.changed", "hub": "h", "pad": "x" * MAX_EVENT_BYTES}).encode()
    assert decode_event(big) is None


def test_bus_on_nats_skips_own_malformed_and_bounds_what_it_queues(nats_server: NatsServer) -> None:
    async def main() -> None:
        creds = nats_server.hub_creds()
        errors: list[Exception] = []
        nc_a = await connect(nats_server.url, name="a", creds=creds)
        nc_b = await connect(nats_server.url, name="b", creds=creds,
                             on_error=lambda exc: (errors.append(exc), bus_b.on_nats_error(exc)))
        bus_a = await HubEvents(nc_a, "hub-a").start()
        bus_b = await HubEvents(nc_b, "hub-b", max_pending=16).start()
        seen: dict[str, list[HubEvent]] = {"a": [], "b": []}
        resyncs: list[str] = []
        bus_a.on_event = seen["a"].append
        bus_b.on_event = seen["b"].append
        bus_b.on_resync = lambda: resyncs.append("b")
        try:
            await nc_a.flush()
            await nc_b.flush()
            bus_a.publish("keys.changed", key_id=7)
            await _until(lambda: seen["b"])
            assert seen["b"] == [HubEvent("keys.changed", "hub-a", key_id=7)]
            assert seen["a"] == []            # its own message: ignored
            # garbage on the subject (a buggy or hostile hub) is dropped, the bus keeps working
            for junk in (b"junk", b'{"kind":"project.state","hub":"x","project_id":"p"}',
                         b"{" * 10000, b"x" * (MAX_EVENT_BYTES + 1)):
                await nc_a.publish(HUBS_EVENTS, junk)
            bus_a.publish("account.changed", account_id=PID)
            await _until(lambda: len(seen["b"]) == 2)
            assert seen["b"][1] == HubEvent("account.changed", "hub-a", account_id=PID)

            # bounded: a burst larger than b's queue (16) is dropped by nats-py past the bound,
            # reported as a slow consumer, and b drops its caches instead of trusting them
            for n in range(2000):
                await nc_a.publish(HUBS_EVENTS, encode_event(HubEvent("keys.changed", "hub-a", key_id=n)))
            await nc_a.flush()
            await _until(lambda: resyncs, 10)
            assert any(type(e).__name__ == "SlowConsumerError" for e in errors)
            assert len(seen["b"]) < 2002

            # NATS away: publishing logs and never raises
            await nc_a.close()
            bus_a.publish("keys.changed", key_id=1)
            await asyncio.sleep(0.1)
        finally:
            await bus_a.close()
            await bus_b.close()
            await nc_b.close()
            if not nc_a.is_closed:
                await nc_a.close()
    asyncio.run(asyncio.wait_for(main(), 60))


def test_announce_from_outside_a_hub(nats_server: NatsServer) -> None:
    """What `projecthub key revoke --nats` sends; an unreachable NATS is one line, no raise."""
    async def listen() -> list[HubEvent]:
        nc = await connect(nats_server.url, name="hub", creds=nats_server.hub_creds())
        bus = await HubEvents(nc, "hub-x").start()
        got: list[HubEvent] = []
        bus.on_event = got.append
        await nc.flush()
        error = await asyncio.to_thread(announce, nats_server.url, str(nats_server.creds_file("hub")),
                                        "keys.changed", key_id=3)
        assert error is None
        await _until(lambda: got)
        await bus.close()
        await nc.close()
        return got
    got = asyncio.run(asyncio.wait_for(listen(), 60))
    assert [(e.kind, e.key_id) for e in got] == [("keys.changed", 3)] and got[0].hub.startswith("admin-")
    error = announce("nats://127.0.0.1:1", None, "keys.changed", key_id=3)
    assert error is not None and "cannot connect to NATS" in error


async def _until(predicate: Any, timeout: float = 5) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def test_a_hub_that_reconnects_drops_its_caches(tmp_path: Any, nats_server: NatsServer) -> None:
    """Events sent while a hub was cut off are lost: after NATS comes back, it resyncs (drops
    every cache) instead of trusting what it held.  A nats-server of its own, restarted
    (``nats_server`` only checks that the binary is there)."""
    from tests.server import free_port
    own = NatsServer(tmp_path, free_port()).start()

    async def main() -> None:
        resyncs: list[str] = []
        bus: list[HubEvents] = []
        nc = await connect(own.url, name="hub", creds=own.hub_creds(),
                           on_reconnect=lambda: bus[0].resync("reconnected"))
        bus.append(await HubEvents(nc, "hub-r").start())
        bus[0].on_resync = lambda: resyncs.append("r")
        try:
            await asyncio.to_thread(own.stop)
            await asyncio.sleep(0.3)
            bus[0].publish("keys.changed", key_id=1)   # NATS away: logged, never raised
            await asyncio.to_thread(own.start)
            await _until(lambda: resyncs, 15)
            assert nc.is_connected
        finally:
            await bus[0].close()
            await nc.close()
    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        own.stop()


def test_a_hub_applies_each_kind_to_its_caches(tmp_path: Any) -> None:
    """HubService.apply_event on a real store and key resolver: each kind drops exactly the
    cached answers it names (RemoteHost's fabric is never called by these paths)."""
    from types import SimpleNamespace

    from projecthub.auth.resolve import KeyResolver
    from projecthub.host.sandbox import ProjectLimits
    from projecthub.hub.db import AsyncStore
    from projecthub.hub.remote_host import RemoteHost
    from projecthub.hub.service import HubService
    from projecthub.store import Store

    store = Store.for_data_dir(tmp_path)
    store.migrate()
    db = AsyncStore(store)
    host = RemoteHost(SimpleNamespace(hosts={}), db, ProjectLimits())  # type: ignore[arg-type]
    hub = HubService(db, host, KeyResolver(store, cache_ttl=60))  # type: ignore[arg-type]
    try:
        account = store.create_account("Ada", "User")
        row, key = store.create_api_key(account)
        other_row, other_key = store.create_api_key(account)
        for k in (key, other_key):
            assert hub.resolver.resolve(k) is not None
            assert hub.resolver.peek(k) is not None          # cached

        hub.apply_event(HubEvent("keys.changed", "hub-a", key_id=row["id"]))
        assert hub.resolver.peek(key) is None and hub.resolver.peek(other_key) is not None
        hub.apply_event(HubEvent("account.changed", "hub-a", account_id=account))
        assert hub.resolver.peek(other_key) is None

        project = store.create_project(account)
        host._specs[project] = (1e18, {"limits": {}, "deleted": False})
        hub.apply_event(HubEvent("limits.changed", "hub-a", project_id=project))
        assert project not in host._specs

        assert not host.is_running(project)
        hub.apply_event(HubEvent("project.state", "hub-a", project_id=project, running=True))
        assert host.is_running(project)
        hub.apply_event(HubEvent("project.state", "hub-a", project_id=project, running=False))
        assert not host.is_running(project)

        host._placed[project] = "h1"
        hub.apply_event(HubEvent("project.moved", "hub-a", project_id=project))
        assert project not in host._placed

        hub._collab_cache[(project, account)] = (1e18, True)
        hub.apply_event(HubEvent("collaborators.changed", "hub-a", project_id=project))
        assert (project, account) not in hub._collab_cache

        # a reconnect: everything cached goes
        assert hub.resolver.resolve(other_key) is not None
        host._specs[project] = (1e18, {"limits": {}, "deleted": False})
        hub.resync()
        assert hub.resolver.peek(other_key) is None and not host._specs
    finally:
        db.close()
