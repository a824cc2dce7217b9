"""Slow-connection attack on a real ``projecthub serve``: legitimate latency while thousands of
sockets hold half-sent request headers (issue 14 item 6).

    .venv/bin/python bench/slow_connections.py --sockets 15000 --sources 30 --hold 20
    .venv/bin/python bench/slow_connections.py --tree /tmp/old-tree ...   # code from another tree

Opens ``--sockets`` connections from ``--sources`` loopback addresses (127.0.1.x) that each send
a partial request and then wait, while a legitimate client (its own thread, a new connection
per call, GET /healthz) measures latency.  Prints one JSON object: legit latencies and
failures during the attack, how many slow sockets the server had closed by when, and the
server's log line count.  Binds to loopback only; every socket and the server are closed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.server import Server  # noqa: E402

PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
LEGIT = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def legit_call(port: int, src: str, timeout: float) -> float | None:
    """One GET /healthz on a new connection; seconds, or None when it did not get a 200."""
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(src, 0)) as s:
            s.sendall(LEGIT)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return None
    return time.monotonic() - t0 if data.startswith(b"HTTP/1.1 200") else None


class Legit(threading.Thread):
    def __init__(self, port: int, src: str, interval: float = 0.05, timeout: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.port, self.src, self.interval, self.timeout = port, src, interval, timeout
        self.samples: list[tuple[float, float | None]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.monotonic(), legit_call(self.port, self.src, self.timeout)))
            self.stop.wait(self.interval)


async def slow_socket(port: int, src: str, sem: asyncio.Semaphore, opened: list[float],
                      closed: list[float]) -> None:
    """Connect, send a partial request, then read until the server closes (or we are cancelled)."""
    try:
        async with sem:   # a bounded burst of connects in flight
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))
    except OSError:
        return
    opened.append(time.monotonic())
    try:
        writer.write(PARTIAL)
        while await reader.read(65536):
            pass
        closed.append(time.monotonic())
    except OSError:
        closed.append(time.monotonic())
    finally:
        writer.transport.abort()


async def attack(port: int, sockets: int, sources: list[str], hold: float) -> dict:
    opened: list[float] = []
    closed: list[float] = []
    sem = asyncio.Semaphore(256)
    t0 = time.monotonic()
    tasks = [asyncio.ensure_future(slow_socket(port, sources[i % len(sources)], sem, opened, closed))
             for i in range(sockets)]
    await asyncio.sleep(hold)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"t0": t0, "opened": opened, "closed": closed}


def hotpath(port: int, n: int, pid: int) -> dict:
    """Sequential calls on one kept-alive connection, no attack: what the protocol costs per
    request.  GET /healthz, and a POST with a 1 KiB body (answered 405: the body callbacks run)."""
    import http.client

    import psutil
    proc = psutil.Process(pid)
    out = {}
    for name, method, body in (("get", "GET", None), ("post_1k", "POST", b"x" * 1024)):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        lat = []
        cpu0 = sum(proc.cpu_times()[:2])
        for _ in range(n):
            t0 = time.perf_counter()
            conn.request(method, "/healthz", body=body)
            conn.getresponse().read()
            lat.append(time.perf_counter() - t0)
        conn.close()
        out[f"{name}_server_cpu_us"] = round(1e6 * (sum(proc.cpu_times()[:2]) - cpu0) / n, 1)
        out[f"{name}_p50_us"] = round(1e6 * statistics.median(lat), 1)
        out[f"{name}_mean_us"] = round(1e6 * statistics.fmean(lat), 1)
    return out


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sockets", type=int, default=10000)
    ap.add_argument("--sources", type=int, default=20, help="attacking loopback addresses 127.0.1.1..N")
    ap.add_argument("--hold", type=float, default=20.0, help="seconds the attack lasts")
    ap.add_argument("--tree", default=None, help="run the server from this source tree (e.g. an old commit)")
    ap.add_argument("--server-nofile", type=int, default=None,
                    help="start the server with this soft RLIMIT_NOFILE (1024 is a common default)")
    ap.add_argument("--hotpath", type=int, default=0, metavar="N",
                    help="instead of the attack: N sequential keep-alive calls (protocol cost per request)")
    ap.add_argument("--save-log", default=None, help="copy the server's log here")
    ap.add_argument("server_args", nargs="*", help="extra `projecthub serve` flags (after --)")
    args = ap.parse_args()
    nofile = raise_nofile()
    if args.sockets + 30 > nofile:
        sys.exit(f"--sockets {args.sockets} needs more than this process's fd limit {nofile}")
    data_dir = Path(tempfile.mkdtemp(prefix="slowconn-"))
    if args.tree:
        os.chdir(args.tree)   # `python -m projecthub.cli` imports from the cwd first
    if args.server_nofile:   # the server inherits it; we take ours back right after the start
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.server_nofile, nofile))
    try:
        server = Server(data_dir, extra_args=["--spare-projects", "0", *args.server_args]).start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    try:
        lines_before = server.log().count("\n")
        if args.hotpath:
            print(json.dumps({"tree": args.tree or str(ROOT), "calls": args.hotpath,
                              **hotpath(server.port, args.hotpath, server.process.pid)}))
            return
        legit = Legit(server.port, "127.0.0.1")
        legit.start()
        time.sleep(1.0)
        result = asyncio.run(attack(server.port, args.sockets,
                                    [f"127.0.1.{i + 1}" for i in range(args.sources)], args.hold))
        time.sleep(1.0)
        legit.stop.set()
        legit.join()
        t0 = result["t0"]
        during = [(t, lat) for t, lat in legit.samples if t0 <= t <= t0 + args.hold]
        ok = [lat for _, lat in during if lat is not None]
        closed_by = {f"{s}s": sum(1 for t in result["closed"] if t - t0 <= s)
                     for s in (5, 10, 15, 20, 30, 60) if s <= args.hold}
        out = {"sockets": args.sockets, "sources": args.sources, "hold_s": args.hold,
               "server_args": args.server_args, "server_nofile": args.server_nofile, "tree": args.tree or str(ROOT),
               "opened": len(result["opened"]), "closed_by_server": closed_by,
               "legit_calls": len(during), "legit_failed": len(during) - len(ok),
               "legit_p50_ms": round(1000 * statistics.median(ok), 2) if ok else None,
               "legit_p99_ms": round(1000 * pct(ok, 0.99), 2) if ok else None,
               "legit_max_ms": round(1000 * max(ok), 2) if ok else None,
               "server_log_lines": server.log().count("\n") - lines_before}
        print(json.dumps(out))
    finally:
        if args.save_log:
            shutil.copy(data_dir / "server.log", args.save_log)
        server.stop()   # --spare-projects 0 and no project made: no daemon to stop
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
