"""The hub's registry: accounts, projects, collaborators, API keys, hosts, settings.

Every public method is synchronous and runs in its own short transaction, so the
server can call the store from one dedicated worker thread and the CLI can call it
directly, even while the server runs against the same SQLite file.  Rows come back
as plain dicts with timezone-aware UTC datetimes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Connection, Engine, Row, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..auth import keys
from . import migrations
from .bounds import API_KEY_NAME_MAX, check_text
from .engine import BEGIN_MODE, make_engine
from .history import FileHistoryStore
from .messages import MessageStore
from .orgs import OrgStore
from .revocations import RevocationCounter, counter_path
from .schema import account_settings, accounts, api_keys, hosts, project_users, projects, settings

API_KEYS_PER_ACCOUNT: Final = 100_000
GROUPS: Final = ("owner", "collaborator")
# SQLite allows far more bound parameters nowadays, but old builds stop at 999.
_IN_CHUNK: Final = 500
_UID_ATTEMPTS: Final = 5
# State of a pre-started project that no account owns yet (see Host spares).
SPARE_STATE: Final = "spare"

_UNSET: Any = object()

_PROJECT_FIELDS: Final = frozenset(
    {"title", "description", "last_edited", "deleted", "host_id", "state", "state_time",
     "settings", "uid", "state_reason", "deleted_time", "purged"}
)
# Every api_keys column except the hash: what callers may show or send.
_PUBLIC_KEY_COLUMNS: Final = [c for c in api_keys.c if c.name != "hash"]


class UidRangeExhausted(RuntimeError):
    """No free Linux uid is left in the configured range."""


class AccountLimitReached(Exception):
    """Creating one more project would exceed the owner's ``max_projects``."""

    def __init__(self, name: str, limit: int) -> None:
        super().__init__(f"account limit {name}={limit} reached")
        self.name, self.limit = name, limit


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _is_uuid(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _chunks(items: list[str], size: int = _IN_CHUNK) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _as_dict(row: Row[Any]) -> dict[str, Any]:
    return dict(row._mapping)


class Store(OrgStore, MessageStore, FileHistoryStore):
    """Registry backed by SQLite (default) or PostgreSQL, via SQLAlchemy Core.
    Organizations and sign-in tokens: ``orgs.py``; messages and account search: ``messages.py``;
    the recorded writes behind sync.history: ``history.py``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine = make_engine(url)
        # An attribute (not only the constant) so tests can lower it.
        self.api_key_limit: int = API_KEYS_PER_ACCOUNT
        # Bumped after every change that takes access away, for the key caches of every
        # process on this store (revocations.py); ``revocation_count`` is the cheap read.
        self.revocations = RevocationCounter(counter_path(url))
        # How many access-removing changes this store has seen (0 without a counter file): a
        # key cache that saw another value must drop what it holds.  The counter's own bound
        # method, so the check on every request is a single call.
        self.revocation_count: Callable[[], int] = self.revocations.value
        # ``changed_elsewhere(seen, now)``: whether another process made any of those changes
        # (this process's own paths drop what they change from its key cache themselves).
        self.revoked_elsewhere: Callable[[int, int], bool] = self.revocations.changed_elsewhere

    @classmethod
    def for_data_dir(cls, path: str | Path) -> Store:
        """The SQLite store ``<path>/hub.db``; creates ``path`` if needed."""
        directory = Path(path).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        # An absolute path after "sqlite:///" gives the four slashes SQLAlchemy expects.
        return cls(f"sqlite:///{directory / 'hub.db'}")

    @property
    def engine(self) -> Engine:
        return self._engine

    def migrate(self) -> int:
        """Apply pending schema migrations; returns the schema version."""
        return migrations.migrate(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    # -- transactions ---------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        # IMMEDIATE: take the write lock before the first read (SQLite's, or on PostgreSQL
        # the advisory lock engine.py takes for every hub on the database), so a
        # read-check-then-write sequence cannot be invalidated by another writer.
        with self._engine.connect() as conn:
            conn.execution_options(**{BEGIN_MODE: "IMMEDIATE"})
            with conn.begin():
                yield conn

    # -- accounts -------------------------------------------------------------

    def create_account(
        self,
        first_name: str = "",
        last_name: str = "",
        email: str | None = None,
        is_admin: bool = False,
    ) -> str:
        account_id = str(uuid.uuid4())
        check_text("first_name", first_name)
        check_text("last_name", last_name)
        if email is not None:
            email = check_text("email", email.strip().lower()) or None
        try:
            with self._write() as conn:
                conn.execute(
                    insert(accounts).values(
                        account_id=account_id,
                        first_name=first_name,
                        last_name=last_name,
                        email=email,
                        is_admin=is_admin,
                        banned=False,
                        created=utcnow(),
                    )
                )
        except IntegrityError:
            raise ValueError(f"an account with email {email} already exists") from None
        return account_id

    def get_account(self, account_id: str) -> dict[str, Any] | None:
        if not _is_uuid(account_id):
            return None
        with self._read() as conn:
            row = conn.execute(select(accounts).where(accounts.c.account_id == account_id)).first()
        return _as_dict(row) if row else None

    def get_account_by_email(self, email: str) -> dict[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(
                select(accounts).where(accounts.c.email == email.strip().lower())
            ).first()
        return _as_dict(row) if row else None

    def list_accounts(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(select(accounts).order_by(accounts.c.created, accounts.c.account_id))
            return [_as_dict(r) for r in rows]

    def count_accounts(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(accounts)).scalar_one())

    def set_banned(self, account_id: str, banned: bool) -> None:
        with self._write() as conn:
            result = conn.execute(
                update(accounts).where(accounts.c.account_id == account_id).values(banned=banned)
            )
        if result.rowcount == 0:
            raise ValueError(f"no account with id {account_id}")
        self.revocations.bump()

    def set_disabled(self, account_id: str, disabled: bool) -> None:
        """Disable or enable an account: CoCalc's ``banned`` flag, which the key resolver
        refuses (a disabled account's keys stop working; its projects and keys are kept)."""
        self.set_banned(account_id, disabled)

    def set_admin(self, account_id: str, is_admin: bool) -> None:
        with self._write() as conn:
            result = conn.execute(
                update(accounts).where(accounts.c.account_id == account_id).values(is_admin=is_admin)
            )
        if result.rowcount == 0:
            raise ValueError(f"no account with id {account_id}")
        self.revocations.bump()   # cached identities carry is_admin

    def get_names(self, account_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        """CoCalc ``system.getNames``: ``{id: {"first_name", "last_name"}}``.

        Empty names read "No"/"Name"; unknown or malformed ids read "Deleted"/"User".
        Non-string entries are skipped (they cannot be JSON object keys).
        """
        wanted = [a for a in dict.fromkeys(account_ids) if isinstance(a, str)]
        result = {a: {"first_name": "Deleted", "last_name": "User"} for a in wanted}
        valid = [a for a in wanted if _is_uuid(a)]
        with self._read() as conn:
            for chunk in _chunks(valid):
                rows = conn.execute(
                    select(accounts.c.account_id, accounts.c.first_name, accounts.c.last_name)
                    .where(accounts.c.account_id.in_(chunk))
                )
                for account_id, first, last in rows:
                    result[account_id] = {
                        "first_name": first or "No",
                        "last_name": last or "Name",
                    }
        return result

    # -- projects -------------------------------------------------------------

    def create_project(
        self,
        owner_id: str,
        title: str = "",
        description: str = "",
        settings: dict[str, Any] | None = None,
        *,
        max_owned: int | None = None,
        hide: bool = False,
    ) -> str:
        """A new stopped project owned by ``owner_id``.  With ``max_owned``, refuses
        (``AccountLimitReached``) if the owner already owns that many, counted in the
        same write transaction, so concurrent creates cannot overshoot."""
        check_text("title", title)
        check_text("description", description)
        project_id = str(uuid.uuid4())
        now = utcnow()
        with self._write() as conn:
            self._require_account(conn, owner_id)
            self._check_owned(conn, owner_id, max_owned)
            conn.execute(
                insert(projects).values(
                    project_id=project_id,
                    title=title,
                    description=description,
                    created=now,
                    last_edited=now,
                    deleted=False,
                    state="stopped",
                    state_time=now,
                    settings=dict(settings or {}),
                )
            )
            conn.execute(
                insert(project_users).values(
                    project_id=project_id, account_id=owner_id, group="owner", hide=hide
                )
            )
        return project_id

    # -- spare projects: pre-started sandboxes waiting for a create_project ---------

    def create_spare_project(self) -> str:
        """A project row in state ``spare``: no users (so nobody sees it), a uid of its own
        once the host allocates one.  ``claim_spare`` turns it into a real project."""
        project_id = str(uuid.uuid4())
        now = utcnow()
        with self._write() as conn:
            conn.execute(insert(projects).values(
                project_id=project_id, title="", description="", created=now, last_edited=now,
                deleted=False, state=SPARE_STATE, state_time=now, settings={}))
        return project_id

    def claim_spare(self, project_id: str, owner_id: str, title: str = "",
                    description: str = "", *, max_owned: int | None = None) -> bool:
        """Make a spare the owner's new (stopped) project; False if it is no spare (any more).
        ``max_owned`` as in ``create_project``."""
        check_text("title", title)
        check_text("description", description)
        now = utcnow()
        with self._write() as conn:
            self._require_account(conn, owner_id)
            self._check_owned(conn, owner_id, max_owned)
            done = conn.execute(
                update(projects)
                .where(projects.c.project_id == project_id, projects.c.state == SPARE_STATE)
                .values(title=title, description=description, created=now, last_edited=now,
                        state="stopped", state_time=now))
            if done.rowcount != 1:
                return False
            conn.execute(insert(project_users).values(
                project_id=project_id, account_id=owner_id, group="owner", hide=False))
        return True

    def list_spare_projects(self) -> list[str]:
        with self._read() as conn:
            return list(conn.execute(
                select(projects.c.project_id).where(projects.c.state == SPARE_STATE)).scalars())

    def discard_spare(self, project_id: str) -> None:
        """Delete a spare's row (never a claimed project's)."""
        with self._write() as conn:
            conn.execute(delete(projects).where(projects.c.project_id == project_id,
                                                projects.c.state == SPARE_STATE))

    def get_project(self, project_id: str) -> dict[str, Any] | None:
        if not _is_uuid(project_id):
            return None
        with self._read() as conn:
            row = conn.execute(select(projects).where(projects.c.project_id == project_id)).first()
            if row is None or row.state == SPARE_STATE:   # nobody's project yet: invisible
                return None
            return self._with_users(conn, [_as_dict(row)])[0]

    def update_project(self, project_id: str, **fields: Any) -> None:
        """Set any of: title, description, last_edited, deleted, host_id, state,
        state_time, settings (a dict, replaces the old one), uid, state_reason,
        deleted_time, purged."""
        unknown = set(fields) - _PROJECT_FIELDS
        if unknown:
            raise ValueError(f"cannot update project fields {sorted(unknown)}")
        if not fields:
            return
        for name in ("title", "description"):
            if name in fields:
                check_text(name, fields[name])
        if "settings" in fields:
            fields["settings"] = dict(fields["settings"] or {})
        try:
            with self._write() as conn:
                result = conn.execute(
                    update(projects).where(projects.c.project_id == project_id).values(**fields)
                )
        except IntegrityError as exc:
            raise ValueError(f"cannot update project {project_id}: {exc.orig}") from None
        if result.rowcount == 0:
            raise ValueError(f"no project with id {project_id}")

    def delete_project(self, project_id: str) -> None:
        """Mark deleted (CoCalc keeps the row; so do we).  ``deleted_time`` starts the grace
        period after which the project's files are purged (the first deletion counts)."""
        with self._write() as conn:
            result = conn.execute(update(projects).where(projects.c.project_id == project_id)
                                  .values(deleted=True))
            if result.rowcount == 0:
                raise ValueError(f"no project with id {project_id}")
            conn.execute(update(projects).where(projects.c.project_id == project_id,
                                                projects.c.deleted_time.is_(None))
                         .values(deleted_time=utcnow()))

    def unpurged_deleted_projects(self, deleted_before: datetime | None = None) -> list[dict[str, Any]]:
        """Deleted projects whose files have not been purged yet, oldest deletion first
        (``project_id``, ``deleted_time``); only those deleted before ``deleted_before`` if given."""
        query = (select(projects.c.project_id, projects.c.deleted_time)
                 .where(projects.c.deleted.is_(True), projects.c.purged.is_(None),
                        projects.c.state != SPARE_STATE)
                 .order_by(projects.c.deleted_time, projects.c.project_id))
        if deleted_before is not None:
            query = query.where(projects.c.deleted_time <= deleted_before)
        with self._read() as conn:
            return [_as_dict(r) for r in conn.execute(query)]

    def project_settings(self, project_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """``settings`` of each of ``project_ids`` that exists (one query per 500 ids)."""
        out: dict[str, dict[str, Any]] = {}
        ids = [p for p in dict.fromkeys(project_ids) if _is_uuid(p)]
        with self._read() as conn:
            for chunk in _chunks(ids):
                for row in conn.execute(select(projects.c.project_id, projects.c.settings)
                                        .where(projects.c.project_id.in_(chunk))):
                    out[row.project_id] = dict(row.settings or {})
        return out

    def list_projects(
        self,
        account_id: str,
        *,
        recent_days: float | None = 42,
        limit: int | None = 300,
        project_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Projects where ``account_id`` is owner or collaborator, newest
        ``last_edited`` first.  Defaults match CoCalc's ``projects`` query (6 weeks,
        300); ``recent_days=None, limit=None`` is ``projects_all``."""
        if not _is_uuid(account_id) or (project_id is not None and not _is_uuid(project_id)):
            return []
        query = (
            select(projects)
            .join(project_users, project_users.c.project_id == projects.c.project_id)
            .where(project_users.c.account_id == account_id)
            .order_by(projects.c.last_edited.desc(), projects.c.project_id)
        )
        if project_id is not None:
            query = query.where(projects.c.project_id == project_id)
        if recent_days is not None:
            query = query.where(projects.c.last_edited >= utcnow() - timedelta(days=recent_days))
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            rows = [_as_dict(r) for r in conn.execute(query)]
            return self._with_users(conn, rows)

    def list_all_projects(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = [_as_dict(r) for r in conn.execute(select(projects).order_by(projects.c.created))]
            return self._with_users(conn, rows)

    def allocate_uid(self, project_id: str, lo: int, hi: int) -> int:
        """The project's Linux uid: the stored one, else the lowest free uid in
        [lo, hi], recorded in the same write transaction so two callers cannot
        both take it."""
        if lo > hi:
            raise ValueError(f"empty uid range [{lo}, {hi}]")
        # Writers are serialised (BEGIN IMMEDIATE, PostgreSQL's write lock), so the first
        # attempt wins; the UNIQUE constraint stays the last word should that ever change
        # (a store written by something else): the loser tries again against the new state.
        for _ in range(_UID_ATTEMPTS - 1):
            try:
                return self._allocate_uid_once(project_id, lo, hi)
            except IntegrityError:
                continue
        return self._allocate_uid_once(project_id, lo, hi)

    def _allocate_uid_once(self, project_id: str, lo: int, hi: int) -> int:
        with self._write() as conn:
            current = conn.execute(
                select(projects.c.uid).where(projects.c.project_id == project_id)
            ).first()
            if current is None:
                raise ValueError(f"no project with id {project_id}")
            if current.uid is not None:
                return int(current.uid)
            taken = conn.execute(
                select(projects.c.uid)
                .where(projects.c.uid >= lo, projects.c.uid <= hi)
                .order_by(projects.c.uid)
            ).scalars()
            uid = lo
            for used in taken:
                if used != uid:
                    break
                uid += 1
            if uid > hi:
                raise UidRangeExhausted(f"no free project uid left in [{lo}, {hi}]")
            conn.execute(update(projects).where(projects.c.project_id == project_id).values(uid=uid))
            return uid

    # -- ownership and per-account state --------------------------------------

    def project_owner(self, project_id: str) -> str | None:
        """The owner's account id (CoCalc projects have exactly one owner)."""
        if not _is_uuid(project_id):
            return None
        with self._read() as conn:
            return conn.execute(
                select(project_users.c.account_id)
                .where(project_users.c.project_id == project_id, project_users.c.group == "owner")
                .order_by(project_users.c.account_id)
            ).scalars().first()

    def owned_project_ids(self, account_id: str) -> list[str]:
        """Ids of the live (not deleted) projects ``account_id`` owns, scratch project included."""
        if not _is_uuid(account_id):
            return []
        with self._read() as conn:
            return list(conn.execute(self._owned_query(account_id)).scalars())

    def count_owned_projects(self, account_id: str) -> int:
        """What ``max_projects`` counts: live owned projects, minus the Jupyter scratch one."""
        with self._read() as conn:
            return self._owned_count(conn, account_id)

    def get_account_limits(self, account_id: str) -> dict[str, Any]:
        """The operator's per-account limit overrides (``{}`` if none)."""
        if not _is_uuid(account_id):
            return {}
        with self._read() as conn:
            value = conn.execute(
                select(account_settings.c.limits).where(account_settings.c.account_id == account_id)
            ).scalar()
        return dict(value or {})

    def set_account_limits(self, account_id: str, overrides: dict[str, Any]) -> None:
        """Replace the account's limit overrides."""
        self._upsert_account_settings(account_id, limits=dict(overrides))

    def get_jupyter_project(self, account_id: str) -> str | None:
        """The account's Jupyter API scratch project, if one was made."""
        if not _is_uuid(account_id):
            return None
        with self._read() as conn:
            return conn.execute(
                select(account_settings.c.jupyter_project_id)
                .where(account_settings.c.account_id == account_id)
            ).scalar()

    def create_jupyter_project(self, account_id: str, title: str,
                               settings: dict[str, Any] | None = None) -> str:
        """The account's scratch project: the recorded one if it is still alive, else a new
        hidden project it owns (not counted by ``max_projects``), recorded in the same
        transaction so two first calls cannot make two."""
        now = utcnow()
        with self._write() as conn:
            self._require_account(conn, account_id)
            current = conn.execute(
                select(projects.c.project_id)
                .join(account_settings, account_settings.c.jupyter_project_id == projects.c.project_id)
                .where(account_settings.c.account_id == account_id, projects.c.deleted.is_(False))
            ).scalar()
            if current is not None:
                return str(current)
            project_id = str(uuid.uuid4())
            conn.execute(insert(projects).values(
                project_id=project_id, title=check_text("title", title), description="",
                created=now, last_edited=now, deleted=False, state="stopped", state_time=now,
                settings=dict(settings or {})))
            conn.execute(insert(project_users).values(
                project_id=project_id, account_id=account_id, group="owner", hide=True))
            self._upsert_account_settings(account_id, conn=conn, jupyter_project_id=project_id)
        return project_id

    def _upsert_account_settings(self, account_id: str, conn: Connection | None = None,
                                 **values: Any) -> None:
        if conn is None:
            with self._write() as own:
                self._upsert_account_settings(account_id, conn=own, **values)
            return
        self._require_account(conn, account_id)
        done = conn.execute(update(account_settings)
                            .where(account_settings.c.account_id == account_id).values(**values))
        if done.rowcount == 0:
            conn.execute(insert(account_settings).values(
                account_id=account_id, **{"limits": {}, "jupyter_project_id": None, **values}))

    @staticmethod
    def _owned_query(account_id: str) -> Any:
        return (
            select(projects.c.project_id)
            .join(project_users, project_users.c.project_id == projects.c.project_id)
            .where(project_users.c.account_id == account_id, project_users.c.group == "owner",
                   projects.c.deleted.is_(False), projects.c.state != SPARE_STATE)
        )

    def _owned_count(self, conn: Connection, account_id: str) -> int:
        if not _is_uuid(account_id):
            return 0
        scratch = conn.execute(
            select(account_settings.c.jupyter_project_id)
            .where(account_settings.c.account_id == account_id)
        ).scalar()
        query = self._owned_query(account_id)
        if scratch is not None:
            query = query.where(projects.c.project_id != scratch)
        return int(conn.execute(select(func.count()).select_from(query.subquery())).scalar_one())

    def _check_owned(self, conn: Connection, account_id: str, max_owned: int | None) -> None:
        if max_owned is not None and self._owned_count(conn, account_id) >= max_owned:
            raise AccountLimitReached("max_projects", max_owned)

    # -- collaborators --------------------------------------------------------

    def get_user_group(self, project_id: str, account_id: str) -> str | None:
        if not (_is_uuid(project_id) and _is_uuid(account_id)):
            return None
        with self._read() as conn:
            return conn.execute(
                select(project_users.c.group).where(
                    project_users.c.project_id == project_id,
                    project_users.c.account_id == account_id,
                )
            ).scalar()

    def is_collaborator(self, project_id: str, account_id: str) -> bool:
        """Owner or collaborator (CoCalc's ``isCollaborator``)."""
        return self.get_user_group(project_id, account_id) in GROUPS

    def add_user(self, project_id: str, account_id: str, group: str = "collaborator") -> None:
        """Add ``account_id`` to the project; a no-op when already present, so an
        owner is never demoted."""
        if group not in GROUPS:
            raise ValueError(f"group must be one of {GROUPS}, not {group!r}")
        with self._write() as conn:
            self._require_project(conn, project_id)
            self._require_account(conn, account_id)
            present = conn.execute(
                select(project_users.c.group).where(
                    project_users.c.project_id == project_id,
                    project_users.c.account_id == account_id,
                )
            ).first()
            if present is None:
                conn.execute(
                    insert(project_users).values(
                        project_id=project_id, account_id=account_id, group=group, hide=False
                    )
                )

    def remove_user(self, project_id: str, account_id: str) -> None:
        """Remove a collaborator; owners cannot be removed this way (as in CoCalc)."""
        with self._write() as conn:
            group = conn.execute(
                select(project_users.c.group).where(
                    project_users.c.project_id == project_id,
                    project_users.c.account_id == account_id,
                )
            ).scalar()
            if group == "owner":
                raise ValueError("cannot remove an owner of a project")
            done = conn.execute(
                delete(project_users).where(
                    project_users.c.project_id == project_id,
                    project_users.c.account_id == account_id,
                )
            )
        if done.rowcount:   # the project keys this account made die with its membership
            self.revocations.bump()

    def set_user_hide(self, project_id: str, account_id: str, hide: bool) -> None:
        with self._write() as conn:
            result = conn.execute(
                update(project_users)
                .where(
                    project_users.c.project_id == project_id,
                    project_users.c.account_id == account_id,
                )
                .values(hide=hide)
            )
        if result.rowcount == 0:
            raise ValueError(f"account {account_id} is not a user of project {project_id}")

    # -- API keys -------------------------------------------------------------

    def create_api_key(
        self,
        account_id: str,
        *,
        project_id: str | None = None,
        name: str = "",
        expire: datetime | None = None,
    ) -> tuple[dict[str, Any], str]:
        """Insert a key; returns (row without hash, secret).  The secret embeds the
        row id, so the row is inserted first and its hash filled in afterwards,
        in the same transaction.  The secret is not stored anywhere."""
        _check_key_name(name)
        with self._write() as conn:
            self._require_account(conn, account_id)
            if project_id is not None:
                self._require_project(conn, project_id)
            count = conn.execute(
                select(func.count()).select_from(api_keys).where(api_keys.c.account_id == account_id)
            ).scalar_one()
            if count >= self.api_key_limit:
                raise ValueError(
                    f"There is a limit of {self.api_key_limit} per account; "
                    "please delete some api keys."
                )
            # inserted_primary_key: RETURNING where the backend has it, lastrowid on old SQLite.
            key_id = conn.execute(
                insert(api_keys)
                .values(
                    account_id=account_id,
                    project_id=project_id,
                    name=name,
                    trunc="",
                    hash="",
                    created=utcnow(),
                    expire=expire,
                    last_active=None,
                )
            ).inserted_primary_key[0]
            secret = keys.generate_secret(int(key_id))
            conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id)
                .values(trunc=keys.trunc(secret), hash=keys.hash_secret(secret))
            )
            row = conn.execute(select(*_PUBLIC_KEY_COLUMNS).where(api_keys.c.id == key_id)).one()
        return _as_dict(row), secret

    def get_api_key(self, key_id: int) -> dict[str, Any] | None:
        """The full row, hash included (for verification)."""
        with self._read() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        return _as_dict(row) if row else None

    def list_api_keys(self, account_id: str, project_id: str | None = None) -> list[dict[str, Any]]:
        """Without hashes.  ``project_id=None``: the account's account-wide keys.
        With ``project_id``: every key of that project, whoever created it (any
        collaborator may see and delete them)."""
        query = select(*_PUBLIC_KEY_COLUMNS).order_by(api_keys.c.id)
        if project_id is None:
            query = query.where(api_keys.c.account_id == account_id, api_keys.c.project_id.is_(None))
        else:
            query = query.where(api_keys.c.project_id == project_id)
        with self._read() as conn:
            return [_as_dict(r) for r in conn.execute(query)]

    def list_all_api_keys(self, account_id: str | None = None,
                          project_id: str | None = None) -> list[dict[str, Any]]:
        """Without hashes, every key (the operator's view), optionally only one account's
        (account-wide and project keys) and/or one project's."""
        query = select(*_PUBLIC_KEY_COLUMNS).order_by(api_keys.c.id)
        if account_id is not None:
            query = query.where(api_keys.c.account_id == account_id)
        if project_id is not None:
            query = query.where(api_keys.c.project_id == project_id)
        with self._read() as conn:
            return [_as_dict(r) for r in conn.execute(query)]

    def delete_api_key(self, key_id: int) -> bool:
        with self._write() as conn:
            deleted = conn.execute(delete(api_keys).where(api_keys.c.id == key_id)).rowcount > 0
        if deleted:
            self.revocations.bump()
        return deleted

    def rotate_api_key(self, key_id: int, *, expire: datetime | None = _UNSET
                       ) -> tuple[dict[str, Any], str]:
        """Replace key ``key_id`` by a new one of the same account, project and name (and
        expiry, unless ``expire`` is given), in one transaction: the old secret stops
        working when the new one exists.  Returns (new row without hash, new secret)."""
        with self._write() as conn:
            old = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
            if old is None:
                raise ValueError(f"no api key with id {key_id}")
            new_id = conn.execute(insert(api_keys).values(
                account_id=old.account_id, project_id=old.project_id, name=old.name, trunc="",
                hash="", created=utcnow(), expire=old.expire if expire is _UNSET else expire,
                last_active=None)).inserted_primary_key[0]
            secret = keys.generate_secret(int(new_id))
            conn.execute(update(api_keys).where(api_keys.c.id == new_id)
                         .values(trunc=keys.trunc(secret), hash=keys.hash_secret(secret)))
            conn.execute(delete(api_keys).where(api_keys.c.id == key_id))
            row = conn.execute(select(*_PUBLIC_KEY_COLUMNS).where(api_keys.c.id == new_id)).one()
        self.revocations.bump()
        return _as_dict(row), secret

    def edit_api_key(
        self, key_id: int, *, name: str | None = None, expire: datetime | None = _UNSET
    ) -> None:
        """Change the name and/or expiry; ``expire=None`` means never expires,
        leaving ``expire`` out keeps it."""
        values: dict[str, Any] = {}
        if name is not None:
            _check_key_name(name)
            values["name"] = name
        if expire is not _UNSET:
            values["expire"] = expire
        with self._write() as conn:
            exists = conn.execute(select(api_keys.c.id).where(api_keys.c.id == key_id)).first()
            if exists is None:
                raise ValueError(f"no api key with id {key_id}")
            if values:
                conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(**values))
        if values:   # e.g. an expiry moved into the past
            self.revocations.bump()

    def touch_api_key(self, key_id: int, when: datetime) -> None:
        with self._write() as conn:
            conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_active=when))

    # -- hosts ----------------------------------------------------------------

    def ensure_host(self, name: str, address: str = "") -> int:
        """The id of host ``name``, registering it on first sight; a non-empty
        ``address`` replaces the stored one."""
        with self._write() as conn:
            row = conn.execute(select(hosts.c.host_id, hosts.c.address).where(hosts.c.name == name)).first()
            if row is not None:
                if address and address != row.address:
                    conn.execute(
                        update(hosts).where(hosts.c.host_id == row.host_id).values(address=address)
                    )
                return int(row.host_id)
            now = utcnow()
            result = conn.execute(
                insert(hosts).values(name=name, address=address, created=now, last_seen=now)
            )
            return int(result.inserted_primary_key[0])

    def touch_host(self, host_id: int, state: str | None = None) -> None:
        """Record that host ``host_id`` was heard now (and, with ``state``, that it is
        "up" or "down"; a down host's last_seen stays when it was last heard)."""
        values: dict[str, Any] = {} if state == "down" else {"last_seen": utcnow()}
        if state is not None:
            values["state"] = state
        with self._write() as conn:
            conn.execute(update(hosts).where(hosts.c.host_id == host_id).values(**values))

    def host_project_counts(self) -> dict[int, int]:
        """host_id -> how many projects (not deleted) are assigned to it."""
        with self._read() as conn:
            return self._host_counts(conn)

    @staticmethod
    def _host_counts(conn: Connection) -> dict[int, int]:
        rows = conn.execute(
            select(projects.c.host_id, func.count())
            .where(projects.c.host_id.is_not(None), projects.c.deleted.is_(False))
            .group_by(projects.c.host_id)
        )
        return {int(r[0]): int(r[1]) for r in rows}

    def assign_host(self, project_id: str, choose: Callable[[dict[str, int]], str]) -> str:
        """Place project ``project_id`` if it is placed nowhere yet: ``choose`` gets each
        registered host's name -> assigned project count, taken inside this write
        transaction (writers are serialised across hubs), and returns a host name (a host
        not registered yet is registered).  Returns the project's host name (the one it
        already had, if another hub placed it first)."""
        with self._write() as conn:
            row = conn.execute(select(projects.c.host_id).where(projects.c.project_id == project_id)).first()
            if row is None:
                raise KeyError(f"project {project_id} does not exist")
            names = {int(r.host_id): r.name for r in conn.execute(select(hosts.c.host_id, hosts.c.name))}
            if row.host_id is not None and int(row.host_id) in names:
                return names[int(row.host_id)]
            counts = self._host_counts(conn)
            name = choose({n: counts.get(i, 0) for i, n in names.items()})
            host_id = next((i for i, n in names.items() if n == name), None)
            if host_id is None:
                now = utcnow()
                host_id = int(conn.execute(insert(hosts).values(
                    name=name, address="nats", created=now, last_seen=now)).inserted_primary_key[0])
            conn.execute(update(projects).where(projects.c.project_id == project_id).values(host_id=host_id))
            return name

    def list_hosts(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            return [_as_dict(r) for r in conn.execute(select(hosts).order_by(hosts.c.host_id))]

    # -- server-wide settings -------------------------------------------------

    def get_setting(self, key: str, default: Any = None) -> Any:
        with self._read() as conn:
            row = conn.execute(select(settings.c.value).where(settings.c.key == key)).first()
        return default if row is None else row.value

    def set_setting(self, key: str, value: Any) -> None:
        with self._write() as conn:
            done = conn.execute(update(settings).where(settings.c.key == key).values(value=value))
            if done.rowcount == 0:
                conn.execute(insert(settings).values(key=key, value=value))

    # -- helpers --------------------------------------------------------------

    @staticmethod
    def _require_account(conn: Connection, account_id: str) -> None:
        found = _is_uuid(account_id) and conn.execute(
            select(accounts.c.account_id).where(accounts.c.account_id == account_id)
        ).first()
        if not found:
            raise ValueError(f"no account with id {account_id}")

    @staticmethod
    def _require_project(conn: Connection, project_id: str) -> None:
        found = _is_uuid(project_id) and conn.execute(
            select(projects.c.project_id).where(projects.c.project_id == project_id)
        ).first()
        if not found:
            raise ValueError(f"no project with id {project_id}")

    @staticmethod
    def _with_users(conn: Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Attach CoCalc's ``users`` map: ``{account_id: {"group", "hide"?}}``."""
        by_id = {r["project_id"]: r for r in rows}
        for r in rows:
            r["users"] = {}
        for chunk in _chunks(list(by_id)):
            members = conn.execute(
                select(project_users).where(project_users.c.project_id.in_(chunk))
            )
            for m in members:
                entry: dict[str, Any] = {"group": m.group}
                if m.hide:
                    entry["hide"] = True
                by_id[m.project_id]["users"][m.account_id] = entry
        return rows


def _check_key_name(name: str) -> None:
    check_text("name", name, API_KEY_NAME_MAX)
