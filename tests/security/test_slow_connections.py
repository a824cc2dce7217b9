"""Slow-connection exhaustion (issue 14 item 6), attacked on a real server over loopback.

The attack: thousands of sockets that send part of a request and then wait.  Before the fix
they were held forever; at the server's fd limit asyncio's accept loop failed with EMFILE and
logged it thousands of times a second, and legitimate clients waited seconds or got nothing.
Now (projecthub/api/connections.py): incomplete headers or bodies time out with 408, connections
are capped in total and per client address, and the floodable loggers are rate-limited.  A
legitimate client is served throughout; responses in progress (SSE, long execs) are not timed.

Sources: the whole 127.0.0.0/8 is loopback, so binding a client socket to 127.0.1.x makes it a
distinct client address for the per-address cap.
"""

from __future__ import annotations

import json
import resource
import select
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import psutil
import pytest

from tests.conftest import require
from tests.security.conftest import require_sandbox
from tests.server import Server

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
MAX_CONNECTIONS = 1000
MAX_PER_IP = 300
# timeout + the sweeper's tick (timeout / 4) + slack for a loaded 2-core machine
CLOSE_WITHIN = HEADER_TIMEOUT + 3.0

PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
GET = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module", autouse=True)
def fd_limit() -> int:
    """The attacker needs a descriptor per socket: take this process's hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    require("RLIMIT_NOFILE hard limit >= 4096 (thousands of test sockets)", hard >= 4096)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require_sandbox()   # the long exec / SSE test runs a real project
    srv = Server(tmp_path_factory.mktemp("slowconn"), extra_args=[
        "--spare-projects", "0", "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
        "--max-connections", str(MAX_CONNECTIONS), "--max-connections-per-ip", str(MAX_PER_IP)]).start()
    yield srv
    srv.stop()
    srv.cli("stop-all")


# ------------------------------------------------------------------------------ helpers

def log_lines(server: Server) -> int:
    """Lines an attack could add: the request log's one line per completed request (the legit
    client's calls) is not flooding (slow and invalid requests never complete one)."""
    return sum(1 for line in server.log().splitlines() if '"logger": "projecthub.requests"' not in line)


def connect(port: int, src: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    return s


def read_all(s: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything until the server closes (a reset after a response counts as the close)."""
    s.settimeout(timeout)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def call(port: int, src: str = "127.0.0.1", request: bytes = GET, timeout: float = 10.0) -> bytes:
    """One request on a new connection; the raw response ('' if refused or reset)."""
    try:
        with connect(port, src, timeout) as s:
            s.sendall(request)
            return read_all(s, timeout)
    except OSError:
        return b""


def open_slow(port: int, sources: list[str], count: int) -> list[socket.socket]:
    socks = []
    for i in range(count):
        s = connect(port, sources[i % len(sources)])
        s.sendall(PARTIAL)
        socks.append(s)
    return socks


def wait_closed(socks: list[socket.socket], timeout: float) -> tuple[int, list[bytes]]:
    """Poll until the server closed every socket or ``timeout``; (still open, what each got)."""
    got = {s.fileno(): b"" for s in socks}
    by_fd = {s.fileno(): s for s in socks}
    poller = select.poll()   # not select(): descriptors go far above 1024
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    open_fds = set(by_fd)
    deadline = time.monotonic() + timeout
    while open_fds and time.monotonic() < deadline:
        for fd, _ in poller.poll(200):
            try:
                chunk = by_fd[fd].recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                got[fd] += chunk
            else:
                open_fds.discard(fd)
                poller.unregister(fd)
    return len(open_fds), list(got.values())


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


class LegitClient(threading.Thread):
    """A well-behaved client calling every 50 ms on a new connection, alternating the health
    check and an authenticated API call; records (status line ok?, seconds)."""

    def __init__(self, server: Server, key: str) -> None:
        super().__init__(daemon=True)
        self.server, self.key = server, key
        self.results: list[tuple[bool, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        authed = (f"GET /api/v3/projects HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.key}\r\n"
                  "Connection: close\r\n\r\n").encode()
        i = 0
        while not self.halt.is_set():
            t0 = time.monotonic()
            response = call(self.server.port, request=GET if i % 2 == 0 else authed)
            self.results.append((response.startswith(b"HTTP/1.1 200"), time.monotonic() - t0))
            i += 1
            self.halt.wait(0.05)

    def stop(self) -> list[tuple[bool, float]]:
        self.halt.set()
        self.join(30)
        return self.results


def assert_served(results: list[tuple[bool, float]], bound: float = 5.0) -> None:
    assert len(results) >= 10, results
    failed = [r for r in results if not r[0]]
    assert not failed, f"{len(failed)} of {len(results)} legitimate calls failed"
    slowest = max(t for _, t in results)
    assert slowest < bound, (f"a legitimate call took {slowest:.2f} s "
                             f"(median {statistics.median(t for _, t in results):.3f} s)")


# -------------------------------------------------------------------------------- tests

def test_slow_headers_are_closed_and_a_legit_client_is_served(server: Server) -> None:
    """2000 slow sockets from 8 addresses, twice the connection cap: the oldest waiting ones are
    evicted, the rest time out with 408; a legitimate client is answered throughout; the log
    stays a few lines; the server's descriptors come back."""
    account = server.new_account("legit")
    proc = psutil.Process(server.process.pid)
    fds_before = proc.num_fds()
    lines_before = log_lines(server)
    legit = LegitClient(server, account.api_key)
    legit.start()
    socks = open_slow(server.port, [f"127.0.1.{i}" for i in range(1, 9)], 2000)
    try:
        still_open, got = wait_closed(socks, CLOSE_WITHIN)
        results = legit.stop()
    finally:
        close_all(socks)
    assert still_open == 0, f"{still_open} of 2000 slow sockets still open {CLOSE_WITHIN} s after the last"
    timed_out = sum(1 for g in got if g.startswith(b"HTTP/1.1 408"))
    assert timed_out >= MAX_CONNECTIONS // 2, f"only {timed_out} slow sockets were answered 408"
    assert_served(results)
    added = log_lines(server) - lines_before
    assert added <= 60, f"{added} log lines for one attack"
    time.sleep(0.5)
    assert proc.num_fds() <= fds_before + 20


def test_eviction_at_the_cap_spares_a_light_address(server: Server) -> None:
    """At the global cap the flood pays, not the oldest connection: a client that connected
    just before a flood keeps its connection.  In CI such a client's whole request sat unread
    in its socket buffer while the server accepted the flood, so to the server it was the oldest
    connection waiting for headers, and it was closed.  A request not read yet looks the same
    to the server as one not sent yet: this client sends once the evictions are over."""
    early = connect(server.port, "127.0.0.1")
    socks: list[socket.socket] = []
    try:
        socks = open_slow(server.port, [f"127.0.3.{i}" for i in range(1, 9)], MAX_CONNECTIONS + 50)
        still_open, _ = wait_closed(socks, 0.5)   # the 50 evictions happen here
        assert still_open <= MAX_CONNECTIONS
        early.sendall(GET)
        response = read_all(early)
        assert response.startswith(b"HTTP/1.1 200"), response[:200] or "closed without a response"
    finally:
        early.close()
        close_all(socks)
    time.sleep(0.3)


def test_one_address_is_capped_while_another_is_served(server: Server) -> None:
    port = server.port
    socks = open_slow(port, ["127.0.0.2"], MAX_PER_IP)
    try:
        refused = call(port, "127.0.0.2")
        assert not refused.startswith(b"HTTP/1.1 200"), refused[:200]
        if refused:   # it may also be a reset if our request raced the server's close
            assert refused.startswith(b"HTTP/1.1 503"), refused[:200]
        assert call(port, "127.0.0.3").startswith(b"HTTP/1.1 200")
        # the capped sockets time out, and the address is welcome again
        still_open, _ = wait_closed(socks, CLOSE_WITHIN)
        assert still_open == 0
    finally:
        close_all(socks)
    time.sleep(0.2)
    assert call(port, "127.0.0.2").startswith(b"HTTP/1.1 200")


def test_a_trusted_proxy_is_not_capped_per_address(tmp_path: Path) -> None:
    """Behind a reverse proxy every connection comes from the proxy: the proxies the operator
    names (--forwarded-allow-ips) count only against the global cap."""
    srv = Server(tmp_path, extra_args=["--spare-projects", "0", "--max-connections-per-ip", "20",
                                       "--forwarded-allow-ips", "127.0.0.4"]).start()
    socks: list[socket.socket] = []
    try:
        socks = open_slow(srv.port, ["127.0.0.4"], 30) + open_slow(srv.port, ["127.0.0.5"], 20)
        assert call(srv.port, "127.0.0.4").startswith(b"HTTP/1.1 200")
        assert not call(srv.port, "127.0.0.5").startswith(b"HTTP/1.1 200")
    finally:
        close_all(socks)
        srv.stop()
        srv.cli("stop-all")


def test_trickled_headers_and_a_stalled_keep_alive_request_time_out(server: Server) -> None:
    """One header byte every 0.3 s does not reset the clock; nor does a completed request on
    a kept-alive connection followed by half of the next one."""
    trickle = connect(server.port)
    trickle.sendall(b"GET /healthz HTTP/1.1\r\n")
    keep = connect(server.port)
    keep.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    first = keep.recv(65536)
    assert first.startswith(b"HTTP/1.1 200"), first
    keep.sendall(b"GET /healthz HTTP/1.1\r\nHo")
    t0 = time.monotonic()
    closed_at = None
    try:
        while time.monotonic() - t0 < CLOSE_WITHIN:
            try:
                trickle.sendall(b"X")
            except OSError:
                closed_at = time.monotonic() - t0
                break
            time.sleep(0.3)
        assert closed_at is not None, "a connection trickling its headers was never closed"
        still_open, got = wait_closed([keep], CLOSE_WITHIN)
        assert still_open == 0, "a half-sent second request on a kept-alive connection was never closed"
        assert b"HTTP/1.1 408" in got[0], got[0]   # after the rest of the first response
    finally:
        close_all([trickle, keep])


def test_stalled_and_trickled_bodies_time_out(server: Server) -> None:
    key = server.new_account("body").api_key
    head = (f"POST /api/v3/projects HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n").encode()
    stalled = connect(server.port)
    stalled.sendall(head + b'{"title": "')
    trickled = connect(server.port)
    trickled.sendall(head + b'{"title": "')
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < BODY_TIMEOUT + 4:   # 20 B/s, far under the minimum rate
            try:
                trickled.sendall(b"y" * 10)
            except OSError:
                break
            time.sleep(0.5)
        still_open, got = wait_closed([stalled, trickled], 1.0)
        assert still_open == 0, "a stalled or trickled request body was never closed"
        assert got[0].startswith(b"HTTP/1.1 408"), got[0][:200]
    finally:
        close_all([stalled, trickled])


def test_oversized_headers_are_refused(server: Server) -> None:
    """Neither httptools nor uvicorn bounds headers: the old server buffered 190 MB of them
    from one connection.  Now 64 KiB gets a 431 and the connection is closed."""
    s = connect(server.port)
    try:
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            for _ in range(64):   # 512 KiB, 8 KiB per header line
                s.sendall(b"X-Pad: " + b"a" * 8185 + b"\r\n")
        except OSError:
            pass   # the server closed while we were still sending: fine
        still_open, got = wait_closed([s], 5.0)
    finally:
        s.close()
    assert still_open == 0, "a connection sending endless headers was not closed"
    assert got[0] == b"" or got[0].startswith(b"HTTP/1.1 431"), got[0][:200]


def test_invalid_requests_do_not_flood_the_log(server: Server) -> None:
    """uvicorn logs a warning per invalid request; 1500 of them now write a few lines."""
    lines_before = log_lines(server)
    for i in range(1500):
        call(server.port, f"127.0.2.{1 + i % 200}", request=b"\x00\x01 not http\r\n\r\n", timeout=5)
    added = log_lines(server) - lines_before
    assert added <= 40, f"{added} log lines for 1500 invalid requests"


def test_long_exec_and_sse_outlive_the_request_timeouts(server: Server) -> None:
    """Timeouts are on incomplete requests only: a 4 s blocking exec and a 4 s SSE stream
    (both far over the 2 s header/body timeouts) complete."""
    key = server.new_account("long").api_key
    headers = {"Authorization": f"Bearer {key}"}
    r = httpx.post(server.url + "/api/v3/projects", json={"title": "long"}, headers=headers, timeout=30)
    assert r.status_code == 201, r.text
    base = f"{server.url}/api/v3/projects/{r.json()['project_id']}"
    try:
        r = httpx.post(base + "/exec", json={"command": "sleep 4; echo done", "bash": True, "timeout": 30},
                       headers=headers, timeout=60)
        assert r.status_code == 200 and r.json()["stdout"] == "done\n", r.text
        job = httpx.post(base + "/exec", json={"command": "for i in 1 2 3 4; do echo l$i; sleep 1; done",
                                               "bash": True, "async": True}, headers=headers, timeout=30).json()
        t0 = time.monotonic()
        stream = httpx.get(f"{base}/jobs/{job['job_id']}/events", headers=headers, timeout=60)
        assert time.monotonic() - t0 > 3
        assert stream.status_code == 200 and "event: done" in stream.text
        assert all(f"l{i}" in stream.text for i in range(1, 5))
    finally:
        httpx.post(base + "/stop", headers=headers, timeout=30)


def test_a_low_fd_soft_limit_is_raised_and_emfile_cannot_flood(tmp_path: Path, fd_limit: int) -> None:
    """The original failure: a server started with the common soft limit of 1024 descriptors
    and 3000 slow sockets.  Before: accept() failed with EMFILE, asyncio logged it tens of
    thousands of times, and legitimate calls took seconds or failed.  Now serve raises the soft
    limit to the hard one (and caps connections under it)."""
    require("a hard RLIMIT_NOFILE of at least 8192", fd_limit >= 8192)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, fd_limit))   # inherited by the server
    try:
        srv = Server(tmp_path, extra_args=["--spare-projects", "0", "--header-timeout", "3"]).start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))
    try:
        account = srv.new_account("legit")
        lines_before = log_lines(srv)
        legit = LegitClient(srv, account.api_key)
        legit.start()
        socks = open_slow(srv.port, [f"127.0.3.{i}" for i in range(1, 11)], 3000)
        try:
            time.sleep(2.0)
            results = legit.stop()
            still_open, _ = wait_closed(socks, 3 + 3.0)
        finally:
            close_all(socks)
        assert_served(results)
        assert still_open == 0
        added = log_lines(srv) - lines_before
        assert added <= 40, f"{added} log lines"
        lines = [json.loads(line) for line in srv.log().splitlines() if line.startswith("{")]
        assert not any("out of system resource" in e.get("msg", "") for e in lines)
    finally:
        srv.stop()
        srv.cli("stop-all")
