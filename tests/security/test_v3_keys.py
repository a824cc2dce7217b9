"""v3 API keys and accounts (issue 16 item 1): list/create/revoke through the same
HubService.manage_api_keys as CoCalc's system.manageApiKeys; a revoked key is refused at
once (also after it was just used, i.e. while it sits in the hub's key cache); accounts are
for admins only; nobody sees a secret twice or reaches another account's keys."""

from __future__ import annotations

import httpx

from tests.server import Server


def v3(server: Server, key: str, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, server.url + "/api/v3" + path, headers={"Authorization": f"Bearer {key}"},
                         timeout=60, **kwargs)


def test_keys_list_create_revoke_is_401_at_once(server: Server, account) -> None:
    created = v3(server, account.api_key, "POST", "/keys", json={"name": "ci", "expire": "2099-01-01T00:00:00Z"})
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["secret"].startswith("sk-") and key["name"] == "ci" and key["expire"].startswith("2099-01-01T")
    assert key["account_id"] == account.account_id
    # the new key works (and is now in the resolver's cache)
    for _ in range(3):
        assert v3(server, key["secret"], "GET", "/projects").status_code == 200
    listed = v3(server, account.api_key, "GET", "/keys")
    assert listed.status_code == 200
    assert key["id"] in [k["id"] for k in listed.json()]
    assert all("secret" not in k for k in listed.json()), listed.text   # never shown again
    assert key["secret"] not in listed.text
    # revoke: 204, and the very next request with it is 401
    assert v3(server, account.api_key, "DELETE", f"/keys/{key['id']}").status_code == 204
    assert v3(server, key["secret"], "GET", "/projects").status_code == 401
    r = httpx.post(server.url + "/api/conat/hub", headers={"Authorization": f"Bearer {key['secret']}"},
                   json={"name": "system.getNames", "args": [[account.account_id]]}, timeout=30)
    assert "error" in r.json(), r.text   # refused on the CoCalc surface too
    assert key["id"] not in [k["id"] for k in v3(server, account.api_key, "GET", "/keys").json()]
    # again: 404; not an integer: 400
    assert v3(server, account.api_key, "DELETE", f"/keys/{key['id']}").status_code == 404
    assert v3(server, account.api_key, "DELETE", "/keys/abc").status_code == 400


def test_keys_are_private_and_checked(server: Server, account) -> None:
    other = server.new_account("Other")
    theirs = v3(server, other.api_key, "POST", "/keys", json={"name": "theirs"}).json()
    # another account's key: not listed, not deletable (404, as if it did not exist)
    assert theirs["id"] not in [k["id"] for k in v3(server, account.api_key, "GET", "/keys").json()]
    assert v3(server, account.api_key, "DELETE", f"/keys/{theirs['id']}").status_code == 404
    assert v3(server, theirs["secret"], "GET", "/projects").status_code == 200
    # only admins may list another account's keys
    r = v3(server, account.api_key, "GET", f"/keys?account_id={other.account_id}")
    assert r.status_code == 403, r.text
    admin = server.cli("account", "create", "--name", "Keys Admin", "--admin")
    r = v3(server, admin["api_key"], "GET", f"/keys?account_id={other.account_id}")
    assert r.status_code == 200 and theirs["id"] in [k["id"] for k in r.json()], r.text
    assert theirs["secret"] not in r.text
    # bad input: past or malformed expiry, unknown fields, wrong types
    for body, status in [({"expire": "2001-01-01T00:00:00Z"}, 400), ({"expire": "tomorrow"}, 400),
                         ({"name": 3}, 400), ({"nmae": "x"}, 422)]:
        r = v3(server, account.api_key, "POST", "/keys", json=body)
        assert r.status_code == status and "error" in r.json(), (body, r.text)
    assert v3(server, account.api_key, "GET", "/keys?acount_id=x").status_code == 422
    # without a key: 401
    assert httpx.get(server.url + "/api/v3/keys", timeout=30).status_code == 401


def test_project_keys_cannot_manage_keys(server: Server, account) -> None:
    project_id = v3(server, account.api_key, "POST", "/projects", json={"title": "pk"}).json()["project_id"]
    pkey = v3(server, account.api_key, "POST", "/keys", json={"name": "p", "project_id": project_id})
    assert pkey.status_code == 201 and pkey.json()["project_id"] == project_id, pkey.text
    secret = pkey.json()["secret"]
    assert v3(server, secret, "GET", "/keys").status_code == 403
    assert v3(server, secret, "POST", "/keys", json={"name": "escalate"}).status_code == 403
    assert v3(server, secret, "GET", "/accounts").status_code == 403
    assert v3(server, account.api_key, "DELETE", f"/keys/{pkey.json()['id']}").status_code == 204
    assert v3(server, secret, "GET", f"/projects/{project_id}").status_code == 401


def test_accounts_admin_only(server: Server, account) -> None:
    r = v3(server, account.api_key, "GET", "/accounts")
    assert r.status_code == 403 and "error" in r.json(), r.text
    admin = server.cli("account", "create", "--name", "Accounts Admin", "--admin")
    r = v3(server, admin["api_key"], "GET", "/accounts")
    assert r.status_code == 200, r.text
    rows = {a["account_id"]: a for a in r.json()}
    assert account.account_id in rows and rows[admin["account_id"]]["is_admin"] is True
    assert not any("key" in field or "hash" in field or "password" in field for a in r.json() for field in a)
    assert rows[account.account_id]["created"].endswith("Z")
    assert v3(server, admin["api_key"], "GET", "/accounts?limit=1").status_code == 422
