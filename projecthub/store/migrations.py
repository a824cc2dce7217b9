"""Versioned schema migrations.

``schema_version`` holds one row per applied step.  ``migrate`` runs every step
newer than the highest recorded version, all in one transaction that first takes
the database's write lock (``BEGIN IMMEDIATE`` on SQLite, an advisory lock on
PostgreSQL).  A second process calling ``migrate`` at the same time therefore
waits, then sees the steps already recorded and does nothing.

Adding a step: append a ``Migration`` with the next version, and update
``schema.py`` (which always describes the latest schema).  Step 1 creates the
tables from ``schema.py``; if a later step changes one of those tables, first
freeze step 1 by copying the version-1 table definitions into this module, so a
fresh database still replays history step by step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Connection, Engine, func, insert, select, text

from . import schema
from .engine import BEGIN_MODE

# Arbitrary constant identifying our migration lock among PostgreSQL advisory locks.
_PG_ADVISORY_LOCK_KEY = 0x70726A68  # "prjh"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _v1_initial(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=schema.V1_TABLES, checkfirst=False)


def _v2_account_settings(conn: Connection) -> None:
    # a new table only: no version-1 table changes, so step 1 needs no freezing yet
    schema.metadata.create_all(conn, tables=schema.V2_TABLES, checkfirst=False)


MIGRATIONS: list[Migration] = [
    Migration(1, "accounts, projects, collaborators, api keys, hosts, settings", _v1_initial),
    Migration(2, "account_settings: per-account limit overrides, jupyter scratch project",
              _v2_account_settings),
]

LATEST_VERSION = MIGRATIONS[-1].version


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer projecthub than this one."""


def current_version(conn: Connection) -> int:
    if not conn.dialect.has_table(conn, schema.schema_version.name):
        return 0
    return int(conn.execute(select(func.max(schema.schema_version.c.version))).scalar() or 0)


def migrate(engine: Engine) -> int:
    """Bring the schema up to date; returns the resulting version."""
    _check_order()
    with engine.connect() as conn:
        conn.execution_options(**{BEGIN_MODE: "IMMEDIATE"})
        with conn.begin():
            if conn.dialect.name == "postgresql":
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
