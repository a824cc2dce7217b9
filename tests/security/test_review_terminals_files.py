"""Adversarial review of terminals and of files through lent fds, read as a hostile project
user (code in the sandbox, as the project's uid, with its own key) and as another tenant.

Terminals:
* nothing a terminal starts outlives its DELETE, even an orphan that cleared its environment
  (``env -i``: what a marker tracker could not attribute);
* a project that SIGKILLs or SIGSTOPs its own daemon from a terminal still leaves nothing
  running once the daemon is gone or the project is stopped (and the stop does not hang);
* WebSocket upgrades that end in every odd way give their per-address connection slot back;
* a collaborator's *project* key is cut off (socket and REST) when the collaborator is removed.

Lent files (``host/lent_files.py``):
* the hub (root, CAP_SYS_RESOURCE) gets no block the project could not get itself: on an
  image the project filled, an upload through the lent fd is 413;
* fds a hostile daemon could name that are not the project's own regular files on its own
  image are refused: tmpfs /tmp and /dev/shm, a memfd, an eventfd, another project's file,
  a root-owned file of the sandbox, a directory.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from typing import Iterator

import httpx
import psutil
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from projecthub.host import lent_files
from projecthub.host.sandbox import disk
from tests.security.conftest import Proj, new_project, procs_of_uid, require_sandbox, wait_until
from tests.security.test_disk import require_loop
from tests.server import Account, Server
from tests.terminals import attach, delete, new_terminal, ws_url


@pytest.fixture
def tproj(server: Server, alice: Account) -> Iterator[Proj]:
    require_sandbox()
    p = new_project(server, alice, "terminal review")
    yield p
    p.v3("POST", "/stop")


def _procs(p: Proj, marker: str) -> list[str]:
    out = []
    for proc in procs_of_uid(p.uid(), p.project_id):
        try:
            line = " ".join(proc.cmdline())
        except Exception:
            continue
        if marker in line:
            out.append(f"{proc.pid}: {line}")
    return out


def test_an_env_cleared_orphan_dies_with_its_terminal(server: Server, tproj: Proj) -> None:
    tid = new_terminal(server, tproj.project_id, tproj.key)
    t = attach(server, tproj.project_id, tid, tproj.key)
    t.type("(setsid env -i /bin/sleep 3101 </dev/null >/dev/null 2>&1 &); echo spawned-$((6*7))")
    t.read_until(b"spawned-42")
    assert wait_until(lambda: bool(_procs(tproj, "sleep 3101")), 5), "the sleeper never started"
    t.close()
    assert delete(server, tproj.project_id, tid, tproj.key).status_code == 204
    wait_until(lambda: not _procs(tproj, "sleep 3101"), 5)
    tracker = tproj.info()["status"].get("tracker")
    assert not _procs(tproj, "sleep 3101"), (tracker, _procs(tproj, "sleep 3101"))


def test_a_terminal_that_kills_its_daemon_leaves_nothing_running(server: Server, tproj: Proj) -> None:
    tid = new_terminal(server, tproj.project_id, tproj.key)
    t = attach(server, tproj.project_id, tid, tproj.key)
    t.type("(setsid env -i /bin/sleep 3102 </dev/null >/dev/null 2>&1 &); sleep 3103 & "
           "echo spawned-$((6*7))")
    t.read_until(b"spawned-42")
    assert wait_until(lambda: len(_procs(tproj, "sleep 310")) == 2, 5), _procs(tproj, "sleep 310")
    t.type("kill -9 $PPID")
    t.wait_closed(30)
    assert wait_until(lambda: not _procs(tproj, "sleep 310"), 15), _procs(tproj, "sleep 310")


def test_the_projects_stop_ends_everything_a_terminal_started(server: Server, tproj: Proj) -> None:
    tid = new_terminal(server, tproj.project_id, tproj.key)
    t = attach(server, tproj.project_id, tid, tproj.key)
    t.type("(setsid env -i /bin/sleep 3104 </dev/null >/dev/null 2>&1 &); sleep 3105 & "
           "echo spawned-$((6*7))")
    t.read_until(b"spawned-42")
    assert wait_until(lambda: len(_procs(tproj, "sleep 310")) == 2, 5), _procs(tproj, "sleep 310")
    tproj.stop()
    assert wait_until(lambda: not _procs(tproj, "sleep 310"), 15), _procs(tproj, "sleep 310")
    t.wait_closed(30)


def _raw(port: int, payload: bytes, *, rst: bool = False, wait: float = 0.3) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    got = b""
    try:
        s.sendall(payload)
        time.sleep(wait)
        s.settimeout(0.5)
        try:
            got = s.recv(4096)
        except (socket.timeout, OSError):
            pass
    finally:
        if rst:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    return got


def test_broken_websockets_give_their_connection_slot_back(tmp_path) -> None:
    """Upgrades that end in every odd way (reset mid-handshake, bad handshake, foreign
    origin, garbage frames, an oversized frame, a reset while authenticating, an upgrade on
    a plain route) must each give their per-address slot back: else a few hundred of them
    lock every client of that address (or the whole server) out with 503."""
    srv = Server(tmp_path, extra_args=["--max-connections-per-ip", "4"]).start()
    try:
        path = f"/api/v3/projects/{'0' * 8}-0000-0000-0000-{'0' * 12}/terminals/{'a' * 32}/ws"
        key = "dGhlIHNhbXBsZSBub25jZQ=="

        def upgrade(p: str = path, extra: str = "", ws_key: bool = True) -> bytes:
            return (f"GET {p} HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                    + (f"Sec-WebSocket-Key: {key}\r\n" if ws_key else "") + extra + "\r\n").encode()

        def frame(opcode: int, data: bytes) -> bytes:
            mask = os.urandom(4)
            body = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            n = len(data)
            head = bytes([0x80 | opcode])
            if n < 126:
                head += bytes([0x80 | n])
            elif n < 65536:
                head += bytes([0x80 | 126]) + struct.pack(">H", n)
            else:
                head += bytes([0x80 | 127]) + struct.pack(">Q", n)
            return head + mask + body

        cases = {
            "reset mid-handshake": dict(payload=upgrade()[:40], rst=True, wait=0.05),
            "reset right after the upgrade": dict(payload=upgrade(), rst=True, wait=0.0),
            "no Sec-WebSocket-Key": dict(payload=upgrade(ws_key=False)),
            "foreign origin": dict(payload=upgrade(extra="Origin: https://evil.example\r\n")),
            "garbage frames": dict(payload=upgrade() + b"\xff" * 64),
            "oversized frame header": dict(payload=upgrade() + b"\x82\xff" + (2**40).to_bytes(8, "big") + b"abcd"),
            "reset while authenticating": dict(payload=upgrade() + frame(1, b'{"type": "auth", "tok'), rst=True),
            "bad auth then reset": dict(payload=upgrade() + frame(1, b'{"type":"auth","token":"sk-nope"}'), rst=True),
            "upgrade on a plain route": dict(payload=upgrade(p="/healthz")),
            "upgrade on an unknown route": dict(payload=upgrade(p="/nope")),
            "upgrade with pipelined request": dict(payload=upgrade() + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", rst=True),
        }
        stuck = []
        for name, case in cases.items():
            for _ in range(6):   # more than the cap: a leaked slot shows as a 503 below
                _raw(srv.port, **case)  # type: ignore[arg-type]
            if not wait_until(lambda: httpx.get(srv.url + "/healthz", timeout=5).status_code == 200, 12):
                stuck.append(name)
                break
        assert not stuck, f"slots leaked by: {stuck}"
    finally:
        srv.stop()
        srv.cli("stop-all")


def test_the_hub_writing_as_root_gets_no_space_the_project_lacks(fresh_a) -> None:
    """Lent uploads are written by the hub (root, CAP_SYS_RESOURCE).  Fill the image as the
    project until its own writes get ENOSPC: an upload through the lent fd must then get
    413 too (not a single extra block), and the old file stays."""
    require_loop()
    p = fresh_a(disk_bytes="64M")
    base = p.server.data_dir / "projects" / p.project_id
    assert p.run("echo old > keep.txt")["exit_code"] == 0
    assert disk.attached(base) and lent_files.reserved_blocks(disk.image_path(base)) == 0
    # the project fills its disk, then frees nothing: its next 4 KiB write fails
    out = p.run("dd if=/dev/zero of=fill bs=1M 2>/dev/null; dd if=/dev/zero of=fill2 bs=4k 2>/dev/null; "
                "sync; for i in 1 2 3; do dd if=/dev/zero of=tail$i bs=1k conv=fsync 2>/dev/null; done; "
                "sync; dd if=/dev/zero of=more bs=4k count=1 conv=fsync 2>&1; echo rc=$?; df -k .",
                timeout=60)
    assert "No space left" in out["stdout"] + out["stderr"], out
    for size in (4096, 256 * 1024):
        r = httpx.put(f"{p.server.url}/api/v3/projects/{p.project_id}/files/root-extra.bin",
                      content=b"\1" * size, headers={"Authorization": f"Bearer {p.key}"}, timeout=60)
        assert r.status_code == 413, (size, r.status_code, r.text[:300])
    assert httpx.get(f"{p.server.url}/api/v3/projects/{p.project_id}/files/keep.txt",
                     headers={"Authorization": f"Bearer {p.key}"}, timeout=30).content == b"old\n"


def test_a_project_that_freezes_its_daemon_is_still_stopped_whole(server: Server, tproj: Proj) -> None:
    """SIGSTOP of its own daemon (same uid) from a terminal: the project's stop still ends
    the shell and everything it started, within the stop's own time."""
    tid = new_terminal(server, tproj.project_id, tproj.key)
    t = attach(server, tproj.project_id, tid, tproj.key)
    t.type("sleep 3106 & (setsid env -i /bin/sleep 3107 </dev/null >/dev/null 2>&1 &); "
           "echo spawned-$((6*7)); sleep 1; kill -STOP $PPID")
    t.read_until(b"spawned-42")
    assert wait_until(lambda: len(_procs(tproj, "sleep 310")) == 2, 5), _procs(tproj, "sleep 310")
    daemon = psutil.Process(int(json.loads((server.data_dir / "run" / tproj.project_id / "host.json")
                                           .read_text())["daemon_pid"]))
    assert wait_until(lambda: daemon.status() == psutil.STATUS_STOPPED, 5), daemon.status()
    started = time.monotonic()
    r = tproj.v3("POST", "/stop", timeout=120)
    took = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert wait_until(lambda: not _procs(tproj, "sleep 310"), 15), _procs(tproj, "sleep 310")
    assert took < 30, took
    t.wait_closed(30)


def test_a_removed_collaborators_project_key_is_cut_off(server: Server, tproj: Proj, bob: Account) -> None:
    """Bob, a collaborator, makes a *project* key for Alice's project and attaches with it;
    Alice removes Bob: that socket ends too (the key acted for Bob)."""
    url = f"{server.url}/api/v3/projects/{tproj.project_id}/collaborators"
    owner = {"Authorization": f"Bearer {tproj.key}"}
    assert httpx.post(url, json={"account_id": bob.account_id}, headers=owner, timeout=30).status_code == 201
    r = httpx.post(f"{server.url}/api/v3/keys", json={"name": "bob's", "project_id": tproj.project_id},
                   headers={"Authorization": f"Bearer {bob.api_key}"}, timeout=30)
    assert r.status_code == 201, r.text
    pkey = r.json()["secret"]
    tid = new_terminal(server, tproj.project_id, pkey)
    t = attach(server, tproj.project_id, tid, pkey)
    t.type("echo bob-here-$((6*7))")
    t.read_until(b"bob-here-42")
    assert httpx.delete(f"{url}/{bob.account_id}", headers=owner, timeout=30).status_code == 204
    code, _ = t.wait_closed(10)
    assert code in (4401, 4403), code
    r = httpx.get(f"{server.url}/api/v3/projects/{tproj.project_id}/terminals",
                  headers={"Authorization": f"Bearer {pkey}"}, timeout=30)
    assert r.status_code in (401, 403, 404), r.text


def test_a_lent_fd_off_the_projects_image_is_refused(fresh_a, proj_b: Proj) -> None:
    """Fds a hostile daemon could open and name, beyond those test_files_lent.py tries: a
    project-owned file on the sandbox's /tmp (tmpfs) and /dev/shm, a memfd and an eventfd
    owned by the project's uid, another project's own file on its own image, the project's
    env (read-only, root's), the image's ext4 root dir; only the project's own file on its
    image passes."""
    require_loop()
    p = fresh_a(disk_bytes="64M")
    out = p.run("echo t > /tmp/in-tmp; echo s > /dev/shm/in-shm 2>/dev/null; echo h > mine.txt; "
                "ls -l /tmp/in-tmp mine.txt")
    assert out["exit_code"] == 0, out
    assert proj_b.run("echo b-secret > b.txt")["exit_code"] == 0
    base = p.server.data_dir / "projects" / p.project_id
    uid = p.uid()
    assert uid is not None and disk.attached(base)
    device = os.stat(disk.mount_point(base)).st_dev
    daemon = int(json.loads((p.server.data_dir / "run" / p.project_id / "host.json").read_text())["daemon_pid"])
    root = f"/proc/{daemon}/root"
    fds: dict[str, int] = {}
    try:
        fds["the sandbox's /tmp (tmpfs)"] = os.open(f"{root}/tmp/in-tmp", os.O_RDWR)
        if os.path.exists(f"{root}/dev/shm/in-shm"):
            fds["the sandbox's /dev/shm"] = os.open(f"{root}/dev/shm/in-shm", os.O_RDWR)
        memfd = os.memfd_create("lent")
        os.fchown(memfd, uid, uid)
        fds["a memfd of the project's uid"] = memfd
        fds["an eventfd"] = os.eventfd(0)
        fds["the image's root directory"] = os.open(disk.mount_point(base), os.O_RDONLY)
        fds["another project's own file"] = os.open(proj_b.home / "b.txt", os.O_RDWR)
        env_python = os.path.realpath(f"{root}/usr/bin/env")
        fds["a root-owned file of the sandbox (/usr/bin/env)"] = os.open(env_python, os.O_RDONLY)
        for what, fd in fds.items():
            for write in (False, True):
                assert lent_files.check(fd, uid=uid, device=device, write=write) is not None, (what, write)
        own = os.open(f"{root}/home/user/mine.txt", os.O_RDWR)
        try:   # the control: the project's own file on its own image, seen from the daemon
            assert lent_files.check(own, uid=uid, device=device, write=True) is None
        finally:
            os.close(own)
    finally:
        for fd in fds.values():
            os.close(fd)


def test_a_key_revoked_while_its_socket_waits_for_the_daemon_gets_nothing(server: Server,
                                                                          tproj: Proj) -> None:
    """A socket authenticated, then held before its first byte (the project froze its own
    daemon: same uid), then its key revoked: when the daemon wakes, not one byte of the
    terminal may reach that socket."""
    owner = {"Authorization": f"Bearer {tproj.key}"}
    r = httpx.post(f"{server.url}/api/v3/keys", json={"name": "soon revoked"}, headers=owner, timeout=30)
    assert r.status_code == 201, r.text
    key_id, key = r.json()["id"], r.json()["secret"]
    tid = new_terminal(server, tproj.project_id, tproj.key)
    t = attach(server, tproj.project_id, tid, tproj.key)
    # what the owner's terminal shows after the revocation is what the thief must not see
    t.type("(sleep 4; echo SECRET-$((6*7)); sleep 2; kill -CONT $PPID) & kill -STOP $PPID")
    time.sleep(1.5)
    ws = connect(ws_url(server, tproj.project_id, tid), additional_headers={"Authorization": f"Bearer {key}"},
                 open_timeout=10).__enter__()
    time.sleep(1.5)   # authenticated by now; the attach waits for the frozen daemon
    r = httpx.delete(f"{server.url}/api/v3/keys/{key_id}", headers=owner, timeout=30)
    assert r.status_code == 204, r.text
    got = b""
    closed = None
    deadline = time.monotonic() + 20
    while closed is None and time.monotonic() < deadline:
        try:
            item = ws.recv(timeout=1)
        except TimeoutError:
            continue
        except ConnectionClosed as exc:
            closed = (exc.rcvd.code if exc.rcvd else None)
            break
        got += item if isinstance(item, bytes) else json.dumps(item).encode()
    ws.close()
    t.close()
    assert closed is not None, "the socket of a revoked key stayed open"
    assert got == b"", (closed, got[-300:])



def test_an_account_attaches_a_bounded_number_of_terminal_sockets(server: Server, tproj: Proj) -> None:
    """The hub counts attached sockets per account itself (the daemon's own caps run as the
    project's uid): the 33rd is closed 1013, and one closed makes room again."""
    tids = [new_terminal(server, tproj.project_id, tproj.key) for _ in range(4)]
    attached = [attach(server, tproj.project_id, tid, tproj.key) for tid in tids for _ in range(8)]
    try:
        with connect(ws_url(server, tproj.project_id, tids[0]),
                     additional_headers={"Authorization": f"Bearer {tproj.key}"}, open_timeout=10) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013, closed.value
        assert "32 terminal connections" in closed.value.rcvd.reason
        attached.pop().close()
        time.sleep(0.5)
        attached.append(attach(server, tproj.project_id, tids[-1], tproj.key))
    finally:
        for t in attached:
            t.close()
        for tid in tids:
            delete(server, tproj.project_id, tid, tproj.key)
