"""``projecthub org list|create|add-user|add-admin|remove-user|remove-admin|create-user|
create-token|expire-token``: organizations from the operator's shell (hub/orgs.py has the API).

The operator acts as a site admin on the store of ``--data-dir`` (changes are seen by a
running server at once).  Each command prints one JSON object; bad input prints
``{"error": ...}`` and one ``projecthub: error: ...`` line on stderr and exits 2 (cli.main
turns the ValueError raised here into that).
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import timedelta
from typing import Any, Callable

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}$")
_MAX_TOKEN_HOURS = 24 * 30


def _emit(value: dict[str, Any]) -> None:
    print(json.dumps(value))


def _name(value: str) -> str:
    from .errors import RemoteError
    from .hub.orgs import org_name
    try:
        return org_name(value)
    except RemoteError as exc:
        raise ValueError(exc.message.removeprefix("Error: ").replace("name must", "--name must")) from None


def _org(store: Any, name: str) -> dict[str, Any]:
    org = store.get_org(_name(name))
    if org is None:
        raise ValueError(f"there is no organization named '{_name(name)}' (projecthub org list)")
    return org


def _account(store: Any, user: str) -> dict[str, Any]:
    from .hub.service import is_uuid
    account = store.get_account(user.lower()) if is_uuid(user) else (
        store.get_account_by_email(user) if "@" in user else None)
    if account is None:
        raise ValueError(f"--user {user!r}: no account with that id or e-mail address")
    return account


def _org_json(org: dict[str, Any], members: int | None = None) -> dict[str, Any]:
    from .hub.service import iso
    row = {"name": org["name"], "organization_id": org["organization_id"],
           **{f: org.get(f) or "" for f in ("title", "description", "email_address", "link")},
           "admin_account_ids": org["admin_account_ids"], "created": iso(org.get("created"))}
    if members is not None:
        row["members"] = members
    return row


def add_org_parser(sub: argparse._SubParsersAction,
                   admin: Callable[..., argparse.ArgumentParser],
                   open_store: Callable[[argparse.Namespace], Any]) -> None:
    """``admin`` and ``open_store`` are cli.py's (passed in: ``python -m projecthub.cli``
    runs cli.py as __main__, so importing it here would load a second copy)."""

    def cmd_list(args: argparse.Namespace) -> None:
        store = open_store(args)
        orgs = store.list_orgs(_account(store, args.account)["account_id"] if args.account else None)
        _emit({"orgs": [_org_json(o, len(store.org_members(o["organization_id"]))) for o in orgs]})

    def cmd_create(args: argparse.Namespace) -> None:
        store = open_store(args)
        name = _name(args.name)
        organization_id = store.create_org(name)
        _emit({"name": name, "organization_id": organization_id})

    def cmd_membership(args: argparse.Namespace) -> None:
        store = open_store(args)
        org = _org(store, args.name)
        account = _account(store, args.user)
        oid, aid = org["organization_id"], account["account_id"]
        if args.action == "add-user":
            store.add_org_member(oid, aid)
        elif args.action == "add-admin":
            store.add_org_admin(oid, aid)
        elif args.action == "remove-user":
            if not store.remove_org_member(oid, aid):
                raise ValueError(f"account {aid} is not a member of '{org['name']}'")
            store.expire_sign_in_tokens(account_id=aid)
        else:
            if not store.remove_org_admin(oid, aid):
                raise ValueError(f"account {aid} is not an admin of '{org['name']}'")
            store.expire_sign_in_tokens(created_by=aid)
        _emit({"name": org["name"], "account_id": aid, "action": args.action, "done": True})

    def cmd_create_user(args: argparse.Namespace) -> None:
        store = open_store(args)
        org = _org(store, args.name)
        if not _EMAIL.match(args.email.strip()):
            raise ValueError("--email must be an e-mail address")
        account_id = store.create_org_account(org["organization_id"], args.email.strip(),
                                              args.first_name or "", args.last_name or "")
        _emit({"name": org["name"], "account_id": account_id})

    def cmd_create_token(args: argparse.Namespace) -> None:
        from .hub.orgs import REDEEM_PATH
        from .hub.service import iso
        if not 0 < args.hours <= _MAX_TOKEN_HOURS:
            raise ValueError(f"--hours must be more than 0 and at most {_MAX_TOKEN_HOURS}")
        store = open_store(args)
        account = _account(store, args.user)
        if account["banned"]:
            raise ValueError(f"account {account['account_id']} is disabled (projecthub account enable)")
        token, expire = store.create_sign_in_token(account["account_id"], account["account_id"],
                                                   timedelta(hours=args.hours))
        _emit({"token": token, "url": f"{REDEEM_PATH}?token={token}",
               "account_id": account["account_id"], "expire": iso(expire)})

    def cmd_expire_token(args: argparse.Namespace) -> None:
        store = open_store(args)
        if store.get_sign_in_token(args.token) is None:
            raise ValueError("no such token")
        _emit({"expired": store.expire_sign_in_token(args.token)})

    org = sub.add_parser("org", help="organizations: create, list, members, admins, sign-in tokens",
                         description="Organizations (CoCalc's org.*), as a site admin. Each subcommand "
                                     "prints one JSON object.")
    actions = org.add_subparsers(dest="action", required=True, metavar="ACTION")
    p_list = admin(actions, "list", "list organizations with their admins and member counts", cmd_list)
    p_list.add_argument("--account", default=None, metavar="ID|EMAIL",
                        help="only those this account is an admin or member of (default: all)")
    p_create = admin(actions, "create", "create an organization", cmd_create)
    p_create.add_argument("--name", required=True, help="unique, 1-39 of a-z 0-9 - _ . (never changes)")
    for action, text in (("add-user", "make an existing account a member (an account is in at most "
                                      "one organization)"),
                         ("add-admin", "make an account an admin of the organization"),
                         ("remove-user", "remove a member (expires its unused sign-in tokens)"),
                         ("remove-admin", "remove an admin (expires the sign-in tokens it issued)")):
        p = admin(actions, action, text, cmd_membership)
        p.add_argument("--name", required=True, help="the organization")
        p.add_argument("--user", required=True, metavar="ID|EMAIL", help="the account")
    p_user = admin(actions, "create-user", "create a new account that is a member", cmd_create_user)
    p_user.add_argument("--name", required=True, help="the organization")
    p_user.add_argument("--email", required=True, help="the new account's unique e-mail address")
    p_user.add_argument("--first-name", default=None, help="(default: empty)")
    p_user.add_argument("--last-name", default=None, help="(default: empty)")
    p_token = admin(actions, "create-token", "a one-time sign-in token: POST it to "
                                             "/api/v3/tokens/redeem for an API key", cmd_create_token)
    p_token.add_argument("--user", required=True, metavar="ID|EMAIL", help="the account it signs in as")
    p_token.add_argument("--hours", type=float, default=24.0,
                         help=f"how long it stays valid (default: 24; at most {_MAX_TOKEN_HOURS})")
    p_expire = admin(actions, "expire-token", "expire a sign-in token now", cmd_expire_token)
    p_expire.add_argument("--token", required=True, help="the token create-token printed")
