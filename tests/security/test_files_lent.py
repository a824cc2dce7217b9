"""The files API's fast path (``host/lent_files.py``) read as a hostile project would.

The hub (root) reads and writes a file through its own duplicate of the fd the project's
daemon opened.  The daemon runs as the project's uid, so the fd number it names is a claim:

* whatever fd of the daemon is named, the hub uses only a regular file on the project's own
  disk image, owned by the project, opened for what the hub does with it; the daemon's
  sockets, pipes, /etc files and a root-owned file on the image are refused;
* a root writer could allocate ext4's root-reserved blocks: on an image that has them an
  upload is still bounded by what the project itself may use (413), the old file intact;
* the hub keeps no lent fd open after any answer: success, 304, 416, 412, 413, a client
  that goes away mid-upload or mid-download;
* a FIFO in the home answers 400 at once instead of blocking the hub.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import httpx
import pytest

from projecthub.host import lent_files
from projecthub.host.sandbox import disk
from tests.security.conftest import Proj, wait_until
from tests.security.test_disk import _loops_of, require_loop

MiB = 2**20


def api(p: Proj, method: str, path: str, **kw: object) -> httpx.Response:
    return httpx.request(method, f"{p.server.url}/api/v3/projects/{p.project_id}{path}", timeout=120,
                         headers={"Authorization": f"Bearer {p.key}", **kw.pop("headers", {})},  # type: ignore[dict-item]
                         **kw)  # type: ignore[arg-type]


def _base(p: Proj) -> Path:
    return p.server.data_dir / "projects" / p.project_id


def _daemon_pid(p: Proj) -> int:
    return int(json.loads((p.server.data_dir / "run" / p.project_id / "host.json").read_text())["daemon_pid"])


def _host_like(p: Proj) -> SimpleNamespace:
    """What ``borrow`` needs of the host, for this project's real, running daemon."""
    pid, uid = _daemon_pid(p), p.uid()
    return SimpleNamespace(daemon_identity=lambda _project: (pid, uid),
                           sandbox=SimpleNamespace(project_dir=lambda _project: _base(p)))


def _hub_fds_under(p: Proj) -> list[str]:
    """The hub process's open fds that lead into this project's directory (its image)."""
    base = str(_base(p)) + "/"
    out = []
    proc = Path(f"/proc/{p.server.process.pid}/fd")   # type: ignore[union-attr]
    for entry in proc.iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith(base) and not target.endswith(disk.IMAGE_NAME):
            out.append(target)
    return out


@pytest.fixture
def imaged(fresh_a) -> Iterator[Proj]:
    require_loop()
    p = fresh_a(disk_bytes="64M")
    assert p.run("echo ok > small.txt")["exit_code"] == 0
    assert disk.attached(_base(p)) and lent_files.reserved_blocks(disk.image_path(_base(p))) == 0
    yield p


def test_only_the_projects_own_regular_files_are_lent(imaged: Proj) -> None:
    p = imaged
    out = p.run("mkfifo fifo && echo data > mine.txt")
    assert out["exit_code"] == 0, out
    host = _host_like(p)
    device = os.stat(disk.mount_point(_base(p))).st_dev
    uid = p.uid()
    assert uid is not None
    # every fd the daemon holds, named as if the daemon lent it: only a regular file of the
    # project's own, on its image, may come back; its sockets, pipes and /dev/null never
    daemon = _daemon_pid(p)
    fds = [int(n) for n in os.listdir(f"/proc/{daemon}/fd")]
    refused = 0
    for n in fds:
        for write in (False, True):
            got = lent_files.borrow(host, p.project_id, n, write=write)
            if got is None:
                refused += 1
                continue
            st = os.fstat(got.fileno())
            got.close()
            assert st.st_dev == device and st.st_uid == uid and stat.S_ISREG(st.st_mode), \
                f"daemon fd {n} ({os.readlink(f'/proc/{daemon}/fd/{n}')}) was lent"
    assert refused >= 4, fds   # at least its listening socket and connection, both ways
    # the checks themselves, on real fds of every kind a daemon could hold
    mine = p.home / "mine.txt"
    root_owned = disk.mount_point(_base(p)) / "root-owned"
    root_owned.write_bytes(b"server's")
    try:
        cases = {
            "/etc/passwd (not on the image)": os.open("/etc/passwd", os.O_RDONLY),
            "a FIFO": os.open(p.home / "fifo", os.O_RDONLY | os.O_NONBLOCK),
            "a root-owned file on the image": os.open(root_owned, os.O_RDWR),
            "an O_PATH fd": os.open(mine, os.O_PATH),
            "an O_DIRECT fd (unaligned I/O fails)": os.open(mine, os.O_RDWR | os.O_DIRECT),
        }
        for what, fd in cases.items():
            try:
                assert lent_files.check(fd, uid=uid, device=device, write=False) is not None, what
                assert lent_files.check(fd, uid=uid, device=device, write=True) is not None, what
            finally:
                os.close(fd)
        fd = os.open(mine, os.O_RDONLY)
        try:   # readable, not writable
            assert lent_files.check(fd, uid=uid, device=device, write=False) is None
            assert lent_files.check(fd, uid=uid, device=device, write=True) is not None
        finally:
            os.close(fd)
        fd = os.open(mine, os.O_WRONLY | os.O_APPEND)
        try:   # O_APPEND would make pwrite ignore its offset
            assert lent_files.check(fd, uid=uid, device=device, write=True) is not None
        finally:
            os.close(fd)
    finally:
        root_owned.unlink()


def test_a_root_reserve_on_the_image_does_not_widen_the_disk_limit(imaged: Proj) -> None:
    p = imaged
    assert api(p, "PUT", "/files/keep.txt", content=b"old").status_code == 201
    p.stop()
    # released for real: a mount detached lazily (a process still dying) writes its superblock
    # back at its last close, which would undo the tune2fs below
    assert wait_until(lambda: not disk.attached(_base(p)) and not _loops_of(p), 30), _loops_of(p)
    # an image with a 25 % root reserve (made before '-m 0', or tuned by an operator)
    done = subprocess.run(["tune2fs", "-m", "25", str(disk.image_path(_base(p)))], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = p.run("df -B1 --output=avail ~ | tail -n 1")
    assert out["exit_code"] == 0, out
    avail = int(out["stdout"].strip())
    assert lent_files.reserved_blocks(disk.image_path(_base(p))) > 0
    # more than the project may use, less than a root writer could: within the reserve
    r = api(p, "PUT", "/files/big.bin", content=b"\0" * (avail + 4 * MiB))
    assert r.status_code == 413, (r.status_code, r.text[:300])
    assert api(p, "GET", "/files/keep.txt").content == b"old"
    listing = api(p, "GET", "/files/", params={"list": ""}).json()["entries"]
    assert "big.bin" not in {e["name"] for e in listing}
    # what the project may use still works, relayed through the daemon (ETags, ranges too)
    blob = os.urandom(3 * MiB + 7)
    put = api(p, "PUT", "/files/fits.bin", content=blob)
    assert put.status_code == 201, put.text
    assert api(p, "GET", "/files/fits.bin").content == blob
    assert api(p, "GET", "/files/fits.bin", headers={"Range": "bytes=-7"}).content == blob[-7:]
    assert api(p, "GET", "/files/fits.bin", headers={"If-None-Match": put.headers["etag"]}).status_code == 304
    assert not _hub_fds_under(p)


def test_a_full_image_is_413_through_the_lent_file_and_the_space_comes_back(imaged: Proj) -> None:
    p = imaged
    assert api(p, "PUT", "/files/keep.txt", content=b"old").status_code == 201
    r = api(p, "PUT", "/files/keep.txt", content=b"\1" * (80 * MiB))
    assert r.status_code == 413 and "disk" in r.json()["error"], (r.status_code, r.text[:300])
    assert api(p, "GET", "/files/keep.txt").content == b"old"
    assert wait_until(lambda: not _hub_fds_under(p), 10), _hub_fds_under(p)
    # the temporary file and the hub's hold on it are gone: the space is free again
    assert api(p, "PUT", "/files/again.bin", content=b"\2" * (40 * MiB)).status_code == 201


def test_the_hub_keeps_no_lent_fd(imaged: Proj) -> None:
    p = imaged
    blob = os.urandom(6 * MiB + 5)
    r = api(p, "PUT", "/files/blob.bin", content=blob)
    assert r.status_code == 201, r.text
    tag = r.headers["etag"]
    assert api(p, "GET", "/files/blob.bin").content == blob
    assert api(p, "GET", "/files/blob.bin", headers={"Range": "bytes=-5"}).content == blob[-5:]
    assert api(p, "GET", "/files/blob.bin", headers={"Range": "bytes=100-199"}).content == blob[100:200]
    assert api(p, "GET", "/files/blob.bin", headers={"If-None-Match": tag}).status_code == 304
    assert api(p, "GET", "/files/blob.bin", headers={"Range": f"bytes={len(blob) + 10}-"}).status_code == 416
    assert api(p, "PUT", "/files/blob.bin", content=b"x", headers={"If-Match": '"stale"'}).status_code == 412

    # a reader that goes away after the first bytes
    with socket.create_connection(("127.0.0.1", p.server.port)) as s:
        s.sendall(f"GET /api/v3/projects/{p.project_id}/files/blob.bin HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {p.key}\r\n\r\n".encode())
        assert s.recv(65536)
    # a writer that goes away in the middle of its body
    with socket.create_connection(("127.0.0.1", p.server.port)) as s:
        s.sendall(f"PUT /api/v3/projects/{p.project_id}/files/cut.bin HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {p.key}\r\nContent-Length: {20 * MiB}\r\n\r\n".encode())
        s.sendall(b"\3" * (3 * MiB))
        time.sleep(0.3)
    assert wait_until(lambda: not _hub_fds_under(p), 15), _hub_fds_under(p)
    assert "cut.bin" not in {e["name"] for e in api(p, "GET", "/files/", params={"list": ""}).json()["entries"]}
    assert api(p, "GET", "/files/blob.bin").content == blob


def test_a_fifo_is_refused_at_once(imaged: Proj) -> None:
    p = imaged
    assert p.run("mkfifo pipe")["exit_code"] == 0
    started = time.monotonic()
    r = api(p, "GET", "/files/pipe")
    assert r.status_code == 400 and "regular file" in r.json()["error"], r.text
    assert time.monotonic() - started < 10
    assert not _hub_fds_under(p)

