"""Item 5: a slow or stalled HTTP client never makes the hub buffer a project's output.

The attack: start a job that prints a few hundred MB, open its SSE event stream, read a
little and stop reading while keeping the socket open.  Before flow control the hub read
every frame the daemon sent into an unbounded per-stream queue (0.8 GB of hub memory per
stalled reader of a 900 MB job).  Now each stream has a credit window, so the hub holds at
most about one window per stream and the daemon stops reading the job's output file.
"""

from __future__ import annotations

import socket
import time

import psutil

from tests.conftest import require
from tests.security.conftest import Proj, require_sandbox

JOB_BYTES = 300 * 2**20
BOUND = 64 * 2**20        # generous: the window is 2 MiB per stream


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def _start_job(p: Proj, command: str) -> str:
    r = p.v3("POST", "/exec", {"command": command, "bash": True, "async": True, "timeout": 120})
    assert r.status_code == 200, r.text
    return r.json()["job_id"]


def _wait_job(p: Proj, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = p.v3("GET", f"/jobs/{job_id}").json()
        if rec.get("status") != "running":
            return rec
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still running after {timeout}s")


def _stalled_reader(p: Proj, job_id: str) -> socket.socket:
    """Open the job's SSE stream, read one small piece, then never read again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    host, port = p.server.url.removeprefix("http://").split(":")
    sock.connect((host, int(port)))
    sock.sendall((f"GET /api/v3/projects/{p.project_id}/jobs/{job_id}/events HTTP/1.1\r\n"
                  f"Host: {host}\r\nAuthorization: Bearer {p.key}\r\n"
                  "Accept: text/event-stream\r\n\r\n").encode())
    sock.settimeout(30)
    head = sock.recv(16 * 1024)
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return sock


def _growth_while_stalled(hub_pid: int, base: int, settle_s: float = 4.0) -> int:
    """Hub RSS growth once it stopped changing (or as soon as it passed the bound)."""
    deadline = time.monotonic() + settle_s
    peak = _rss(hub_pid) - base
    while time.monotonic() < deadline and peak <= BOUND:
        time.sleep(0.25)
        peak = max(peak, _rss(hub_pid) - base)
    return peak


def test_stalled_sse_readers_do_not_grow_the_hub(proj_a: Proj) -> None:
    require_sandbox()
    p = proj_a
    hub = p.server.process
    assert hub is not None
    require("psutil sees the hub", psutil.pid_exists(hub.pid))
    # warm up the hub's SSE path (imports, first allocations) before the baseline
    warm = _start_job(p, "echo warm")
    _wait_job(p, warm)
    r = p.v3("GET", f"/jobs/{warm}/events")
    assert r.status_code == 200 and "event: done" in r.text, r.text[:500]

    job = _start_job(p, f"head -c {JOB_BYTES} /dev/zero | tr '\\0' x")
    base = _rss(hub.pid)
    readers = [_stalled_reader(p, job) for _ in range(2)]
    try:
        rec = _wait_job(p, job)
        assert rec["status"] == "completed", rec
        growth = _growth_while_stalled(hub.pid, base)
        assert growth < BOUND, f"hub grew by {growth / 2**20:.0f} MiB with 2 stalled readers"
        # the hub still answers everyone else while the readers stall
        assert p.run("echo alive")["stdout"] == "alive\n"
    finally:
        for sock in readers:
            sock.close()
    # After the disconnect the streams are cancelled: the hub's memory does not climb later,
    # and a full reader of a small job still gets every byte in order.
    time.sleep(1.0)
    assert _rss(hub.pid) - base < BOUND
    small = _start_job(p, "head -c 3000000 /dev/zero | tr '\\0' y; echo; echo tail-marker")
    _wait_job(p, small)
    r = p.v3("GET", f"/jobs/{small}/events", timeout=60)
    assert r.status_code == 200
    assert "tail-marker" in r.text and "event: done" in r.text
    assert r.text.count("y") >= 3_000_000
