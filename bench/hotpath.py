"""Exec hot path and cold start, p50 ratios within one run (issue "Benchmarks and speed").

    .venv/bin/python bench/hotpath.py [--n 300] [--cold 8] [--spy SECONDS]

* official: ``cocalc_api.Project(...).system.exec(command="true", args=[])``, c=1
* direct:   ``subprocess.run(["true"])`` in this process, c=1 (interleaved rounds)
* ping:     ``system.ping`` of the official client (HTTP + hub)
* fabric only: ``system.exec`` / ``ping`` straight over the daemon's socket (no hub, no HTTP)
* sporadic: official exec / direct spawn, each after 0.5 s of quiet
* cold:     create project -> first exec answered (conat system.exec), sequential
* idle RSS of the project daemon
``--spy N`` also records py-spy samples (collapsed stacks, results/hotpath-daemon.txt) of
the daemon under a c=8 exec load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cocalc_api  # noqa: E402
import psutil  # noqa: E402

import common  # noqa: E402
import scenarios  # noqa: E402


def p50(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


def timed(n: int, fn) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def daemon_of(server: common.Server) -> psutil.Process:
    assert server.process is not None
    return next(p for p in psutil.Process(server.process.pid).children(recursive=True)
                if common.classify(" ".join(p.cmdline())) == "daemon")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cold", type=int, default=8)
    ap.add_argument("--spy", type=int, default=0)
    ap.add_argument("--sporadic", type=int, default=10)
    args = ap.parse_args()
    try:
        server = common.Server().start()
        pid = scenarios.new_project(server, "hotpath")
        proj = cocalc_api.Project(api_key=server.api_key, host=server.url, project_id=pid)
        for _ in range(20):
            proj.system.exec(command="true", args=[])
        off, direct, ping = [], [], []
        for _ in range(args.rounds):
            direct += timed(args.n // args.rounds, lambda: subprocess.run(["true"]))
            off += timed(args.n // args.rounds, lambda: proj.system.exec(command="true", args=[]))
            ping += timed(args.n // args.rounds, lambda: proj.system.ping())
        print(f"exec true official p50 {p50(off):.2f} ms | direct p50 {p50(direct):.2f} ms | "
              f"ratio {p50(off) / p50(direct):.2f} | ping p50 {p50(ping):.2f} ms")

        # the daemon alone: straight over its fabric socket, no hub
        import asyncio
        import json as _json

        from projecthub.fabric.local import FabricClient

        async def fabric_only(n: int) -> tuple[list[float], list[float]]:
            rec = _json.loads((server.data_dir / "run" / pid / "host.json").read_text())
            client = await FabricClient.connect(rec["socket"])
            ex, pg = [], []
            for _ in range(n):
                t = time.perf_counter()
                await client.call("system.exec", [{"command": "true", "args": []}], 30.0)
                ex.append(time.perf_counter() - t)
                t = time.perf_counter()
                await client.call("ping", [], 30.0)
                pg.append(time.perf_counter() - t)
            await client.close()
            return ex, pg
        fex, fpg = asyncio.run(fabric_only(args.n))
        print(f"fabric only: exec true p50 {p50(fex):.2f} ms, ping p50 {p50(fpg):.2f} ms")

        # sporadic: each call after 0.5 s of quiet (cgroup v1 migrations pay an RCU grace
        # period after idle; back-to-back loops never see it)
        spor, spor_direct = [], []
        for _ in range(args.sporadic):
            time.sleep(0.5)
            spor += timed(1, lambda: proj.system.exec(command="true", args=[]))
            time.sleep(0.5)
            spor_direct += timed(1, lambda: subprocess.run(["true"]))
        if spor:
            print(f"sporadic (0.5 s idle before each): official exec p50 {p50(spor):.2f} ms | "
                  f"direct p50 {p50(spor_direct):.2f} ms")

        # throughput at c=8 threads of the official client vs direct spawning
        def burst(fn, threads=8, per=60) -> float:
            t0 = time.perf_counter()
            ts = [threading.Thread(target=lambda: [fn() for _ in range(per)]) for _ in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            return threads * per / (time.perf_counter() - t0)
        projs = [cocalc_api.Project(api_key=server.api_key, host=server.url, project_id=pid) for _ in range(8)]
        it = iter(range(10**9))
        d_tp = burst(lambda: subprocess.run(["true"]))
        o_tp = burst(lambda: projs[next(it) % 8].system.exec(command="true", args=[]))
        print(f"throughput c=8 threads: official {o_tp:.0f}/s, direct {d_tp:.0f}/s ({o_tp / d_tp:.0%})")

        d = daemon_of(server)
        time.sleep(1)
        print(f"daemon idle rss {d.memory_info().rss / 2**20:.1f} MiB, "
              f"uss {d.memory_full_info().uss / 2**20:.1f} MiB")

        if args.spy:
            spy = os.path.join(os.path.dirname(common.PY), "py-spy")
            out = common.BENCH / "results" / "hotpath-daemon.txt"
            out.parent.mkdir(exist_ok=True)
            s = subprocess.Popen([spy, "record", "-o", str(out), "--pid", str(d.pid), "-d", str(args.spy),
                                  "-r", "300", "--nonblocking", "-f", "raw"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            t_end = time.monotonic() + args.spy
            burst(lambda: projs[next(it) % 8].system.exec(command="true", args=[])
                  if time.monotonic() < t_end else None, per=100000 // 8)
            s.wait(60)
            print("flame graph:", out)

        cold = []
        with server.client() as http:
            for i in range(args.cold):
                t = time.perf_counter()
                p = server.create_project(http, f"cold{i}")
                server.conat_project(http, p, "system.exec", [{"command": "true"}])
                cold.append(time.perf_counter() - t)
        if cold:
            print(f"cold start p50 {p50(cold):.0f} ms (min {min(cold) * 1000:.0f}, max {max(cold) * 1000:.0f})")
    finally:
        common.run_cleanups()


if __name__ == "__main__":
    main()
