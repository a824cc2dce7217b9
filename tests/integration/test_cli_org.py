"""``projecthub org ...`` against a running server: what the operator does is seen by the
API at once (org.get, a token that redeems), and bad input is one line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import cocalc_api
import httpx

from tests.server import PROJECTHUB, TEST_ENV, Server


def run(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROJECTHUB, *args, "--data-dir", str(server.data_dir)], capture_output=True,
                          text=True, timeout=60, env={**TEST_ENV, **os.environ})


def test_org_commands_drive_the_api(server: Server) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    email = f"{uuid.uuid4().hex[:8]}@example.org"
    created = server.cli("org", "create", "--name", name.upper())
    assert created["name"] == name
    boss = server.new_account("Cli Boss")
    member = server.new_account("Cli Member")
    assert server.cli("org", "add-admin", "--name", name, "--user", boss.account_id)["done"] is True
    assert server.cli("org", "add-user", "--name", name, "--user", member.account_id)["done"] is True
    new = server.cli("org", "create-user", "--name", name, "--email", email, "--first-name", "Cli")
    listed = {o["name"]: o for o in server.cli("org", "list")["orgs"]}
    assert listed[name]["admin_account_ids"] == [boss.account_id] and listed[name]["members"] == 2
    assert [o["name"] for o in server.cli("org", "list", "--account", member.account_id)["orgs"]] == [name]

    boss_hub = cocalc_api.Hub(api_key=boss.api_key, host=server.url)
    assert {u["account_id"] for u in boss_hub.org.get_users(name)} == {member.account_id, new["account_id"]}

    token = server.cli("org", "create-token", "--user", email, "--hours", "1")
    assert token["account_id"] == new["account_id"] and token["url"].endswith(token["token"])
    r = httpx.post(server.url + "/api/v3/tokens/redeem", json={"token": token["token"]})
    assert r.status_code == 200 and r.json()["account_id"] == new["account_id"]
    other = server.cli("org", "create-token", "--user", email)
    assert server.cli("org", "expire-token", "--token", other["token"]) == {"expired": True}
    assert httpx.post(server.url + "/api/v3/tokens/redeem", json={"token": other["token"]}).status_code == 401

    assert server.cli("org", "remove-admin", "--name", name, "--user", boss.account_id)["done"] is True
    assert server.cli("org", "remove-user", "--name", name, "--user", member.account_id)["done"] is True
    after = {o["name"]: o for o in server.cli("org", "list")["orgs"]}[name]
    assert after["admin_account_ids"] == [] and after["members"] == 1
    assert {u["account_id"] for u in cocalc_api.Hub(api_key=server.new_account("x").api_key,
                                                    host=server.url).system.user_search(email)} \
        == {new["account_id"]}


def test_bad_input_is_one_line_and_exit_2(server: Server) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    server.cli("org", "create", "--name", name)
    cases = [
        (["org", "create", "--name", "bad name"], "--name must be"),
        (["org", "create", "--name", name], "already exists"),
        (["org", "add-user", "--name", "nope-nope", "--user", "a@b.c"], "no organization named"),
        (["org", "add-user", "--name", name, "--user", "nobody@example.org"], "no account with that id"),
        (["org", "remove-user", "--name", name, "--user", server.new_account().account_id], "not a member"),
        (["org", "create-user", "--name", name, "--email", "not-an-address"], "--email must be"),
        (["org", "create-token", "--user", "nobody@example.org"], "no account"),
        (["org", "create-token", "--user", "x@y.z", "--hours", "0"], "--hours must be"),
        (["org", "expire-token", "--token", "nope"], "no such token"),
        (["org", "add-admin", "--name", name], "required: --user"),
    ]
    for args, text in cases:
        out = run(server, *args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], (args, out.stderr)
        assert "Traceback" not in out.stderr
        if out.stdout.strip():
            assert text in json.loads(out.stdout)["error"] or text.startswith("required")
