"""Organizations, sign-in tokens, user search and messages as a hostile user would try them:
a token spent twice, after it expired, or raced; an org admin of A reaching into org B or
minting a token worth more than its own role; e-mail addresses leaking through
system.userSearch or org.getUsers; messages to strangers or into others' threads."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from datetime import datetime, timedelta, timezone

import cocalc_api
import httpx
import pytest

from projecthub.store.orgs import token_hash
from tests.server import Account, Server


def _account(server: Server, name: str, *, admin: bool = False) -> Account:
    args = ["account", "create", "--name", name, "--email", f"{uuid.uuid4().hex[:12]}@example.org"]
    out = server.cli(*args, *(["--admin"] if admin else []))
    return Account(out["account_id"], out["api_key"])


def _hub(server: Server, account: Account) -> cocalc_api.Hub:
    return cocalc_api.Hub(api_key=account.api_key, host=server.url)


def _email(server: Server, account: Account) -> str:
    return _hub(server, account).db.query({"accounts": {"email_address": None}})["accounts"]["email_address"]


def _redeem(server: Server, token: str) -> httpx.Response:
    return httpx.post(server.url + "/api/v3/tokens/redeem", json={"token": token}, timeout=30)


@pytest.fixture(scope="module")
def world(server: Server):
    """Site admin; org A with admin boss_a and member a1; org B with admin boss_b and member b1."""
    root = _account(server, "Root", admin=True)
    root_hub = _hub(server, root)
    names = {}
    people = {}
    for side in ("a", "b"):
        name = f"sec-{side}-{uuid.uuid4().hex[:8]}"
        root_hub.org.create(name)
        boss, member = _account(server, f"Boss {side}"), _account(server, f"Member {side}")
        root_hub.org.add_admin(name, boss.account_id)
        root_hub.org.add_user(name, member.account_id)
        names[side] = name
        people[f"boss_{side}"], people[f"{side}1"] = boss, member
    return root, names, people


def test_token_is_single_use_even_when_raced(server: Server, world) -> None:
    _, names, people = world
    token = _hub(server, people["boss_a"]).org.create_token(people["a1"].account_id)["token"]
    codes: list[int] = []
    threads = [threading.Thread(target=lambda: codes.append(_redeem(server, token).status_code))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] + [401] * 7
    assert _redeem(server, token).status_code == 401


def test_expired_token_is_refused_and_only_its_hash_is_stored(server: Server, world) -> None:
    _, names, people = world
    token = _hub(server, people["boss_a"]).org.create_token(people["a1"].account_id)["token"]
    db = server.data_dir / "hub.db"
    raw = db.read_bytes() + (db.with_name("hub.db-wal").read_bytes() if db.with_name("hub.db-wal").exists() else b"")
    assert token.encode() not in raw
    past = (datetime.now(timezone.utc) - timedelta(seconds=1)).replace(tzinfo=None)
    with sqlite3.connect(db, timeout=30) as conn:   # the token's 24 hours have passed
        conn.execute("UPDATE sign_in_tokens SET expire = ? WHERE token_hash = ?",
                     (past.isoformat(sep=" "), token_hash(token)))
    assert _redeem(server, token).status_code == 401


def test_org_admin_of_a_cannot_manage_b(server: Server, world) -> None:
    _, names, people = world
    boss_a = _hub(server, people["boss_a"])
    b, b1 = names["b"], people["b1"]
    refusal = f"you must be an admin of the organization '{b}'"
    calls = [
        lambda: boss_a.org.set(b, title="pwned"),
        lambda: boss_a.org.get_users(b),
        lambda: boss_a.org.create_user(b, f"{uuid.uuid4().hex[:8]}@example.org"),
        lambda: boss_a.org.remove_user(b, b1.account_id),
        lambda: boss_a.org.add_admin(b, people["boss_a"].account_id),
        lambda: boss_a.org.remove_admin(b, people["boss_b"].account_id),
        lambda: boss_a.org.message(b, "spam", "spam"),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match=refusal):
            call()
    with pytest.raises(RuntimeError, match="or a site admin"):
        boss_a.org.create_token(b1.account_id)
    b_token = _hub(server, people["boss_b"]).org.create_token(b1.account_id)["token"]
    with pytest.raises(RuntimeError, match="no such token, or you may not expire it"):
        boss_a.org.expire_token(b_token)
    assert _redeem(server, b_token).status_code == 200   # still good: A could not touch it
    root_hub = _hub(server, world[0])
    assert root_hub.org.get(b)["title"] == ""
    assert b1.account_id in {u["account_id"] for u in root_hub.org.get_users(b)}


def test_token_never_buys_more_than_the_callers_role(server: Server, world) -> None:
    root, names, people = world
    root_hub = _hub(server, root)
    boss_a = _hub(server, people["boss_a"])
    # a site admin who is a member of org A
    high = _account(server, "High Member", admin=True)
    root_hub.org.add_user(names["a"], high.account_id)
    with pytest.raises(RuntimeError, match="or a site admin"):
        boss_a.org.create_token(high.account_id)
    # a member of A who is an admin of B
    double = _account(server, "Double Agent")
    root_hub.org.add_user(names["a"], double.account_id)
    root_hub.org.add_admin(names["b"], double.account_id)
    with pytest.raises(RuntimeError, match="or a site admin"):
        boss_a.org.create_token(double.account_id)
    # a plain member of another org cannot be promoted into A by A's admin either
    with pytest.raises(RuntimeError, match="only make members"):
        boss_a.org.add_admin(names["a"], people["b1"].account_id)
    # and a plain account gets no token for anyone, nor learns whether the user exists
    plain = _hub(server, _account(server, "Plain Token"))
    for user in (people["a1"].account_id, _email(server, people["a1"]), "nobody@example.org"):
        with pytest.raises(RuntimeError, match="or a site admin"):
            plain.org.create_token(user)


def test_leaving_the_org_or_the_admin_role_expires_tokens(server: Server, world) -> None:
    root, names, _ = world
    root_hub = _hub(server, root)
    name = f"sec-c-{uuid.uuid4().hex[:8]}"
    root_hub.org.create(name)
    boss, member, other = (_account(server, n) for n in ("Boss C", "Member C", "Other C"))
    root_hub.org.add_admin(name, boss.account_id)
    root_hub.org.add_user(name, member.account_id)
    root_hub.org.add_user(name, other.account_id)
    boss_hub = _hub(server, boss)
    leaving = boss_hub.org.create_token(member.account_id)["token"]
    boss_hub.org.remove_user(name, member.account_id)
    assert _redeem(server, leaving).status_code == 401
    issued = boss_hub.org.create_token(other.account_id)["token"]
    root_hub.org.remove_admin(name, boss.account_id)
    assert _redeem(server, issued).status_code == 401
    with pytest.raises(RuntimeError, match="or a site admin"):
        boss_hub.org.create_token(other.account_id)


def test_no_email_leaks_to_plain_accounts(server: Server, world) -> None:
    _, names, people = world
    victim = people["b1"]
    email = _email(server, victim)
    first = _hub(server, victim).db.query({"accounts": {"first_name": None}})["accounts"]["first_name"]
    plain = _hub(server, _account(server, "Nosy Parker"))
    for query in (first, f"{first} B", email.split("@")[0], email[:-1], "@example.org", "%", "_"):
        for row in plain.system.user_search(query):
            assert "email_address" not in row, (query, row)
            assert email not in repr(row)
    # a member reads its org, but not the other members' addresses
    with pytest.raises(RuntimeError, match="you must be an admin of the organization"):
        _hub(server, people["a1"]).org.get_users(names["a"])


def test_no_message_to_a_stranger_or_into_their_threads(server: Server, world) -> None:
    _, names, people = world
    a1, b1 = _hub(server, people["a1"]), _hub(server, people["b1"])
    with pytest.raises(RuntimeError, match="no such account that shares"):
        a1.messages.send("hi", "x", [people["b1"].account_id])
    with pytest.raises(RuntimeError, match="no such account that shares"):
        a1.messages.send("hi", "x", [_email(server, people["b1"])])
    # in the same org they may; a third party cannot reply into or flag that thread
    boss_b = _hub(server, people["boss_b"])
    thread = boss_b.messages.send("org", "internal", [people["b1"].account_id])
    with pytest.raises(RuntimeError, match=f"no message {thread}"):
        a1.messages.send("re", "x", [people["a1"].account_id], reply_id=thread)
    with pytest.raises(RuntimeError, match=f"no message {thread}"):
        a1.db.query({"messages": {"id": thread, "deleted": True}})
    with pytest.raises(RuntimeError, match=f"no message {thread}"):
        a1.db.query({"messages": {"id": thread}})
    assert thread not in [m["id"] for kind in ("received", "sent", "new", "starred", "liked")
                          for m in a1.messages.get(type=kind)]
    assert b1.messages.get(type="new")[0]["id"] == thread
