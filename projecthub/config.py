"""Server settings: one dataclass, filled from CLI flags and PROJECTHUB_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def default_data_dir() -> Path:
    env = os.environ.get("PROJECTHUB_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "projecthub"


def prepare_data_dir(path: Path) -> Path:
    """Create the data dir private to the server: 0700, with the store's files 0600, and a
    umask that keeps every file the server makes there private (hub.db and its -wal/-shm
    files hold key hashes and every project's settings).  Projects reach only what the
    host bind-mounts into their sandboxes, never the data dir itself."""
    os.umask(0o077)
    path.mkdir(parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o066:
        # nobody else may list or write it (a server in sandbox mode "none" sets 0711 itself:
        # its daemons run as project uids and must traverse to their homes; that is kept)
        os.chmod(path, 0o700)
        for name in ("hub.db", "hub.db-wal", "hub.db-shm", "hub.db-journal"):
            try:
                os.chmod(path / name, 0o600)
            except FileNotFoundError:
                pass
    return path


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}")


def parse_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    try:
        low, high = int(lo), int(hi)
    except ValueError:
        raise ValueError(f"expected LOW-HIGH, got {text!r}")
    if not sep or not 1000 <= low <= high < 2**31:
        raise ValueError(f"expected LOW-HIGH with 1000 <= LOW <= HIGH, got {text!r}")
    return low, high


def _env_range(name: str, default: tuple[int, int]) -> tuple[int, int]:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return parse_range(raw)
    except ValueError as exc:
        raise SystemExit(f"{name}: {exc}")


def _env_json(name: str) -> dict:
    raw = os.environ.get(name)
    if not raw:
        return {}
    import json
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be a JSON object: {exc}")
    if not isinstance(value, dict):
        raise SystemExit(f"{name} must be a JSON object")
    return value


@dataclass
class ServerSettings:
    data_dir: Path = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8765
    # Largest request body accepted (/api/conat/project: file content); bigger bodies get HTTP 413.
    max_body_bytes: int = 16 * 2**20
    # Largest body of a call that carries no file content (conat hub, v1, v2, v3): commands,
    # code cells and options.  A command bigger than 128 KiB cannot even be exec'd, and
    # CoCalc's own API routes accept 1 MB.  /api/conat/project keeps max_body_bytes
    # (writeTextFileToProject carries file content).
    max_call_body_bytes: int = 2 * 2**20
    # Reply bytes the hub may hold for clients that have not read them yet (api/replies.py);
    # over it, a large reply is answered 503 instead.
    reply_buffer_bytes: int = field(default_factory=lambda: int(_env_float(
        "PROJECTHUB_REPLY_BUFFER_BYTES", 256 * 2**20)))
    # How long a verified API key is trusted without re-checking its hash (seconds).
    key_cache_ttl: float = 2.0
    # Server-wide default limits per project (JSON object of ProjectLimits fields, sizes like "2G").
    default_limits: dict = field(default_factory=lambda: _env_json("PROJECTHUB_DEFAULT_LIMITS"))
    # Per-account caps (hub/account_limits.py: max_projects, max_running_projects; null =
    # unlimited), replacing the built-in defaults field by field.  Admins are exempt.
    account_limits: dict = field(default_factory=lambda: _env_json("PROJECTHUB_ACCOUNT_LIMITS"))
    # Linux uids handed to projects (as root).  Two servers on one machine need disjoint ranges.
    uid_range: tuple[int, int] = field(default_factory=lambda: _env_range("PROJECTHUB_UID_RANGE", (200000, 299999)))
    # Sandbox: "auto" (bwrap when it works), "bwrap", or "none".
    sandbox_mode: str = "auto"
    require_isolation: bool = False
    # cgroup subtree of this server's projects (/sys/fs/cgroup/<this>/<project_id>); a
    # `projecthub host` uses its own (cli_nats.host_cgroup_root) so hosts sharing a machine
    # never share a project's group (an instance run with compute_server_id)
    cgroup_root_name: str = "projecthub"
    # The software projects run (host/environment.py): None = the managed one in <data-dir>/env
    project_env: str | None = None
    project_rootfs: str | None = None
    # Bridge budget for a CoCalc call without a top-level timeout (CoCalc: 15 s).
    default_call_timeout_s: float = 15.0
    # Longest any single HTTP call may wait: stays under the official client's 120 s.
    # A blocking exec still running then becomes an async job (its id is in the error).
    max_call_timeout_s: float = field(default_factory=lambda: _env_float("PROJECTHUB_MAX_CALL_TIMEOUT_S", 110.0))
    # Stateless jupyter pool size per kernelspec in each project (CoCalc: 2).
    jupyter_pool_size: int = 1
    # A project's stateless pool and kernel zygote shrink to zero after this long without a
    # stateless call (seconds; tests set a few).
    jupyter_idle_s: float = field(default_factory=lambda: _env_float("PROJECTHUB_JUPYTER_IDLE_S", 180.0))
    # A terminal without an attached client is killed after this long (seconds;
    # docs/terminal.md); tests set a few.
    terminal_grace_s: float = field(default_factory=lambda: _env_float("PROJECTHUB_TERMINAL_GRACE_S", 600.0))
    # A deleted project's files are purged this long after its deletion (serve --purge-after).
    purge_after_s: float = 7 * 86400.0
    # Projects kept started ahead of create_project (host/spares.py): a new project's first
    # call then skips the ~150 ms sandbox + daemon start.  0 disables.
    spare_projects: int = field(default_factory=lambda: int(_env_float("PROJECTHUB_SPARE_PROJECTS", 1)))
    # How long an idle HTTP keep-alive connection stays open (seconds).  uvicorn's 5 s
    # default makes a client that calls every few seconds reconnect for most calls
    # (~0.5 ms more each); 75 s, like nginx, also outlasts the 60 s idle timeout of
    # common load balancers, so they never reuse a connection we are closing.
    keep_alive_s: int = field(default_factory=lambda: int(_env_float("PROJECTHUB_KEEP_ALIVE_S", 75)))
    # Repeated bad keys from one client address are slowed down after this many per minute.
    bad_key_limit_per_minute: int = 30
    # Observability (projecthub/observability/): one JSON line per HTTP request on the log
    # (serve --no-request-log), GET /metrics (serve --no-metrics; admin key on this port, or
    # no auth on metrics_port, bound to metrics_host).
    request_log: bool = True
    metrics: bool = True
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # projecthub hub: the hosts are other processes reached on NATS (cli_nats.py), not in-process
    nats_url: str | None = None
    nats_creds: str | None = None    # a `projecthub nats-config` credentials file

    # The store: a shared PostgreSQL (serve --database-url), else <data_dir>/hub.db (SQLite).
    database_url: str | None = field(default_factory=lambda: os.environ.get("PROJECTHUB_DATABASE_URL") or None)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'hub.db'}"
