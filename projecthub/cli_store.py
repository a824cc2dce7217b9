"""``projecthub store migrate --to postgresql://...``: copy the embedded SQLite store of a data
dir into PostgreSQL, for growing from ``serve`` to hubs sharing one database (docs/deploy.md).

Every table is copied in foreign-key order inside one transaction on the target (so a failure
leaves it as it was), keeping every id (account, project, key ids: the keys' secrets embed
them), then PostgreSQL's sequences are moved past the copied ids so the next key or host gets
a fresh one.  A target that already holds a store is refused unless ``--replace`` is given
(which deletes its rows first).  The source is read in one read transaction: a consistent
snapshot even while a server runs, but writes made after it are not copied, so stop the
server first.  Prints one JSON object, like every admin command.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

_BATCH = 1000


def add_store_parser(sub: Any, open_sqlite: Callable[[str | None], Any],
                     open_database: Callable[[str], Any]) -> None:
    """``open_sqlite(data_dir)`` and ``open_database(url)`` are cli.py's (``_store`` with its
    one-line errors; passed in, as in cli_org.py, so cli.py is not imported twice)."""
    store = sub.add_parser("store", help="copy the embedded SQLite store to PostgreSQL",
                           description="Work on the store itself (see docs/deploy.md).")
    commands = store.add_subparsers(dest="store_command", required=True, metavar="COMMAND")
    migrate = commands.add_parser(
        "migrate", help="copy a data dir's SQLite store into a PostgreSQL database",
        description="Copy every table of the data dir's SQLite store (hub.db) into the PostgreSQL "
                    "database --to, keeping all ids, in one transaction; stop the server first. "
                    "A target that already holds accounts, projects or keys is refused unless "
                    "--replace is given. Prints one JSON object.")
    migrate.add_argument("--data-dir", default=None, metavar="DIR",
                         help="the data directory whose store is copied (default: $PROJECTHUB_DATA_DIR, "
                              "else ~/.local/share/projecthub)")
    migrate.add_argument("--to", required=True, metavar="URL",
                         help="the target, postgresql://USER:PASSWORD@HOST:PORT/DB (created tables "
                              "if the database is empty)")
    migrate.add_argument("--replace", action="store_true",
                         help="delete what the target store holds before copying")
    migrate.set_defaults(func=lambda args: cmd_store_migrate(args, open_sqlite, open_database))


def cmd_store_migrate(args: argparse.Namespace, open_sqlite: Callable[[str | None], Any],
                      open_database: Callable[[str], Any]) -> None:
    from .store.engine import display_url, normalize_url
    try:
        if normalize_url(args.to).get_backend_name() != "postgresql":
            raise ValueError
    except Exception:   # noqa: BLE001 - sqlalchemy's ArgumentError or the check above: one line
        raise ValueError("--to must be a postgresql://USER:PASSWORD@HOST:PORT/DB URL") from None
    source = open_sqlite(args.data_dir)
    try:
        target = open_database(args.to)   # reachable, migrated to the same schema version
        try:
            copied = copy_store(source.engine, target.engine, replace=args.replace)
        finally:
            target.close()
    finally:
        source.close()
    from .store import LATEST_VERSION
    print(json.dumps({"migrated": True, "from": str(source.url), "to": display_url(args.to),
                      "schema_version": LATEST_VERSION, "rows": copied}))


def copy_store(source: Any, target: Any, *, replace: bool = False) -> dict[str, int]:
    """Copy every table but ``schema_version`` from engine ``source`` to engine ``target``
    (both migrated to the latest schema); returns the rows copied per table.  Raises
    ValueError, changing nothing, if the target holds rows and ``replace`` is false."""
    from sqlalchemy import delete, func, insert, select

    from .store.engine import BEGIN_MODE
    from .store.schema import metadata, schema_version
    tables = [t for t in metadata.sorted_tables if t is not schema_version]
    copied: dict[str, int] = {}
    with source.connect() as src, src.begin(), target.connect() as dst:
        dst.execution_options(**{BEGIN_MODE: "IMMEDIATE"})   # the store's write lock
        with dst.begin():
            held = {t.name: n for t in tables
                    if (n := int(dst.execute(select(func.count()).select_from(t)).scalar_one()))}
            if held and not replace:
                summary = ", ".join(f"{n} {name}" for name, n in held.items())
                raise ValueError(f"the target database already holds a projecthub store ({summary}): "
                                 "--replace deletes it before copying")
            for table in reversed(tables):   # children before their parents
                dst.execute(delete(table))
            for table in tables:
                rows = src.execute(select(table)).mappings()
                count = 0
                while batch := [dict(r) for r in rows.fetchmany(_BATCH)]:
                    dst.execute(insert(table), batch)
                    count += len(batch)
                copied[table.name] = count
            for table in tables:   # sequences past the copied ids: the next insert gets a new one
                keys = list(table.primary_key.columns)
                if len(keys) == 1 and keys[0].type.python_type is int:
                    _reset_sequence(dst, table.name, keys[0].name)
    return copied


def _reset_sequence(conn: Any, table: str, column: str) -> None:
    from sqlalchemy import text
    # names from our own schema.py, never from input
    sequence = conn.execute(text("SELECT pg_get_serial_sequence(:t, :c)"),
                            {"t": table, "c": column}).scalar()
    if sequence is None:   # an integer key without a sequence (ids made by the code)
        return
    conn.execute(text(f'SELECT setval(:s, COALESCE((SELECT MAX("{column}") FROM "{table}"), 1), '
                      f'(SELECT MAX("{column}") FROM "{table}") IS NOT NULL)'), {"s": sequence})
