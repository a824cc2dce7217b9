"""The ``projecthub`` command.

Administrative subcommands print exactly one JSON object on stdout and work whether or not
the server is running (they talk to the store directly; SQLite WAL allows that).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .config import ServerSettings, default_data_dir, parse_range, prepare_data_dir


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log line: easy to grep, easy to ship."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _emit(value: dict[str, Any]) -> None:
    print(json.dumps(value))


def _fail(message: str, code: int = 2) -> None:
    _emit({"error": message})
    sys.exit(code)


def _store(data_dir: str | None):
    from .store import Store
    settings = ServerSettings(data_dir=Path(data_dir) if data_dir else default_data_dir())
    prepare_data_dir(settings.data_dir)
    store = Store(settings.db_url)
    store.migrate()
    return store


def _parse_expire(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        _fail(f"--expire must be an ISO 8601 date, got {value!r}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


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
    from .host.environment import EnvironmentError_
    settings = ServerSettings(host=args.host, port=args.port,
                              sandbox_mode=args.sandbox, require_isolation=args.require_isolation)
    if args.uid_range is not None:
        try:
            settings.uid_range = parse_range(args.uid_range)
        except ValueError as exc:
            sys.exit(f"projecthub: --uid-range: {exc}")
    if args.default_limits is not None:
        try:
            settings.default_limits = json.loads(args.default_limits)
        except ValueError as exc:
            sys.exit(f"projecthub: --default-limits must be a JSON object: {exc}")
    if args.account_limits is not None:
        try:
            settings.account_limits = json.loads(args.account_limits)
        except ValueError as exc:
            sys.exit(f"projecthub: --account-limits must be a JSON object: {exc}")
    try:   # from the flag or $PROJECTHUB_ACCOUNT_LIMITS
        from .hub.account_limits import AccountLimits
        AccountLimits.from_json(settings.account_limits)
    except ValueError as exc:
        sys.exit(f"projecthub: --account-limits: {exc}")
    if args.data_dir:
        settings.data_dir = Path(args.data_dir)
    # a flag beats the other kind's environment variable (they exclude each other)
    env_var, rootfs_var = os.environ.get("PROJECTHUB_PROJECT_ENV"), os.environ.get("PROJECTHUB_PROJECT_ROOTFS")
    settings.project_env = args.project_env or (None if args.project_rootfs else env_var or None)
    settings.project_rootfs = args.project_rootfs or (None if args.project_env else rootfs_var or None)
    if args.spare_projects is not None:
        if args.spare_projects < 0:
            sys.exit("projecthub: --spare-projects must be >= 0")
        settings.spare_projects = args.spare_projects
    if args.keep_alive is not None:
        settings.keep_alive_s = args.keep_alive
    settings.purge_after_s = args.purge_after
    if settings.jupyter_idle_s < 0:
        sys.exit("projecthub: PROJECTHUB_JUPYTER_IDLE_S must be >= 0 seconds")
    if settings.keep_alive_s < 1:   # from the flag or $PROJECTHUB_KEEP_ALIVE_S
        sys.exit("projecthub: --keep-alive must be >= 1 second")
    prepare_data_dir(settings.data_dir)
    _setup_logging(args.log_level)
    from .api.connections import protocol_class, serve_guard
    try:  # slow/many-connection defences (api/connections.py); also raises the fd limit
        guard = serve_guard(args.max_connections, args.max_connections_per_ip, args.header_timeout,
                            args.body_timeout, args.forwarded_allow_ips)
    except ValueError as exc:
        sys.exit(f"projecthub: {exc}")
    try:
        sandbox = build_sandbox(settings)
    except (RuntimeError, ValueError, TypeError, EnvironmentError_) as exc:
        # a missing layer, bad default limits, or a project environment that cannot work
        print(f"projecthub: refusing to start: {exc}", file=sys.stderr)
        sys.exit(1)
    store = _store(str(settings.data_dir))
    first = create_first_admin(store)
    store.close()
    if first is not None:
        account_id, key = first
        url = f"http://{settings.host}:{settings.port}"
        print(f"""
Created the admin account {account_id}. Its API key is shown only this once:

    {key}

Try it with the official client (pip install cocalc-api):

    python -c "import cocalc_api; hub = cocalc_api.Hub(api_key='{key}', host='{url}'); \\
pid = hub.projects.create_project(title='demo'); \\
print(cocalc_api.Project(api_key='{key}', host='{url}', project_id=pid).system.exec(command='echo hello'))"
""", file=sys.stderr, flush=True)
    # The asyncio loop, not uvloop: uvloop spawns with a plain fork (see ARCHITECTURE.md).
    uvicorn.run(create_app(settings, sandbox), host=settings.host, port=settings.port, loop="asyncio",
                http=protocol_class(guard), log_config=None, access_log=False, timeout_graceful_shutdown=5,
                timeout_keep_alive=settings.keep_alive_s,
                # X-Forwarded-For only from proxies the operator names: otherwise any client
                # could pick its own address and escape the per-address bad-key throttle
                proxy_headers=bool(args.forwarded_allow_ips),
                forwarded_allow_ips=args.forwarded_allow_ips or None)


def cmd_doctor(args: argparse.Namespace) -> None:
    from .host.sandbox import probe
    data_dir = prepare_data_dir(Path(args.data_dir) if args.data_dir else default_data_dir())
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
    store = _store(args.data_dir)
    first, _, last = args.name.partition(" ")
    account_id = store.create_account(first_name=first, last_name=last, email=args.email, is_admin=args.admin)
    _, key = store.create_api_key(account_id, name="created by projecthub account create")
    _emit({"account_id": account_id, "api_key": key})


def cmd_key_create(args: argparse.Namespace) -> None:
    store = _store(args.data_dir)
    if store.get_account(args.account) is None:
        _fail(f"no account with id {args.account}")
    if args.project and not store.is_collaborator(args.project, args.account):
        _fail(f"account {args.account} is not a collaborator of project {args.project}")
    try:
        row, key = store.create_api_key(args.account, project_id=args.project, name=args.name or "",
                                        expire=_parse_expire(args.expire))
    except ValueError as exc:
        _fail(str(exc))
    _emit({"id": row["id"], "api_key": key, "project_id": row.get("project_id")})


def cmd_project_create(args: argparse.Namespace) -> None:
    store = _store(args.data_dir)
    if store.get_account(args.account) is None:
        _fail(f"no account with id {args.account}")
    _emit({"project_id": store.create_project(args.account, title=args.title or "")})


def cmd_project_limits(args: argparse.Namespace) -> None:
    """Show or override a project's limits (the CLI acts as an admin)."""
    from .host.sandbox import ProjectLimits
    store = _store(args.data_dir)
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
    store = _store(args.data_dir)
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
    _emit({"account_id": args.account, "limits": defaults.merged(overrides).to_json(),
           "overrides": overrides, "exempt": bool(account.get("is_admin")),
           "projects": store.count_owned_projects(args.account)})


def cmd_jupyter_api(args: argparse.Namespace) -> None:
    """Enable or disable hub jupyter.execute without a project_id.  Each account then runs in
    its own scratch project, made on first use; ``--project P`` copies P's limit overrides
    to every scratch project (P itself is no longer shared)."""
    store = _store(args.data_dir)
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
    store = _store(str(data_dir))
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


def cmd_project_purge(args: argparse.Namespace) -> None:
    """Purge a deleted project's files now (the server does it --purge-after its deletion)."""
    from .host.purge import purge_project_files
    from .host.sandbox import Sandbox, SandboxConfig
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    store = _store(str(data_dir))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="projecthub", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run hub and local host (embedded defaults: SQLite, loopback)")
    serve.add_argument("--host", default=os.environ.get("PROJECTHUB_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PROJECTHUB_PORT", "8765")))
    serve.add_argument("--data-dir", default=None, help="default: $PROJECTHUB_DATA_DIR or ~/.local/share/projecthub")
    serve.add_argument("--sandbox", choices=["auto", "bwrap", "none"],
                       default=os.environ.get("PROJECTHUB_SANDBOX", "auto"))
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
    serve.add_argument("--default-limits", default=None,
                       help='per-project default limits as JSON, e.g. \'{"memory_bytes": "2G", "pids": 512}\' '
                            "(also $PROJECTHUB_DEFAULT_LIMITS)")
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
                            "projects' /usr, /etc, /bin, /lib ($PROJECTHUB_PROJECT_ROOTFS)")
    serve.add_argument("--purge-after", type=_duration_arg, metavar="DURATION",
                       default=os.environ.get("PROJECTHUB_PURGE_AFTER", "7d"),
                       help="a deleted project's files (home, state, disk image) are removed this long "
                            "after its deletion, e.g. 7d, 12h, 30m, 90 (seconds); 0 = at deletion "
                            "(default 7d, $PROJECTHUB_PURGE_AFTER)")
    serve.add_argument("--log-level", default=os.environ.get("PROJECTHUB_LOG_LEVEL", "info"))
    serve.set_defaults(func=cmd_serve)

    doctor = sub.add_parser("doctor", help="show which isolation layers and limits are enforced here")
    doctor.add_argument("--data-dir", default=None)
    doctor.add_argument("--json", action="store_true")
    doctor.add_argument("--strict", action="store_true", help="exit 1 unless every layer is enforced")
    doctor.set_defaults(func=cmd_doctor)

    jupyter = sub.add_parser("jupyter-api", help="hub jupyter.execute without a project_id "
                                                 "(a scratch project per account)")
    jupyter.add_argument("action", choices=["enable", "disable"])
    jupyter.add_argument("--data-dir", default=None)
    jupyter.add_argument("--project", default=None,
                         help="copy this project's limit overrides to every account's scratch project")
    jupyter.set_defaults(func=cmd_jupyter_api)

    from .cli_env import add_env_parser
    add_env_parser(sub)

    stop_all = sub.add_parser("stop-all", help="stop every running project of a data dir")
    stop_all.add_argument("--data-dir", default=None)
    stop_all.set_defaults(func=cmd_stop_all)

    account = sub.add_parser("account").add_subparsers(dest="action", required=True)
    a_create = account.add_parser("create")
    a_create.add_argument("--data-dir", default=None)
    a_create.add_argument("--name", required=True)
    a_create.add_argument("--email", default=None)
    a_create.add_argument("--admin", action="store_true")
    a_create.set_defaults(func=cmd_account_create)
    a_limits = account.add_parser("limits", help="show or override an account's caps")
    a_limits.add_argument("--data-dir", default=None)
    a_limits.add_argument("--account", required=True)
    a_limits.add_argument("--set", action="append", metavar="NAME=VALUE",
                          help="e.g. --set max_projects=5 --set max_running_projects=null (unlimited)")
    a_limits.add_argument("--unset", action="append", metavar="NAME", help="back to the server default")
    a_limits.set_defaults(func=cmd_account_limits)

    key = sub.add_parser("key").add_subparsers(dest="action", required=True)
    k_create = key.add_parser("create")
    k_create.add_argument("--data-dir", default=None)
    k_create.add_argument("--account", required=True)
    k_create.add_argument("--project", default=None)
    k_create.add_argument("--name", default=None)
    k_create.add_argument("--expire", default=None)
    k_create.set_defaults(func=cmd_key_create)

    project = sub.add_parser("project").add_subparsers(dest="action", required=True)
    p_create = project.add_parser("create")
    p_create.add_argument("--data-dir", default=None)
    p_create.add_argument("--account", required=True)
    p_create.add_argument("--title", default=None)
    p_create.set_defaults(func=cmd_project_create)
    p_limits = project.add_parser("limits")
    p_limits.add_argument("--data-dir", default=None)
    p_limits.add_argument("--project", required=True)
    p_limits.add_argument("--set", action="append", metavar="NAME=VALUE",
                          help="e.g. --set memory_bytes=1G --set pids=256 --set network=true")
    p_limits.add_argument("--unset", action="append", metavar="NAME", help="back to the server default")
    p_limits.set_defaults(func=cmd_project_limits)
    p_purge = project.add_parser("purge", help="remove a deleted project's files now")
    p_purge.add_argument("--data-dir", default=None)
    p_purge.add_argument("--project", required=True)
    p_purge.set_defaults(func=cmd_project_purge)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ValueError as exc:  # store validation errors: one JSON line, no traceback
        _fail(str(exc))


if __name__ == "__main__":
    main()
