"""org.* through the official client (issue 19 item 1): every method as its docstring says,
with a site admin's key, an org admin's key and a plain key, and the refusals."""

from __future__ import annotations

import uuid

import cocalc_api
import httpx
import pytest

from tests.server import Account, Server


def make_account(server: Server, name: str, *, admin: bool = False, email: bool = True) -> Account:
    args = ["account", "create", "--name", name]
    if email:
        args += ["--email", f"{uuid.uuid4().hex[:12]}@example.org"]
    if admin:
        args.append("--admin")
    out = server.cli(*args)
    return Account(out["account_id"], out["api_key"])


def hub_for(server: Server, account: Account) -> cocalc_api.Hub:
    return cocalc_api.Hub(api_key=account.api_key, host=server.url)


def email_of(server: Server, account: Account) -> str:
    rows = hub_for(server, account).db.query({"accounts": {"email_address": None}})
    return rows["accounts"]["email_address"]


def org_name() -> str:
    return "org-" + uuid.uuid4().hex[:10]


@pytest.fixture
def site_admin(server: Server) -> Account:
    return make_account(server, "Site Admin", admin=True)


@pytest.fixture
def admin_hub(server: Server, site_admin: Account) -> cocalc_api.Hub:
    return hub_for(server, site_admin)


def test_site_admin_creates_gets_sets_and_lists(admin_hub, site_admin: Account) -> None:
    name = org_name()
    organization_id = admin_hub.org.create(name)
    assert str(uuid.UUID(organization_id)) == organization_id
    assert admin_hub.org.set(name, title="Acme", description="a *test*", email_address="hi@acme.test",
                             link="https://acme.test") is None
    got = admin_hub.org.get(name)
    assert got["name"] == name and got["organization_id"] == organization_id
    assert (got["title"], got["description"], got["email_address"], got["link"]) == \
        ("Acme", "a *test*", "hi@acme.test", "https://acme.test")
    assert got["admin_account_ids"] == []
    assert name in {o["name"] for o in admin_hub.org.get_all()}
    with pytest.raises(RuntimeError, match="already exists"):
        admin_hub.org.create(name)
    with pytest.raises(RuntimeError, match="name must be 1 to 39"):
        admin_hub.org.create("x" * 40)
    with pytest.raises(RuntimeError, match="name must be"):
        admin_hub.org.create("no spaces")


def test_org_admin_manages_own_org(server: Server, admin_hub) -> None:
    name = org_name()
    admin_hub.org.create(name)
    boss = make_account(server, "Org Boss")
    member = make_account(server, "Org Member")
    admin_hub.org.add_admin(name, boss.account_id)
    admin_hub.org.add_user(name, email_of(server, member))   # by e-mail address
    boss_hub = hub_for(server, boss)

    assert [o["name"] for o in boss_hub.org.get_all()] == [name]
    assert boss_hub.org.get_all()[0]["relation"] == "admin"
    assert boss_hub.org.set(name, title="Mine") is None
    new_id = boss_hub.org.create_user(name, f"{uuid.uuid4().hex[:8]}@example.org", firstName="Nia",
                                      lastName="New", password="ignored-here")
    assert str(uuid.UUID(new_id)) == new_id
    users = boss_hub.org.get_users(name)
    assert {u["account_id"] for u in users} == {member.account_id, new_id}
    assert set(users[0]) == {"first_name", "last_name", "account_id", "email_address"}
    assert any(u["first_name"] == "Nia" and u["last_name"] == "New" for u in users)

    # an org admin promotes a member, then demotes it; removes a member
    assert boss_hub.org.add_admin(name, member.account_id) is None
    assert member.account_id in boss_hub.org.get(name)["admin_account_ids"]
    assert boss_hub.org.remove_admin(name, member.account_id) is None
    assert member.account_id not in boss_hub.org.get(name)["admin_account_ids"]
    assert boss_hub.org.remove_user(name, new_id) is None
    assert {u["account_id"] for u in boss_hub.org.get_users(name)} == {member.account_id}
    with pytest.raises(RuntimeError, match="not a member"):
        boss_hub.org.remove_user(name, new_id)
    with pytest.raises(RuntimeError, match="not an admin"):
        boss_hub.org.remove_admin(name, member.account_id)

    # what an org admin may not do: add existing accounts, promote non-members, create orgs
    stranger = make_account(server, "Stranger")
    with pytest.raises(RuntimeError, match="only site admins can add an existing account"):
        boss_hub.org.add_user(name, stranger.account_id)
    with pytest.raises(RuntimeError, match="only make members of the organization admins"):
        boss_hub.org.add_admin(name, stranger.account_id)
    with pytest.raises(RuntimeError, match="only site admins can create"):
        boss_hub.org.create(org_name())

    # a member reads, but does not manage
    member_hub = hub_for(server, member)
    assert member_hub.org.get(name)["title"] == "Mine"
    assert member_hub.org.get_all()[0]["relation"] == "member"
    for call in (lambda: member_hub.org.set(name, title="x"),
                 lambda: member_hub.org.get_users(name),
                 lambda: member_hub.org.create_user(name, "m@example.org"),
                 lambda: member_hub.org.remove_user(name, member.account_id)):
        with pytest.raises(RuntimeError, match=f"you must be an admin of the organization '{name}'"):
            call()


def test_plain_account_is_refused_and_sees_no_orgs(server: Server, admin_hub) -> None:
    name = org_name()
    admin_hub.org.create(name)
    plain = hub_for(server, make_account(server, "Plain"))
    assert plain.org.get_all() == []
    with pytest.raises(RuntimeError, match=f"^Error: you must be an admin or a member of the organization '{name}'$"):
        plain.org.get(name)
    # the same text for an organization that does not exist: names cannot be probed
    with pytest.raises(RuntimeError, match="^Error: you must be an admin or a member of the organization 'nope-x'$"):
        plain.org.get("nope-x")
    with pytest.raises(RuntimeError, match="you must be an admin of the organization"):
        plain.org.set(name, title="x")
    with pytest.raises(RuntimeError, match="only site admins can create"):
        plain.org.create(org_name())
    with pytest.raises(RuntimeError, match="you must be an admin of the organization"):
        plain.org.message(name, "hi", "body")
    # a token for itself is allowed: it is a key the account could make anyway
    me = plain.system.test()["account_id"]
    own = plain.org.create_token(me)
    r = httpx.post(server.url + "/api/v3/tokens/redeem", json={"token": own["token"]})
    assert r.status_code == 200 and r.json()["account_id"] == me


def test_error_is_cocalc_shaped_over_conat(server: Server, admin_hub) -> None:
    plain = make_account(server, "Raw")
    r = server.post("/api/conat/hub", {"name": "org.get", "args": [{"name": "whatever"}]}, key=plain.api_key)
    assert r.status_code == 200
    assert r.json() == {"error": "Error: you must be an admin or a member of the organization 'whatever'"}


def test_token_flow_gives_an_api_key_once(server: Server, admin_hub) -> None:
    name = org_name()
    admin_hub.org.create(name)
    boss = make_account(server, "Token Boss")
    admin_hub.org.add_admin(name, boss.account_id)
    boss_hub = hub_for(server, boss)
    email = f"{uuid.uuid4().hex[:8]}@example.org"
    new_id = boss_hub.org.create_user(name, email, firstName="Tok")
    token = boss_hub.org.create_token(email)
    assert set(token) == {"token", "url"}
    assert token["url"].startswith("/api/v3/tokens/redeem?token=")
    # GET (a link preview) never spends it
    assert httpx.get(server.url + token["url"]).status_code == 405
    r = httpx.post(server.url + token["url"])
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["account_id"] == new_id and answer["api_key"].startswith("sk-")
    assert hub_for(server, Account(new_id, answer["api_key"])).system.test()["account_id"] == new_id
    again = httpx.post(server.url + "/api/v3/tokens/redeem", json={"token": token["token"]})
    assert again.status_code == 401 and again.json() == {"error": "invalid, expired or already used token"}

    second = boss_hub.org.create_token(new_id)
    assert boss_hub.org.expire_token(second["token"]) is None
    r = httpx.post(server.url + "/api/v3/tokens/redeem", json={"token": second["token"]})
    assert r.status_code == 401
    with pytest.raises(RuntimeError, match="no such token"):
        boss_hub.org.expire_token("not-a-token-at-all")


def test_redeem_bad_input(server: Server) -> None:
    url = server.url + "/api/v3/tokens/redeem"
    assert httpx.post(url).status_code == 400
    assert httpx.post(url, json={"token": 5}).status_code == 400
    assert httpx.post(url, json={"token": "x", "more": 1}).status_code == 422
    assert httpx.post(url, content=b"{nope", headers={"Content-Type": "application/json"}).status_code == 400
    assert httpx.post(url, content=b"x" * 10000).status_code == 413
    assert httpx.post(url, json={"token": "y" * 40}).status_code == 401


def test_org_message_reaches_every_member(server: Server, admin_hub) -> None:
    name = org_name()
    admin_hub.org.create(name)
    boss, a, b = (make_account(server, n) for n in ("Msg Boss", "Member A", "Member B"))
    admin_hub.org.add_admin(name, boss.account_id)
    admin_hub.org.add_user(name, a.account_id)
    admin_hub.org.add_user(name, b.account_id)
    assert hub_for(server, boss).org.message(name, "Welcome", "Hello **all**") is None
    for member in (a, b):
        got = hub_for(server, member).messages.get(type="new")
        assert got[0]["subject"] == "Welcome" and got[0]["body"] == "Hello **all**"
        assert got[0]["from_id"] == boss.account_id
        assert got[0]["to_ids"] == [member.account_id]   # never the member list
    sent = hub_for(server, boss).messages.get(type="sent")
    assert sent[0]["subject"] == "Welcome" and sent[0]["organization"] == name
    assert sent[0]["to_ids"] == []
    empty = org_name()
    admin_hub.org.create(empty)
    assert admin_hub.org.message(empty, "Nobody", "here") is None   # no members: nothing to send
