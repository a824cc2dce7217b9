"""Review finding 3: clients that never read their replies cannot grow the hub.

The attack: a project writes 8 MiB of control bytes, then many raw sockets (4 KiB receive
buffer) ask for ``readTextFileFromProject`` of it and never read.  The 8 MiB cap counted
raw bytes, but each control byte is ``\\u0001`` in JSON: a 48 MiB reply, held whole per
stalled client (+51 MiB of hub RSS each).  Now the cap counts the JSON text (the file is
refused with EFBIG), and every large reply takes its bytes from one hub-wide budget
(``PROJECTHUB_REPLY_BUFFER_BYTES``) until it is sent; over it the call answers 503.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from typing import Iterator

import httpx
import psutil
import pytest

from tests.security.conftest import Proj, new_project, require_sandbox, wait_until
from tests.server import Server

READERS = 16
BOUND = 100 * 2**20
TIGHT_BOUND = 80 * 2**20   # a 24 MiB budget, plus what decoding replies leaves behind
TIGHT_READERS = 24


def _stalled_read(server: Server, key: str, project_id: str, path: str) -> socket.socket:
    body = json.dumps({"name": "system.readTextFileFromProject", "args": [{"path": path}],
                       "project_id": project_id}).encode()
    auth = base64.b64encode((key + ":").encode()).decode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall((f"POST /api/conat/project HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
    return sock


def _attack(server: Server, p: Proj, path: str, readers: int = READERS) -> tuple[int, list[socket.socket]]:
    """``readers`` stalled readers of ``path``; returns the hub's peak RSS growth (bytes)."""
    hub = psutil.Process(server.process.pid)
    base = hub.memory_info().rss
    peak = 0
    socks = []
    for _ in range(readers):
        socks.append(_stalled_read(server, p.key, p.project_id, path))
        time.sleep(0.3)
        peak = max(peak, hub.memory_info().rss - base)
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        peak = max(peak, hub.memory_info().rss - base)
        time.sleep(0.1)
    return peak, socks


def _still_serves(server: Server, p: Proj) -> None:
    start = time.monotonic()
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
    assert time.monotonic() - start < 1
    assert p.run("echo alive")["stdout"] == "alive\n"


def test_control_bytes_count_as_their_json_size(server: Server, proj_a: Proj) -> None:
    require_sandbox()
    out = proj_a.run("python3 -c \"open('/home/user/esc.txt','wb').write(b'\\x01'*(8*2**20))\"")
    assert out["exit_code"] == 0, out
    r = httpx.post(server.url + "/api/conat/project", json={
        "project_id": proj_a.project_id, "name": "system.readTextFileFromProject",
        "args": [{"path": "esc.txt"}]}, headers={"Authorization": f"Bearer {proj_a.key}"}, timeout=60)
    assert "EFBIG" in r.json().get("error", ""), r.text[:200]    # was a 48 MiB reply
    peak, socks = _attack(server, proj_a, "esc.txt")
    print("hub RSS growth, 16 stalled readers of 8 MiB control bytes: MiB", peak >> 20)
    try:
        assert peak < BOUND, peak >> 20          # was +51 MiB per reader: +800 MiB
        _still_serves(server, proj_a)
    finally:
        for s in socks:
            s.close()
    # ordinary text and a file just under the cap still read whole
    proj_a.run("printf 'a\\tb\\n' > small.txt")
    r = httpx.post(server.url + "/api/conat/project", json={
        "project_id": proj_a.project_id, "name": "system.readTextFileFromProject",
        "args": [{"path": "small.txt"}]}, headers={"Authorization": f"Bearer {proj_a.key}"}, timeout=60)
    assert r.json() == "a\tb\n"


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose reply budget (24 MiB) is smaller than 24 stalled 7 MiB replies."""
    old = os.environ.get("PROJECTHUB_REPLY_BUFFER_BYTES")
    os.environ["PROJECTHUB_REPLY_BUFFER_BYTES"] = str(24 * 2**20)
    try:
        srv = Server(tmp_path_factory.mktemp("replyhub")).start()
    finally:
        if old is None:
            os.environ.pop("PROJECTHUB_REPLY_BUFFER_BYTES", None)
        else:
            os.environ["PROJECTHUB_REPLY_BUFFER_BYTES"] = old
    yield srv
    srv.stop()
    srv.cli("stop-all")


def test_replies_held_for_stalled_readers_are_bounded_hub_wide(tight_server: Server) -> None:
    require_sandbox()
    p = new_project(tight_server, tight_server.new_account("Reader"), "reader")
    try:
        out = p.run("head -c $((7*1024*1024)) /dev/zero | tr '\\0' a > big.txt && wc -c < big.txt")
        assert out["stdout"].strip() == str(7 * 2**20), out
        peak, socks = _attack(tight_server, p, "big.txt", TIGHT_READERS)
        print("hub RSS growth, 24 stalled readers of 7 MiB text: MiB", peak >> 20)
        try:
            assert peak < TIGHT_BOUND, peak >> 20   # ~6 MiB held per reader before
            _still_serves(tight_server, p)
            statuses = []
            for s in socks:
                s.settimeout(10)
                statuses.append(s.recv(64).split(b"\r\n", 1)[0])
            assert b"HTTP/1.1 200 OK" in statuses, statuses
            assert b"HTTP/1.1 503 Service Unavailable" in statuses, statuses
        finally:
            for s in socks:
                s.close()
        # once the stalled sockets are gone, the budget is free again: a reader gets it all
        assert wait_until(lambda: _read_all(tight_server, p) == 7 * 2**20, timeout=20)
    finally:
        p.stop()


def _read_all(server: Server, p: Proj) -> int:
    r = httpx.post(server.url + "/api/conat/project", json={
        "project_id": p.project_id, "name": "system.readTextFileFromProject",
        "args": [{"path": "big.txt"}]}, headers={"Authorization": f"Bearer {p.key}"}, timeout=60)
    value = r.json()
    return len(value) if isinstance(value, str) else -1
