"""``projecthub host``: one machine's projects, served to hubs over NATS.

The same ``Host`` as in the embedded server (host.py), with two differences: it reads and
writes project facts through a ``HostLedger`` (ledger.py), never the database, and hubs
reach it through the NATS fabric (``fabric/nats_server.py``) instead of in-process calls.
Each operation a hub performs on ``Host`` is one fabric call here (``HOST_CALLS``); the
hub's side is ``hub/remote_host.py``.

The host heartbeats every second on ``ph.heartbeat.<host>`` with its capacity, load and
running projects: that is its registration.  Before serving it listens to its own heartbeat
subject for a little longer than one interval: if another process already serves the same
host id, it refuses to start (and if two start at once, the later one steps down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from typing import Any, AsyncIterator, Callable

import psutil

from ..errors import RemoteError
from ..fabric.nats_server import HostServer
from ..fabric.nats_wire import (HEARTBEAT_INTERVAL_S, Credentials, Reassembler, connect,
                                heartbeat_subject, host_inbox_prefix, settle)
from .host import Host
from .ledger import HostLedger
from .sandbox import ProjectLimits

log = logging.getLogger("projecthub.host.nats")

# Most running project ids one heartbeat lists (a hub's is_running reads them).
_MAX_LISTED = 20_000


class HostIdTaken(RemoteError):
    pass


def _project_id(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 128 or value.startswith((".", "-")) \
            or not all(c.isalnum() or c in "-_." for c in value):
        raise RemoteError("Error: malformed project id")
    return value


def _spec(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RemoteError("Error: malformed project spec")
    return value


class HostHandler:
    """The fabric handler: hub call name -> the ``Host`` operation."""

    def __init__(self, host: Host, ledger: HostLedger) -> None:
        self.host = host
        self.ledger = ledger

    def _owned(self, project_id: str) -> str:
        """A project moved away (``project move``) is refused, not started afresh with an
        empty home: a hub that missed the ``project.moved`` event forgets its placement on
        this error and reads the store again."""
        moved = self.ledger.moved_to(project_id)
        if moved is not None:
            raise RemoteError(f"Error: project {project_id} moved to host {moved}; try again",
                              moved_to=moved, status=409)
        return project_id

    async def call(self, name: str, args: list[Any], budget: float | None) -> Any:
        host = self.host
        if name == "project.moved":         # [project_id, target]: after the store's switch
            project_id = _project_id(args[0])
            await host.stop(project_id, reason=f"moved to host {args[1]}")
            self.ledger.set_moved(project_id, str(args[1]))
            return True
        if name == "project.adopt":         # [project_id]: a move here begins
            self.ledger.set_moved(_project_id(args[0]), None)
            return True
        # A compute-server instance (compute_server_id) is not the project's home: it is
        # served on a host the home moved away from; a home call there is refused.
        instance = name == "project.call" and isinstance(args[1], dict) and args[1].get("instance") is True
        if name in ("project.call", "project.start", "project.update_limits") and not instance:
            self._owned(_project_id(args[0]))
        if name == "project.call":          # [project_id, spec, name, args]
            project_id = _project_id(args[0])
            self.ledger.remember(project_id, _spec(args[1]))
            return await host.call(project_id, str(args[2]), list(args[3]), budget)
        if name == "project.start":         # [project_id, spec]
            project_id = _project_id(args[0])
            self.ledger.remember(project_id, _spec(args[1]))
            await host.ensure_running(project_id)
            return True
        if name == "project.stop":          # [project_id, reason]
            await host.stop(_project_id(args[0]), reason=str(args[1]))
            return True
        if name == "project.status":
            return await host.status(_project_id(args[0]))
        if name == "project.activity":
            return await host.activity(_project_id(args[0]))
        if name == "project.update_limits":  # [project_id, merged limits]
            project_id = _project_id(args[0])
            limits = ProjectLimits.from_json(args[1])
            self.ledger.remember(project_id, {"limits": args[1]})
            await host.update_limits(project_id, limits)
            return True
        if name == "project.purge":
            return await host.purge(_project_id(args[0]))
        if name == "host.running":
            return host.running_project_ids()
        raise RemoteError(f"Error: unknown host call {name}")

    async def stream(self, name: str, args: list[Any]) -> AsyncIterator[Any]:
        if name != "project.stream":        # [project_id, spec, name, args, window]
            raise RemoteError(f"Error: unknown host stream {name}")
        project_id = self._owned(_project_id(args[0]))
        self.ledger.remember(project_id, _spec(args[1]))
        window = args[4] if isinstance(args[4], int) and args[4] > 0 else None
        inner = self.host.stream(project_id, str(args[2]), list(args[3]), window)
        try:
            async for item in inner:
                yield item
        finally:
            await inner.aclose()


class HostRole:
    def __init__(self, host_id: str) -> None:
        self.host_id = host_id
        self.host: Host | None = None
        self.instance = uuid.uuid4().hex
        self.started = time.time()
        self.stop_requested = asyncio.Event()
        self.refusal: str | None = None
        self._chunks = Reassembler()

    def heartbeat_info(self) -> dict[str, Any]:
        running = self.host.running_project_ids() if self.host is not None else []
        load = None
        with contextlib.suppress(OSError):
            load = os.getloadavg()[0]
        memory = psutil.virtual_memory()
        return {"instance": self.instance, "started": self.started,
                "capacity": {"cpus": os.cpu_count() or 1, "memory_bytes": memory.total},
                "load": {"loadavg1": load, "memory_available_bytes": memory.available},
                "projects": len(running), "running": running[:_MAX_LISTED]}

    async def _on_own_heartbeat(self, msg: Any) -> None:
        """Another process heartbeating with our host id: the later one steps down."""
        with contextlib.suppress(Exception):
            done = self._chunks.feed(msg.subject, msg.data)
            if done is None:
                return
            other = done[0]
            if other.get("instance") == self.instance:
                return
            theirs = (float(other.get("started", 0)), str(other.get("instance")))
            if theirs < (self.started, self.instance):
                self.refusal = (f"Error: host id {self.host_id} is already live elsewhere "
                                f"(instance {theirs[1][:8]}); refusing to serve it twice")
                self.stop_requested.set()


async def run(host_id: str, nats_url: str, creds: Credentials | None,
              make_host: Callable[[], tuple[Host, HostLedger]]) -> None:
    """Serve until SIGTERM/SIGINT.  Raises NatsUnavailable or HostIdTaken at start, before
    ``make_host`` builds anything (sandbox, project environment)."""
    server: HostServer | None = None

    def on_error(exc: Exception) -> None:
        log.warning("NATS: %s: %s", type(exc).__name__, exc)
        if server is not None:
            server.on_nats_error(exc)
    nc = await connect(nats_url, name=f"projecthub-host-{host_id}", creds=creds,
                       inbox_prefix=host_inbox_prefix(host_id), on_error=on_error)
    role = HostRole(host_id)
    started_host = False
    try:
        await nc.subscribe(heartbeat_subject(host_id), cb=role._on_own_heartbeat)
        await settle(nc)
        # A live instance heartbeats every interval: hear it before serving anything.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(role.stop_requested.wait(), HEARTBEAT_INTERVAL_S * 1.6)
        if role.refusal:
            raise HostIdTaken(role.refusal)
        host, ledger = make_host()
        role.host = host
        await host.start()
        started_host = True
        server = await HostServer(nc, host_id, HostHandler(host, ledger), role.heartbeat_info).start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, role.stop_requested.set)
        log.info("host %s serving on NATS %s (instance %s)", host_id, nats_url, role.instance[:8])
        await role.stop_requested.wait()
        if role.refusal:
            raise HostIdTaken(role.refusal)
    finally:
        if server is not None:
            await server.close()
        if started_host and role.host is not None:
            await role.host.close()
        with contextlib.suppress(Exception):
            await nc.close()
