"""system.userSearch through the official client (issue 19 item 2): CoCalc's result shape,
e-mail addresses only for an exact address or a site admin, bounded results and queries."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.test_orgs import email_of, hub_for, make_account
from tests.server import Server

SHAPE = {"account_id", "first_name", "last_name", "name", "last_active", "created",
         "email_address_verified"}


def test_name_search_has_no_email_for_plain_accounts(server: Server) -> None:
    word = "Zq" + uuid.uuid4().hex[:6]
    target = make_account(server, f"{word} Target")
    searcher = hub_for(server, make_account(server, "Plain Searcher"))
    found = searcher.system.user_search(word.lower())
    assert [r["account_id"] for r in found] == [target.account_id]
    assert set(found[0]) == SHAPE
    assert found[0]["first_name"] == word and found[0]["last_name"] == "Target"
    assert isinstance(found[0]["created"], int) and found[0]["created"] > 1.7e12
    # the exact address finds the one account, with its address (the caller knows it)
    email = email_of(server, target)
    by_email = searcher.system.user_search(email.upper())
    assert [r["account_id"] for r in by_email] == [target.account_id]
    assert by_email[0]["email_address"] == email
    # a part of an address finds nothing and shows nothing
    assert searcher.system.user_search(email.split("@")[0]) == []
    assert searcher.system.user_search("@" + email.split("@")[1]) == []


def test_admin_sees_emails_and_last_active(server: Server) -> None:
    word = "Yx" + uuid.uuid4().hex[:6]
    target = make_account(server, f"{word} Person")
    hub_for(server, target).system.ping()   # the key's use is its last_active
    admin = hub_for(server, make_account(server, "Search Admin", admin=True))
    found = admin.system.user_search(word)
    assert [r["account_id"] for r in found] == [target.account_id]
    assert found[0]["email_address"] == email_of(server, target)


def test_bounds(server: Server) -> None:
    word = "Wv" + uuid.uuid4().hex[:6]
    for i in range(3):
        make_account(server, f"{word} N{i}", email=False)
    plain = hub_for(server, make_account(server, "Bounded"))
    assert len(plain.system.user_search(word)) == 3
    assert len(plain.call("system.userSearch", [{"query": word, "limit": 2}])) == 2
    assert len(plain.call("system.userSearch", [{"query": word, "limit": 10**6}])) == 3   # capped, not refused
    with pytest.raises(RuntimeError, match="query must be at most 1000 characters"):
        plain.system.user_search("a" * 1001)
    with pytest.raises(RuntimeError, match="at most 20 words"):
        plain.system.user_search(" ".join(["ab"] * 21))
    with pytest.raises(RuntimeError, match="query must be a string"):
        plain.call("system.userSearch", [{"query": 5}])
    assert plain.system.user_search("   ") == []
    assert plain.system.user_search("%") == []   # no LIKE wildcard matches everyone
