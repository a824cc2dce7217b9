"""Versioned schema migrations.

``schema_version`` holds one row per applied step.  ``migrate`` runs every step
newer than the highest recorded version, all in one transaction that first takes
the database's write lock (``BEGIN IMMEDIATE`` on SQLite, an advisory lock on
PostgreSQL).  A second process calling ``migrate`` at the same time therefore
waits, then sees the steps already recorded and does nothing.

Adding a step: append a ``Migration`` with the next version, and update
``schema.py`` (which always describes the latest schema).  Step 1 creates the
version-1 tables from the frozen copy below (step 3 added columns to ``projects``),
so a fresh database replays history step by step; a step that changes a table
created by a later step freezes that step's tables the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    select,
    text,
    update,
)

from sqlalchemy.exc import OperationalError

from . import schema
from .engine import BEGIN_MODE
from .schema import UUID_LEN, JSONText, UTCDateTime

# Arbitrary constant identifying our migration lock among PostgreSQL advisory locks.
_PG_ADVISORY_LOCK_KEY = 0x70726A68  # "prjh"
# How long a hub starting beside another one's migration waits for it (then fails to start).
_PG_MIGRATION_WAIT_MS = 300_000

# -- version 1, frozen (migration 3 changed ``projects``): what step 1 creates, so a fresh
# database replays history step by step.  Never edit these; change schema.py and add a step.
_v1 = MetaData()
_V1_TABLES = [
    Table("accounts", _v1,
          Column("account_id", String(UUID_LEN), primary_key=True),
          Column("first_name", String(254), nullable=False, default=""),
          Column("last_name", String(254), nullable=False, default=""),
          Column("email", String(254), nullable=True, unique=True),
          Column("is_admin", Boolean, nullable=False, default=False),
          Column("banned", Boolean, nullable=False, default=False),
          Column("created", UTCDateTime, nullable=False)),
    Table("hosts", _v1,
          Column("host_id", Integer, primary_key=True, autoincrement=True),
          Column("name", String(254), nullable=False, unique=True),
          Column("address", Text, nullable=False, default=""),
          Column("created", UTCDateTime, nullable=False),
          Column("last_seen", UTCDateTime, nullable=True),
          sqlite_autoincrement=True),
    Table("projects", _v1,
          Column("project_id", String(UUID_LEN), primary_key=True),
          Column("title", Text, nullable=False, default=""),
          Column("description", Text, nullable=False, default=""),
          Column("created", UTCDateTime, nullable=False),
          Column("last_edited", UTCDateTime, nullable=False),
          Column("deleted", Boolean, nullable=False, default=False),
          Column("host_id", Integer, ForeignKey("hosts.host_id"), nullable=True),
          Column("state", String(32), nullable=False, default="stopped", server_default="stopped"),
          Column("state_time", UTCDateTime, nullable=True),
          Column("settings", JSONText, nullable=False, default=dict),
          Column("uid", Integer, nullable=True, unique=True)),
    Table("project_users", _v1,
          Column("project_id", String(UUID_LEN), ForeignKey("projects.project_id", ondelete="CASCADE"),
                 primary_key=True),
          Column("account_id", String(UUID_LEN), ForeignKey("accounts.account_id", ondelete="CASCADE"),
                 primary_key=True),
          Column("group", String(16), nullable=False),
          Column("hide", Boolean, nullable=False, default=False),
          Index("ix_project_users_account", "account_id")),
    Table("api_keys", _v1,
          Column("id", Integer, primary_key=True, autoincrement=True),
          Column("account_id", String(UUID_LEN), ForeignKey("accounts.account_id", ondelete="CASCADE"),
                 nullable=False),
          Column("project_id", String(UUID_LEN), ForeignKey("projects.project_id", ondelete="CASCADE"),
                 nullable=True),
          Column("name", String(128), nullable=False, default=""),
          Column("trunc", String(16), nullable=False),
          Column("hash", String(173), nullable=False),
          Column("created", UTCDateTime, nullable=False),
          Column("expire", UTCDateTime, nullable=True),
          Column("last_active", UTCDateTime, nullable=True),
          Index("ix_api_keys_account", "account_id"),
          Index("ix_api_keys_project", "project_id"),
          sqlite_autoincrement=True),
    Table("settings", _v1,
          Column("key", String(254), primary_key=True),
          Column("value", JSONText, nullable=True)),
]


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _v1_initial(conn: Connection) -> None:
    _v1.create_all(conn, tables=_V1_TABLES, checkfirst=False)


def _v2_account_settings(conn: Connection) -> None:
    # a new table only: no version-1 table changes, so step 1 needs no freezing yet
    schema.metadata.create_all(conn, tables=schema.V2_TABLES, checkfirst=False)


def _v3_project_lifecycle(conn: Connection) -> None:
    for name in schema.V3_PROJECT_COLUMNS:
        column = schema.projects.c[name]
        kind = column.type.compile(dialect=conn.dialect)
        conn.execute(text(f"ALTER TABLE projects ADD COLUMN {name} {kind}"))
    # Projects deleted before: their grace period for purging starts now.
    conn.execute(update(schema.projects).where(schema.projects.c.deleted.is_(True))
                 .values(deleted_time=datetime.now(timezone.utc)))


def _v4_orgs_messages(conn: Connection) -> None:
    # new tables only (hub/orgs.py, hub/messages.py): no earlier table changes
    schema.metadata.create_all(conn, tables=schema.V4_TABLES, checkfirst=False)


def _v5_file_history(conn: Connection) -> None:
    # new tables only (hub/history.py)
    schema.metadata.create_all(conn, tables=schema.V5_TABLES, checkfirst=False)


def _v6_host_state(conn: Connection) -> None:
    # hosts: "up"/"down" as the hubs see the heartbeats (hub/remote_host.py)
    kind = schema.hosts.c.state.type.compile(dialect=conn.dialect)
    conn.execute(text(f"ALTER TABLE hosts ADD COLUMN state {kind}"))


MIGRATIONS: list[Migration] = [
    Migration(1, "accounts, projects, collaborators, api keys, hosts, settings", _v1_initial),
    Migration(2, "account_settings: per-account limit overrides, jupyter scratch project",
              _v2_account_settings),
    Migration(3, "projects: state_reason, deleted_time, purged (idle stop, purge after delete)",
              _v3_project_lifecycle),
    Migration(4, "organizations, their admins and members, sign-in tokens, messages",
              _v4_orgs_messages),
    Migration(5, "file_history: sync.history of text written through the API", _v5_file_history),
    Migration(6, "hosts: state (up/down from the heartbeats)", _v6_host_state),
]

LATEST_VERSION = MIGRATIONS[-1].version


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer projecthub than this one."""


def current_version(conn: Connection) -> int:
    if not conn.dialect.has_table(conn, schema.schema_version.name):
        return 0
    return int(conn.execute(select(func.max(schema.schema_version.c.version))).scalar() or 0)


def migrate(engine: Engine) -> int:
    """Bring the schema up to date; returns the resulting version.

    Two processes starting on one SQLite store can both meet "database is locked" without
    SQLite's busy handler waiting (the first connection's switch to WAL, or a lock upgrade
    SQLite refuses at once to avoid a deadlock): the migration then runs again after a short
    pause; it is one transaction, so a failed attempt left nothing behind."""
    _check_order()
    for attempt in range(_LOCKED_RETRIES):
        try:
            return _migrate_once(engine)
        except OperationalError as exc:
            if "database is locked" not in str(exc) or attempt == _LOCKED_RETRIES - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


_LOCKED_RETRIES = 20


def _migrate_once(engine: Engine) -> int:
    postgresql = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        # PostgreSQL: not the store's write lock (BEGIN_MODE IMMEDIATE, with its short
        # lock_timeout) but a lock of its own that waits as long as another hub's migration
        # of a big database may take; the DDL takes the table locks it needs itself.
        conn.execution_options(**{BEGIN_MODE: "DEFERRED" if postgresql else "IMMEDIATE"})
        with conn.begin():
            if postgresql:
                conn.execute(text(f"SET LOCAL lock_timeout = {_PG_MIGRATION_WAIT_MS}"))
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_ADVISORY_LOCK_KEY})
            schema.schema_version.create(conn, checkfirst=True)
            version = current_version(conn)
            if version > LATEST_VERSION:
                raise SchemaTooNewError(
                    f"database schema is version {version}, this projecthub knows only up to "
                    f"{LATEST_VERSION}; upgrade projecthub"
                )
            for step in MIGRATIONS:
                if step.version <= version:
                    continue
                step.apply(conn)
                conn.execute(
                    insert(schema.schema_version).values(
                        version=step.version, applied=datetime.now(timezone.utc)
                    )
                )
                version = step.version
    return version


def _check_order() -> None:
    versions = [m.version for m in MIGRATIONS]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"migration versions must be 1..n in order, got {versions}")
