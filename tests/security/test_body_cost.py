"""Review finding 2: a request body costs the hub nothing before its key is checked, and
little after.

The attack: 16 MiB of ``[[],[],...]`` (5.6 million empty arrays) posted to the CoCalc
surfaces without any key.  conat, v1 and v2 read and parsed the whole body before they
authenticated: ~5 s of event-loop CPU and ~800 MiB per request, so four in parallel froze
``/healthz`` for 3-6 s.  Now every surface checks the header key first (an anonymous
client is answered before its body is read), a body that could hold many values is
decoded by a counting scanner that stops at MAX_JSON_NODES, big bodies are decoded in a
worker thread, and calls without file content take at most ``max_call_body_bytes``.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable

import httpx
import psutil

from tests.security.conftest import Proj, require_sandbox
from tests.server import Server

BRACKETS_16M = b'{"name":"system.ping","command":"true","project_id":"x","x":[' + \
    b"[]," * ((16 * 2**20 - 128) // 3) + b"[]]}"


def _bracket_body(size: int) -> bytes:
    return b'{"command":"true","bash":true,"x":[' + b"[]," * ((size - 64) // 3) + b"[]]}"


def _raw_post(server: Server, path: str, body: bytes, key: str | None) -> tuple[bytes, float]:
    """POST over a raw socket; the body is sent from a thread (the hub may answer and close
    before it has all of it).  Returns the status line and the seconds to the first byte."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    start = time.monotonic()
    sock.sendall(head)

    def push() -> None:
        try:
            sock.sendall(body)
        except OSError:
            pass   # the hub answered without reading it: the point
    sender = threading.Thread(target=push, daemon=True)
    sender.start()
    sock.settimeout(60)
    first = sock.recv(4096)
    elapsed = time.monotonic() - start
    sock.close()
    sender.join(5)
    return first.split(b"\r\n", 1)[0], elapsed


class _Prober:
    """Polls /healthz every 20 ms in a thread and keeps the slowest answer."""

    def __init__(self, server: Server) -> None:
        self.server, self.worst, self.stop = server, 0.0, False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop:
                start = time.monotonic()
                assert client.get(self.server.url + "/healthz").status_code == 200
                self.worst = max(self.worst, time.monotonic() - start)
                time.sleep(0.02)

    def __enter__(self) -> "_Prober":
        self.thread.start()
        time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop = True
        self.thread.join(30)


def _parallel(calls: list[Callable[[], tuple[bytes, float]]]) -> list[tuple[bytes, float]]:
    results: list[tuple[bytes, float]] = [(b"", 0.0)] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_anonymous_16_mib_bodies_are_refused_before_they_are_read(server: Server) -> None:
    paths = ["/api/conat/hub", "/api/conat/project", "/api/v1/project_exec", "/api/v2/exec"]
    hub = psutil.Process(server.process.pid)
    base = hub.memory_info().rss
    with _Prober(server) as probe:
        results = _parallel([lambda p=p: _raw_post(server, p, BRACKETS_16M, None) for p in paths])
        growth = hub.memory_info().rss - base
    for path, (status, elapsed) in zip(paths, results):
        assert status.startswith(b"HTTP/1.1 "), (path, status)
        assert elapsed < 0.5, (path, status, elapsed)       # was 5-6 s each
    print("anonymous 16 MiB x4: seconds to answer", [round(e, 3) for _s, e in results],
          "worst /healthz", round(probe.worst, 3), "RSS growth MiB", growth >> 20)
    assert probe.worst < 0.2, probe.worst                     # was 3.4-5.8 s
    assert growth < 100 * 2**20, growth >> 20                 # was +800 MiB
    # and the error is the usual one, whatever the body holds
    r = httpx.post(server.url + "/api/conat/hub", content=BRACKETS_16M[:1000] + b"]}",
                   headers={"Content-Type": "application/json"}, timeout=30)
    assert r.json() == {"error": "You must provide authentication via an API key."}


def test_a_key_holder_cannot_stall_the_hub_with_a_bracket_body(server: Server, proj_a: Proj) -> None:
    require_sandbox()
    project = f"/api/v3/projects/{proj_a.project_id}/exec"
    calls = [lambda: _raw_post(server, "/api/conat/project", BRACKETS_16M, proj_a.key),
             lambda: _raw_post(server, "/api/conat/project", BRACKETS_16M, proj_a.key),
             lambda: _raw_post(server, project, _bracket_body(2 * 2**20 - 4096), proj_a.key),
             lambda: _raw_post(server, project, _bracket_body(2 * 2**20 - 4096), proj_a.key)]
    with _Prober(server) as probe:
        start = time.monotonic()
        results = _parallel(calls)
        total = time.monotonic() - start
    for status, _elapsed in results:
        assert status.startswith(b"HTTP/1.1 400"), results
    print("with a key x4: worst /healthz", round(probe.worst, 3), "total", round(total, 2))
    assert probe.worst < 0.25, probe.worst       # v3 with a key: /healthz took 4.1 s
    assert total < 5, total
    # the answer says why
    r = httpx.post(server.url + project, content=_bracket_body(2 * 2**20 - 4096),
                   headers={"Authorization": f"Bearer {proj_a.key}"}, timeout=30)
    assert r.status_code == 400 and "more than 100000 values" in r.json()["error"], r.text
    # a call without file content is capped well below 16 MiB
    r = httpx.post(server.url + project, content=BRACKETS_16M,
                   headers={"Authorization": f"Bearer {proj_a.key}"}, timeout=30)
    assert r.status_code == 413, r.text
    # a big body of real content still goes through: 12 MiB of text with brackets and commas
    content = "f(a, [b], {c}),\n" * (12 * 2**20 // 16)
    r = httpx.post(server.url + "/api/conat/project", json={
        "project_id": proj_a.project_id, "name": "system.writeTextFileToProject",
        "args": [{"path": "big.txt", "content": content}]},
        headers={"Authorization": f"Bearer {proj_a.key}"}, timeout=60)
    assert r.status_code == 200 and r.json() is None, r.text[:300]
    assert proj_a.run("wc -c < big.txt")["stdout"].strip() == str(len(content))
