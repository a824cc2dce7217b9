"""messages.send / messages.get through the official client (issue 19 item 5): stored, with
per-account read state, threads, bounds, and never to an account the sender cannot see."""

from __future__ import annotations

import pytest

from tests.integration.test_orgs import email_of, hub_for, make_account
from tests.server import Server


@pytest.fixture
def pair(server: Server):
    """Two accounts that share a project."""
    a, b = make_account(server, "Ada Sender"), make_account(server, "Bo Receiver")
    hub_a = hub_for(server, a)
    project_id = hub_a.projects.create_project(title="shared")
    hub_a.projects.add_collaborator(project_id, b.account_id)
    return a, b


def test_send_get_read_state_and_threads(server: Server, pair) -> None:
    a, b = pair
    hub_a, hub_b = hub_for(server, a), hub_for(server, b)
    first = hub_a.messages.send("Hello", "First *body*", [b.account_id])
    assert isinstance(first, int)
    got = hub_b.messages.get()
    assert got[0]["id"] == first
    row = got[0]
    assert set(row) >= {"id", "from_id", "to_ids", "subject", "body", "sent", "thread_id", "index",
                        "read", "saved", "starred", "liked", "deleted", "expire"}
    assert (row["from_id"], row["to_ids"], row["subject"], row["body"]) == \
        (a.account_id, [b.account_id], "Hello", "First *body*")
    assert row["read"] is False and row["thread_id"] is None and row["sent"].endswith("Z")
    assert [m["id"] for m in hub_b.messages.get(type="new")] == [first]
    assert hub_a.messages.get(type="received") == [] or first not in [m["id"] for m in hub_a.messages.get()]
    assert hub_a.messages.get(type="sent")[0]["id"] == first

    # read and starred, as CoCalc's front end sets them (db.userQuery on messages)
    assert hub_b.db.query({"messages": {"id": first, "read": True, "starred": True}}) == {}
    assert hub_b.messages.get(type="new") == []
    assert hub_b.messages.get(type="starred")[0]["read"] is True
    with pytest.raises(RuntimeError, match="no message"):
        hub_for(server, make_account(server, "Third")).db.query({"messages": {"id": first, "read": True}})

    # a reply by e-mail address joins the thread
    reply = hub_b.messages.send("Re: Hello", "Reply", [email_of(server, a)], reply_id=first)
    assert hub_a.messages.get(type="new")[0]["thread_id"] == first
    assert hub_a.messages.get(type="new")[0]["id"] == reply
    # limit and offset
    third = hub_a.messages.send("Again", "x", [b.account_id])
    assert [m["id"] for m in hub_b.messages.get(limit=1)] == [third]
    assert [m["id"] for m in hub_b.messages.get(limit=1, offset=1)] == [first]


def test_refusals(server: Server, pair) -> None:
    a, b = pair
    hub_a = hub_for(server, a)
    stranger = make_account(server, "Stranger Danger")
    text = "there is no such account that shares a project or an organization with you"
    with pytest.raises(RuntimeError, match=text):
        hub_a.messages.send("hi", "x", [stranger.account_id])
    with pytest.raises(RuntimeError, match=text):
        hub_a.messages.send("hi", "x", [email_of(server, stranger)])
    with pytest.raises(RuntimeError, match=text):   # the same for an address nobody has
        hub_a.messages.send("hi", "x", ["nobody-at-all@example.org"])
    with pytest.raises(RuntimeError, match="subject must be at most 1024"):
        hub_a.messages.send("s" * 1025, "x", [b.account_id])
    with pytest.raises(RuntimeError, match="body must be at most 65536"):
        hub_a.messages.send("s", "b" * 65537, [b.account_id])
    with pytest.raises(RuntimeError, match="at most 100 recipients"):
        hub_a.messages.send("s", "b", [b.account_id] * 101)
    with pytest.raises(RuntimeError, match="subject must be a non-empty string"):
        hub_a.messages.send("", "b", [b.account_id])
    with pytest.raises(RuntimeError, match="to_ids must be a non-empty list"):
        hub_a.messages.send("s", "b", [])
    with pytest.raises(RuntimeError, match="no message 999999"):
        hub_a.messages.send("s", "b", [b.account_id], reply_id=999999)
    with pytest.raises(RuntimeError, match="limit must be an integer"):
        hub_a.messages.get(limit=10**9)
    with pytest.raises(RuntimeError, match="type must be one of"):
        hub_a.call("messages.get", [{"type": "spam"}])
    # nothing was stored by the refused sends
    assert hub_for(server, stranger).messages.get() == []


def test_site_admin_may_message_anyone(server: Server) -> None:
    admin = make_account(server, "Msg Admin", admin=True)
    lone = make_account(server, "Lone Wolf")
    message_id = hub_for(server, admin).messages.send("Notice", "maintenance", [lone.account_id])
    assert hub_for(server, lone).messages.get()[0]["id"] == message_id
    # and the plain account may answer the site admin
    hub_for(server, lone).messages.send("Re", "ok", [admin.account_id], reply_id=message_id)


def test_plain_key_messages_itself(server: Server) -> None:
    """What a plain key can always do, with nobody else around: message itself."""
    me = make_account(server, "Alone")
    hub = hub_for(server, me)
    message_id = hub.messages.send("Note to self", "remember", [me.account_id])
    got = hub.messages.get(type="new")
    assert got[0]["id"] == message_id and got[0]["read"] is False
    assert hub.messages.get(type="sent")[0]["id"] == message_id
    assert hub.messages.get(type="liked") == [] and hub.messages.get(type="starred") == []
