"""Hub ``jupyter.execute`` without a project_id (issue 14 item 12f): every account used to
run in one shared project, where accounts read each other's files.  Now each account gets
its own scratch project, made on first use, so account A's file is not visible to B."""

from __future__ import annotations

from typing import Any, Iterator

import httpx
import pytest

from tests.security.conftest import require_sandbox
from tests.server import Account, Server


def jupyter(server: Server, account: Account, code: str) -> Any:
    r = httpx.post(server.url + "/api/conat/hub", headers={"Authorization": f"Bearer {account.api_key}"},
                   json={"name": "jupyter.execute", "args": [{"kernel": "python3", "input": code}],
                         "timeout": 90000}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def text_of(result: Any) -> str:
    assert "error" not in result, result
    return "".join(item.get("text", "") or item.get("data", {}).get("text/plain", "")
                   for item in result["output"])


@pytest.fixture
def jupyter_api(server: Server) -> Iterator[None]:
    require_sandbox()
    server.cli("jupyter-api", "enable")
    yield
    server.cli("jupyter-api", "disable")


def test_accounts_do_not_share_a_scratch_project(server: Server, jupyter_api: None) -> None:
    a, b = server.new_account("Jupyter A"), server.new_account("Jupyter B")
    write = ("import os; p = os.path.expanduser('~/scratch-secret.txt'); "
             "open(p, 'w').write('a-secret'); print(os.path.exists(p))")
    assert text_of(jupyter(server, a, write)).strip() == "True"
    look = ("import os, glob; p = os.path.expanduser('~/scratch-secret.txt'); "
            "print(os.path.exists(p), glob.glob('/home/*/scratch-secret.txt') + glob.glob('/tmp/scratch*'))")
    assert text_of(jupyter(server, b, look)).strip() == "False []"
    # A's own scratch project persists between calls and holds A's file
    assert text_of(jupyter(server, a, look)).strip().startswith("True")
    # each scratch project is owned by its account and hidden in its listing
    listed = httpx.get(server.url + "/api/v3/projects", timeout=30,
                       headers={"Authorization": f"Bearer {a.api_key}"}).json()
    scratch = [p for p in listed if p["users"].get(a.account_id, {}).get("hide")]
    assert len(scratch) == 1 and scratch[0]["users"][a.account_id]["group"] == "owner"
    assert b.account_id not in scratch[0]["users"]
    for acct in (a, b):   # stop what this test started
        for p in httpx.get(server.url + "/api/v3/projects", timeout=30,
                           headers={"Authorization": f"Bearer {acct.api_key}"}).json():
            httpx.post(f"{server.url}/api/v3/projects/{p['project_id']}/stop", timeout=60,
                       headers={"Authorization": f"Bearer {acct.api_key}"})
