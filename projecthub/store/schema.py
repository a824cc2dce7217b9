"""Table definitions (the *latest* schema version) and portable column types.

Only portable types are used so the same definitions work on SQLite and PostgreSQL:
uuids are 36-character strings, JSON is stored as text we encode ourselves, and
timestamps are naive UTC in the database but timezone-aware UTC in Python.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

UUID_LEN = 36


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC without a zone (portable, sorts correctly as text on SQLite) and
    hands back aware UTC datetimes.  Naive input is taken to already be UTC."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc)


class JSONText(TypeDecorator[Any]):
    """JSON in a TEXT column: avoids depending on each backend's JSON type."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return json.dumps(value, separators=(",", ":"), sort_keys=True)

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return json.loads(value)


metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied", UTCDateTime, nullable=False),
)

accounts = Table(
    "accounts",
    metadata,
    Column("account_id", String(UUID_LEN), primary_key=True),
    Column("first_name", String(254), nullable=False, default=""),
    Column("last_name", String(254), nullable=False, default=""),
    # UNIQUE allows many NULLs on both SQLite and PostgreSQL.
    Column("email", String(254), nullable=True, unique=True),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("banned", Boolean, nullable=False, default=False),
    Column("created", UTCDateTime, nullable=False),
)

projects = Table(
    "projects",
    metadata,
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
    # Linux uid of the project; UNIQUE still admits many NULLs.
    Column("uid", Integer, nullable=True, unique=True),
    # Migration 3 (project lifecycle): why the project is in its state (e.g. stopped after
    # idle_timeout_s), when it was deleted, and when its files were purged (a deleted
    # project's files stay for --purge-after; hub/lifecycle.py).
    Column("state_reason", Text, nullable=True),
    Column("deleted_time", UTCDateTime, nullable=True),
    Column("purged", UTCDateTime, nullable=True),
)

project_users = Table(
    "project_users",
    metadata,
    Column(
        "project_id",
        String(UUID_LEN),
        ForeignKey("projects.project_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column(
        "account_id",
        String(UUID_LEN),
        ForeignKey("accounts.account_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("group", String(16), nullable=False),  # 'owner' | 'collaborator'
    Column("hide", Boolean, nullable=False, default=False),
    Index("ix_project_users_account", "account_id"),
)

api_keys = Table(
    "api_keys",
    metadata,
    # AUTOINCREMENT on SQLite: never reuse an id, since ids are encoded into secrets.
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "account_id",
        String(UUID_LEN),
        ForeignKey("accounts.account_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column(
        "project_id",
        String(UUID_LEN),
        ForeignKey("projects.project_id", ondelete="CASCADE"),
        nullable=True,
    ),
    Column("name", String(128), nullable=False, default=""),
    Column("trunc", String(16), nullable=False),
    Column("hash", String(173), nullable=False),
    Column("created", UTCDateTime, nullable=False),
    Column("expire", UTCDateTime, nullable=True),
    Column("last_active", UTCDateTime, nullable=True),
    Index("ix_api_keys_account", "account_id"),
    Index("ix_api_keys_project", "project_id"),
    sqlite_autoincrement=True,
)

hosts = Table(
    "hosts",
    metadata,
    Column("host_id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(254), nullable=False, unique=True),
    Column("address", Text, nullable=False, default=""),
    Column("created", UTCDateTime, nullable=False),
    Column("last_seen", UTCDateTime, nullable=True),
    # "up" or "down" as the hubs last saw its heartbeat (migration 6); NULL: never judged
    Column("state", String(16), nullable=True),
    sqlite_autoincrement=True,
)

settings = Table(
    "settings",
    metadata,
    Column("key", String(254), primary_key=True),
    Column("value", JSONText, nullable=True),
)

# Per-account state that is not CoCalc's account row (migration 2): limit overrides set by
# the operator (``projecthub account limits``) and the account's own Jupyter API scratch
# project (hub ``jupyter.execute`` without a project_id).
account_settings = Table(
    "account_settings",
    metadata,
    Column(
        "account_id",
        String(UUID_LEN),
        ForeignKey("accounts.account_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("limits", JSONText, nullable=False, default=dict),
    Column("jupyter_project_id", String(UUID_LEN), nullable=True),
)

# -- migration 4: organizations, one-time sign-in tokens, messages (hub/orgs.py, hub/messages.py)

ORG_NAME_MAX = 39   # CoCalc's limit (and GitHub's for a login name)

organizations = Table(
    "organizations",
    metadata,
    Column("organization_id", String(UUID_LEN), primary_key=True),
    # lower case [a-z0-9_-]; CoCalc's rule: unique, and it can never change
    Column("name", String(ORG_NAME_MAX), nullable=False, unique=True),
    Column("title", Text, nullable=False, default=""),
    Column("description", Text, nullable=False, default=""),
    Column("email_address", String(254), nullable=False, default=""),
    Column("link", Text, nullable=False, default=""),
    Column("created", UTCDateTime, nullable=False),
)

# Admins of an organization need not be members of it (CoCalc's admin_account_ids).
organization_admins = Table(
    "organization_admins",
    metadata,
    Column("organization_id", String(UUID_LEN),
           ForeignKey("organizations.organization_id", ondelete="CASCADE"), primary_key=True),
    Column("account_id", String(UUID_LEN),
           ForeignKey("accounts.account_id", ondelete="CASCADE"), primary_key=True),
    Index("ix_organization_admins_account", "account_id"),
)

# An account is a member of at most one organization (CoCalc's accounts.org).
organization_members = Table(
    "organization_members",
    metadata,
    Column("account_id", String(UUID_LEN),
           ForeignKey("accounts.account_id", ondelete="CASCADE"), primary_key=True),
    Column("organization_id", String(UUID_LEN),
           ForeignKey("organizations.organization_id", ondelete="CASCADE"), nullable=False),
    Column("added", UTCDateTime, nullable=False),
    Index("ix_organization_members_org", "organization_id"),
)

# org.createToken: only a SHA-256 of the token is kept; a token is redeemed at most once.
sign_in_tokens = Table(
    "sign_in_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("account_id", String(UUID_LEN),
           ForeignKey("accounts.account_id", ondelete="CASCADE"), nullable=False),
    Column("created_by", String(UUID_LEN), nullable=False),
    Column("created", UTCDateTime, nullable=False),
    Column("expire", UTCDateTime, nullable=False),
    Column("used", UTCDateTime, nullable=True),
    Index("ix_sign_in_tokens_account", "account_id"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("from_id", String(UUID_LEN),
           ForeignKey("accounts.account_id", ondelete="CASCADE"), nullable=False),
    Column("to_ids", JSONText, nullable=False),
    Column("subject", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("sent", UTCDateTime, nullable=False),
    Column("thread_id", Integer, nullable=True),
    # org.message: sent to every member of this organization (to_ids is then empty: each
    # member's state row says who received it, and nobody is shown the member list)
    Column("organization_id", String(UUID_LEN), nullable=True),
    Index("ix_messages_from_sent", "from_id", "sent"),
    sqlite_autoincrement=True,
)

# One row per (message, account that sees it): the sender and every recipient, each with
# their own read/saved/starred/liked/deleted flags.
message_states = Table(
    "message_states",
    metadata,
    Column("message_id", Integer, ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True),
    Column("account_id", String(UUID_LEN),
           ForeignKey("accounts.account_id", ondelete="CASCADE"), primary_key=True),
    Column("recipient", Boolean, nullable=False),
    Column("read", Boolean, nullable=False, default=False),
    Column("saved", Boolean, nullable=False, default=False),
    Column("starred", Boolean, nullable=False, default=False),
    Column("liked", Boolean, nullable=False, default=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Index("ix_message_states_account", "account_id", "message_id"),
)

# Migration 1 creates its own frozen copy of the version-1 tables (migrations.py).
# Tables created by migration 2.
V2_TABLES = [account_settings]
# Columns migration 3 adds to ``projects``.
V3_PROJECT_COLUMNS = ["state_reason", "deleted_time", "purged"]
# Tables created by migration 4.
V4_TABLES = [organizations, organization_admins, organization_members, sign_in_tokens,
             messages, message_states]

# sync.history (hub/history.py): what writes through the API did to a text file.  One row
# per recorded write (a compressed diff-match-patch patch, as JSON text) and one head per
# file holding its last recorded text, the base of the next patch.  Bounded per file and
# per project by hub/history.py.
file_history = Table(
    "file_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project_id", String(UUID_LEN), nullable=False),
    Column("path", Text, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("time", UTCDateTime, nullable=False),
    Column("account_id", String(UUID_LEN), nullable=True),
    Column("patch", Text, nullable=False),
    Column("is_snapshot", Boolean, nullable=False, default=False),
    Index("ix_file_history_file", "project_id", "path", "seq"),
    sqlite_autoincrement=True,
)

file_history_heads = Table(
    "file_history_heads",
    metadata,
    Column("project_id", String(UUID_LEN), primary_key=True),
    Column("path", Text, primary_key=True),
    Column("text", Text, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("entries", Integer, nullable=False),
    Column("bytes", Integer, nullable=False),     # patches + text, for the per-project bound
    Column("updated", UTCDateTime, nullable=False),
)

# Tables created by migration 5.
V5_TABLES = [file_history, file_history_heads]
