"""The ``projecthub`` command.

Administrative subcommands print exactly one JSON object on stdout and work whether or not
the server is running (they talk to the store directly; SQLite WAL allows that).  They
refuse a data dir that holds no store unless given ``--create`` (a mistyped --data-dir must
not quietly make a new, empty store).  ``serve`` logs instead, and ``doctor`` prints a text
report unless given ``--json``.

Errors never show a traceback: a bad argument or a refused action prints one line on stderr
(``projecthub: error: ...``; admin commands also print ``{"error": ...}`` on stdout) and exits
with code 2, like argparse's own usage errors; a failure of the action itself exits with 1.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, NoReturn

from .config import ServerSettings, default_data_dir, parse_range, prepare_data_dir
from .observability.logs import JsonLogFormatter  # noqa: F401 - one JSON line per record


def _setup_logging(level: str, log_file: str | None = None, max_bytes: int = 50 * 2**20,
                   backups: int = 5, audit_file: Path | None = None) -> None:
    """The JSON log (start-up, request and audit lines) on stdout, or in a rotating
    ``log_file``, written by a thread behind a bounded queue (observability/logs.py).  The
    first-start banner is not part of it: plain text on stderr.  Audit lines also go to
    ``audit_file`` (the data dir's audit.log, where admin commands write theirs)."""
    from .observability.logs import setup_logging
    setup_logging(level, log_file, max_bytes, backups, audit_file)


def _emit(value: dict[str, Any]) -> None:
    print(json.dumps(value))


class CliError(Exception):
    """A refused command: ``main`` prints one line (and the JSON error) and exits with ``code``
    (2: bad argument or refused action, 1: the action itself failed)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def _fail(message: str, code: int = 2) -> NoReturn:
    raise CliError(message, code)


def _data_dir(value: str | None) -> Path:
    return Path(value) if value else default_data_dir()


def _database_url(value: str | None) -> str | None:
    """``--database-url``, else $PROJECTHUB_DATABASE_URL; None: the data dir's SQLite store."""
    return value or os.environ.get("PROJECTHUB_DATABASE_URL") or None


def _store(data_dir: str | Path | None, *, create: bool = False, database_url: str | None = None):
    """The store of ``database_url`` (--database-url / $PROJECTHUB_DATABASE_URL) if given, else
    of ``data_dir`` (default: $PROJECTHUB_DATA_DIR, else ~/.local/share/projecthub), migrated.
    Without ``create``, a data dir or database without a store is refused: a mistyped
    --data-dir or --database-url would otherwise become a new, empty store."""
    url = _database_url(database_url)
    if url is not None:
        return _database_store(url, create=create)
    return _sqlite_store(data_dir, create=create)


def _sqlite_store(data_dir: str | Path | None, *, create: bool = False):
    """The embedded store, ``<data_dir>/hub.db``, migrated (``create`` as in ``_store``)."""
    from sqlalchemy.exc import SQLAlchemyError

    from .store import SchemaTooNewError, Store
    path = _data_dir(str(data_dir) if data_dir else None)
    shown = str(path) if data_dir else f"{path} (the default data dir; --data-dir or $PROJECTHUB_DATA_DIR)"
    if path.exists() and not path.is_dir():
        _fail(f"--data-dir {path} is not a directory")
    if not create and not (path / "hub.db").is_file():
        _fail(f"no projecthub store in {shown}: give the --data-dir your server uses, "
              "or --create to make a new store there")
    try:
        prepare_data_dir(path)
    except OSError as exc:
        _fail(f"cannot use --data-dir {path}: {exc.strerror or exc}")
    try:
        store = Store(f"sqlite:///{path / 'hub.db'}")
        store.migrate()
    except SchemaTooNewError as exc:
        _fail(str(exc))
    except SQLAlchemyError as exc:
        reason = getattr(exc, "orig", None) or exc
        _fail(f"cannot open the store in {path}: {reason}")
    return store


def _database_store(url: str, *, create: bool):
    """The store in the database at ``url`` (PostgreSQL; a sqlite:/// URL works too), migrated;
    ``create`` as in ``_store``.  Every failure is one line without the password (exit 2)."""
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from .store import SchemaTooNewError, Store, StoreUnavailable
    from .store.engine import display_url, normalize_url
    from .store.migrations import current_version
    try:
        backend = normalize_url(url).get_backend_name()
    except ArgumentError:
        _fail("--database-url must look like postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
    if backend not in ("postgresql", "sqlite"):
        _fail(f"--database-url must be a postgresql:// URL, not {backend}://")
    shown = display_url(url)
    store = Store(url)
    try:
        if not create:
            with store.engine.connect() as conn:
                empty = current_version(conn) == 0
            if empty:
                raise LookupError(f"no projecthub store in the database {shown}: give the "
                                  "--database-url your hubs use, or --create to make a new store there")
        store.migrate()
        return store
    except LookupError as exc:
        message = str(exc)
    except StoreUnavailable as exc:
        message = f"cannot reach the database {shown}: {exc.reason}"
    except SchemaTooNewError as exc:
        message = str(exc)
    except SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        message = f"cannot open the store in the database {shown}: {reason}"
    store.close()
    _fail(message)


def _parse_expire(value: str | None, name: str = "--expire") -> datetime | None:
    """An ISO 8601 time in the future (UTC when it names no zone); None stays None."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        _fail(f"{name} must be an ISO 8601 date or time, e.g. 2030-01-31 or 2030-01-31T12:00:00Z, "
              f"got {value!r}")
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    if parsed <= datetime.now(timezone.utc):
        _fail(f"{name} {value} is in the past: a key must expire in the future")
    return parsed


def create_first_admin(store: Any) -> tuple[str, str] | None:
    """On an empty store, make an admin account and return (account_id, api_key)."""
    if store.count_accounts() > 0:
        return None
    account_id = store.create_account(first_name="Admin", last_name="User", is_admin=True)
    _, secret = store.create_api_key(account_id, name="initial admin key")
    return account_id, secret


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from .api.app import build_sandbox, create_app
    from .cli_nats import hub_sandbox
    from .host.environment import EnvironmentError_
    settings = ServerSettings(host=args.host, port=args.port,
                              sandbox_mode=args.sandbox, require_isolation=args.require_isolation)
    if args.uid_range is not None:
        try:
            settings.uid_range = parse_range(args.uid_range)
        except ValueError as exc:
            _fail(f"--uid-range: {exc}")
    if args.default_limits is not None:
        try:
            settings.default_limits = json.loads(args.default_limits)
        except ValueError as exc:
            _fail(f"--default-limits must be a JSON object: {exc}")
    if args.account_limits is not None:
        try:
            settings.account_limits = json.loads(args.account_limits)
        except ValueError as exc:
            _fail(f"--account-limits must be a JSON object: {exc}")
    try:   # from the flag or $PROJECTHUB_ACCOUNT_LIMITS
        from .hub.account_limits import AccountLimits
        AccountLimits.from_json(settings.account_limits)
    except ValueError as exc:
        _fail(f"--account-limits: {exc}")
    if args.data_dir:
        settings.data_dir = Path(args.data_dir)
    settings.database_url = _database_url(getattr(args, "database_url", None))   # None: <data-dir>/hub.db
    # a flag beats the other kind's environment variable (they exclude each other)
    env_var, rootfs_var = os.environ.get("PROJECTHUB_PROJECT_ENV"), os.environ.get("PROJECTHUB_PROJECT_ROOTFS")
    settings.project_env = args.project_env or (None if args.project_rootfs else env_var or None)
    settings.project_rootfs = args.project_rootfs or (None if args.project_env else rootfs_var or None)
    if args.spare_projects is not None:
        if args.spare_projects < 0:
            _fail("--spare-projects must be >= 0")
        settings.spare_projects = args.spare_projects
    if args.keep_alive is not None:
        settings.keep_alive_s = args.keep_alive
    settings.purge_after_s = args.purge_after
    if settings.jupyter_idle_s < 0:
        _fail("PROJECTHUB_JUPYTER_IDLE_S must be >= 0 seconds")
    if not settings.terminal_grace_s > 0:
        _fail("PROJECTHUB_TERMINAL_GRACE_S must be > 0 seconds")
    if settings.keep_alive_s < 1:   # from the flag or $PROJECTHUB_KEEP_ALIVE_S
        _fail("--keep-alive must be >= 1 second")
    _check_default_limits(settings.default_limits)
    _check_environment_args(settings.project_env, settings.project_rootfs)
    # The port first: a port in use must be found before anything is built or created (the
    # first admin account and its one-time key, a project environment), not after.
    settings.request_log, settings.metrics = not args.no_request_log, not args.no_metrics
    if args.log_max_bytes < 0 or args.log_backups < 0:
        _fail("--log-max-bytes and --log-backups must be >= 0")
    if args.metrics_port is not None and args.no_metrics:
        _fail("--metrics-port and --no-metrics exclude each other")
    sock = _bind(settings.host, settings.port)
    settings.port = sock.getsockname()[1]   # --port 0: the free port picked
    sockets = [sock]
    if args.metrics_port is not None:   # /metrics without a key, on its own (loopback) listener
        if args.metrics_port == settings.port and args.metrics_port:
            _fail("--metrics-port must differ from --port")
        settings.metrics_host = args.metrics_host
        sockets.append(_bind(args.metrics_host, args.metrics_port))
        settings.metrics_port = sockets[1].getsockname()[1]
    if settings.data_dir.exists() and not settings.data_dir.is_dir():
        _fail(f"--data-dir {settings.data_dir} is not a directory")
    try:
        prepare_data_dir(settings.data_dir)
    except OSError as exc:
        _fail(f"cannot use --data-dir {settings.data_dir}: {exc.strerror or exc}")
    try:
        _setup_logging(args.log_level, args.log_file, args.log_max_bytes, args.log_backups,
                       settings.data_dir / "audit.log")
    except OSError as exc:
        _fail(f"cannot write the log: {exc.strerror or exc}: {exc.filename or args.log_file}")
    from .api.connections import protocol_class, serve_guard
    try:  # slow/many-connection defences (api/connections.py); also raises the fd limit
        guard = serve_guard(args.max_connections, args.max_connections_per_ip, args.header_timeout,
                            args.body_timeout, args.forwarded_allow_ips)
    except ValueError as exc:
        _fail(str(exc))
    try:   # `projecthub hub` (cli_nats.py) runs no user code: no sandbox, hosts on NATS
        sandbox = hub_sandbox(settings, args) if getattr(args, "nats", None) else build_sandbox(settings)
    except (RuntimeError, ValueError, TypeError, EnvironmentError_) as exc:
        # a missing layer, bad default limits, or a project environment that cannot work
        _fail(f"refusing to start: {exc}", code=1)
    except OSError as exc:   # e.g. a project environment directory that cannot be made
        _fail(f"refusing to start: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
              code=1)
    store = _store(settings.data_dir, create=True, database_url=settings.database_url)
    first = create_first_admin(store)
    store.close()
    if first is not None:
        print(admin_banner(*first, _url(settings.host, settings.port), args.data_dir,
                           database_url=settings.database_url),
              file=sys.stderr, flush=True)
    # The asyncio loop, not uvloop: uvloop spawns with a plain fork (see ARCHITECTURE.md).
    config = uvicorn.Config(
        create_app(settings, sandbox), loop="asyncio",
        http=protocol_class(guard), log_config=None, access_log=False, timeout_graceful_shutdown=5,
        timeout_keep_alive=settings.keep_alive_s,
        # WebSocket messages (terminal keystrokes: api/terminals.py takes 64 KiB a frame) are
        # held whole before the app sees them: 1 MiB, not uvicorn's 16 MiB
        ws_max_size=1 << 20,
        # X-Forwarded-For only from proxies the operator names: otherwise any client
        # could pick its own address and escape the per-address bad-key throttle
        proxy_headers=bool(args.forwarded_allow_ips),
        forwarded_allow_ips=args.forwarded_allow_ips or None)
    server = _server_class(uvicorn)(config)
    try:
        server.run(sockets=sockets)   # the sockets bound above: no second bind that could fail
    except KeyboardInterrupt:
        pass
    if not server.started:
        _fail("the server did not start (see the log above)", code=1)


def _server_class(uvicorn: Any) -> Any:
    """uvicorn's Server, writing the pending log lines before it re-raises a stop signal (the
    JSON log is written by a thread, observability/logs.py; a signal death runs no atexit)."""
    import contextlib

    from .observability.logs import flush_logging

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            with super().capture_signals():
                try:
                    yield
                finally:
                    flush_logging()
    return Server


def _bind(host: str, port: int) -> Any:
    """A listening TCP socket on host:port, or one clear error (exit 2)."""
    import socket
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        _fail(f"--host {host!r} is not an address of this machine: {getattr(exc, 'strerror', exc)}")
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # restarts despite TIME_WAIT
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = "the address is already in use (is another server running there?)"
        elif exc.errno == errno.EACCES:
            reason = "permission denied (ports below 1024 need root)"
        _fail(f"cannot listen on {host}:{port}: {reason}")
    sock.set_inheritable(False)
    return sock


def _url(host: str, port: int) -> str:
    shown = host if host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def admin_banner(account_id: str, key: str, url: str, data_dir: str | None = None,
                 database_url: str | None = None) -> str:
    """The first start's message (plain text, for stderr): the admin's one-time key, how to
    use it with the official client, its MCP server and this CLI."""
    where = f" --data-dir {data_dir}" if data_dir else ""
    if database_url:   # the password stays out of the terminal's scrollback
        from .store.engine import display_url
        where = f" --database-url '{display_url(database_url)}'"
    me = self_command()
    return f"""
Created the admin account {account_id}. Its API key is shown only this once:

    {key}

Try it with the official client (pip install cocalc-api):

    python -c "import cocalc_api; hub = cocalc_api.Hub(api_key='{key}', host='{url}'); \\
pid = hub.projects.create_project(title='demo'); \\
print(cocalc_api.Project(api_key='{key}', host='{url}', project_id=pid).system.exec(command='echo hello'))"

The official MCP server works too. Install it with pip install cocalc-api 'mcp<2'
(mcp 2.x breaks cocalc-api 0.5.1's server), make a key for one project:

    {me} key create{where} --account {account_id} --project PROJECT_ID

and start it with that key:

    COCALC_API_KEY=sk-... COCALC_HOST={url} cocalc-mcp-server

More keys, accounts and projects: {me} key|account|project --help
"""


def self_command() -> str:
    """How to call this command again: ``projecthub`` when that is on PATH and is this very
    script, else its full path (e.g. .venv/bin/projecthub, which is not on PATH)."""
    import shutil
    here = Path(sys.executable).parent / "projecthub"
    if not here.exists():
        return f"{sys.executable} -m projecthub.cli"
    found = shutil.which("projecthub")
    if found and Path(found).resolve() == here.resolve():
        return "projecthub"
    return str(here.absolute())


def _check_environment_args(project_env: str | None, project_rootfs: str | None) -> None:
    """What is certainly wrong with --project-env / --project-rootfs (or their environment
    variables) is a bad argument (exit 2), found before anything starts."""
    if project_env and project_rootfs:
        _fail("--project-env and --project-rootfs ($PROJECTHUB_PROJECT_ENV, $PROJECTHUB_PROJECT_ROOTFS) "
              "exclude each other")
    if project_rootfs and not Path(project_rootfs).is_dir():
        _fail(f"--project-rootfs {project_rootfs}: no such directory")
    if project_env:
        path = Path(project_env)
        if path.exists() and not path.is_dir():
            _fail(f"--project-env {project_env}: not a directory")
        parent = next((p for p in path.absolute().parents if p.exists()), None)
        if not path.exists() and parent is not None and not parent.is_dir():
            _fail(f"--project-env {project_env}: {parent} is not a directory")


def _check_default_limits(limits: Any) -> None:
    """Bad --default-limits / $PROJECTHUB_DEFAULT_LIMITS are a bad argument (exit 2), found
    before anything starts."""
    from .host.sandbox import ProjectLimits
    if not isinstance(limits, dict):
        _fail("--default-limits must be a JSON object, e.g. '{\"memory_bytes\": \"2G\"}'")
    try:
        ProjectLimits.from_json(limits)
    except (ValueError, TypeError) as exc:
        _fail(f"--default-limits: {exc}")


def _open(args: argparse.Namespace):
    """The store of an admin command's --data-dir (--create: make one if there is none).
    Audit lines of the command go to the data dir's audit.log (observability/audit.py)."""
    database_url = getattr(args, "database_url", None)
    store = _store(args.data_dir, create=bool(getattr(args, "create", False)), database_url=database_url)
    from .observability.logs import use_audit_file
    audit_dir = _data_dir(args.data_dir)
    if _database_url(database_url) and not audit_dir.is_dir():
        return store   # a shared database and no data dir here: no audit.log to append to
    try:
        use_audit_file(audit_dir / "audit.log")
    except OSError as exc:
        _fail(f"cannot write {audit_dir / 'audit.log'}: {exc.strerror or exc}", code=1)
    return store


def _audit(event: str, **fields: Any) -> None:
    from .observability.audit import audit_event
    audit_event(event, by="cli", **fields)


def _announce(args: argparse.Namespace, kind: str, **fields: Any) -> None:
    """Tell running hubs on NATS what this command changed in the shared database
    (hub/events.py), when given --nats.  The change is committed either way: a NATS failure is
    one warning line, and hubs then see the change once their caches age out (2 s)."""
    url = getattr(args, "nats", None)
    if not url:
        return
    from .hub.events import announce
    error = announce(url, getattr(args, "nats_creds", None), kind, **fields)
    if error is not None:
        print(f"projecthub: warning: the change is saved, but running hubs were not told ({error}); "
              "they see it within their cache TTL (2 s)", file=sys.stderr, flush=True)


def _nats_args(p: argparse.ArgumentParser) -> None:
    """--nats/--nats-creds for admin commands that change what hubs cache (_announce)."""
    p.add_argument("--nats", default=os.environ.get("PROJECTHUB_NATS_URL"), metavar="URL",
                   help="also tell the running hubs on this NATS server at once "
                        "($PROJECTHUB_NATS_URL; without it they see the change within 2 s)")
    p.add_argument("--nats-creds", default=os.environ.get("PROJECTHUB_NATS_CREDS"), metavar="FILE",
                   help="the hubs' credentials file from `projecthub nats-config` "
                        "($PROJECTHUB_NATS_CREDS)")


def cmd_doctor(args: argparse.Namespace) -> None:
    from .host.sandbox import probe
    data_dir = _data_dir(args.data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        _fail(f"--data-dir {data_dir} is not a directory")
    try:
        data_dir = prepare_data_dir(data_dir)
    except OSError as exc:
        _fail(f"cannot use --data-dir {data_dir}: {exc.strerror or exc}")
    report = probe(data_dir)
    report.notes.append(_environment_note())
    if args.json:
        _emit(report.to_json())
    else:
        print(report.to_text())
    sys.exit(0 if report.all_enforced or not args.strict else 1)


def _environment_note() -> str:
    """What software projects get here (host/environment.py), without building anything."""
    from .host import environment
    try:
        env = environment.resolve(Path("."), os.environ.get("PROJECTHUB_PROJECT_ENV") or None,
                                  os.environ.get("PROJECTHUB_PROJECT_ROOTFS") or None, build_missing=False)
    except environment.EnvironmentError_ as exc:
        return f"project environment: {exc}"
    if env.kind == "managed":
        meta = environment.read_meta(Path(env.prefix or ""))
        return (f"project environment: managed, {Path(env.prefix or '').name} at {env.root} "
                f"(Python {meta.get('python')}; {', '.join(meta.get('packages') or [])})")
    return f"project environment: {env.kind}, {env.python}"


def cmd_account_create(args: argparse.Namespace) -> None:
    store = _open(args)
    first, _, last = args.name.partition(" ")
    account_id = store.create_account(first_name=first, last_name=last, email=args.email, is_admin=args.admin)
    row, key = store.create_api_key(account_id, name="created by projecthub account create")
    _audit("key_created", account_id=account_id, key_id=row["id"])
    _emit({"account_id": account_id, "api_key": key})


def cmd_key_create(args: argparse.Namespace) -> None:
    store = _open(args)
    expire = _parse_expire(args.expire)
    account = store.get_account(args.account)
    if account is None:
        _fail(f"no account with id {args.account}")
    if account["banned"]:
        _fail(f"account {args.account} is disabled: its keys would not work (projecthub account enable)")
    if args.project and not store.is_collaborator(args.project, args.account):
        _fail(f"account {args.account} is not a collaborator of project {args.project}")
    try:
        row, key = store.create_api_key(args.account, project_id=args.project, name=args.name or "",
                                        expire=expire)
    except ValueError as exc:
        _fail(str(exc))
    _audit("key_created", account_id=args.account, key_id=row["id"], project_id=row.get("project_id"))
    _emit({"id": row["id"], "api_key": key, "project_id": row.get("project_id")})


def cmd_key_list(args: argparse.Namespace) -> None:
    """Every key (no secrets, no hashes), or one account's / one project's."""
    from .hub.service import key_json
    store = _open(args)
    if args.account is not None and store.get_account(args.account) is None:
        _fail(f"no account with id {args.account}")
    if args.project is not None and store.get_project(args.project) is None:
        _fail(f"no project with id {args.project}")
    now = datetime.now(timezone.utc)
    _emit({"keys": [{**key_json(row), "expired": row["expire"] is not None and row["expire"] <= now}
                    for row in store.list_all_api_keys(args.account, args.project)]})


def _key_id(store: Any, args: argparse.Namespace) -> dict[str, Any]:
    row = store.get_api_key(args.id)
    if row is None or (args.account is not None and row["account_id"] != args.account):
        _fail(f"no api key with id {args.id}" + (f" of account {args.account}" if args.account else ""))
    return row


def cmd_key_revoke(args: argparse.Namespace) -> None:
    """Delete a key: it stops working at once, also on a running server (its key cache reads
    the store's revocation counter on every request)."""
    store = _open(args)
    row = _key_id(store, args)
    store.delete_api_key(args.id)
    _audit("key_revoked", account_id=row["account_id"], key_id=args.id, project_id=row["project_id"])
    _announce(args, "keys.changed", key_id=args.id)
    _emit({"id": args.id, "revoked": True, "account_id": row["account_id"],
           "project_id": row["project_id"]})


def cmd_key_rotate(args: argparse.Namespace) -> None:
    """Replace a key by a new secret (same account, project, name; same expiry unless
    --expire): the old one stops working at once."""
    store = _open(args)
    old = _key_id(store, args)
    expire = _parse_expire(args.expire) if args.expire is not None else old["expire"]
    if expire is not None and expire <= datetime.now(timezone.utc):
        _fail(f"key {args.id} expired at {expire.isoformat()}: give a new --expire in the future")
    try:
        row, key = store.rotate_api_key(args.id, expire=expire)
    except ValueError as exc:   # revoked meanwhile
        _fail(str(exc))
    _audit("key_revoked", account_id=old["account_id"], key_id=args.id, rotated_to=row["id"])
    _announce(args, "keys.changed", key_id=args.id)
    _audit("key_created", account_id=old["account_id"], key_id=row["id"], project_id=row["project_id"],
           replaces=args.id)
    from .hub.service import iso
    _emit({"id": row["id"], "api_key": key, "project_id": row["project_id"], "replaces": args.id,
           "expire": iso(row["expire"])})


def cmd_account_list(args: argparse.Namespace) -> None:
    """Every account (no secrets), with how many keys and live projects it has."""
    from .hub.service import account_json
    store = _open(args)
    keys: dict[str, int] = {}
    for row in store.list_all_api_keys():
        keys[row["account_id"]] = keys.get(row["account_id"], 0) + 1
    _emit({"accounts": [{**account_json(row), "keys": keys.get(row["account_id"], 0),
                         "projects": store.count_owned_projects(row["account_id"])}
                        for row in store.list_accounts()]})


def cmd_account_disable(args: argparse.Namespace) -> None:
    """Disable (or enable) an account: its keys are refused at once on every surface, also by
    a running server; its projects, keys and data are kept."""
    from .hub.service import account_json
    store = _open(args)
    disabled = args.action == "disable"
    if store.get_account(args.account) is None:
        _fail(f"no account with id {args.account}")
    store.set_disabled(args.account, disabled)
    _audit("account_disabled" if disabled else "account_enabled", account_id=args.account)
    _announce(args, "account.changed", account_id=args.account)
    _emit(account_json(store.get_account(args.account) or {}))


def cmd_project_create(args: argparse.Namespace) -> None:
    store = _open(args)
    if store.get_account(args.account) is None:
        _fail(f"no account with id {args.account}")
    project_id = store.create_project(args.account, title=args.title or "")
    _audit("project_created", project_id=project_id, account_id=args.account)
    _emit({"project_id": project_id})


def cmd_project_list(args: argparse.Namespace) -> None:
    """Projects (not pre-started spares), oldest first: every live one, or one account's;
    --deleted adds deleted ones."""
    from .hub.service import iso
    from .store.store import SPARE_STATE
    store = _open(args)
    if args.account is not None and store.get_account(args.account) is None:
        _fail(f"no account with id {args.account}")
    projects = []
    for row in store.list_all_projects():
        users = row.get("users") or {}
        if row.get("state") == SPARE_STATE or (row.get("deleted") and not args.deleted):
            continue
        if args.account is not None and args.account not in users:
            continue
        projects.append({
            "project_id": row["project_id"], "title": row.get("title") or "",
            "owner": next((a for a, u in users.items() if u.get("group") == "owner"), None),
            "users": {a: u.get("group") for a, u in users.items()},
            "state": row.get("state"), "created": iso(row.get("created")),
            "last_edited": iso(row.get("last_edited")), "deleted": bool(row.get("deleted")),
            "deleted_time": iso(row.get("deleted_time")), "purged": iso(row.get("purged"))})
    _emit({"projects": projects})


def cmd_project_delete(args: argparse.Namespace) -> None:
    """Delete a project as the API does: marked deleted, its sandbox stopped now; its files
    stay until the server's --purge-after (or ``project purge``)."""
    from .host.sandbox import Sandbox, SandboxConfig
    store = _open(args)
    project = store.get_project(args.project)
    if project is None:
        _fail(f"no project with id {args.project}")
    data_dir = _data_dir(args.data_dir)
    sandbox = Sandbox(SandboxConfig(data_dir=data_dir))
    running = args.project in sandbox.running_projects() or _daemon_alive(data_dir, args.project)
    store.delete_project(args.project)   # first: a racing call cannot start it again
    _audit("project_deleted", project_id=args.project)
    if running or project.get("state") != "stopped":
        try:
            sandbox.stop_project(args.project)
        except (OSError, RuntimeError) as exc:
            _fail(f"project {args.project} is deleted but its sandbox could not be stopped: {exc}",
                  code=1)
        store.update_project(args.project, state="stopped", state_time=datetime.now(timezone.utc),
                             state_reason="deleted by projecthub project delete")
    from .hub.service import iso
    deleted = store.get_project(args.project) or {}
    _emit({"project_id": args.project, "deleted": True, "stopped": running,
           "deleted_time": iso(deleted.get("deleted_time"))})


def cmd_project_limits(args: argparse.Namespace) -> None:
    """Show or override a project's limits (the CLI acts as an admin)."""
    from .host.sandbox import ProjectLimits
    store = _open(args)
    project = store.get_project(args.project)
    if project is None:
        _fail(f"no project with id {args.project}")
    settings = dict(project.get("settings") or {})
    # sizes such as 2G stay strings; ProjectLimits parses them
    overrides = _edit_overrides(settings.get("limits", {}), args, lambda name, raw: raw)
    defaults = ProjectLimits.from_json(json.loads(os.environ.get("PROJECTHUB_DEFAULT_LIMITS") or "{}"))
    try:
        effective = ProjectLimits.merged(defaults, overrides)
    except (ValueError, TypeError) as exc:
        _fail(str(exc))
    if args.set or args.unset:
        from .host.sandbox.disk import check_new_limit   # disk_bytes below what is stored
        data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
        try:
            check_new_limit(data_dir / "projects" / args.project, effective.disk_bytes)
        except ValueError as exc:
            _fail(str(exc))
        settings["limits"] = overrides
        store.update_project(args.project, settings=settings)
        _audit("limit_changed", project_id=args.project, limits=overrides)
        _announce(args, "limits.changed", project_id=args.project)
    _emit({"project_id": args.project, "limits": effective.to_json(), "overrides": overrides,
           "note": "applied at the project's next start" if args.set or args.unset else None})


def _edit_overrides(current: dict[str, Any], args: argparse.Namespace,
                    not_json: Callable[[str, str], Any]) -> dict[str, Any]:
    """``current`` with ``--set NAME=VALUE`` (a JSON value, else ``not_json(name, raw)``) and
    ``--unset NAME`` applied."""
    overrides = dict(current)
    for item in args.set or []:
        name, sep, raw = item.partition("=")
        if not sep:
            _fail(f"--set takes NAME=VALUE, got {item!r}")
        try:
            overrides[name] = json.loads(raw)
        except ValueError:
            overrides[name] = not_json(name, raw)
    for name in args.unset or []:
        overrides.pop(name, None)
    return overrides


def cmd_account_limits(args: argparse.Namespace) -> None:
    """Show or override an account's caps (max_projects, max_running_projects)."""
    from .hub.account_limits import AccountLimits
    store = _open(args)
    account = store.get_account(args.account)
    if account is None:
        _fail(f"no account with id {args.account}")
    overrides = _edit_overrides(store.get_account_limits(args.account), args, lambda name, raw: _fail(
        f"{name} must be a non-negative integer or null, got {raw!r}"))
    try:
        overrides = AccountLimits.check(overrides)
        defaults = AccountLimits.from_json(json.loads(os.environ.get("PROJECTHUB_ACCOUNT_LIMITS") or "{}"))
    except ValueError as exc:
        _fail(str(exc))
    if args.set or args.unset:
        store.set_account_limits(args.account, overrides)
        _audit("limit_changed", account_id=args.account, limits=overrides)
        _announce(args, "limits.changed", account_id=args.account)
    _emit({"account_id": args.account, "limits": defaults.merged(overrides).to_json(),
           "overrides": overrides, "exempt": bool(account.get("is_admin")),
           "projects": store.count_owned_projects(args.account)})


def cmd_jupyter_api(args: argparse.Namespace) -> None:
    """Enable or disable hub jupyter.execute without a project_id.  Each account then runs in
    its own scratch project, made on first use; ``--project P`` copies P's limit overrides
    to every scratch project (P itself is no longer shared)."""
    store = _open(args)
    if args.action == "disable":
        store.set_setting("jupyter_api_enabled", False)
        _emit({"jupyter_api_enabled": False, "scratch": "per-account"})
        return
    if args.project is not None:
        template = store.get_project(args.project)
        if template is None:
            _fail(f"no project with id {args.project}")
        store.set_setting("jupyter_scratch_limits", (template.get("settings") or {}).get("limits", {}))
    store.set_setting("jupyter_api_enabled", True)
    _emit({"jupyter_api_enabled": True, "scratch": "per-account",
           "limit_overrides": store.get_setting("jupyter_scratch_limits") or {}})


def cmd_stop_all(args: argparse.Namespace) -> None:
    """Stop every project daemon of a data dir (they outlive the server by design).
    ``stopped`` lists the projects that had processes running, nothing else."""
    from .host.sandbox import Sandbox, SandboxConfig
    from .host.sandbox import disk
    from .host.spares import remove_spare_dirs
    from .store.store import SPARE_STATE
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    from .cli_nats import is_host_data_dir, stop_all_host
    if is_host_data_dir(data_dir):   # a `projecthub host`'s: no store there, its ledger
        _emit(stop_all_host(data_dir, _daemon_alive))
        return
    store = _open(args)
    sandbox = Sandbox(SandboxConfig(data_dir=data_dir))
    alive = sandbox.running_projects()   # project -> pids, from its cgroups (or markers)
    stopped = []
    for project in store.list_all_projects():
        project_id = project["project_id"]
        if project.get("state") == SPARE_STATE:   # pre-started, nobody's project: remove it
            sandbox.stop_project(project_id)
            remove_spare_dirs(data_dir, project_id)
            store.discard_spare(project_id)
            continue
        running = project_id in alive or _daemon_alive(data_dir, project_id)
        if running or project.get("state") != "stopped" or disk.attached(sandbox.project_dir(project_id)):
            sandbox.stop_project(project_id)
            store.update_project(project_id, state="stopped", state_time=datetime.now(timezone.utc),
                                 state_reason="stopped by projecthub stop-all")
        if running:
            stopped.append(project_id)
    # images left mounted (a start that failed after mounting, a project missing from the
    # store): release every one under this data dir, so no loop device outlives stop-all
    for base in sorted((data_dir / "projects").glob("*")):
        if disk.attached(base):
            sandbox.stop_project(base.name)
    _emit({"stopped": stopped})


def _daemon_alive(data_dir: Path, project_id: str) -> bool:
    """The sandbox process the host recorded for the project still runs."""
    import psutil
    try:
        pid = json.loads((data_dir / "run" / project_id / "host.json").read_text()).get("pid")
        return isinstance(pid, int) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (OSError, ValueError, AttributeError, psutil.Error):
        return False


def cmd_project_move(args: argparse.Namespace) -> None:
    """Move a project between hosts on NATS (hub/move.py); tells running hubs afterwards."""
    import asyncio
    import contextlib

    from .errors import RemoteError
    from .hub.db import AsyncStore
    from .hub.move import move_project
    from .fabric.nats_client import NatsFabric
    from .fabric.nats_wire import HUB_INBOX_PREFIX, connect, load_credentials
    if not args.nats:
        _fail("project move needs --nats URL (and --nats-creds FILE): it talks to the hosts")
    if not args.to or not all(c.isalnum() or c in "-_." for c in args.to) or len(args.to) > 128:
        _fail(f"malformed host id {args.to!r}")
    if not 0 < args.timeout < float("inf"):   # NaN too
        _fail("--timeout must be a positive number of seconds")
    store = _open(args)

    async def run() -> dict[str, Any]:
        creds = load_credentials(args.nats_creds) if args.nats_creds else None
        nc = await connect(args.nats, name="projecthub-move", creds=creds, inbox_prefix=HUB_INBOX_PREFIX)
        fabric = NatsFabric(nc)
        db = AsyncStore(store)
        try:
            await fabric.start()
            return await move_project(db, fabric, args.project, args.to, args.timeout)
        finally:
            with contextlib.suppress(Exception):
                await fabric.close()
            with contextlib.suppress(Exception):
                await nc.close()
            db.close()
    try:
        result = asyncio.run(run())
    except RemoteError as exc:
        _fail(exc.message.removeprefix("Error: "))
    except Exception as exc:   # NATS away, bad creds file
        _fail(f"could not move project {args.project}: {exc}")
    _audit("project_moved", project_id=args.project, to=args.to, source=result.get("from"))
    _announce(args, "project.moved", project_id=args.project)
    _emit(result)


def cmd_project_purge(args: argparse.Namespace) -> None:
    """Purge a deleted project's files now (the server does it --purge-after its deletion)."""
    from .host.purge import purge_project_files
    from .host.sandbox import Sandbox, SandboxConfig
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    store = _open(args)
    project = store.get_project(args.project)
    if project is None:
        _fail(f"no project with id {args.project}")
    if not project.get("deleted"):
        _fail(f"project {args.project} is not deleted: delete it first (only a deleted project's "
              "files are purged)")
    sandbox = Sandbox(SandboxConfig(data_dir=data_dir))
    try:
        freed = purge_project_files(sandbox, data_dir, args.project)
    except (OSError, RuntimeError) as exc:   # e.g. still mounted: nothing half-removed is hidden
        _fail(f"could not purge project {args.project}: {exc}", code=1)
    now = datetime.now(timezone.utc)
    store.update_project(args.project, purged=now)
    _emit({"project_id": args.project, "purged": True, "freed_bytes": freed,
           "deleted": project["deleted_time"].isoformat() if project.get("deleted_time") else None})


def _duration_arg(text: str) -> float:
    from .host.sandbox.limits import parse_duration
    try:
        return float(parse_duration("--purge-after", text, max_s=100 * 366 * 86400,
                                    zero="purge at deletion"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--purge-after: ")) from None


def _port_arg(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535 (0: any free port), "
                                         f"got {text!r}")
    return port


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help already says it (or there is none to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text.lower():
            return text
        return super()._get_help_string(action) or ""


class _TopHelpFormatter(_HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The top level's description is the module docstring, paragraphs kept."""


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line on stderr, exit code 2 (argparse prints the usage first)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


_DATA_DIR_HELP = "the server's data directory (default: $PROJECTHUB_DATA_DIR, else ~/.local/share/projecthub)"
_DATABASE_URL_HELP = ("the hubs' shared PostgreSQL store, postgresql://USER:PASSWORD@HOST:PORT/DB, "
                      "in place of the data dir's SQLite one ($PROJECTHUB_DATABASE_URL)")


def _admin(sub: Any, name: str, help: str, func: Callable[[argparse.Namespace], None]) -> argparse.ArgumentParser:
    """An admin subcommand: --data-dir and --create, one JSON object on stdout."""
    p = sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".")
    p.add_argument("--data-dir", default=None, metavar="DIR", help=_DATA_DIR_HELP)
    p.add_argument("--database-url", default=None, metavar="URL", help=_DATABASE_URL_HELP)
    p.add_argument("--create", action="store_true",
                   help="make a new, empty store if DIR (or the database) has none (without it such "
                        "a DIR is refused, so a mistyped --data-dir cannot quietly create one)")
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="projecthub", description=__doc__, formatter_class=_TopHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run hub and local host (embedded defaults: SQLite, loopback)",
                           description="Run the hub and the local host until stopped (SIGTERM/Ctrl-C). "
                                       "Logs JSON lines; on the first start with an empty data dir it "
                                       "creates an admin account and prints its key once on stderr.")
    serve.add_argument("--host", default=os.environ.get("PROJECTHUB_HOST", "127.0.0.1"),
                       help="address to listen on ($PROJECTHUB_HOST)")
    serve.add_argument("--port", type=_port_arg, default=os.environ.get("PROJECTHUB_PORT", "8765"),
                       help="TCP port to listen on; bound before anything else is done "
                            "(default 8765, $PROJECTHUB_PORT)")
    serve.add_argument("--data-dir", default=None, metavar="DIR",
                       help=_DATA_DIR_HELP[:-1] + "; made with a new store on the first start)")
    serve.add_argument("--database-url", default=None, metavar="URL",
                       help=_DATABASE_URL_HELP + "; the data dir still holds the projects' homes")
    serve.add_argument("--sandbox", choices=["auto", "bwrap", "none"],
                       default=os.environ.get("PROJECTHUB_SANDBOX", "auto"),
                       help="isolation: bwrap sandboxes, none (no isolation: trusted users only), or "
                            "auto (bwrap when it works here) ($PROJECTHUB_SANDBOX)")
    serve.add_argument("--require-isolation", action="store_true",
                       help="refuse to start unless every isolation layer is enforced")
    serve.add_argument("--uid-range", default=None, metavar="LOW-HIGH",
                       help="uids for projects when run as root (default 200000-299999, $PROJECTHUB_UID_RANGE)")
    serve.add_argument("--spare-projects", type=int, default=None, metavar="N",
                       help="projects kept started ahead of create_project, for a fast first call "
                            "(default 1, $PROJECTHUB_SPARE_PROJECTS; 0 disables)")
    serve.add_argument("--keep-alive", type=int, default=None, metavar="SECONDS",
                       help="idle HTTP keep-alive connections are closed after this long "
                            "(default 75, $PROJECTHUB_KEEP_ALIVE_S)")
    serve.add_argument("--max-connections", type=int, metavar="N",
                       default=os.environ.get("PROJECTHUB_MAX_CONNECTIONS"),
                       help="open HTTP connections at most; at the cap the oldest one still sending its "
                            "headers is closed, else 503 (default: from the fd limit, "
                            "$PROJECTHUB_MAX_CONNECTIONS; 0: no cap)")
    serve.add_argument("--max-connections-per-ip", type=int, metavar="N",
                       default=os.environ.get("PROJECTHUB_MAX_CONNECTIONS_PER_IP", "1024"),
                       help="open connections per client address (IPv6: per /64; --forwarded-allow-ips "
                            "proxies exempt); more get 503 (default 1024, "
                            "$PROJECTHUB_MAX_CONNECTIONS_PER_IP; 0: no cap)")
    serve.add_argument("--header-timeout", type=float, metavar="SECONDS",
                       default=os.environ.get("PROJECTHUB_HEADER_TIMEOUT_S", "10"),
                       help="a request whose headers are not complete after this long gets 408 and is "
                            "closed (default 10, $PROJECTHUB_HEADER_TIMEOUT_S)")
    serve.add_argument("--body-timeout", type=float, metavar="SECONDS",
                       default=os.environ.get("PROJECTHUB_BODY_TIMEOUT_S", "30"),
                       help="a request body that stalls this long (or trickles under 1 KiB/s) gets 408 "
                            "and is closed (default 30, $PROJECTHUB_BODY_TIMEOUT_S)")
    serve.add_argument("--account-limits", default=None, metavar="JSON",
                       help='per-account caps, e.g. \'{"max_projects": 100, "max_running_projects": 10}\' '
                            "(the defaults; null = unlimited; admins exempt; also "
                            "$PROJECTHUB_ACCOUNT_LIMITS)")
    serve.add_argument("--default-limits", default=None, metavar="JSON",
                       help='per-project default limits as JSON, e.g. \'{"memory_bytes": "2G", "pids": 512}\' '
                            "(default: none beyond the built-in ones, $PROJECTHUB_DEFAULT_LIMITS)")
    serve.add_argument("--forwarded-allow-ips", metavar="IPS",
                       default=os.environ.get("PROJECTHUB_FORWARDED_ALLOW_IPS") or None,
                       help="comma-separated addresses/networks of reverse proxies whose X-Forwarded-For "
                            "is trusted (default: none, the TCP peer is the client; "
                            "$PROJECTHUB_FORWARDED_ALLOW_IPS)")
    serve.add_argument("--project-env", default=None,
                       metavar="DIR",
                       help="the software projects run: a managed environment's directory (built "
                            "there when missing) or an existing Python environment (a prefix with "
                            "bin/python); default ~/.cache/projecthub/project-env, "
                            "$PROJECTHUB_PROJECT_ENV")
    serve.add_argument("--project-rootfs", default=None,
                       metavar="DIR",
                       help="an unpacked root filesystem (e.g. `docker export` output) used as the "
                            "projects' /usr, /etc, /bin, /lib (default: none, $PROJECTHUB_PROJECT_ROOTFS)")
    serve.add_argument("--purge-after", type=_duration_arg, metavar="DURATION",
                       default=os.environ.get("PROJECTHUB_PURGE_AFTER", "7d"),
                       help="a deleted project's files (home, state, disk image) are removed this long "
                            "after its deletion, e.g. 7d, 12h, 30m, 90 (seconds); 0 = at deletion "
                            "(default 7d, $PROJECTHUB_PURGE_AFTER)")
    serve.add_argument("--log-level", default=os.environ.get("PROJECTHUB_LOG_LEVEL", "info"),
                       type=str.lower, choices=["debug", "info", "warning", "error", "critical"],
                       help="least severe log level written ($PROJECTHUB_LOG_LEVEL)")
    serve.add_argument("--log-file", default=os.environ.get("PROJECTHUB_LOG_FILE") or None, metavar="PATH",
                       help="write the JSON log to PATH, rotated, instead of stdout "
                            "(default: stdout, $PROJECTHUB_LOG_FILE)")
    serve.add_argument("--log-max-bytes", type=int, default=50 * 2**20, metavar="BYTES",
                       help="rotate --log-file at this size; 0 = never (default 52428800, 50 MiB)")
    serve.add_argument("--log-backups", type=int, default=5, metavar="N",
                       help="rotated log files kept beside --log-file (default 5)")
    serve.add_argument("--no-request-log", action="store_true",
                       help="do not log one JSON line per HTTP request (audit lines stay)")
    serve.add_argument("--no-metrics", action="store_true", help="no GET /metrics, no request metrics")
    serve.add_argument("--metrics-port", type=_port_arg, default=None, metavar="PORT",
                       help="also serve GET /metrics without a key on this port (default: none; "
                            "/metrics on --port needs an admin key)")
    serve.add_argument("--metrics-host", default="127.0.0.1", metavar="ADDR",
                       help="address of the --metrics-port listener (default 127.0.0.1)")
    serve.set_defaults(func=cmd_serve)

    doctor = sub.add_parser("doctor", help="show which isolation layers and limits are enforced here",
                            description="Probe this machine as serve would and report each isolation "
                                        "layer ([  OK  ] or [MISSING] with the reason) and what "
                                        "software projects get: a text report, or one JSON object "
                                        "with --json. Exit code 0, or 1 with --strict when a layer "
                                        "is missing.")
    doctor.add_argument("--data-dir", default=None, metavar="DIR",
                        help=_DATA_DIR_HELP[:-1] + "; probed where projects would live, made if missing)")
    doctor.add_argument("--json", action="store_true",
                        help='print one JSON object ({"mode", "layers": [...], "notes", ...}) instead '
                             "of the text report")
    doctor.add_argument("--strict", action="store_true", help="exit 1 unless every layer is enforced")
    doctor.set_defaults(func=cmd_doctor)

    jupyter = _admin(sub, "jupyter-api", "hub jupyter.execute without a project_id (a scratch project "
                                         "per account)", cmd_jupyter_api)
    jupyter.add_argument("action", choices=["enable", "disable"], help="turn the feature on or off")
    jupyter.add_argument("--project", default=None, metavar="PID",
                         help="copy this project's limit overrides to every account's scratch project")

    from .cli_env import add_env_parser
    add_env_parser(sub)
    from .cli_org import add_org_parser
    add_org_parser(sub, _admin, _open)   # projecthub org ... (organizations, sign-in tokens)
    from .cli_store import add_store_parser
    add_store_parser(sub, _sqlite_store, lambda url: _database_store(url, create=True))  # store migrate
    from .mcp_server import add_mcp_parser
    add_mcp_parser(sub)   # projecthub mcp (an MCP server for agents, on projecthub.client)
    from .cli_nats import add_nats_parsers
    add_nats_parsers(sub)   # projecthub nats-config, projecthub host (the fabric on NATS)

    _admin(sub, "stop-all", "stop every running project daemon of a data dir", cmd_stop_all)

    account = sub.add_parser("account", help="create, list, disable and enable accounts; set their caps",
                             description="Accounts. Each subcommand prints one JSON object.")
    accounts = account.add_subparsers(dest="action", required=True, metavar="ACTION")
    a_create = _admin(accounts, "create", "create an account and its first API key", cmd_account_create)
    a_create.add_argument("--name", required=True, help='"First Last"')
    a_create.add_argument("--email", default=None, help="unique e-mail address (default: none)")
    a_create.add_argument("--admin", action="store_true", help="make it an admin account")
    _admin(accounts, "list", "list accounts (no secrets) with their key and project counts", cmd_account_list)
    for action, text in (("disable", "disable an account: its keys are refused at once, everywhere; "
                                     "projects, keys and files are kept"),
                         ("enable", "enable a disabled account again")):
        a_state = _admin(accounts, action, text, cmd_account_disable)
        a_state.add_argument("--account", required=True, metavar="ID", help="the account's id")
        _nats_args(a_state)
    a_limits = _admin(accounts, "limits", "show or override an account's caps", cmd_account_limits)
    a_limits.add_argument("--account", required=True, metavar="ID", help="the account's id")
    a_limits.add_argument("--set", action="append", metavar="NAME=VALUE",
                          help="e.g. --set max_projects=5 --set max_running_projects=null (unlimited)")
    a_limits.add_argument("--unset", action="append", metavar="NAME", help="back to the server default")
    _nats_args(a_limits)

    key = sub.add_parser("key", help="create, list, revoke and rotate API keys",
                         description="API keys. Each subcommand prints one JSON object; a secret is "
                                     "shown only by create and rotate. Revoking or rotating takes "
                                     "effect at once, also on a running server.")
    keys = key.add_subparsers(dest="action", required=True, metavar="ACTION")
    k_create = _admin(keys, "create", "create an API key for an account (or one of its projects)",
                      cmd_key_create)
    k_create.add_argument("--account", required=True, metavar="ID", help="the account the key acts as")
    k_create.add_argument("--project", default=None, metavar="PID",
                          help="make a project key: it reaches only this project (default: an "
                               "account-wide key)")
    k_create.add_argument("--name", default=None, help="a label shown by key list (default: none)")
    k_create.add_argument("--expire", default=None, metavar="ISO8601",
                          help="when the key stops working, in the future, e.g. 2030-01-31 or "
                               "2030-01-31T12:00:00Z (UTC unless a zone is given; default: never)")
    k_list = _admin(keys, "list", "list API keys (no secrets)", cmd_key_list)
    k_list.add_argument("--account", default=None, metavar="ID", help="only this account's keys")
    k_list.add_argument("--project", default=None, metavar="PID", help="only this project's keys")
    k_revoke = _admin(keys, "revoke", "delete an API key: it stops working at once", cmd_key_revoke)
    k_rotate = _admin(keys, "rotate", "replace an API key by a new secret (same account, project, name "
                                      "and expiry); the old one stops working at once", cmd_key_rotate)
    for p in (k_revoke, k_rotate):
        p.add_argument("--id", required=True, type=int, help="the key's id (key list, or key create's id)")
        p.add_argument("--account", default=None, metavar="ID",
                       help="refuse unless the key belongs to this account (default: any account)")
        _nats_args(p)
    k_rotate.add_argument("--expire", default=None, metavar="ISO8601",
                          help="a new expiry in the future (default: the old key's)")

    project = sub.add_parser("project", help="create, list, delete and purge projects; set their limits",
                             description="Projects. Each subcommand prints one JSON object.")
    projects = project.add_subparsers(dest="action", required=True, metavar="ACTION")
    p_create = _admin(projects, "create", "create a project owned by an account", cmd_project_create)
    p_create.add_argument("--account", required=True, metavar="ID", help="the owner")
    p_create.add_argument("--title", default=None, help="the project's title (default: empty)")
    p_list = _admin(projects, "list", "list projects (owner, users, state)", cmd_project_list)
    p_list.add_argument("--account", default=None, metavar="ID",
                        help="only projects this account owns or collaborates on")
    p_list.add_argument("--deleted", action="store_true", help="include deleted projects")
    p_delete = _admin(projects, "delete", "delete a project: stopped now, its files purged after the "
                                          "server's --purge-after", cmd_project_delete)
    p_delete.add_argument("--project", required=True, metavar="PID", help="the project's id")
    p_limits = _admin(projects, "limits", "show or override a project's limits", cmd_project_limits)
    p_limits.add_argument("--project", required=True, metavar="PID", help="the project's id")
    p_limits.add_argument("--set", action="append", metavar="NAME=VALUE",
                          help="e.g. --set memory_bytes=1G --set pids=256 --set network=true")
    p_limits.add_argument("--unset", action="append", metavar="NAME", help="back to the server default")
    _nats_args(p_limits)
    p_purge = _admin(projects, "purge", "remove a deleted project's files now", cmd_project_purge)
    p_purge.add_argument("--project", required=True, metavar="PID", help="the deleted project's id")
    p_move = _admin(projects, "move", "move a project to another host (scale-out: hosts on NATS): stopped, "
                                      "its home and job records copied, restarted there if it ran",
                    cmd_project_move)
    p_move.add_argument("project", metavar="PID", help="the project's id")
    p_move.add_argument("--to", required=True, metavar="HOST", help="the target host's id (host list's name)")
    p_move.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                        help="give up (and leave the project where it is) after S seconds (default 3600)")
    _nats_args(p_move)
    return parser


def _report(message: str, code: int, as_json: bool) -> NoReturn:
    """One line on stderr (and the JSON error on stdout for commands that print JSON)."""
    if as_json:
        _emit({"error": message})
    line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"projecthub: error: {line}", file=sys.stderr, flush=True)
    sys.exit(code)


# What `pip install projecthub[server]` brings (pyproject.toml).  A client-only install
# (`projecthub[client]` or `[mcp]`) has the `projecthub` command too; its server commands
# then say what is missing in one line instead of an ImportError's traceback.
SERVER_MODULES = ("starlette", "uvicorn", "httptools", "sqlalchemy", "psutil", "jupyter_client",
                  "ipykernel", "zmq", "pyseccomp", "pydantic", "diff_match_patch", "prometheus_client")
CLIENT_COMMANDS = frozenset({"mcp"})   # built on projecthub.client alone


def server_installed() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(name) is not None for name in SERVER_MODULES)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    as_json = args.command not in ("serve", "hub") and (args.command != "doctor" or args.json)
    if args.command not in CLIENT_COMMANDS and not server_installed():
        print("projecthub: error: the server needs 'pip install projecthub[server]'", file=sys.stderr, flush=True)
        sys.exit(2)
    try:
        args.func(args)
    except CliError as exc:
        _report(exc.message, exc.code, as_json)
    except ValueError as exc:  # store validation errors: one line, no traceback
        _report(str(exc), 2, as_json)
    except SystemExit as exc:
        if isinstance(exc.code, str):   # sys.exit("message") deeper down (e.g. a bad environment variable)
            _report(exc.code.removeprefix("projecthub: "), 2, as_json)
        raise
    except KeyboardInterrupt:
        print("projecthub: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:   # a bug or an unexpected failure: still one line
        if os.environ.get("PROJECTHUB_DEBUG"):
            raise
        _report(f"{type(exc).__name__}: {exc} (PROJECTHUB_DEBUG=1 shows the traceback)", 1, as_json)


if __name__ == "__main__":
    main()
