"""The hub's ``Host`` when hosts are other processes on NATS (``projecthub hub --nats``).

``RemoteHost`` has the interface of the in-process ``Host`` that ``HubService``, the
lifecycle and the metrics use (``call``, ``stream``, ``ensure_running``, ``stop``, ...), so
the hub's service code does not change: each operation becomes one fabric call to the
project's host (``host/nats_role.py`` lists them), carrying what the host must not read
from the database itself (the project's limits: the hubs' defaults with its own overrides, whether it is deleted).

Placement: a project runs where ``projects.host_id`` says; a project placed nowhere goes,
at its first start, to the live host with the most free capacity (``placement.py``: its
reported CPUs and memory against the projects already assigned to it, counted in the same
store transaction that records the choice, so hubs placing at once spread out), and stays.

Host state: every hub watches the heartbeats and keeps ``hosts.state`` ("up"/"down") and
``last_seen`` in the store current, writing only on a change or when the stored last_seen
is older than ``_TOUCH_S`` (so N hubs write a few rows every few seconds, not a row per
heartbeat).  A call to a project whose host is down fails at once naming the host.  Whether a project runs is
read from its host's heartbeat (every second), corrected at once by this hub's own
starts and stops and by the other hubs' (``project.state`` on the hub event bus,
``events.py``), which this hub publishes for its own after the store write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Any, AsyncIterator

from ..errors import RemoteError
from ..fabric.messages import STREAM_WINDOW
from ..fabric.nats_client import HostUnavailable, NatsFabric
from ..fabric.nats_wire import HEARTBEAT_INTERVAL_S, HOST_LOST_S, HUB_INBOX_PREFIX, Credentials, connect
from ..host.sandbox import ProjectLimits
from .db import AsyncStore
from . import placement
from .events import HubEvents, NoEvents

log = logging.getLogger("projecthub.hub.remote")

_SPEC_TTL_S = 2.0      # a project's limit overrides are re-read from the store this often
_CONTROL_TIMEOUT_S = 60.0   # start, stop, status...: a host that does not answer is reported
_WATCH_S = 1.0        # how often a hub compares the heartbeats with the store's host states
_TOUCH_S = 5.0        # a live host's stored last_seen is refreshed when older than this


class NoSpares:
    """A hub on NATS keeps no pre-started spare projects (they live on hosts; not yet)."""

    def take(self) -> None:
        return None

    def is_parked(self, project_id: str) -> bool:
        return False

    def unpark(self, project_id: str) -> None:
        return None


class _Config:
    def __init__(self, defaults: ProjectLimits) -> None:
        self.defaults = defaults


class _Report:
    all_enforced = True   # nothing runs here; each host reports its own layers

    def to_text(self) -> str:
        return "hub only: projects run on hosts reached over NATS (each reports its own isolation)"

    def to_json(self) -> dict[str, Any]:
        return {"hub_only": True, "note": self.to_text()}


class HubSandboxView:
    """What the hub reads of ``host.sandbox``: the default limits (hub policy).  Checks
    that need the project's files (disk use) happen on its host when it starts."""

    def __init__(self, defaults: ProjectLimits) -> None:
        self.config = _Config(defaults)
        self.report = _Report()

    def disk_bytes_applied(self, project_id: str) -> int | None:
        return None

    def check_limits(self, project_id: str, limits: ProjectLimits) -> None:
        return None


class RemoteHost:
    def __init__(self, fabric: NatsFabric, db: AsyncStore, defaults: ProjectLimits) -> None:
        self.fabric = fabric
        self.db = db
        self.sandbox = HubSandboxView(defaults)
        self.spares = NoSpares()
        self._placed: dict[str, str] = {}            # project -> host name
        self._specs: dict[str, tuple[float, dict[str, Any]]] = {}
        self._started_here: dict[str, float] = {}    # project -> when this hub started it
        self._stopped_here: dict[str, float] = {}
        self._host_names: dict[int, str] = {}
        self._registering: set[asyncio.Task[None]] = set()
        self._started = time.monotonic()
        self._watch_task: asyncio.Task[None] | None = None
        self._stored: dict[str, dict[str, Any]] = {}   # host name -> its store row (last read)
        self._instances: dict[str, set[str]] = {}      # project -> hosts running an instance (compute_server_id)
        # the hub event bus (connect_remote_host sets it): tells other hubs of starts and stops
        self.events: HubEvents | NoEvents = NoEvents()

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.fabric.on_new_host = self._register
        await self.fabric.start()
        if isinstance(self.events, HubEvents):
            await self.events.start()
        self._started = time.monotonic()
        self._watch_task = asyncio.get_running_loop().create_task(self._watch_hosts())

    def _register(self, name: str) -> None:
        """A host heard for the first time gets its numeric id in the store now (``host
        list``, and later ``compute_server_id``), not only when a project is placed on it."""
        async def register() -> None:
            try:
                self._host_names[await self.db.ensure_host(name, address="nats")] = name
            except Exception as exc:   # the store is away: the first placement registers it
                log.warning("could not register host %s: %s", name, exc)
        task = asyncio.get_running_loop().create_task(register())
        self._registering.add(task)
        task.add_done_callback(self._registering.discard)

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
        if isinstance(self.events, HubEvents):
            await self.events.close()
        await self.fabric.close()
        await self.fabric.nc.close()

    # -- where a project lives ------------------------------------------------------------
    async def host_of(self, project_id: str, place: bool = True) -> str | None:
        """The project's host; a project placed nowhere yet is placed now, unless ``place``
        is false (stopping, purging or asking the status of a project that never ran)."""
        name = self._placed.get(project_id)
        if name is not None:
            return name
        project = await self.db.get_project(project_id)
        if project is None:
            raise RemoteError(f"Error: project {project_id} does not exist")
        host_id = project.get("host_id")
        if host_id:
            name = await self._host_name(int(host_id))
        elif not place:
            return None
        else:
            name = await self._place(project_id)
        self._placed[project_id] = name
        return name

    async def _host_name(self, host_id: int) -> str:
        if host_id not in self._host_names:
            self._host_names = {int(h["host_id"]): h["name"] for h in await self.db.list_hosts()}
        name = self._host_names.get(host_id)
        if name is None:
            raise RemoteError(f"Error: the project's host {host_id} is not registered")
        return name

    async def _place(self, project_id: str) -> str:
        live = self.fabric.live_hosts()
        if not live:
            raise HostUnavailable("Error: no host is live to run the project (none heartbeats on NATS)")
        weights = {name: placement.weight(info) for name, info in live.items()}
        try:   # counted and recorded in one store write: another hub's placement is seen
            return str(await self.db.assign_host(
                project_id, lambda assigned: placement.choose(weights, assigned)))
        except KeyError:
            raise RemoteError(f"Error: project {project_id} does not exist") from None

    # -- host state ---------------------------------------------------------------------------
    async def _watch_hosts(self) -> None:
        while True:
            try:
                await self._sync_host_states()
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # the store is away: try again next round
                log.warning("could not update host states: %s", exc)
            await asyncio.sleep(_WATCH_S)

    async def _sync_host_states(self) -> None:
        """Write ``up`` (and a fresh last_seen) for hosts heard, ``down`` for registered
        hosts silent for HOST_LOST_S; only what changed or went stale is written."""
        rows = await self.db.list_hosts()
        self._stored = {r["name"]: r for r in rows}
        self._host_names.update({int(r["host_id"]): r["name"] for r in rows})
        live = self.fabric.live_hosts()
        # a hub that just started has heard nobody yet: it judges nobody down before then
        judging = time.monotonic() - self._started > HOST_LOST_S + _WATCH_S
        now = datetime.now(timezone.utc)
        for row in rows:
            state = "up" if row["name"] in live else "down"
            if state == "down" and not judging:
                continue
            seen = row.get("last_seen")
            stale = seen is None or (now - _aware(seen)).total_seconds() >= _TOUCH_S
            if row.get("state") != state or (state == "up" and stale):
                await self.db.touch_host(int(row["host_id"]), state)

    def _check_up(self, host: str) -> None:
        """Fail at once, naming the host, when ``host`` is not heartbeating (instead of
        sending a request nobody will answer)."""
        if host in self.fabric.live_hosts():
            return
        seen = self.fabric.hosts.get(host)
        silent: float | None = None
        if seen is not None:
            silent = time.monotonic() - seen.last_seen
        elif time.monotonic() - self._started > HOST_LOST_S:
            row = self._stored.get(host) or {}
            last = row.get("last_seen")
            silent = (datetime.now(timezone.utc) - _aware(last)).total_seconds() if last else None
            if silent is None:
                silent = time.monotonic() - self._started
        else:   # this hub just started and may not have heard it yet: the fabric's watchdog decides
            return
        ids = [i for i, n in self._host_names.items() if n == host]
        label = f"host {host} (id {ids[0]})" if ids else f"host {host}"
        raise HostUnavailable(f"Error: {label} is down: no heartbeat for {silent:.0f} s")

    async def _spec(self, project_id: str) -> dict[str, Any]:
        cached = self._specs.get(project_id)
        now = time.monotonic()
        if cached is not None and now - cached[0] < _SPEC_TTL_S:
            return cached[1]
        project = await self.db.get_project(project_id)
        if project is None:
            raise RemoteError(f"Error: project {project_id} does not exist")
        overrides = (project.get("settings") or {}).get("limits") or {}
        try:   # the hub's default limits are policy: a host applies them, not its own
            limits = ProjectLimits.merged(self.sandbox.config.defaults, overrides).to_json()
        except (TypeError, ValueError):   # an override the hub cannot read: the host refuses it
            limits = overrides
        spec = {"limits": limits, "deleted": bool(project.get("deleted"))}
        self._specs[project_id] = (now, spec)
        return spec

    # -- running state ----------------------------------------------------------------------
    def _listed(self) -> dict[str, str]:
        """project -> the live host whose last heartbeat says it runs there.  A host speaks
        only for projects placed on it (or not yet looked up here): a host that lies in its
        heartbeat cannot make another host's project look running or stopped."""
        listed: dict[str, str] = {}
        now = time.monotonic()
        for name, seen in self.fabric.hosts.items():
            if now - seen.last_seen < HOST_LOST_S:
                for project_id in seen.info.get("running") or ():
                    if isinstance(project_id, str) and self._placed.get(project_id, name) == name:
                        listed[project_id] = name
        return listed

    def is_running(self, project_id: str) -> bool:
        host = self._placed.get(project_id)
        seen = self.fabric.hosts.get(host) if host else None
        # the newest word wins: this hub's own start or stop, or the host's last heartbeat.
        # A start or stop outranks heartbeats for one interval: nats-py runs each
        # subscription in its own task, so a heartbeat the host sent before it answered the
        # start can be handled here after it (seen briefly as "not running": terminals 404).
        started, stopped = self._started_here.get(project_id), self._stopped_here.get(project_id)
        events = [(started + HEARTBEAT_INTERVAL_S if started else 0.0, True),
                  (stopped + HEARTBEAT_INTERVAL_S if stopped else 0.0, False)]
        if seen is not None and time.monotonic() - seen.last_seen < HOST_LOST_S:
            events.append((seen.last_seen, project_id in (seen.info.get("running") or ())))
        when, running = max(events)
        return running if when else False

    def running_project_ids(self) -> list[str]:
        ids = set(self._listed()) | set(self._started_here)
        return sorted(p for p in ids if self._placed.get(p) is None or self.is_running(p))

    async def _set_state(self, project_id: str, state: str, reason: str | None = None) -> None:
        await self.db.update_project(project_id, state=state, state_time=datetime.now(timezone.utc),
                                     state_reason=reason)

    # -- operations (Host's interface) ------------------------------------------------------
    async def _placed_host(self, project_id: str) -> str:
        host = await self.host_of(project_id)
        assert host is not None
        self._check_up(host)
        return host

    async def ensure_running(self, project_id: str) -> None:
        if self.is_running(project_id):
            return None
        host = await self._placed_host(project_id)
        await self.fabric.call(host, "project.start", [project_id, await self._spec(project_id)],
                               None, _CONTROL_TIMEOUT_S)
        self._started_here[project_id] = time.monotonic()
        self._stopped_here.pop(project_id, None)
        await self._set_state(project_id, "running")
        self.events.publish("project.state", project_id=project_id, running=True)
        return None

    async def call(self, project_id: str, name: str, args: list[Any], budget: float | None = None) -> Any:
        home = host = await self._placed_host(project_id)
        if name == "system.exec" and args and isinstance(args[0], dict):
            host, args = await self._compute_server(project_id, host, args)
        spec = await self._spec(project_id)
        if host != home:   # a compute-server instance: served even where the home moved away
            spec = {**spec, "instance": True}
        try:
            return await self.fabric.call(host, "project.call", [project_id, spec, name, args], budget)
        except RemoteError as exc:
            self._moved_away(project_id, exc)
            raise

    async def _compute_server(self, project_id: str, home: str, args: list[Any]) -> tuple[str, list[Any]]:
        """``compute_server_id`` in system.exec's options names a host by its numeric id
        (``host list``): 0/None or the project's own host runs at home; another live host
        runs the command in this project's instance there (its own home on that host, the
        project's own limits and a uid of that host's range, started on demand by the host,
        stopped and purged with the project).  The options go on with compute_server_id 0,
        so the instance runs them (and its jobs answer async_get) as its own.  The instance
        is always this same project's: the id picks a machine, never another project."""
        opts = args[0]
        wanted = opts.get("compute_server_id")
        if wanted is None or (wanted == 0 and not isinstance(wanted, bool)):
            return home, args
        target = await self._host_by_id(wanted)
        if target is None:
            raise RemoteError(f"Error: no connection to compute server {wanted} -- "
                              "no host has that id (projecthub host list shows them)")
        args = [{**opts, "compute_server_id": 0}, *args[1:]]
        if target != home:
            self._check_up(target)
            self._instances.setdefault(project_id, set()).add(target)
        return target, args

    async def _host_by_id(self, wanted: Any) -> str | None:
        if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted <= 0:
            return None
        if wanted not in self._host_names:
            self._host_names.update({int(h["host_id"]): h["name"] for h in await self.db.list_hosts()})
        return self._host_names.get(wanted)

    def _instance_hosts(self, project_id: str, home: str | None, every_live: bool) -> set[str]:
        """The hosts other than ``home`` that may hold an instance of the project: those this
        hub sent one to, and the live hosts whose heartbeat lists it running (another hub's
        instances), or with ``every_live`` every live host (purging: a stopped instance's
        home is listed nowhere)."""
        hosts = set(self._instances.get(project_id, ()))
        for name, info in self.fabric.live_hosts().items():
            if every_live or project_id in (info.get("running") or ()):
                hosts.add(name)
        hosts.discard(home)   # type: ignore[arg-type]
        return hosts

    async def _on_instances(self, project_id: str, home: str | None, call: str, args: list[Any],
                            every_live: bool = False) -> int:
        """``call`` on each of the project's instances on other hosts (a failure is logged:
        a down host's instance is stopped by its host's restart, which adopts nothing the
        ledger does not list as running)."""
        total = 0
        for name in sorted(self._instance_hosts(project_id, home, every_live)):
            try:
                done = await self.fabric.call(name, call, args, None, _CONTROL_TIMEOUT_S)
                total += int(done) if isinstance(done, int) and not isinstance(done, bool) else 0
            except RemoteError as exc:
                log.warning("%s of project %s's instance on %s: %s", call, project_id, name, exc)
        self._instances.pop(project_id, None)
        return total

    async def stream(self, project_id: str, name: str, args: list[Any],
                     window: int | None = None) -> AsyncIterator[Any]:
        host = await self._placed_host(project_id)
        window = window or STREAM_WINDOW
        inner = self.fabric.stream(host, "project.stream",
                                   [project_id, await self._spec(project_id), name, args, window], window)
        try:
            async for item in inner:
                yield item
        except RemoteError as exc:
            self._moved_away(project_id, exc)
            raise
        finally:
            await inner.aclose()

    async def stop(self, project_id: str, reason: str = "stopped by request") -> None:
        host = await self.host_of(project_id, place=False)
        try:
            if host is not None:   # a project that never ran has nothing to stop
                await self.fabric.call(host, "project.stop", [project_id, reason], None, _CONTROL_TIMEOUT_S)
        finally:   # its compute-server instances stop with it
            await self._on_instances(project_id, host, "project.stop", [project_id, reason])
        self._stopped_here[project_id] = time.monotonic()
        self._started_here.pop(project_id, None)
        await self._set_state(project_id, "stopped", reason)
        self.events.publish("project.state", project_id=project_id, running=False)

    # -- what other hubs changed (events.py) --------------------------------------------------
    def note_state(self, project_id: str, running: bool) -> None:
        """Another hub started or stopped ``project_id``: the newest word, as if this hub had
        (the host's next heartbeat, newer still, has the last word as usual)."""
        now = time.monotonic()
        if running:
            self._started_here[project_id] = now
            self._stopped_here.pop(project_id, None)
        else:
            self._stopped_here[project_id] = now
            self._started_here.pop(project_id, None)
        self._specs.pop(project_id, None)   # e.g. deleted: the host must hear it at once

    def _moved_away(self, project_id: str, exc: RemoteError) -> None:
        """The host says the project moved (``projecthub project move``; this hub missed the
        ``project.moved`` event): the next call reads its placement from the store."""
        if "moved_to" in exc.extra or " moved to host " in exc.message:
            self.forget(project_id)

    def forget(self, project_id: str) -> None:
        """The project moved to another host (``project.moved``): forget where it was placed,
        its spec and this hub's word on its state; the next call reads its placement anew."""
        for table in (self._placed, self._specs, self._started_here, self._stopped_here):
            table.pop(project_id, None)
        self._instances.pop(project_id, None)

    def forget_spec(self, project_id: str | None = None) -> None:
        """Drop a project's cached spec (limits, deleted), or every one: re-read at next use."""
        if project_id is None:
            self._specs.clear()
        else:
            self._specs.pop(project_id, None)

    def resync(self) -> None:
        """Events may have been missed: forget the specs other hubs could have changed (the
        running state is corrected by the next heartbeats, within a second)."""
        self._specs.clear()

    async def activity(self, project_id: str) -> dict[str, Any] | None:
        if not self.is_running(project_id):
            return None
        return await self.fabric.call(await self._placed_host(project_id), "project.activity",  # type: ignore[no-any-return]
                                      [project_id], None, 10.0)

    async def status(self, project_id: str) -> dict[str, Any]:
        host = await self.host_of(project_id, place=False)
        if host is None or not self.is_running(project_id):
            return {}
        return await self.fabric.call(host, "project.status", [project_id], None, 10.0)  # type: ignore[no-any-return]

    async def update_limits(self, project_id: str, limits: ProjectLimits) -> None:
        self._specs.pop(project_id, None)
        if self.is_running(project_id):
            await self.fabric.call(await self._placed_host(project_id), "project.update_limits",
                                   [project_id, limits.to_json()], None, _CONTROL_TIMEOUT_S)

    async def purge(self, project_id: str) -> int:
        host = await self.host_of(project_id, place=False)
        if host is None:   # never ran: no files anywhere
            return 0
        freed = int(await self.fabric.call(host, "project.purge", [project_id], None, _CONTROL_TIMEOUT_S))
        return freed + await self._on_instances(project_id, host, "project.purge", [project_id], every_live=True)


async def connect_remote_host(url: str, creds_file: str | None, db: AsyncStore,
                              defaults: ProjectLimits) -> RemoteHost:
    """Connect to NATS (NatsUnavailable: one clear error) and build the hub's RemoteHost."""
    from ..fabric.nats_wire import load_credentials
    creds: Credentials | None = load_credentials(creds_file) if creds_file else None
    fabric: list[NatsFabric] = []
    events: list[HubEvents] = []

    def on_error(exc: Exception) -> None:
        log.warning("NATS: %s: %s", type(exc).__name__, exc)
        if fabric:
            fabric[0].on_nats_error(exc)
        if events:
            events[0].on_nats_error(exc)

    def on_reconnect() -> None:
        if events:
            events[0].resync("reconnected to NATS (events sent meanwhile were missed)")
    nc = await connect(url, name="projecthub-hub", creds=creds, inbox_prefix=HUB_INBOX_PREFIX,
                       on_error=on_error, on_reconnect=on_reconnect)
    fabric.append(NatsFabric(nc))
    host = RemoteHost(fabric[0], db, defaults)
    host.events = HubEvents(nc, fabric[0].hub_id)
    events.append(host.events)
    return host


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)
