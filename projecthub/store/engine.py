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
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event

# Execution option that selects how the next transaction starts on SQLite.
BEGIN_MODE = "projecthub_begin_mode"
SQLITE_BUSY_TIMEOUT_MS = 5000


def make_engine(url: str) -> Engine:
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
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
