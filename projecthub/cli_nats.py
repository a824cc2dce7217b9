"""CLI of the NATS fabric: ``projecthub nats-config`` and ``projecthub host``.

``nats-config`` writes a nats-server configuration with one user per host and one for the
hubs, and their ``--nats-creds`` files (fabric/nats_config.py).  ``host`` runs one machine's
projects and serves them to hubs over NATS (host/nats_role.py), never opening the database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

_CREDS_HELP = ("a credentials file written by `projecthub nats-config` (JSON: user, password); "
               "default $PROJECTHUB_NATS_CREDS, else no authentication")


def add_nats_parsers(sub: Any) -> None:
    serve = sub.choices["serve"]
    hub = sub.add_parser("hub", help="run a hub only: HTTP, auth, store; projects run on hosts on NATS",
                         description="Run a hub: serve's HTTP API, auth and store, with the projects "
                                     "run by `projecthub host` processes reached over NATS. Takes "
                                     "serve's options (the sandbox ones do not apply: a hub runs no "
                                     "user code).", add_help=False)
    hub._add_container_actions(serve)   # what argparse's parents= does, after the fact
    hub.add_argument("--nats", required=True, metavar="URL", help="e.g. nats://10.0.0.5:4222")
    hub.add_argument("--nats-creds", default=os.environ.get("PROJECTHUB_NATS_CREDS"), metavar="FILE",
                     help=_CREDS_HELP)
    hub.set_defaults(func=serve.get_default("func"))

    conf = sub.add_parser("nats-config", help="write a nats-server config with one user per host "
                                              "and their credentials files",
                          description="Write DIR/nats-server.conf (one user per host, each allowed "
                                      "only its own subjects, and one user for hubs) and one "
                                      "DIR/<user>.creds per user (mode 0600) for --nats-creds. "
                                      "Running it again keeps existing users' passwords.")
    conf.add_argument("--hosts", required=True, metavar="H1,H2", help="the host ids, comma separated")
    conf.add_argument("--out", required=True, metavar="DIR", help="where to write the files")
    conf.add_argument("--listen", default="127.0.0.1:4222", metavar="ADDR:PORT",
                      help="nats-server's client address (default 127.0.0.1:4222)")
    conf.set_defaults(func=cmd_nats_config)

    host = sub.add_parser("host", help="run this machine's projects for hubs on NATS (no database); "
                                       "'host list': the hosts",
                          description="Run one machine's projects and serve them to hubs over NATS "
                                      "until SIGTERM. Never opens the database; registers by "
                                      "heartbeat every second (capacity, load, projects). "
                                      "`projecthub host list` prints the hosts the store knows "
                                      "(and, with --nats, the live ones) as one JSON object.")
    host.add_argument("action", nargs="?", choices=["list"],
                      help="list: the hosts with their id, state, load and project count "
                           "(default: run this machine's host)")
    host.add_argument("--nats", default=None, metavar="URL",
                      help="e.g. nats://10.0.0.5:4222 (required to run; for list: show which are up)")
    host.add_argument("--host-id", default=None, metavar="NAME",
                      help="this host's id (a-z, 0-9, '-'): its NATS user is host-NAME (required to run)")
    host.add_argument("--data-dir", default=None, metavar="DIR",
                      help="the host's data directory (projects' homes, daemons' sockets); for list: "
                           "the hub's")
    host.add_argument("--database-url", default=None, metavar="URL",
                      help="for list: the hubs' PostgreSQL store in place of --data-dir's")
    host.add_argument("--nats-creds", default=os.environ.get("PROJECTHUB_NATS_CREDS"), metavar="FILE",
                      help=_CREDS_HELP)
    host.add_argument("--sandbox", choices=["auto", "bwrap", "none"],
                      default=os.environ.get("PROJECTHUB_SANDBOX", "auto"), help="as for serve")
    host.add_argument("--require-isolation", action="store_true",
                      help="refuse to start unless every isolation layer is enforced")
    host.add_argument("--uid-range", default=None, metavar="LOW-HIGH", help="as for serve")
    host.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                      help="least severe log level written (default info)")
    host.set_defaults(func=cmd_host)


def _fail(message: str, code: int = 2) -> NoReturn:
    print(f"projecthub: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def hub_sandbox(settings: Any, args: argparse.Namespace) -> Any:
    """For ``projecthub hub`` (cmd_serve): NATS reachable now (one line and exit 1 if not,
    before anything is built), and the hub's view of the sandbox (default limits only)."""
    from .fabric.nats_wire import NatsUnavailable, connect, load_credentials
    from .host.sandbox import ProjectLimits
    from .hub.remote_host import HubSandboxView
    settings.nats_url, settings.nats_creds = args.nats, args.nats_creds
    try:
        creds = load_credentials(args.nats_creds) if args.nats_creds else None
    except ValueError as exc:
        _fail(str(exc))

    async def probe() -> None:
        nc = await connect(args.nats, name="projecthub-hub-probe", creds=creds)
        await nc.close()
    try:
        asyncio.run(probe())
    except NatsUnavailable as exc:
        _fail(exc.message.removeprefix("Error: "), code=1)
    return HubSandboxView(ProjectLimits.from_json(settings.default_limits or {}))


def cmd_nats_config(args: argparse.Namespace) -> None:
    from .fabric.nats_config import write_config
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    written = write_config(Path(args.out), hosts, listen=args.listen)   # ValueError: one line
    print(json.dumps({name: str(path) for name, path in written.items()}))


def cmd_host(args: argparse.Namespace) -> None:
    if args.action == "list":
        return cmd_host_list(args)
    if not args.nats or not args.host_id:
        _fail("running a host needs --nats URL and --host-id NAME (or: projecthub host list)")
    from .api.app import build_sandbox
    from .cli import _setup_logging
    from .config import ServerSettings, parse_range, prepare_data_dir
    from .fabric.nats_wire import NatsUnavailable, check_host_name, load_credentials
    from .host.host import Host
    from .host.ledger import HostLedger
    from .host.nats_role import HostIdTaken, run

    try:
        check_host_name(args.host_id)
        creds = load_credentials(args.nats_creds) if args.nats_creds else None
    except ValueError as exc:
        _fail(str(exc))
    settings = ServerSettings(sandbox_mode=args.sandbox, require_isolation=args.require_isolation)
    if args.data_dir:
        settings.data_dir = Path(args.data_dir)
    if args.uid_range:
        try:
            settings.uid_range = parse_range(args.uid_range)
        except ValueError as exc:
            _fail(f"--uid-range: {exc}")
    try:
        prepare_data_dir(settings.data_dir)
        settings.cgroup_root_name = host_cgroup_root(settings.data_dir, args.host_id)
        HostLedger.mark_data_dir(settings.data_dir)
    except OSError as exc:
        _fail(f"cannot use --data-dir {settings.data_dir}: {exc.strerror or exc}")
    # the project environment, as for serve (a flag there; here the same variables)
    settings.project_env = os.environ.get("PROJECTHUB_PROJECT_ENV") or None
    settings.project_rootfs = None if settings.project_env else os.environ.get("PROJECTHUB_PROJECT_ROOTFS") or None
    _setup_logging(args.log_level)

    def make_host() -> tuple[Host, HostLedger]:
        """After NATS is reached and the host id found free: nothing is built before."""
        try:
            sandbox = build_sandbox(settings)
        except (RuntimeError, ValueError, TypeError, OSError) as exc:
            _fail(f"refusing to start: {exc}", code=1)
        ledger = HostLedger(settings.data_dir, sandbox.uids.uid_for)
        host = Host(settings.data_dir, sandbox, ledger,  # type: ignore[arg-type]
                    jupyter_pool_size=settings.jupyter_pool_size, spare_projects=0,
                    jupyter_idle_s=settings.jupyter_idle_s)
        return host, ledger

    try:
        asyncio.run(run(args.host_id, args.nats, creds, make_host))
    except (NatsUnavailable, HostIdTaken) as exc:
        _fail(exc.message.removeprefix("Error: "), code=1)


_CGROUP_ROOT_FILE = "cgroup-root"


def host_cgroup_root(data_dir: Path, host_id: str | None = None) -> str:
    """The cgroup subtree of this host data dir's projects, kept in the data dir so a
    restart (adopting its daemons) and ``stop-all`` find the same one: "projecthub-<host
    id>" for a new data dir (two hosts on one machine -- a compute_server_id instance beside
    its home project -- never share a group), "projecthub" for one that ran before."""
    from .host.ledger import LEDGER_NAME
    path = data_dir / _CGROUP_ROOT_FILE
    try:
        name = path.read_text().strip()
        if name:
            return name
    except FileNotFoundError:
        pass
    if host_id is None:
        return "projecthub"
    used = (data_dir / LEDGER_NAME).exists() or (data_dir / "hub.db").exists() \
        or any((data_dir / "projects").glob("*"))   # serve's data dir turned into a host's
    name = "projecthub" if used else f"projecthub-{host_id}"
    path.write_text(name + "\n")
    return name


def is_host_data_dir(data_dir: Path) -> bool:
    """A `projecthub host`'s data dir: its ledger, and no store."""
    from .host.ledger import LEDGER_NAME
    return (data_dir / LEDGER_NAME).exists() and not (data_dir / "hub.db").exists()


def stop_all_host(data_dir: Path, daemon_alive: Any) -> dict[str, Any]:
    """``projecthub stop-all`` on a host's data dir: every project of its ledger, no database.
    ``stopped`` lists the projects that had processes running, as for serve's data dir."""
    from .host.ledger import HostLedger
    from .host.sandbox import Sandbox, SandboxConfig, disk
    sandbox = Sandbox(SandboxConfig(data_dir=data_dir, cgroup_root_name=host_cgroup_root(data_dir)))
    ledger = HostLedger(data_dir, sandbox.uids.uid_for)
    alive = sandbox.running_projects()
    stopped = []
    for project_id in ledger.project_ids():
        running = project_id in alive or daemon_alive(data_dir, project_id)
        if running or disk.attached(sandbox.project_dir(project_id)):
            sandbox.stop_project(project_id)
            ledger.mark_stopped(project_id, "stopped by projecthub stop-all")
        if running:
            stopped.append(project_id)
    for base in sorted((data_dir / "projects").glob("*")):   # images left mounted
        if disk.attached(base):
            sandbox.stop_project(base.name)
    return {"stopped": stopped}


_LISTEN_S = 1.6   # a little over one heartbeat interval: every live host is heard


def cmd_host_list(args: argparse.Namespace) -> None:
    """``{"hosts": [{"id", "name", "state", "projects", "running", "load", "capacity"}]}``:
    the store's hosts with the projects placed on each; with --nats, whether each is up (it
    heartbeat within the last interval) and what it reports, plus live hosts the store has
    not met yet (``id`` null).  Without --nats, ``state`` is what the hubs last recorded
    from the heartbeats ("up"/"down", kept within 10 s by every running hub; "unknown" for
    a host no hub has judged yet) and ``last_seen`` when one last heard it."""
    from collections import Counter

    from .cli import _emit, _open
    from .fabric.nats_wire import NatsUnavailable, load_credentials
    store = _open(args)
    try:
        hosts = store.list_hosts()
        counts = Counter(p.get("host_id") for p in store.list_all_projects()
                         if not p.get("deleted") and p.get("host_id"))
    finally:
        store.close()
    live: dict[str, dict[str, Any]] = {}
    if args.nats:
        try:
            creds = load_credentials(args.nats_creds) if args.nats_creds else None
            live = asyncio.run(_listen(args.nats, creds))
        except ValueError as exc:
            _fail(str(exc))
        except NatsUnavailable as exc:
            _fail(exc.message.removeprefix("Error: "), code=1)
    out = []
    for row in hosts:
        name = row["name"]
        info = live.pop(name, None)
        out.append(_host_row(int(row["host_id"]), name, counts[row["host_id"]], info, bool(args.nats), row))
    for name, info in sorted(live.items()):
        out.append(_host_row(None, name, 0, info, True))
    _emit({"hosts": out})


def _host_row(host_id: int | None, name: str, projects: int, info: dict[str, Any] | None,
              asked: bool, stored: dict[str, Any] | None = None) -> dict[str, Any]:
    state = (stored or {}).get("state") or "unknown"
    row: dict[str, Any] = {"id": host_id, "name": name,
                           "state": ("up" if info is not None else "down") if asked else state,
                           "projects": projects}
    last_seen = (stored or {}).get("last_seen")
    if last_seen is not None:
        row["last_seen"] = last_seen.isoformat() if hasattr(last_seen, "isoformat") else str(last_seen)
    if info is not None:
        row.update(running=info.get("projects"), load=info.get("load"), capacity=info.get("capacity"))
    return row


async def _listen(url: str, creds: Any) -> dict[str, dict[str, Any]]:
    from .fabric.nats_wire import Reassembler, connect, heartbeat_subject, settle
    nc = await connect(url, name="projecthub-host-list", creds=creds)
    seen: dict[str, dict[str, Any]] = {}
    chunks = Reassembler()

    async def on_heartbeat(msg: Any) -> None:
        try:
            done = chunks.feed(msg.subject, msg.data)
        except Exception:
            return
        if done is not None:
            seen[msg.subject.rsplit(".", 1)[-1]] = done[0]
    try:
        await nc.subscribe(heartbeat_subject("*"), cb=on_heartbeat)
        await settle(nc)
        await asyncio.sleep(_LISTEN_S)
    finally:
        await nc.close()
    return seen
