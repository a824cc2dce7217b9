"""Terminals read as a hostile user (docs/terminal.md, docs/security.md "Terminals").

Another account's key, no key, a revoked key, a removed collaborator, a foreign page's
Origin, a key in the URL, another project's terminal id, oversized frames, a client that
never reads, descriptors left in the daemon, processes that try to outlive the terminal,
and unauthenticated WebSockets that try to escape the connection caps.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Iterator

import httpx
import psutil
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.security.conftest import Proj, new_project, procs_of_uid, require_sandbox, wait_until
from tests.server import Account, Server
from tests.terminals import attach, create, delete, listing, new_terminal, refused, ws_url


@pytest.fixture
def alice_proj(server: Server, alice: Account) -> Iterator[Proj]:
    require_sandbox()
    p = new_project(server, alice, "terminal sec")
    yield p
    p.stop()


def test_another_account_cannot_reach_a_terminal(server: Server, alice_proj: Proj, bob: Account) -> None:
    tid = new_terminal(server, alice_proj.project_id, alice_proj.key)
    assert refused(server, alice_proj.project_id, tid, key=bob.api_key)[0] == 4403
    assert refused(server, alice_proj.project_id, tid, key=bob.api_key, header=False)[0] == 4403
    assert create(server, alice_proj.project_id, bob.api_key).status_code == 403
    assert delete(server, alice_proj.project_id, tid, bob.api_key).status_code == 403
    r = httpx.get(f"{server.url}/api/v3/projects/{alice_proj.project_id}/terminals",
                  headers={"Authorization": f"Bearer {bob.api_key}"})
    assert r.status_code == 403
    assert [t["terminal_id"] for t in listing(server, alice_proj.project_id, alice_proj.key)] == [tid]


def test_a_terminal_id_is_only_valid_in_its_own_project(server: Server, alice_proj: Proj,
                                                        proj_b: Proj) -> None:
    """Bob's terminal id, used by Alice through her own project's path: unknown there."""
    tid_b = new_terminal(server, proj_b.project_id, proj_b.key)
    assert refused(server, alice_proj.project_id, tid_b, key=alice_proj.key)[0] == 4404
    assert delete(server, alice_proj.project_id, tid_b, alice_proj.key).status_code == 404
    assert [t["terminal_id"] for t in listing(server, proj_b.project_id, proj_b.key)] == [tid_b]
    assert delete(server, proj_b.project_id, tid_b, proj_b.key).status_code == 204


def test_no_or_bad_key_is_closed_4401(server: Server, alice_proj: Proj) -> None:
    tid = new_terminal(server, alice_proj.project_id, alice_proj.key)
    started = time.monotonic()
    code, reason = refused(server, alice_proj.project_id, tid)   # no header, no auth message
    assert code == 4401 and "auth" in reason, reason
    assert 9 <= time.monotonic() - started < 16
    assert refused(server, alice_proj.project_id, tid, key="sk-nope")[0] == 4401
    assert refused(server, alice_proj.project_id, tid, key="sk-nope", header=False)[0] == 4401
    # keystrokes before authenticating are not taken for a key, nor typed
    assert refused(server, alice_proj.project_id, tid, first=b"id\r")[0] == 4401
    assert refused(server, alice_proj.project_id, tid, first=json.dumps({"type": "resize"}))[0] == 4401


def test_a_key_in_the_url_is_never_accepted(server: Server, alice_proj: Proj) -> None:
    tid = new_terminal(server, alice_proj.project_id, alice_proj.key)
    url = ws_url(server, alice_proj.project_id, tid) + f"?api_key={alice_proj.key}"
    with connect(url, additional_headers={"Authorization": f"Bearer {alice_proj.key}"}) as ws:
        with pytest.raises(Exception) as info:
            ws.recv(timeout=10)
    assert getattr(getattr(info.value, "rcvd", None), "code", None) == 4400, info.value


def test_a_revoked_key_ends_an_attached_socket(server: Server, alice_proj: Proj) -> None:
    r = httpx.post(f"{server.url}/api/v3/keys", json={"name": "terminal"},
                   headers={"Authorization": f"Bearer {alice_proj.key}"})
    assert r.status_code == 201, r.text
    key_id, key = r.json()["id"], r.json()["secret"]
    tid = new_terminal(server, alice_proj.project_id, key)
    t = attach(server, alice_proj.project_id, tid, key, header=False)
    t.type("echo attached")
    t.read_until(b"attached\r\n")
    r = httpx.delete(f"{server.url}/api/v3/keys/{key_id}", headers={"Authorization": f"Bearer {alice_proj.key}"})
    assert r.status_code == 204, r.text
    started = time.monotonic()
    code, reason = t.wait_closed(10)
    assert code == 4401 and "revoked" in reason, (code, reason)
    assert time.monotonic() - started < 5
    # the terminal itself is the project's, not the key's: it keeps running for the owner
    assert [x["terminal_id"] for x in listing(server, alice_proj.project_id, alice_proj.key)] == [tid]


def test_a_removed_collaborator_is_cut_off(server: Server, alice_proj: Proj, bob: Account) -> None:
    url = f"{server.url}/api/v3/projects/{alice_proj.project_id}/collaborators"
    owner = {"Authorization": f"Bearer {alice_proj.key}"}
    assert httpx.post(url, json={"account_id": bob.account_id}, headers=owner).status_code == 201
    tid = new_terminal(server, alice_proj.project_id, bob.api_key)   # collaborators may
    t = attach(server, alice_proj.project_id, tid, bob.api_key)
    t.type("echo bob-here")
    t.read_until(b"bob-here")
    assert httpx.delete(f"{url}/{bob.account_id}", headers=owner).status_code == 204
    code, _ = t.wait_closed(10)
    assert code == 4403
    assert refused(server, alice_proj.project_id, tid, key=bob.api_key)[0] == 4403


def test_a_foreign_origin_is_refused(server: Server, alice_proj: Proj) -> None:
    """Cross-site WebSocket hijacking: a page elsewhere cannot open a terminal socket."""
    tid = new_terminal(server, alice_proj.project_id, alice_proj.key)
    url = ws_url(server, alice_proj.project_id, tid)
    auth = {"Authorization": f"Bearer {alice_proj.key}"}
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{server.port}.evil.example"):
        with pytest.raises(InvalidStatus) as info:
            connect(url, origin=origin, additional_headers=auth).__enter__()   # type: ignore[arg-type]
        assert info.value.response.status_code == 403, origin
    with connect(url, origin=f"http://127.0.0.1:{server.port}", additional_headers=auth) as ws:  # type: ignore[arg-type]
        assert isinstance(ws.recv(timeout=10), bytes)


def test_input_frames_are_bounded(server: Server, alice_proj: Proj) -> None:
    tid = new_terminal(server, alice_proj.project_id, alice_proj.key)
    t = attach(server, alice_proj.project_id, tid, alice_proj.key)
    t.send(b"x" * (64 * 1024 + 1))
    assert t.wait_closed()[0] == 1009
    with connect(ws_url(server, alice_proj.project_id, tid),
                 additional_headers={"Authorization": f"Bearer {alice_proj.key}"}, max_size=None) as ws:
        ws.recv(timeout=10)
        with pytest.raises(ConnectionClosed):
            ws.send(b"y" * (2 * 2**20))   # over the server's WebSocket message limit (1 MiB)
            while True:
                ws.recv(timeout=10)
    assert ws.close_code == 1009, ws.close_code
    assert listing(server, alice_proj.project_id, alice_proj.key)[0]["alive"]


def test_attached_clients_per_terminal_are_capped(server: Server, alice_proj: Proj) -> None:
    """Each attached socket may hold a stream window in the hub: at most 8 per terminal."""
    tid = new_terminal(server, alice_proj.project_id, alice_proj.key)
    held = [attach(server, alice_proj.project_id, tid, alice_proj.key) for _ in range(8)]
    try:
        code, reason = refused(server, alice_proj.project_id, tid, key=alice_proj.key)
        assert code == 1013 and "8 clients" in reason, (code, reason)
    finally:
        for t in held:
            t.close()
    assert wait_until(lambda: listing(server, alice_proj.project_id, alice_proj.key)[0]["clients"] == 0, 5)
    attach(server, alice_proj.project_id, tid, alice_proj.key).close()


def test_the_shell_runs_as_the_project_inside_its_sandbox(server: Server, alice_proj: Proj,
                                                           proj_b: Proj) -> None:
    tid = new_terminal(server, alice_proj.project_id, alice_proj.key)
    t = attach(server, alice_proj.project_id, tid, alice_proj.key)
    t.type(f"id -u; cat /etc/shadow; ls {proj_b.home}; echo done-$((1+1))")
    out = t.read_until(b"done-2")
    uids = re.findall(rb"(?m)^(?:\x1b\[\?2004l)?\r?(\d+)\r$", out)
    exec_uid = alice_proj.run("id -u")["stdout"].strip()
    assert uids == [exec_uid.encode()] and exec_uid != "0", (out, exec_uid)   # exactly like exec
    assert b"root:" not in out and b"b-secret" not in out, out
    assert b"Permission denied" in out or b"No such file" in out, out


def sleepers(p: Proj, marker: str) -> list[psutil.Process]:
    found = []
    for proc in procs_of_uid(p.uid(), p.project_id):
        try:
            if marker in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def test_nothing_started_in_a_terminal_survives_its_kill(server: Server, alice_proj: Proj) -> None:
    """setsid, double forks, a new process group, a trapped SIGHUP: the terminal's cgroup
    takes them all."""
    tid = new_terminal(server, alice_proj.project_id, alice_proj.key)
    t = attach(server, alice_proj.project_id, tid, alice_proj.key)
    t.type("setsid sh -c 'trap \"\" HUP TERM; exec sleep 2001' & "
           "(sh -c 'sleep 2002 &' &) ; set -m; sleep 2003 & set +m; "
           "nohup sleep 2004 >/dev/null 2>&1 & echo spawned")
    t.read_until(b"spawned\r\n")
    assert wait_until(lambda: len(sleepers(alice_proj, "sleep 200")) == 4, 5), sleepers(alice_proj, "sleep 200")
    t.close()
    assert delete(server, alice_proj.project_id, tid, alice_proj.key).status_code == 204
    assert wait_until(lambda: not sleepers(alice_proj, "sleep 200"), 5), sleepers(alice_proj, "sleep 200")


def _daemon_fds(p: Proj) -> int:
    pid = p.info()["status"].get("project.pid")
    top = psutil.Process(pid)
    for proc in [top, *top.children(recursive=True)]:
        try:
            if proc.name() != "bwrap" and "projecthub.project.daemon" in " ".join(proc.cmdline()):
                return len(os.listdir(f"/proc/{proc.pid}/fd"))
        except psutil.Error:
            continue
    raise AssertionError("no daemon")


def test_terminals_leave_no_descriptor_in_the_daemon(server: Server, alice_proj: Proj) -> None:
    warm = new_terminal(server, alice_proj.project_id, alice_proj.key)   # first use: imports, groups
    assert delete(server, alice_proj.project_id, warm, alice_proj.key).status_code == 204
    time.sleep(0.5)
    before = _daemon_fds(alice_proj)
    for i in range(6):
        tid = new_terminal(server, alice_proj.project_id, alice_proj.key)
        t = attach(server, alice_proj.project_id, tid, alice_proj.key)
        if i % 2:
            t.type("exit")   # ends by itself
            t.wait_closed()
        else:
            t.type("echo x")
            t.read_until(b"x\r\n")
            t.close()
            assert delete(server, alice_proj.project_id, tid, alice_proj.key).status_code == 204
    assert wait_until(lambda: listing(server, alice_proj.project_id, alice_proj.key) == [], 5)
    assert wait_until(lambda: _daemon_fds(alice_proj) <= before, 5), (before, _daemon_fds(alice_proj))


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def test_a_client_that_never_reads_costs_the_hub_bounded_memory(server: Server, alice_proj: Proj) -> None:
    """The shell floods output; the client reads nothing.  The hub holds at most one stream
    window and one socket buffer, the daemon a bounded backlog and then pauses the PTY:
    the hub's memory stays flat and other calls stay fast."""
    assert server.process is not None
    tid = new_terminal(server, alice_proj.project_id, alice_proj.key)
    # max_queue=1: the client's own reader stops too, so TCP pushes back on the server
    with connect(ws_url(server, alice_proj.project_id, tid), max_queue=1,
                 additional_headers={"Authorization": f"Bearer {alice_proj.key}"}) as ws:
        ws.recv(timeout=10)
        ws.send(b"head -c 3000000000 /dev/zero | tr '\\0' x\r")
        time.sleep(2)
        base = _rss(server.process.pid)
        for _ in range(8):
            time.sleep(1)
            started = time.monotonic()
            assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
            assert time.monotonic() - started < 1.0
        grown = _rss(server.process.pid) - base
        assert grown < 48 * 2**20, grown
    # the terminal is still usable from a new client
    t = attach(server, alice_proj.project_id, tid, alice_proj.key)
    t.send(b"\x03")
    t.type("echo alive-$((40+2))")
    t.read_until(b"alive-42", timeout=20)
    t.close()


def test_websockets_count_against_the_connection_caps(tmp_path: Path) -> None:
    """An upgraded socket still holds a descriptor: it stays counted per address (an
    unauthenticated flood of WebSockets cannot sidestep --max-connections-per-ip), and a
    WebSocket to the --metrics-port listener is refused."""
    from tests.server import free_port
    metrics_port = free_port()
    srv = Server(tmp_path, extra_args=["--max-connections-per-ip", "4", "--metrics-port",
                                       str(metrics_port)]).start()
    try:
        url = f"ws://127.0.0.1:{srv.port}/api/v3/projects/{'0' * 8}-0000-0000-0000-{'0' * 12}/terminals/{'a' * 32}/ws"
        held = [connect(url).__enter__() for _ in range(4)]   # upgraded, not yet authenticated
        try:
            with pytest.raises(Exception):
                connect(url, open_timeout=5).__enter__()
            assert httpx.get(srv.url + "/healthz", timeout=5).status_code == 503
        finally:
            for ws in held:
                ws.close()
        assert wait_until(lambda: httpx.get(srv.url + "/healthz", timeout=5).status_code == 200, 5)
        with pytest.raises(InvalidStatus) as info:
            connect(f"ws://127.0.0.1:{metrics_port}/api/v3/projects/x/terminals/y/ws").__enter__()
        assert info.value.response.status_code == 403
    finally:
        srv.stop()
        srv.cli("stop-all")
