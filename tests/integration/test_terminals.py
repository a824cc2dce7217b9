"""Terminals (issue 20 item 4, docs/terminal.md): ``bash -l`` on a PTY in the project's
sandbox, used over a real WebSocket on a real server.

One server for the module with a short grace period (``PROJECTHUB_TERMINAL_GRACE_S``) and
Jupyter idle window (``PROJECTHUB_JUPYTER_IDLE_S``), so waits stay short.
"""

from __future__ import annotations

import os
import re
import time
from typing import Iterator

import httpx
import psutil
import pytest

from tests.conftest import have_bwrap, require
from tests.security.conftest import Proj, new_project, procs_of_uid, wait_until
from tests.server import Account, Server
from tests.terminals import attach, create, delete, listing, new_terminal, refused

GRACE_S = 4
JUPYTER_IDLE_S = 3


@pytest.fixture(scope="module")
def term_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require("root (per-project uid)", os.geteuid() == 0)
    require("bubblewrap", have_bwrap())
    saved = {k: os.environ.get(k) for k in ("PROJECTHUB_TERMINAL_GRACE_S", "PROJECTHUB_JUPYTER_IDLE_S")}
    os.environ["PROJECTHUB_TERMINAL_GRACE_S"] = str(GRACE_S)
    os.environ["PROJECTHUB_JUPYTER_IDLE_S"] = str(JUPYTER_IDLE_S)
    try:
        srv = Server(tmp_path_factory.mktemp("termhub")).start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield srv
    srv.stop()
    srv.cli("stop-all")


@pytest.fixture(scope="module")
def owner(term_server: Server) -> Account:
    return term_server.new_account("Terminal Owner")


@pytest.fixture
def proj(term_server: Server, owner: Account) -> Iterator[Proj]:
    p = new_project(term_server, owner, "terminals")
    yield p
    p.stop()


def sleepers(p: Proj, marker: str) -> list[psutil.Process]:
    uid = p.uid()
    assert uid is not None
    found = []
    for proc in procs_of_uid(uid, p.project_id):
        try:
            if marker in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def test_echo_resize_scrollback_and_two_clients(term_server: Server, proj: Proj) -> None:
    key = proj.key
    r = create(term_server, proj.project_id, key, cols=100, rows=30)
    assert r.status_code == 201, r.text
    info = r.json()
    assert set(info) == {"terminal_id", "cols", "rows", "created", "pid"}, info
    assert (info["cols"], info["rows"]) == (100, 30) and re.fullmatch(r"[0-9a-f]{32}", info["terminal_id"])
    assert info["created"].endswith("Z") and isinstance(info["pid"], int)
    tid = info["terminal_id"]

    a = attach(term_server, proj.project_id, tid, key)            # a program: the header
    a.type("echo hi-$((6*7)); stty size; echo uid=$(id -u) cwd=$(pwd); echo $TERM")
    out = a.read_until(b"xterm-256color\r\n")
    assert b"hi-42" in out and b"30 100" in out, out
    # the same uid and home as an exec in this project (and not root)
    ran = proj.run("echo uid=$(id -u) cwd=$(pwd)")["stdout"].strip()
    assert f"{ran}\r\n".encode() in out and "uid=0 " not in ran, (ran, out)

    b = attach(term_server, proj.project_id, tid, key, header=False)   # a browser: the auth message
    assert b"hi-42" in b.scrollback, b.scrollback                  # the scrollback is replayed
    assert [t["clients"] for t in listing(term_server, proj.project_id, key)] == [2]

    b.resize(120, 40)
    time.sleep(0.2)
    b.type("stty size")
    assert b"40 120" in b.read_until(b"40 120")
    assert b"40 120" in a.read_until(b"40 120")                    # every client sees the output
    [row] = listing(term_server, proj.project_id, key)
    assert (row["cols"], row["rows"], row["alive"]) == (120, 40, True), row
    a.close()
    b.close()
    assert wait_until(lambda: listing(term_server, proj.project_id, key)[0]["clients"] == 0, 5)

    # reattach: the scrollback still holds the session
    c = attach(term_server, proj.project_id, tid, key)
    assert b"hi-42" in c.scrollback and b"40 120" in c.scrollback
    c.type("exit 7")
    assert c.wait_closed() == (1000, "the shell exited")
    assert c.controls == [{"type": "exit", "code": 7}], c.controls
    assert listing(term_server, proj.project_id, key) == []
    assert refused(term_server, proj.project_id, tid, key=key)[0] == 4404


def test_delete_kills_every_process_of_the_terminal(term_server: Server, proj: Proj) -> None:
    key = proj.key
    tid = new_terminal(term_server, proj.project_id, key)
    t = attach(term_server, proj.project_id, tid, key)
    t.type("sleep 1000 & setsid sleep 1001 & (nohup sleep 1002 >/dev/null 2>&1 &) ; echo started")
    t.read_until(b"started\r\n")
    assert wait_until(lambda: len(sleepers(proj, "sleep 100")) == 3, 5), sleepers(proj, "sleep 100")
    r = delete(term_server, proj.project_id, tid, key)
    assert r.status_code == 204, r.text
    assert wait_until(lambda: not sleepers(proj, "sleep 100"), 5), sleepers(proj, "sleep 100")
    assert t.wait_closed()[0] == 1000 and t.controls[-1] == {"type": "exit", "code": 137}, t.controls
    assert listing(term_server, proj.project_id, key) == []
    assert delete(term_server, proj.project_id, tid, key).status_code == 404


def test_grace_period_after_the_last_client(term_server: Server, proj: Proj) -> None:
    key = proj.key
    tid = new_terminal(term_server, proj.project_id, key)
    t = attach(term_server, proj.project_id, tid, key)
    t.type("sleep 1003 & echo bg")
    t.read_until(b"bg\r\n")
    time.sleep(GRACE_S + 1.5)   # attached: no grace period runs
    assert [r["alive"] for r in listing(term_server, proj.project_id, key)] == [True]
    t.close()
    time.sleep(GRACE_S / 2)     # detached, within the grace period: a reload finds it
    t = attach(term_server, proj.project_id, tid, key)
    assert b"bg" in t.scrollback
    t.close()
    assert wait_until(lambda: listing(term_server, proj.project_id, key) == [], GRACE_S + 5)
    assert wait_until(lambda: not sleepers(proj, "sleep 1003"), 5)


def test_per_project_cap_and_input_validation(term_server: Server, proj: Proj) -> None:
    key = proj.key
    made = [new_terminal(term_server, proj.project_id, key, cols=20, rows=5) for _ in range(8)]
    r = create(term_server, proj.project_id, key)
    assert r.status_code == 429, r.text
    assert "limit is 8" in r.json()["error"], r.text
    assert delete(term_server, proj.project_id, made.pop(), key).status_code == 204
    made.append(new_terminal(term_server, proj.project_id, key))
    assert len(listing(term_server, proj.project_id, key)) == 8
    for body, status in (({"cols": 0}, 400), ({"rows": 1001}, 400), ({"cols": "80"}, 400),
                         ({"cols": True}, 400), ({"shell": "sh"}, 422)):
        r = create(term_server, proj.project_id, key, **body)
        assert r.status_code == status, (body, r.text)
        assert "error" in r.json()
    for bad in ("nope", "0" * 32, made[0].upper()):
        assert delete(term_server, proj.project_id, bad, key).status_code == 404
    for tid in made:
        assert delete(term_server, proj.project_id, tid, key).status_code == 204


def test_stopping_the_project_ends_its_terminals(term_server: Server, proj: Proj) -> None:
    key = proj.key
    tid = new_terminal(term_server, proj.project_id, key)
    t = attach(term_server, proj.project_id, tid, key)
    t.type("sleep 1004 & echo bg")
    t.read_until(b"bg\r\n")
    proj.stop()
    assert t.wait_closed(15)[0] in (1000, 1011)
    assert not sleepers(proj, "sleep 1004")
    # a stopped project has no terminals, and listing them does not start it
    assert listing(term_server, proj.project_id, key) == []
    assert proj.info()["state"]["state"] == "stopped"
    assert refused(term_server, proj.project_id, tid, key=key)[0] == 4404
    assert proj.info()["state"]["state"] == "stopped"


def daemon_maps_zmq(p: Proj) -> bool:
    pid = p.info()["status"].get("project.pid")
    top = psutil.Process(pid)
    for proc in [top, *top.children(recursive=True)]:
        try:
            if proc.name() != "bwrap" and "projecthub.project.daemon" in " ".join(proc.cmdline()):
                with open(f"/proc/{proc.pid}/maps") as f:
                    return "zmq" in f.read()
        except psutil.Error:
            continue
    raise AssertionError("no daemon")


def test_an_open_terminal_defers_the_daemon_restart(term_server: Server, owner: Account) -> None:
    """The daemon re-executes itself once Jupyter is idle (project/recycle.py), which would
    lose a PTY: an open terminal, attached or not, defers it."""
    p = new_project(term_server, owner, "terminal-recycle")
    term_server.cli("project", "limits", "--project", p.project_id, "--set", "idle_timeout_s=0")
    try:
        r = p.v3("POST", "/exec", {"command": "python3 -c 'print(1)'", "bash": True})
        assert r.status_code == 200
        out = p.client.system.jupyter_execute(input="6 * 7", kernel="python3")
        assert out[0]["data"]["text/plain"] == "42"
        assert daemon_maps_zmq(p)
        tid = new_terminal(term_server, p.project_id, p.key)
        t = attach(term_server, p.project_id, tid, p.key)
        t.type("echo before-$((2*21))")
        t.read_until(b"before-42")
        t.close()
        # detached, past the Jupyter window and several checks: kept (grace is GRACE_S,
        # so keep it attached-then-reattached meanwhile)
        deadline = time.monotonic() + JUPYTER_IDLE_S + 8
        while time.monotonic() < deadline:
            t = attach(term_server, p.project_id, tid, p.key)
            assert b"before-42" in t.scrollback
            time.sleep(1.0)
            t.close()
            time.sleep(min(GRACE_S / 2, 1.5))
        assert daemon_maps_zmq(p), "the daemon re-executed itself under an open terminal"
        assert [r["terminal_id"] for r in listing(term_server, p.project_id, p.key)] == [tid]
        assert delete(term_server, p.project_id, tid, p.key).status_code == 204
        # with the terminal gone, the restart happens
        assert wait_until(lambda: not daemon_maps_zmq(p), 30, 0.5)
    finally:
        p.stop()


def test_an_attached_terminal_keeps_the_project_from_idle_stop(term_server: Server, owner: Account) -> None:
    p = new_project(term_server, owner, "terminal-idle")
    term_server.cli("project", "limits", "--project", p.project_id, "--set", "idle_timeout_s=3")
    try:
        tid = new_terminal(term_server, p.project_id, p.key)
        t = attach(term_server, p.project_id, tid, p.key)
        time.sleep(8)
        assert p.info()["state"]["state"] == "running"
        t.type("echo still-here")
        t.read_until(b"still-here")
        t.close()
        # detached: idle time runs from the detach; the terminal ends with the project
        assert wait_until(lambda: p.info()["state"]["state"] == "stopped", 15, 0.5)
        assert listing(term_server, p.project_id, p.key) == []
    finally:
        p.stop()


def test_terminal_endpoints_in_the_openapi_document(term_server: Server) -> None:
    doc = httpx.get(term_server.url + "/api/v3/openapi.json").json()
    paths = doc["paths"]
    p = "/api/v3/projects/{project_id}/terminals"
    assert set(paths[p]) == {"get", "post"} and set(paths[p + "/{terminal_id}"]) == {"delete"}
    assert "429" in paths[p]["post"]["responses"]
