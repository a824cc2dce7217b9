"""CoCalc's ``system.userSearch``: find accounts by name or e-mail address.

The query is split on white space and commas.  Words with an ``@`` are e-mail addresses and
match exactly (case-insensitive); the other words must each start a word of the first or
last name (a site admin's words may also start the e-mail address).  A result carries
``email_address`` only when it matched an address the caller typed in full, or for a site
admin: a plain account never learns a stranger's address from a name.  Disabled accounts
are found by site admins only.

Bounds: the query is at most ``QUERY_MAX`` characters and ``TERMS_MAX`` words; ``limit``
defaults to 20 and is capped at 50 for plain accounts (CoCalc's numbers) and at
``ADMIN_LIMIT_MAX`` for site admins.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Final

from ..errors import RemoteError
from .orgs import is_site_admin
from .service import HubService

QUERY_MAX: Final = 1000
TERMS_MAX: Final = 20
LIMIT_DEFAULT: Final = 20
LIMIT_MAX: Final = 50
ADMIN_LIMIT_MAX: Final = 1000
_SPLIT = re.compile(r"[\s,]+")


def _ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


async def user_search(hub: HubService, account_id: str, args: list[Any], budget: float | None) -> Any:
    opts = dict(args[0]) if args and isinstance(args[0], dict) else {}
    query = opts.get("query")
    if not isinstance(query, str):
        raise RemoteError("Error: query must be a string")
    if len(query) > QUERY_MAX:
        raise RemoteError(f"Error: query must be at most {QUERY_MAX} characters")
    admin = await is_site_admin(hub, account_id)
    cap = ADMIN_LIMIT_MAX if admin else LIMIT_MAX
    limit = opts.get("limit", LIMIT_DEFAULT)
    if limit is None:
        limit = LIMIT_DEFAULT
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise RemoteError("Error: limit must be a non-negative integer")
    limit = min(limit, cap)
    words = [w for w in _SPLIT.split(query.strip().lower()) if w]
    if len(words) > TERMS_MAX:
        raise RemoteError(f"Error: query must have at most {TERMS_MAX} words")
    emails = [w for w in words if "@" in w]
    names = [w for w in words if "@" not in w]
    if not words or limit == 0:
        return []
    found: dict[str, dict[str, Any]] = {}
    by_email: set[str] = set()
    if emails:
        for row in await hub.db.search_accounts(emails=emails, limit=limit, include_banned=admin):
            found[row["account_id"]] = row
            by_email.add(row["account_id"])
    if names and len(found) < limit:
        for row in await hub.db.search_accounts(terms=names, limit=limit, match_email=admin,
                                                include_banned=admin):
            found.setdefault(row["account_id"], row)
    results = []
    for row in list(found.values())[:limit]:
        result: dict[str, Any] = {
            "account_id": row["account_id"],
            "first_name": row["first_name"],
            "last_name": row["last_name"],
            "name": None,
            "last_active": _ms(row.get("last_active")),
            "created": _ms(row.get("created")),
            "email_address_verified": None,
        }
        if admin or row["account_id"] in by_email:
            result["email_address"] = row["email"]
        results.append(result)
    return results


USER_SEARCH_FUNCTIONS: dict[str, Any] = {"system.userSearch": user_search}
