"""Terminal latency and throughput (issue 20 item 4; not run by run.py).

Starts a real server (temp data dir, the default sandbox), opens a terminal and attaches a
WebSocket (``websockets.sync.client``), then measures:

* keystroke echo: one byte typed -> its echo back from bash's line editor, N times (what a
  user feels per key: WebSocket -> hub -> fabric call -> daemon -> PTY -> bash -> PTY ->
  daemon -> fabric stream -> hub -> WebSocket);
* output throughput: ``head -c SIZE /dev/zero | tr '\\0' x`` read to the end through the
  socket (bytes/s a client that keeps up receives).

    .venv/bin/python bench/terminal.py [--keys 300] [--mib 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.server import Server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=300)
    parser.add_argument("--mib", type=int, default=64)
    args = parser.parse_args()
    srv = Server(Path(tempfile.mkdtemp(prefix="bench-term"))).start()
    try:
        account = srv.new_account()
        h = {"Authorization": f"Bearer {account.api_key}"}
        pid = httpx.post(srv.url + "/api/v3/projects", json={"title": "bench"}, headers=h,
                         timeout=60).json()["project_id"]
        started = time.perf_counter()
        r = httpx.post(f"{srv.url}/api/v3/projects/{pid}/terminals", json={}, headers=h, timeout=60)
        first_create = time.perf_counter() - started
        creates = []
        for _ in range(5):
            t0 = time.perf_counter()
            extra = httpx.post(f"{srv.url}/api/v3/projects/{pid}/terminals", json={}, headers=h, timeout=60)
            creates.append(time.perf_counter() - t0)
            httpx.delete(f"{srv.url}/api/v3/projects/{pid}/terminals/{extra.json()['terminal_id']}", headers=h)
        tid = r.json()["terminal_id"]
        url = f"ws://127.0.0.1:{srv.port}/api/v3/projects/{pid}/terminals/{tid}/ws"
        with connect(url, additional_headers=h, max_size=None) as ws:
            ws.recv(timeout=10)
            ws.send(b"stty -echoctl; echo ready\r")
            buf = b""
            while b"ready\r\n" not in buf:
                buf += ws.recv(timeout=10)
            time.sleep(0.3)
            while True:   # drain the prompt
                try:
                    ws.recv(timeout=0.3)
                except TimeoutError:
                    break
            rtts = []
            for i in range(args.keys):
                key = b"abcdefghij"[i % 10:i % 10 + 1]
                t0 = time.perf_counter()
                ws.send(key)
                got = b""
                while key not in got:
                    got += ws.recv(timeout=10)
                rtts.append(time.perf_counter() - t0)
            ws.send(b"\x15")   # ^U: clear the line
            time.sleep(0.2)
            while True:
                try:
                    ws.recv(timeout=0.3)
                except TimeoutError:
                    break
            size = args.mib * 2**20
            ws.send(f"head -c {size} /dev/zero | tr '\\0' x; echo; echo end-$((1+1))\r".encode())
            t0 = time.perf_counter()
            total = 0
            tail = b""
            while b"end-2\r\n" not in tail:
                chunk = ws.recv(timeout=30)
                if isinstance(chunk, bytes):
                    total += len(chunk)
                    tail = (tail + chunk)[-64:]
            elapsed = time.perf_counter() - t0
        rtts_ms = sorted(x * 1000 for x in rtts)
        result = {
            "first_create_ms": round(first_create * 1000, 1),
            "create_ms_median": round(statistics.median(creates) * 1000, 1),
            "echo_ms_p50": round(statistics.median(rtts_ms), 3),
            "echo_ms_p90": round(rtts_ms[int(len(rtts_ms) * 0.9)], 3),
            "echo_ms_p99": round(rtts_ms[int(len(rtts_ms) * 0.99)], 3),
            "output_mib": round(total / 2**20, 1),
            "output_mib_per_s": round(total / 2**20 / elapsed, 1),
        }
        print(json.dumps(result))
    finally:
        srv.stop()
        srv.cli("stop-all")


if __name__ == "__main__":
    main()
