"""Hub memory under slow and stalled readers (issue 14 item 5): flow control end to end.

    python bench/stalled_readers.py [--job-mb 900] [--readers 1,3] [--file-mb 8] [--file-readers 5]

1. throughput: one full SSE reader of a 200 MB job (MB/s), so flow control is not bought
   with speed;
2. stalled SSE readers: a job printing ``--job-mb`` MB, N readers that open its event
   stream, read 16 KiB and stop reading with the socket open; hub RSS growth per reader
   once the job is done and the hub has settled (target: <= 8 MiB per reader whatever the
   output size), and after the readers disconnect;
3. slow file readers: ``--file-readers`` raw HTTP clients calling readTextFileFromProject
   on a ``--file-mb`` MB file and never reading the answer (hub RSS growth per reader),
   and what a 200 MB file read answers.

Prints a JSON summary (and writes it with ``--out``).  Starts its own server on
127.0.0.1 and stops it and every project daemon at the end.
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Server, log, run_cleanups  # noqa: E402

MiB = 2**20


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def settle(pid: int, seconds: float = 4.0) -> int:
    """Highest RSS seen over ``seconds`` (the hub has buffered whatever it will by then)."""
    peak, deadline = rss(pid), time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.2)
        peak = max(peak, rss(pid))
    return peak


def start_job(http: httpx.Client, pid: str, command: str) -> str:
    r = http.post(f"/api/v3/projects/{pid}/exec",
                  json={"command": command, "bash": True, "async": True, "timeout": 600})
    r.raise_for_status()
    return r.json()["job_id"]


def wait_job(http: httpx.Client, pid: str, job_id: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http.get(f"/api/v3/projects/{pid}/jobs/{job_id}").json().get("status") != "running":
            return
        time.sleep(0.2)
    raise RuntimeError(f"job {job_id} did not finish")


def raw_request(server: Server, request: bytes) -> socket.socket:
    """Send one request, read the first 16 KiB of the answer, then stall (socket open)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(request)
    sock.settimeout(120)
    head = sock.recv(16 * 1024)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected answer: {head[:200]!r}")
    return sock


def sse_request(server: Server, pid: str, job_id: str) -> bytes:
    return (f"GET /api/v3/projects/{pid}/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {server.api_key}\r\n\r\n").encode()


def file_request(server: Server, pid: str, path: str) -> bytes:
    body = json.dumps({"project_id": pid, "name": "system.readTextFileFromProject",
                       "args": [{"path": path}]}).encode()
    auth = base64.b64encode(f"{server.api_key}:".encode()).decode()
    return (f"POST /api/conat/project HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def throughput(server: Server, http: httpx.Client, pid: str, mb: int = 200) -> dict[str, Any]:
    job = start_job(http, pid, f"head -c {mb * 1000000} /dev/zero | tr '\\0' x")
    wait_job(http, pid, job)
    got = 0
    t0 = time.perf_counter()
    with http.stream("GET", f"/api/v3/projects/{pid}/jobs/{job}/events") as resp:
        for line in resp.iter_lines():
            if line.startswith("data: "):
                got += line.count("x")
    wall = time.perf_counter() - t0
    return {"mb": mb, "bytes": got, "wall_s": round(wall, 2), "mb_per_s": round(got / 1e6 / wall, 1)}


def stalled_sse(server: Server, http: httpx.Client, pid: str, job_mb: int, n: int) -> dict[str, Any]:
    assert server.process is not None
    hub = server.process.pid
    job = start_job(http, pid, f"head -c {job_mb * 1000000} /dev/zero | tr '\\0' x")
    base = rss(hub)
    socks = [raw_request(server, sse_request(server, pid, job)) for _ in range(n)]
    t0 = time.monotonic()
    wait_job(http, pid, job)
    job_s = time.monotonic() - t0
    stalled = settle(hub)
    # the hub keeps answering while the readers stall
    t1 = time.perf_counter()
    http.post(f"/api/v3/projects/{pid}/exec", json={"command": "true"}).raise_for_status()
    exec_ms = (time.perf_counter() - t1) * 1000
    for s in socks:
        s.close()
    after = settle(hub, 2.0)
    return {"readers": n, "job_mb": job_mb, "job_s": round(job_s, 1),
            "growth_mib": round((stalled - base) / MiB, 1),
            "growth_per_reader_mib": round((stalled - base) / MiB / n, 1),
            "after_disconnect_mib": round((after - base) / MiB, 1),
            "exec_while_stalled_ms": round(exec_ms, 1)}


def slow_files(server: Server, http: httpx.Client, pid: str, mb: int, n: int) -> dict[str, Any]:
    assert server.process is not None
    hub = server.process.pid
    r = http.post(f"/api/v3/projects/{pid}/exec",
                  json={"command": f"head -c {mb * MiB - 1000} /dev/zero | tr '\\0' x > f{mb}.txt",
                        "bash": True, "timeout": 120})
    r.raise_for_status()
    base = rss(hub)
    socks = [raw_request(server, file_request(server, pid, f"f{mb}.txt")) for _ in range(n)]
    stalled = settle(hub)
    for s in socks:
        s.close()
    after = settle(hub, 2.0)
    return {"readers": n, "file_mb": mb, "growth_mib": round((stalled - base) / MiB, 1),
            "growth_per_reader_mib": round((stalled - base) / MiB / n, 1),
            "after_disconnect_mib": round((after - base) / MiB, 1)}


def big_file_answer(server: Server, http: httpx.Client, pid: str, mb: int = 200) -> dict[str, Any]:
    assert server.process is not None
    http.post(f"/api/v3/projects/{pid}/exec",
              json={"command": f"head -c {mb * 1000000} /dev/zero | tr '\\0' x > big.txt",
                    "bash": True, "timeout": 120}).raise_for_status()
    base = rss(server.process.pid)
    t0 = time.perf_counter()
    r = http.post("/api/conat/project", json={"project_id": pid, "name": "system.readTextFileFromProject",
                                              "args": [{"path": "big.txt"}]})
    wall = time.perf_counter() - t0
    body = r.text
    return {"file_mb": mb, "status": r.status_code, "wall_s": round(wall, 2),
            "answer": body[:200] if len(body) < 10000 else f"<{len(body)} bytes of content>",
            "hub_growth_mib": round((settle(server.process.pid, 1.0) - base) / MiB, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--job-mb", type=int, default=900)
    ap.add_argument("--readers", default="1,3")
    ap.add_argument("--file-mb", type=int, default=8)
    ap.add_argument("--file-readers", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out: dict[str, Any] = {"argv": sys.argv[1:]}

    def fresh() -> tuple[Server, httpx.Client, str]:
        """Each phase on its own server: freed memory that the hub's allocator keeps
        would otherwise hide the next phase's growth."""
        run_cleanups()
        server = Server().start()
        http = server.client(timeout=600)
        pid = server.create_project(http, "stalled-readers")
        http.post(f"/api/v3/projects/{pid}/exec", json={"command": "true"}).raise_for_status()
        return server, http, pid

    try:
        log("throughput")
        out["throughput"] = throughput(*fresh())
        out["stalled_sse"] = []
        for n in (int(x) for x in args.readers.split(",")):
            log(f"{n} stalled SSE reader(s) of a {args.job_mb} MB job")
            out["stalled_sse"].append(stalled_sse(*fresh(), args.job_mb, n))
        log(f"{args.file_readers} slow readers of a {args.file_mb} MiB file")
        out["slow_file_readers"] = slow_files(*fresh(), args.file_mb, args.file_readers)
        log("one 200 MB file read")
        out["big_file"] = big_file_answer(*fresh())
    finally:
        run_cleanups()
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
