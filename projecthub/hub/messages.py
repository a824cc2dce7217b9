"""CoCalc's ``messages.send``/``messages.get`` and ``org.message``: messages between accounts.

Messages only go between accounts that *can see each other*: they share a project that is
not deleted, or an organization (as its admin or member), or one of them is a site admin.
A recipient that does not exist and one the sender cannot see get the same refusal, so
``messages.send`` cannot be used to learn which accounts or e-mail addresses exist.

Bounds (all refusals are ``Error: ...``): subject ``SUBJECT_MAX`` and body ``BODY_MAX``
characters, ``RECIPIENTS_MAX`` recipients a message, ``MESSAGES_PER_DAY`` messages an
account sends in any 24 hours, of which at most ``ORG_MESSAGES_PER_DAY`` org-wide ones;
``messages.get`` returns at most ``GET_LIMIT_MAX`` messages a call.

Read state: each account that sees a message has its own read/saved/starred/liked/deleted
flags, set with ``db.userQuery`` on the ``messages`` table as CoCalc's front end does
(``{"messages": {"id": 5, "read": true}}``); ``messages.get(type="new")`` lists the unread.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Final

from ..errors import RemoteError
from ..store.bounds import check_text
from ..store.messages import MESSAGE_FLAGS, MESSAGE_KINDS
from .orgs import find_account, is_site_admin, org_for
from .service import HubService, iso

SUBJECT_MAX: Final = 1024
BODY_MAX: Final = 65_536
RECIPIENTS_MAX: Final = 100
MESSAGES_PER_DAY: Final = 500
ORG_MESSAGES_PER_DAY: Final = 20
GET_LIMIT_DEFAULT: Final = 100
GET_LIMIT_MAX: Final = 1000
GET_OFFSET_MAX: Final = 1_000_000
_DAY: Final = timedelta(hours=24)


def _opts(args: list[Any]) -> dict[str, Any]:
    return dict(args[0]) if args and isinstance(args[0], dict) else {}


def _content(opts: dict[str, Any]) -> tuple[str, str]:
    subject, body = opts.get("subject"), opts.get("body")
    if not isinstance(subject, str) or not subject.strip():
        raise RemoteError("Error: subject must be a non-empty string")
    if not isinstance(body, str):
        raise RemoteError("Error: body must be a string")
    try:
        check_text("subject", subject, SUBJECT_MAX)
        check_text("body", body, BODY_MAX)
    except ValueError as exc:
        raise RemoteError(f"Error: {exc}") from None
    return subject, body


async def can_see(hub: HubService, a: str, b: str) -> bool:
    """Share a live project or an organization, or one of them is a site admin."""
    if a == b or await is_site_admin(hub, a) or await is_site_admin(hub, b):
        return True
    return bool(await hub.db.accounts_share_something(a, b))


async def _check_rate(hub: HubService, account_id: str, *, org: bool = False) -> None:
    since = datetime.now(timezone.utc) - _DAY
    if await hub.db.count_messages_sent_since(account_id, since) >= MESSAGES_PER_DAY:
        raise RemoteError(f"Error: you can send at most {MESSAGES_PER_DAY} messages in 24 hours")
    if org and await hub.db.count_messages_sent_since(account_id, since, to_organizations=True) \
            >= ORG_MESSAGES_PER_DAY:
        raise RemoteError(f"Error: you can message an organization at most {ORG_MESSAGES_PER_DAY} "
                          "times in 24 hours")


async def send(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    opts = _opts(args)
    subject, body = _content(opts)
    to_ids = opts.get("to_ids")
    if isinstance(to_ids, str):
        to_ids = [to_ids]
    if not isinstance(to_ids, list) or not to_ids or not all(isinstance(t, str) for t in to_ids):
        raise RemoteError("Error: to_ids must be a non-empty list of account ids or e-mail addresses")
    if len(to_ids) > RECIPIENTS_MAX:
        raise RemoteError(f"Error: a message has at most {RECIPIENTS_MAX} recipients")
    recipients: list[str] = []
    for entry in to_ids:
        account = await find_account(hub, entry.strip())
        if account is None or account.get("banned") or not await can_see(hub, account_id, account["account_id"]):
            shown = entry if len(entry) <= 254 else entry[:254] + "..."
            raise RemoteError(f"Error: cannot send a message to '{shown}': there is no such account "
                              "that shares a project or an organization with you")
        if account["account_id"] not in recipients:
            recipients.append(account["account_id"])
    thread_id = None
    reply_id = opts.get("reply_id")
    if reply_id is not None:
        if not isinstance(reply_id, int) or isinstance(reply_id, bool) or not 0 < reply_id < 2**63:
            raise RemoteError("Error: reply_id must be the id of a message")
        replied = await hub.db.get_message_for(account_id, reply_id)
        if replied is None:
            raise RemoteError(f"Error: there is no message {reply_id} that you sent or received")
        thread_id = replied["thread_id"] or replied["id"]
    await _check_rate(hub, account_id)
    return await hub.db.send_message(account_id, recipients, subject, body, thread_id)


async def org_message(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    """To every member of the organization (org admins and site admins only)."""
    opts = _opts(args)
    org = await org_for(hub, account_id, opts.get("name"), "admin")
    subject, body = _content(opts)
    members = [m["account_id"] for m in await hub.db.org_members(org["organization_id"])]
    await _check_rate(hub, account_id, org=True)
    if not members:   # nobody to tell: nothing is stored
        return None
    await hub.db.send_message(account_id, members, subject, body,
                              organization_id=org["organization_id"])
    return None


def _row(account_id: str, message: dict[str, Any]) -> dict[str, Any]:
    to_ids = list(message["to_ids"] or [])
    if message.get("organization") is not None and message.get("recipient"):
        to_ids = [account_id]   # an org message: a member is not shown the member list
    row = {
        "id": message["id"], "from_id": message["from_id"], "to_ids": to_ids,
        "subject": message["subject"], "body": message["body"], "sent": iso(message["sent"]),
        "thread_id": message["thread_id"], "index": None,
        **{flag: bool(message[flag]) for flag in MESSAGE_FLAGS}, "expire": None,
    }
    if message.get("organization") is not None:
        row["organization"] = message["organization"]
    return row


def _bounded_int(opts: dict[str, Any], field: str, default: int, lo: int, hi: int) -> int:
    value = opts.get(field)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise RemoteError(f"Error: {field} must be an integer from {lo} to {hi}")
    return value


async def get(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    opts = _opts(args)
    limit = _bounded_int(opts, "limit", GET_LIMIT_DEFAULT, 0, GET_LIMIT_MAX)
    offset = _bounded_int(opts, "offset", 0, 0, GET_OFFSET_MAX)
    kind = opts.get("type") or "received"
    if kind not in MESSAGE_KINDS:
        raise RemoteError(f"Error: type must be one of {', '.join(MESSAGE_KINDS)}")
    rows = await hub.db.list_messages(account_id, kind, limit, offset)
    return [_row(account_id, r) for r in rows]


async def user_query(hub: HubService, account_id: str, spec: Any) -> Any:
    """``db.userQuery`` on ``messages``: a get of the caller's received messages, or a set
    of the caller's own flags on one message (``{"id": n, "read": true, ...}``)."""
    if isinstance(spec, list):
        pattern = spec[0] if spec and isinstance(spec[0], dict) else {}
        rows = await hub.db.list_messages(account_id, "received", GET_LIMIT_DEFAULT, 0)
        fields = list(pattern) or None
        full = [_row(account_id, r) for r in rows]
        return {"messages": [{f: r.get(f) for f in fields} if fields else r for r in full]}
    if not isinstance(spec, dict):
        raise RemoteError("Error: messages query must be an object")
    message_id = spec.get("id")
    if not isinstance(message_id, int) or isinstance(message_id, bool) or not 0 < message_id < 2**63:
        raise RemoteError("Error: messages query needs the message's integer id")
    unknown = set(spec) - {"id", *MESSAGE_FLAGS}
    if unknown:
        raise RemoteError(f"Error: messages fields that can be set: {', '.join(MESSAGE_FLAGS)}")
    flags = {f: bool(v) for f, v in spec.items() if f != "id" and v is not None}
    if not flags:   # a get of one message
        found = await hub.db.get_message_for(account_id, message_id)
        if found is None:
            raise RemoteError(f"Error: there is no message {message_id} that you sent or received")
        return {"messages": _row(account_id, found)}
    if not await hub.db.set_message_flags(account_id, message_id, **flags):
        raise RemoteError(f"Error: there is no message {message_id} that you sent or received")
    return {}


MESSAGE_FUNCTIONS: dict[str, Any] = {
    "messages.send": send,
    "messages.get": get,
    "org.message": org_message,
}
