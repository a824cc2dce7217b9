"""Engine construction: per-backend connection setup and transaction modes.

SQLite is the default backend and the one that needs care:

* WAL lets readers (the server) and a writer (e.g. the CLI) work at the same time;
  ``synchronous=NORMAL`` is the usual WAL pairing (durable across process crashes,
  may lose the last commit on power loss); ``busy_timeout`` makes a second writer
  wait for the lock instead of failing at once.
* pysqlite's own transaction handling starts transactions lazily and never for
  SELECTs, which makes read-then-write sequences race.  We switch it off and emit
  ``BEGIN`` ourselves, so a write transaction can be ``BEGIN IMMEDIATE``: it takes
  the write lock up front (waiting up to ``busy_timeout``), instead of failing with
  SQLITE_BUSY when it later tries to upgrade a read lock.

PostgreSQL (``postgresql://`` URLs, driven by psycopg 3) gets the same semantics:

* a write transaction (``BEGIN_MODE`` ``IMMEDIATE``) first takes one transaction-scoped
  advisory lock, ``pg_advisory_xact_lock(WRITE_LOCK_KEY)``: like SQLite's write lock it lets
  one writer at a time run its read-check-then-write (the owner's project count before an
  insert, the lowest free uid, a key's row before its rotation, an upsert), across every hub
  that shares the database, while readers never wait (MVCC).  Row locks would need a
  separate argument for each of those sequences, SERIALIZABLE a retry loop around each; one
  lock held for a few milliseconds per write is the exact equivalent and cannot miss one.
  Ids (keys, hosts) come from sequences, unique whatever the locking.
* ``lock_timeout`` plays ``busy_timeout``'s part: a writer waits that long, then fails.
* a lost or unreachable server surfaces as ``StoreUnavailable`` (one clear message, the
  API answers it as 503 / CoCalc ``{"error": ...}``); ``pool_pre_ping`` replaces dead pooled
  connections, so calls recover by themselves when the server is back.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.engine import make_url

# Execution option that selects how the next transaction starts (SQLite: BEGIN DEFERRED or
# IMMEDIATE; PostgreSQL: IMMEDIATE also takes the write lock).
BEGIN_MODE = "projecthub_begin_mode"
SQLITE_BUSY_TIMEOUT_MS = 5000

# Arbitrary constant naming our write lock among PostgreSQL advisory locks ("prjw").
WRITE_LOCK_KEY = 0x70726A77
PG_LOCK_TIMEOUT_MS = 5000       # like SQLite's busy_timeout
PG_CONNECT_TIMEOUT_S = 5        # an unreachable server fails a call in seconds, not minutes
# The server runs store calls on a few threads (hub/db.py); CLI commands use one connection.
# Beyond the pool, callers wait PG_POOL_TIMEOUT_S for a connection, then fail.
PG_POOL_SIZE = 8
PG_MAX_OVERFLOW = 8
PG_POOL_TIMEOUT_S = 10
PG_POOL_RECYCLE_S = 1800        # outlives no idle-connection reaper of a proxy for long


class StoreUnavailable(RuntimeError):
    """The database server cannot be reached (down, restarting, network) or is too busy
    to take a lock in time.  ``reason`` is the driver's message, for logs and the operator;
    ``str()`` is what an API user may read."""

    def __init__(self, reason: str) -> None:
        super().__init__("Error: the hub's database is unavailable; try again in a few seconds")
        self.reason = reason


def normalize_url(url: str | URL) -> URL:
    """``postgresql://`` and ``postgres://`` mean psycopg 3 (``postgresql+psycopg``);
    any other URL is returned parsed but unchanged."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def display_url(url: str | URL) -> str:
    """The URL without its password, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def make_engine(url: str) -> Engine:
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "postgresql":
        return _postgresql_engine(parsed)
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    return engine


def _postgresql_engine(url: URL) -> Engine:
    connect_args: dict[str, Any] = {
        "connect_timeout": PG_CONNECT_TIMEOUT_S,
        "application_name": "projecthub",
        # a server that vanished without closing the connection is noticed in ~1 min
        "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
    }
    engine = create_engine(
        url, connect_args=connect_args, pool_size=PG_POOL_SIZE, max_overflow=PG_MAX_OVERFLOW,
        pool_timeout=PG_POOL_TIMEOUT_S, pool_recycle=PG_POOL_RECYCLE_S, pool_pre_ping=True)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = {PG_LOCK_TIMEOUT_MS}")
        dbapi_connection.commit()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get(BEGIN_MODE, "DEFERRED")
        if mode == "IMMEDIATE":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")
        elif mode != "DEFERRED":
            raise ValueError(f"bad begin mode {mode!r}")

    @event.listens_for(engine, "handle_error")
    def _on_error(context: Any) -> BaseException | None:
        import psycopg   # only loaded with a PostgreSQL store
        original = context.original_exception
        if context.is_disconnect or isinstance(original, psycopg.OperationalError):
            # one line: psycopg's messages may span several (host tried, hint)
            reason = " ".join(str(original).split()) or type(original).__name__
            return StoreUnavailable(reason)
        return None

    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver level; transactions come from _on_begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL needs a lock another process may hold.
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get(BEGIN_MODE, "DEFERRED")
        if mode not in ("DEFERRED", "IMMEDIATE"):
            raise ValueError(f"bad SQLite begin mode {mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")
