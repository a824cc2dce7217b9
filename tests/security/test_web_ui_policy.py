"""The web UI's Content-Security-Policy cannot be bent by a request, and /ui/ serves only the
built files (issue 20).  The policy puts the request's Host into connect-src (for the
terminal's WebSocket): a crafted Host must not add a directive or a source; an asset name must
never reach the file system.  (The browser side, no violation on any page, is in
tests/integration/test_web_ui.py.)"""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from projecthub.api import ui


@pytest.mark.parametrize("host", [
    "evil; script-src *", "a.example 'unsafe-inline'", "x.example;default-src *", "*", "a b",
    "example.org:80; report-uri https://evil", "ws://evil", "[::1];x", "a" * 300, "", None])
def test_a_crafted_host_adds_nothing_to_the_policy(host: str | None) -> None:
    policy = ui.csp(host)
    assert policy == ui.BASE_CSP + "; connect-src 'self'", policy


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "hub.example.org", "[::1]:8080", "localhost"])
def test_a_plain_host_gets_its_websocket_origins(host: str) -> None:
    assert ui.csp(host) == ui.BASE_CSP + f"; connect-src 'self' ws://{host} wss://{host}"


def test_the_policy_is_strict() -> None:
    directives = dict(d.strip().split(" ", 1) for d in ui.csp("h.example").split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
    assert directives["img-src"] == "'self' data: blob:"
    assert "unsafe" not in ui.csp("h.example") and "*" not in ui.csp("h.example")


def _get(path_name: str) -> int:
    scope = {"type": "http", "method": "GET", "path": "/ui/" + path_name, "headers": [],
             "query_string": b"", "path_params": {"name": path_name}}
    return asyncio.run(ui.asset(Request(scope))).status_code


@pytest.mark.parametrize("name", ["../ui.py", "..%2Fui.py", "/etc/passwd", "index.html", "../../app.py",
                                  "", ".", "..", "main.js", "icon.svg/../../ui.py"])
def test_only_built_assets_are_served(name: str) -> None:
    assert _get(name) == 404


def test_built_assets_are_served() -> None:
    assert ui.ASSETS, "the UI is not built (scripts/ui_build.sh)"
    for name in ui.ASSETS:
        assert _get(name) == 200, name


def test_a_project_file_never_runs_as_the_ui_origin(server, account) -> None:
    """The files API shares its origin with the web UI (which keeps the key in that origin's
    session storage): a project's HTML or SVG read from …/files/ is sandboxed, script-less."""
    import httpx

    auth = {"Authorization": f"Bearer {account.api_key}"}
    r = httpx.post(server.url + "/api/v3/projects", json={"title": "html"}, headers=auth, timeout=120)
    files = f"{server.url}/api/v3/projects/{r.json()['project_id']}/files"
    evil = b"<script>parent.postMessage(sessionStorage.getItem('projecthub.key'), '*')</script>"
    for name in ("evil.html", "evil.svg"):
        assert httpx.put(f"{files}/{name}", content=evil, headers=auth, timeout=60).status_code == 201
        got = httpx.get(f"{files}/{name}", headers=auth, timeout=60)
        assert got.status_code == 200 and got.content == evil
        policy = got.headers["content-security-policy"]
        assert policy.startswith("sandbox;") and "default-src 'none'" in policy and "script" not in policy
        assert got.headers["x-content-type-options"] == "nosniff"


def test_only_the_owner_or_an_admin_revokes_a_key(server, account) -> None:
    """The admin page revokes another account's leaked key: admins may delete any key (never
    edit one, never see a secret); anyone else still gets 404 for a key that is not theirs."""
    import httpx

    def call(method: str, path: str, key: str, **kw):
        return httpx.request(method, server.url + "/api/v3" + path, headers={"Authorization": f"Bearer {key}"},
                             timeout=30, **kw)

    victim = server.new_account("Leaky")
    leaked = call("POST", "/keys", victim.api_key, json={"name": "leaked"}).json()
    assert call("DELETE", f"/keys/{leaked['id']}", account.api_key).status_code == 404   # not an admin
    assert call("GET", "/projects", leaked["secret"]).status_code == 200
    admin = server.cli("account", "create", "--name", "Revoking Admin", "--admin")
    assert call("DELETE", f"/keys/{leaked['id']}", admin["api_key"]).status_code == 204
    assert call("GET", "/projects", leaked["secret"]).status_code == 401   # refused at once
    assert call("GET", "/projects", victim.api_key).status_code == 200    # the account's other key lives
