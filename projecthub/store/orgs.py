"""Organizations, their admins and members, one-time sign-in tokens, and who can see whom.

A mixin of ``Store`` (same transactions, same plain-dict rows).  The rules of *who may*
do what live in ``hub/orgs.py``; this module only keeps the data consistent: an account
is a member of at most one organization (CoCalc's ``accounts.org``), admins of an
organization need not be its members, a sign-in token is stored as a SHA-256 only and
is redeemed at most once, before it expires, by one transaction.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from contextlib import AbstractContextManager
from datetime import datetime, timedelta, timezone
from typing import Any, Final

from sqlalchemy import Connection, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from .bounds import check_text
from .schema import (
    accounts,
    organization_admins,
    organization_members,
    organizations,
    project_users,
    projects,
    sign_in_tokens,
)

# Hard caps: an organization's members, and the tokens an account may hold at once.
ORG_MEMBERS_MAX: Final = 10_000
TOKENS_PER_ACCOUNT_MAX: Final = 100
ORG_FIELDS: Final = ("title", "description", "email_address", "link")
ORG_FIELD_MAX: Final = {"title": 1024, "description": 16384, "email_address": 254, "link": 2048}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def token_hash(token: str) -> str:
    """Tokens are 256 random bits: a plain SHA-256 is enough (no guessing to slow down)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class OrgStore:
    """Mixed into ``Store``: needs its ``_read``/``_write`` transactions."""

    def _read(self) -> AbstractContextManager[Connection]: ...    # provided by Store
    def _write(self) -> AbstractContextManager[Connection]: ...   # provided by Store

    # -- organizations --------------------------------------------------------

    def create_org(self, name: str) -> str:
        organization_id = str(uuid.uuid4())
        try:
            with self._write() as conn:
                conn.execute(insert(organizations).values(
                    organization_id=organization_id, name=name, title="", description="",
                    email_address="", link="", created=_now()))
        except IntegrityError:
            raise ValueError(f"an organization named '{name}' already exists") from None
        return organization_id

    def get_org(self, name: str) -> dict[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(select(organizations).where(organizations.c.name == name)).first()
            if row is None:
                return None
            return self._with_admins(conn, [dict(row._mapping)])[0]

    def list_orgs(self, account_id: str | None = None) -> list[dict[str, Any]]:
        """Every organization (``account_id=None``), or those the account is an admin or a
        member of, each with ``admin_account_ids`` and the account's ``relation``."""
        with self._read() as conn:
            query = select(organizations).order_by(organizations.c.name)
            if account_id is not None:
                admin_of = select(organization_admins.c.organization_id).where(
                    organization_admins.c.account_id == account_id)
                member_of = select(organization_members.c.organization_id).where(
                    organization_members.c.account_id == account_id)
                query = query.where(or_(organizations.c.organization_id.in_(admin_of),
                                        organizations.c.organization_id.in_(member_of)))
            rows = self._with_admins(conn, [dict(r._mapping) for r in conn.execute(query)])
            member = None
            if account_id is not None:
                member = conn.execute(select(organization_members.c.organization_id).where(
                    organization_members.c.account_id == account_id)).scalar()
        for row in rows:
            if account_id is None:
                row["relation"] = "none"
            elif account_id in row["admin_account_ids"]:
                row["relation"] = "admin"
            else:
                row["relation"] = "member" if row["organization_id"] == member else "none"
        return rows

    def update_org(self, organization_id: str, **fields: str) -> None:
        unknown = set(fields) - set(ORG_FIELDS)
        if unknown:
            raise ValueError(f"unknown organization fields: {sorted(unknown)}")
        for field, value in fields.items():
            check_text(field, value, ORG_FIELD_MAX[field])
        if fields:
            with self._write() as conn:
                conn.execute(update(organizations)
                             .where(organizations.c.organization_id == organization_id).values(**fields))

    def add_org_admin(self, organization_id: str, account_id: str) -> None:
        with self._write() as conn:
            self._require_account(conn, account_id)   # type: ignore[attr-defined]
            found = conn.execute(select(organization_admins.c.account_id).where(
                organization_admins.c.organization_id == organization_id,
                organization_admins.c.account_id == account_id)).first()
            if not found:
                conn.execute(insert(organization_admins).values(
                    organization_id=organization_id, account_id=account_id))

    def remove_org_admin(self, organization_id: str, account_id: str) -> bool:
        with self._write() as conn:
            done = conn.execute(delete(organization_admins).where(
                organization_admins.c.organization_id == organization_id,
                organization_admins.c.account_id == account_id))
        return bool(done.rowcount)

    def add_org_member(self, organization_id: str, account_id: str) -> None:
        """Raises ValueError if the account is a member of another organization (it is
        never moved silently) or the organization is full."""
        with self._write() as conn:
            self._require_account(conn, account_id)   # type: ignore[attr-defined]
            self._insert_member(conn, organization_id, account_id)

    def _insert_member(self, conn: Connection, organization_id: str, account_id: str) -> None:
        current = conn.execute(select(organization_members.c.organization_id).where(
            organization_members.c.account_id == account_id)).scalar()
        if current == organization_id:
            return
        if current is not None:
            other = conn.execute(select(organizations.c.name).where(
                organizations.c.organization_id == current)).scalar()
            raise ValueError(f"that account is already a member of the organization '{other}' "
                             "(an account belongs to at most one; remove it there first)")
        count = conn.execute(select(func.count()).select_from(organization_members).where(
            organization_members.c.organization_id == organization_id)).scalar_one()
        if count >= ORG_MEMBERS_MAX:
            raise ValueError(f"an organization has at most {ORG_MEMBERS_MAX} members")
        conn.execute(insert(organization_members).values(
            account_id=account_id, organization_id=organization_id, added=_now()))

    def remove_org_member(self, organization_id: str, account_id: str) -> bool:
        with self._write() as conn:
            done = conn.execute(delete(organization_members).where(
                organization_members.c.organization_id == organization_id,
                organization_members.c.account_id == account_id))
        return bool(done.rowcount)

    def org_membership(self, account_id: str) -> str | None:
        """The organization_id the account is a member of."""
        with self._read() as conn:
            return conn.execute(select(organization_members.c.organization_id).where(
                organization_members.c.account_id == account_id)).scalar()

    def orgs_administered(self, account_id: str) -> set[str]:
        with self._read() as conn:
            return set(conn.execute(select(organization_admins.c.organization_id).where(
                organization_admins.c.account_id == account_id)).scalars())

    def org_members(self, organization_id: str) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(
                select(accounts.c.account_id, accounts.c.first_name, accounts.c.last_name,
                       accounts.c.email)
                .join(organization_members, organization_members.c.account_id == accounts.c.account_id)
                .where(organization_members.c.organization_id == organization_id)
                .order_by(organization_members.c.added, accounts.c.account_id))
            return [dict(r._mapping) for r in rows]

    def create_org_account(self, organization_id: str, email: str, first_name: str = "",
                           last_name: str = "") -> str:
        """A new account that is a member of the organization, in one transaction."""
        account_id = str(uuid.uuid4())
        check_text("first_name", first_name)
        check_text("last_name", last_name)
        email = check_text("email", email.strip().lower())
        try:
            with self._write() as conn:
                conn.execute(insert(accounts).values(
                    account_id=account_id, first_name=first_name, last_name=last_name,
                    email=email, is_admin=False, banned=False, created=_now()))
                self._insert_member(conn, organization_id, account_id)
        except IntegrityError:
            raise ValueError(f"an account with email {email} already exists") from None
        return account_id

    @staticmethod
    def _with_admins(conn: Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        by_id = {r["organization_id"]: r for r in rows}
        for row in rows:
            row["admin_account_ids"] = []
        if by_id:
            admins = conn.execute(
                select(organization_admins)
                .where(organization_admins.c.organization_id.in_(list(by_id)))
                .order_by(organization_admins.c.account_id))
            for admin in admins:
                by_id[admin.organization_id]["admin_account_ids"].append(admin.account_id)
        return rows

    # -- one-time sign-in tokens ------------------------------------------------

    def create_sign_in_token(self, account_id: str, created_by: str, ttl: timedelta) -> tuple[str, datetime]:
        """A new token for ``account_id``; returns (token, expire).  Only its hash is stored."""
        token = secrets.token_urlsafe(32)
        now = _now()
        expire = now + ttl
        with self._write() as conn:
            self._require_account(conn, account_id)   # type: ignore[attr-defined]
            # forget this account's spent tokens, then bound the live ones
            conn.execute(delete(sign_in_tokens).where(
                sign_in_tokens.c.account_id == account_id,
                or_(sign_in_tokens.c.used.is_not(None), sign_in_tokens.c.expire <= now)))
            live = conn.execute(select(func.count()).select_from(sign_in_tokens).where(
                sign_in_tokens.c.account_id == account_id)).scalar_one()
            if live >= TOKENS_PER_ACCOUNT_MAX:
                raise ValueError(f"that account already has {TOKENS_PER_ACCOUNT_MAX} unused tokens; "
                                 "expire some first")
            conn.execute(insert(sign_in_tokens).values(
                token_hash=token_hash(token), account_id=account_id, created_by=created_by,
                created=now, expire=expire, used=None))
        return token, expire

    def get_sign_in_token(self, token: str) -> dict[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(select(sign_in_tokens).where(
                sign_in_tokens.c.token_hash == token_hash(token))).first()
        return dict(row._mapping) if row else None

    def expire_sign_in_token(self, token: str) -> bool:
        with self._write() as conn:
            done = conn.execute(update(sign_in_tokens)
                                .where(sign_in_tokens.c.token_hash == token_hash(token),
                                       sign_in_tokens.c.expire > _now())
                                .values(expire=_now()))
        return bool(done.rowcount)

    def expire_sign_in_tokens(self, *, account_id: str | None = None,
                              created_by: str | None = None) -> int:
        """Expire every live token of ``account_id`` and/or issued by ``created_by`` (an
        account leaving an organization, an admin losing the role)."""
        now = _now()
        where = [sign_in_tokens.c.used.is_(None), sign_in_tokens.c.expire > now]
        if account_id is not None:
            where.append(sign_in_tokens.c.account_id == account_id)
        if created_by is not None:
            where.append(sign_in_tokens.c.created_by == created_by)
        with self._write() as conn:
            return int(conn.execute(update(sign_in_tokens).where(*where).values(expire=now)).rowcount)

    def redeem_sign_in_token(self, token: str) -> str | None:
        """Spend the token: the account id, or None if the token is unknown, expired, used
        or its account disabled.  The check and the spending are one statement, so two
        concurrent redemptions cannot both succeed."""
        now = _now()
        digest = token_hash(token)
        with self._write() as conn:
            account_id = conn.execute(
                select(sign_in_tokens.c.account_id)
                .join(accounts, accounts.c.account_id == sign_in_tokens.c.account_id)
                .where(sign_in_tokens.c.token_hash == digest, sign_in_tokens.c.used.is_(None),
                       sign_in_tokens.c.expire > now, accounts.c.banned.is_(False))).scalar()
            if account_id is None:
                return None
            done = conn.execute(update(sign_in_tokens)
                                .where(sign_in_tokens.c.token_hash == digest,
                                       sign_in_tokens.c.used.is_(None))
                                .values(used=now))
            return account_id if done.rowcount == 1 else None

    # -- who can see whom ---------------------------------------------------------

    def accounts_share_something(self, a: str, b: str) -> bool:
        """True if ``a`` and ``b`` share a (not deleted) project or an organization (as
        member or admin of it).  Site admins are the hub's business (hub/messages.py)."""
        if a == b:
            return True
        mine, theirs = project_users.alias("mine"), project_users.alias("theirs")
        with self._read() as conn:
            shared_project = conn.execute(
                select(mine.c.project_id)
                .join(theirs, theirs.c.project_id == mine.c.project_id)
                .join(projects, projects.c.project_id == mine.c.project_id)
                .where(mine.c.account_id == a, theirs.c.account_id == b,
                       projects.c.deleted.is_(False))
                .limit(1)).first()
            if shared_project:
                return True
            return bool(self._org_ids(conn, a) & self._org_ids(conn, b))

    @staticmethod
    def _org_ids(conn: Connection, account_id: str) -> set[str]:
        admin = conn.execute(select(organization_admins.c.organization_id).where(
            organization_admins.c.account_id == account_id)).scalars()
        member = conn.execute(select(organization_members.c.organization_id).where(
            organization_members.c.account_id == account_id)).scalars()
        return set(admin) | set(member)
