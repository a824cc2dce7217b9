"""CoCalc's ``org.*`` hub functions: organizations, their admins and members, sign-in tokens.

Who may do what (docs/security.md has the table):

- site admins manage every organization; only they create organizations and add an
  *existing* account to one (``org.addUser``, as CoCalc's docstring says);
- an admin of an organization manages that organization only: edit it, list its members,
  create new accounts in it, make its *members* admins, remove its members and admins,
  message its members, and issue or expire sign-in tokens for its members;
- a member may read the organization (``org.get``) and sees it in ``org.getAll``;
- anyone else is refused with ``Error: ...`` -- the same text whether the organization
  exists or not, so names cannot be probed.

A sign-in token (``org.createToken``) stands in for CoCalc's impersonation link on a server
without browser sessions: it is redeemed once, by ``POST /api/v3/tokens/redeem``
(``api/tokens.py``), for a new API key of the account; it expires after ``TOKEN_TTL``.
An org admin never gets a token for a site admin, or for an admin of an organization the
caller does not administer: a token must not buy more power than the caller already has.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Final

from ..errors import RemoteError
from ..store import FieldTooLong
from ..store.orgs import ORG_FIELD_MAX, ORG_FIELDS
from .service import HubService, is_uuid, iso, key_json

TOKEN_TTL: Final = timedelta(hours=24)
REDEEM_PATH: Final = "/api/v3/tokens/redeem"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,38}$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}$")


def _opts(args: list[Any]) -> dict[str, Any]:
    return dict(args[0]) if args and isinstance(args[0], dict) else {}


def _text(opts: dict[str, Any], field: str, *, required: bool = True, max_chars: int = 1024) -> str | None:
    value = opts.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise RemoteError(f"Error: {field} must be a non-empty string")
    if len(value) > max_chars:
        raise RemoteError(f"Error: {field} must be at most {max_chars} characters")
    return value


def org_name(value: Any) -> str:
    """Organization names are case-insensitive: stored and compared in lower case."""
    if not isinstance(value, str) or not _NAME.match(value.strip().lower()):
        raise RemoteError("Error: name must be 1 to 39 letters, digits, '-', '_' or '.', "
                          "starting with a letter or digit")
    return value.strip().lower()


async def is_site_admin(hub: HubService, account_id: str) -> bool:
    account = await hub.db.get_account(account_id)
    return bool(account and account.get("is_admin") and not account.get("banned"))


async def find_account(hub: HubService, user: Any) -> dict[str, Any] | None:
    """An account by id or e-mail address (CoCalc's ``user`` argument)."""
    if not isinstance(user, str) or not user.strip() or len(user) > 254:
        return None
    if is_uuid(user):
        return await hub.db.get_account(user.lower())
    if "@" in user:
        return await hub.db.get_account_by_email(user)
    return None


async def org_for(hub: HubService, caller: str, name: Any, role: str) -> dict[str, Any]:
    """The organization, if ``caller`` is a site admin or has ``role`` in it ("admin", or
    "member" which admins also pass); the same refusal whether or not it exists."""
    name = org_name(name)
    org = await hub.db.get_org(name)
    if await is_site_admin(hub, caller):
        if org is None:
            raise RemoteError(f"Error: there is no organization named '{name}'")
        return org
    if org is not None:
        if caller in org["admin_account_ids"]:
            return org
        if role == "member" and await hub.db.org_membership(caller) == org["organization_id"]:
            return org
    what = "an admin" if role == "admin" else "an admin or a member"
    raise RemoteError(f"Error: you must be {what} of the organization '{name}'")


async def _user(hub: HubService, opts: dict[str, Any]) -> dict[str, Any]:
    account = await find_account(hub, opts.get("user"))
    if account is None:
        raise RemoteError("Error: user must be the account_id or e-mail address of an existing account")
    return account


def _public(org: dict[str, Any], relation: str | None = None) -> dict[str, Any]:
    row = {"name": org["name"], "organization_id": org["organization_id"],
           **{f: org.get(f) or "" for f in ORG_FIELDS},
           "admin_account_ids": list(org["admin_account_ids"]), "created": iso(org.get("created"))}
    if relation is not None:
        row["relation"] = relation
    return row


async def get_all(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    """Site admins: every organization; others: those they are an admin or member of."""
    rows = await hub.db.list_orgs(None if await is_site_admin(hub, account_id) else account_id)
    return [_public(r, r["relation"]) for r in rows]


async def create(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    opts = _opts(args)
    if not await is_site_admin(hub, account_id):
        raise RemoteError("Error: only site admins can create organizations")
    name = org_name(opts.get("name"))
    try:
        return await hub.db.create_org(name)
    except ValueError as exc:
        raise RemoteError(f"Error: {exc}") from None


async def get(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    return _public(await org_for(hub, account_id, _opts(args).get("name"), "member"))


async def set_(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    opts = _opts(args)
    org = await org_for(hub, account_id, opts.get("name"), "admin")
    fields = {f: _text(opts, f, required=False, max_chars=ORG_FIELD_MAX[f]) for f in ORG_FIELDS}
    changes = {f: v for f, v in fields.items() if v is not None}
    try:
        await hub.db.update_org(org["organization_id"], **changes)
    except FieldTooLong as exc:
        raise RemoteError(f"Error: {exc}") from None
    return None


async def add_admin(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    opts = _opts(args)
    org = await org_for(hub, account_id, opts.get("name"), "admin")
    user = await _user(hub, opts)
    if not await is_site_admin(hub, account_id) and \
            await hub.db.org_membership(user["account_id"]) != org["organization_id"]:
        raise RemoteError("Error: an organization admin can only make members of the organization "
                          "admins (a site admin can make anyone an admin)")
    await hub.db.add_org_admin(org["organization_id"], user["account_id"])
    return None


async def add_user(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    opts = _opts(args)
    if not await is_site_admin(hub, account_id):
        # CoCalc's rule: org admins create new accounts in their organization instead
        org_name(opts.get("name"))
        raise RemoteError("Error: only site admins can add an existing account to an organization; "
                          "an organization admin can use org.createUser to create new accounts in it")
    org = await org_for(hub, account_id, opts.get("name"), "admin")
    user = await _user(hub, opts)
    try:
        await hub.db.add_org_member(org["organization_id"], user["account_id"])
    except ValueError as exc:
        raise RemoteError(f"Error: {exc}") from None
    return None


async def create_user(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    """A new account in the organization; returns its account_id.  ``password`` is accepted
    and not stored: this server has no password sign-in (use org.createToken)."""
    opts = _opts(args)
    org = await org_for(hub, account_id, opts.get("name"), "admin")
    email = _text(opts, "email", max_chars=254)
    assert email is not None
    if not _EMAIL.match(email.strip()):
        raise RemoteError("Error: email must be an e-mail address")
    first = _text(opts, "firstName", required=False, max_chars=254) or ""
    last = _text(opts, "lastName", required=False, max_chars=254) or ""
    _text(opts, "password", required=False, max_chars=1024)
    try:
        return await hub.db.create_org_account(org["organization_id"], email.strip(), first, last)
    except ValueError as exc:   # FieldTooLong is one too
        raise RemoteError(f"Error: {exc}") from None


async def _may_act_for(hub: HubService, caller: str, target: dict[str, Any]) -> bool:
    """May ``caller`` create a token for, or expire a token of, ``target``?  Itself (a
    token gives it a key it could make with system.manageApiKeys anyway), a site admin
    anyone, an org admin the members of its org that hold no role it lacks."""
    if target.get("account_id") == caller or await is_site_admin(hub, caller):
        return True
    if target.get("is_admin"):
        return False
    org_id = await hub.db.org_membership(target["account_id"])
    mine = await hub.db.orgs_administered(caller)
    if org_id is None or org_id not in mine:
        return False
    # a token must not hand the caller an admin role it does not hold itself
    return (await hub.db.orgs_administered(target["account_id"])) <= mine


async def create_token(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    account = await find_account(hub, _opts(args).get("user"))
    if account is None or not await _may_act_for(hub, account_id, account):
        raise RemoteError("Error: you must be an admin of the organization this user belongs to "
                          "(or a site admin), and the user must exist")
    if account.get("banned"):
        raise RemoteError("Error: that account is disabled")
    try:
        token, _ = await hub.db.create_sign_in_token(account["account_id"], account_id, TOKEN_TTL)
    except ValueError as exc:
        raise RemoteError(f"Error: {exc}") from None
    return {"token": token, "url": f"{REDEEM_PATH}?token={token}"}


async def expire_token(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    token = _opts(args).get("token")
    if not isinstance(token, str) or not token or len(token) > 256:
        raise RemoteError("Error: token must be a token returned by org.createToken")
    row = await hub.db.get_sign_in_token(token)
    allowed = row is not None and (row["created_by"] == account_id or await _may_act_for(
        hub, account_id, await hub.db.get_account(row["account_id"]) or {"account_id": ""}))
    if not allowed:
        raise RemoteError("Error: no such token, or you may not expire it")
    await hub.db.expire_sign_in_token(token)
    return None


async def get_users(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    org = await org_for(hub, account_id, _opts(args).get("name"), "admin")
    return [{"first_name": m["first_name"], "last_name": m["last_name"],
             "account_id": m["account_id"], "email_address": m["email"]}
            for m in await hub.db.org_members(org["organization_id"])]


async def remove_user(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    opts = _opts(args)
    org = await org_for(hub, account_id, opts.get("name"), "admin")
    user = await _user(hub, opts)
    if not await hub.db.remove_org_member(org["organization_id"], user["account_id"]):
        raise RemoteError("Error: that account is not a member of the organization")
    await hub.db.expire_sign_in_tokens(account_id=user["account_id"])   # issued while a member
    return None


async def remove_admin(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    opts = _opts(args)
    org = await org_for(hub, account_id, opts.get("name"), "admin")
    user = await _user(hub, opts)
    if not await hub.db.remove_org_admin(org["organization_id"], user["account_id"]):
        raise RemoteError("Error: that account is not an admin of the organization")
    await hub.db.expire_sign_in_tokens(created_by=user["account_id"])   # issued as an admin
    return None


async def redeem_token(hub: HubService, token: Any) -> dict[str, Any] | None:
    """Spend a sign-in token: a new account-wide API key for its account (the secret is
    in the answer only), or None for a token that is unknown, expired, used or whose
    account is disabled.  The key is made after the token is spent: if making it fails
    (the account has its maximum of keys), the token stays spent."""
    if not isinstance(token, str) or not 20 <= len(token) <= 256:
        return None
    account_id = await hub.db.redeem_sign_in_token(token)
    if account_id is None:
        return None
    try:
        row, secret = await hub.db.create_api_key(account_id, name="sign-in token")
    except ValueError as exc:
        raise RemoteError(f"Error: {exc}") from None
    return {"account_id": account_id, "api_key": secret, "key": key_json(row)}


ORG_FUNCTIONS: dict[str, Any] = {
    "org.getAll": get_all,
    "org.create": create,
    "org.get": get,
    "org.set": set_,
    "org.addAdmin": add_admin,
    "org.addUser": add_user,
    "org.createUser": create_user,
    "org.createToken": create_token,
    "org.expireToken": expire_token,
    "org.getUsers": get_users,
    "org.removeUser": remove_user,
    "org.removeAdmin": remove_admin,
    # org.message is messages.py's (it sends messages; this module is imported by that one)
}
