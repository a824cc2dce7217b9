"""Messages between accounts (``messages.send``/``messages.get``) and the account search
behind ``system.userSearch``.

A mixin of ``Store``.  A message is one row plus one state row per account that sees it
(the sender and each recipient), holding that account's read/saved/starred/liked/deleted
flags.  Who may message whom and every size bound are the hub's (``hub/messages.py``);
this module stores and lists.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime, timezone
from typing import Any, Final

from sqlalchemy import Connection, func, insert, or_, select, update

from .schema import accounts, api_keys, message_states, messages, organizations

MESSAGE_FLAGS: Final = ("read", "saved", "starred", "liked", "deleted")
MESSAGE_KINDS: Final = ("received", "sent", "new", "starred", "liked")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class MessageStore:
    """Mixed into ``Store``: needs its ``_read``/``_write`` transactions."""

    def _read(self) -> AbstractContextManager[Connection]: ...    # provided by Store
    def _write(self) -> AbstractContextManager[Connection]: ...   # provided by Store

    # -- messages ---------------------------------------------------------------

    def send_message(self, from_id: str, to_ids: list[str], subject: str, body: str,
                     thread_id: int | None = None, organization_id: str | None = None) -> int:
        """One row, one state row per recipient and the sender.  With ``organization_id``
        (org.message) ``to_ids`` are that organization's members and are not stored in
        the row: the body is kept once, and no member is shown the member list."""
        now = _now()
        with self._write() as conn:
            message_id = int(conn.execute(insert(messages).values(
                from_id=from_id, to_ids=[] if organization_id else list(to_ids), subject=subject,
                body=body, sent=now, thread_id=thread_id,
                organization_id=organization_id)).inserted_primary_key[0])
            # (recipient, read): the sender has read what it wrote, unless it sent it to itself
            states = {a: (True, False) for a in to_ids}
            states.setdefault(from_id, (False, True))
            conn.execute(insert(message_states), [
                {"message_id": message_id, "account_id": a, "recipient": recipient, "read": read,
                 "saved": False, "starred": False, "liked": False, "deleted": False}
                for a, (recipient, read) in states.items()])
        return message_id

    def count_messages_sent_since(self, from_id: str, since: datetime, *,
                                  to_organizations: bool = False) -> int:
        where = [messages.c.from_id == from_id, messages.c.sent >= since]
        if to_organizations:
            where.append(messages.c.organization_id.is_not(None))
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(messages).where(*where))
                       .scalar_one())

    def get_message_for(self, account_id: str, message_id: int) -> dict[str, Any] | None:
        """The message as ``account_id`` sees it (sender or recipient), else None."""
        rows = self._list(account_id, [message_states.c.message_id == message_id], 1, 0)
        return rows[0] if rows else None

    def list_messages(self, account_id: str, kind: str, limit: int, offset: int) -> list[dict[str, Any]]:
        """Newest first.  received: to the account, not deleted; new: received and unread;
        sent: from the account; starred/liked: flagged by the account, not deleted."""
        s = message_states.c
        filters = {
            "received": [s.recipient.is_(True), s.deleted.is_(False)],
            "new": [s.recipient.is_(True), s.deleted.is_(False), s.read.is_(False)],
            "sent": [messages.c.from_id == account_id],
            "starred": [s.starred.is_(True), s.deleted.is_(False)],
            "liked": [s.liked.is_(True), s.deleted.is_(False)],
        }[kind]
        return self._list(account_id, filters, limit, offset)

    def _list(self, account_id: str, filters: list[Any], limit: int, offset: int) -> list[dict[str, Any]]:
        s = message_states.c
        query = (select(messages, s.recipient, s.read, s.saved, s.starred, s.liked, s.deleted,
                        organizations.c.name.label("organization"))
                 .join(message_states, s.message_id == messages.c.id)
                 .outerjoin(organizations,
                            organizations.c.organization_id == messages.c.organization_id)
                 .where(s.account_id == account_id, *filters)
                 .order_by(messages.c.id.desc()).limit(limit).offset(offset))
        with self._read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def set_message_flags(self, account_id: str, message_id: int, **flags: bool) -> bool:
        """Set the account's own flags on a message it sent or received."""
        unknown = set(flags) - set(MESSAGE_FLAGS)
        if unknown:
            raise ValueError(f"unknown message flags: {sorted(unknown)}")
        if not flags:
            return self.get_message_for(account_id, message_id) is not None
        with self._write() as conn:
            done = conn.execute(update(message_states).where(
                message_states.c.message_id == message_id,
                message_states.c.account_id == account_id).values(**flags))
        return bool(done.rowcount)

    # -- account search -----------------------------------------------------------

    def search_accounts(self, *, terms: list[str] | None = None, emails: list[str] | None = None,
                        limit: int, match_email: bool = False,
                        include_banned: bool = False) -> list[dict[str, Any]]:
        """Accounts whose e-mail address is exactly one of ``emails`` (case-insensitive), or
        whose first or last name has a word starting with every one of ``terms`` (and, with
        ``match_email``, whose address starts with it).  Most recently active first; each row
        has ``last_active`` (the newest use of any of its API keys)."""
        last_active = (select(api_keys.c.account_id, func.max(api_keys.c.last_active).label("last_active"))
                       .group_by(api_keys.c.account_id).subquery())
        query = (select(accounts, last_active.c.last_active)
                 .outerjoin(last_active, last_active.c.account_id == accounts.c.account_id))
        if emails is not None:
            # addresses are stored in lower case (create_account): the unique index answers
            query = query.where(accounts.c.email.in_([e.lower() for e in emails]))
        for term in terms or []:
            pattern = _like_escape(term.lower())
            options = []
            for column in (accounts.c.first_name, accounts.c.last_name):
                options.append(func.lower(column).like(pattern + "%", escape="\\"))
                options.append(func.lower(column).like("% " + pattern + "%", escape="\\"))
            if match_email:
                options.append(func.lower(accounts.c.email).like(pattern + "%", escape="\\"))
            query = query.where(or_(*options))
        if not include_banned:
            query = query.where(accounts.c.banned.is_(False))
        query = query.order_by(last_active.c.last_active.desc().nulls_last(),
                               accounts.c.created.desc(), accounts.c.account_id).limit(limit)
        with self._read() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for row in rows:   # the subquery's max() comes back naive on SQLite
            value = row.get("last_active")
            if isinstance(value, str):
                value = datetime.fromisoformat(value)
            if isinstance(value, datetime) and value.tzinfo is None:
                value = value.replace(tzinfo=timezone.utc)
            row["last_active"] = value
        return rows
