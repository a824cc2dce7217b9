"""Every string the hub stores is bounded (issue 14 item 12e): a 10 MiB project title was
accepted and then rode along in every listing.  Over-long titles, descriptions, key names
and account names get a clear 400 (v3) / ``{"error"}`` (conat) / JSON error (CLI) naming
the field and its maximum, and nothing is stored."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import httpx

from projecthub.store.bounds import API_KEY_NAME_MAX, DESCRIPTION_MAX, NAME_MAX, TITLE_MAX
from tests.server import PROJECTHUB, Server

HUGE = "t" * (10 * 2**20)   # the 10 MiB title of the report


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def hub_call(server: Server, key: str, name: str, *args: Any) -> Any:
    r = httpx.post(server.url + "/api/conat/hub", json={"name": name, "args": list(args)},
                   headers=_auth(key), timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_ten_mib_title_refused_everywhere(server: Server) -> None:
    acct = server.new_account("Long Title")
    # 10 MiB is over the body limit of calls that carry no file content: refused unread
    r = httpx.post(server.url + "/api/v3/projects", json={"title": HUGE}, headers=_auth(acct.api_key),
                   timeout=60)
    assert r.status_code == 413 and "error" in r.json(), r.text[:300]
    r = httpx.post(server.url + "/api/conat/hub", json={"name": "projects.createProject",
                   "args": [{"title": HUGE}]}, headers=_auth(acct.api_key), timeout=60)
    assert r.status_code in (200, 413) and "error" in r.json(), r.text[:300]
    # a title that fits in a body but not in the field: the field's own bound names itself
    long_title = "t" * (TITLE_MAX + 1)
    r = httpx.post(server.url + "/api/v3/projects", json={"title": long_title},
                   headers=_auth(acct.api_key), timeout=60)
    assert r.status_code == 400, r.text[:300]
    assert "title" in r.json()["error"] and str(TITLE_MAX) in r.json()["error"]
    out = hub_call(server, acct.api_key, "projects.createProject", {"title": long_title})
    assert "title" in out["error"] and str(TITLE_MAX) in out["error"]
    r = httpx.post(server.url + "/api/v3/projects", headers=_auth(acct.api_key), timeout=60,
                   json={"title": "ok", "description": "d" * (DESCRIPTION_MAX + 1)})
    assert r.status_code == 400 and "description" in r.json()["error"], r.text[:300]
    for bad in ("nul\x00in title",):
        r = httpx.post(server.url + "/api/v3/projects", json={"title": bad}, headers=_auth(acct.api_key),
                       timeout=60)
        assert r.status_code == 400 and "title" in r.json()["error"], r.text
    listed = httpx.get(server.url + "/api/v3/projects", headers=_auth(acct.api_key), timeout=60).json()
    assert listed == []   # nothing half-made
    # the maximum itself is fine
    r = httpx.post(server.url + "/api/v3/projects", json={"title": "x" * TITLE_MAX},
                   headers=_auth(acct.api_key), timeout=60)
    assert r.status_code == 201, r.text[:300]


def test_key_and_account_names_bounded(server: Server) -> None:
    acct = server.new_account("Key Names")
    out = hub_call(server, acct.api_key, "system.manageApiKeys",
                   {"action": "create", "name": "k" * (API_KEY_NAME_MAX + 1)})
    assert "name" in out["error"] and str(API_KEY_NAME_MAX) in out["error"], out
    made = hub_call(server, acct.api_key, "system.manageApiKeys", {"action": "create", "name": "short"})
    out = hub_call(server, acct.api_key, "system.manageApiKeys",
                   {"action": "edit", "id": made[0]["id"], "name": "k" * (API_KEY_NAME_MAX + 1)})
    assert "name" in out["error"] and str(API_KEY_NAME_MAX) in out["error"], str(out)[:300]
    done = subprocess.run([*PROJECTHUB, "account", "create", "--data-dir", str(server.data_dir),
                           "--name", "n" * (NAME_MAX + 1)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "first_name" in json.loads(done.stdout)["error"], done.stdout + done.stderr
