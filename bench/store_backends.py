"""The store's own cost per call on SQLite (a file in a temp dir) and on PostgreSQL (a real
cluster on loopback, started like the tests do: tests/pg.py), and how writes from several
hub processes share PostgreSQL's write lock (issue 17 item 5; not run by run.py).

    .venv/bin/python bench/store_backends.py [--n 2000] [--procs 1,2,4]

Prints one JSON object: per backend and operation the median / p90 / p99 in ms of a call
(``get_api_key`` is what an uncached key resolution reads, ``create_api_key`` and
``create_project`` take the write lock), and writes per second summed over N processes each
creating projects in a loop.  The test cluster runs with fsync off (as in the tests): the
write numbers are the locking and round trips, not a disk's flush.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from projecthub.store import Store  # noqa: E402
from tests.pg import PgServer  # noqa: E402

_WRITER = """
import sys, time
from projecthub.store import Store
s = Store(sys.argv[1]); owner = sys.argv[2]; seconds = float(sys.argv[3])
n = 0; end = time.monotonic() + seconds
while time.monotonic() < end:
    s.create_project(owner); n += 1
s.close(); print(n)
"""


def _stats(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]  # noqa: E731
    return {"median_ms": round(statistics.median(samples) * 1e3, 3),
            "p90_ms": round(pick(0.9) * 1e3, 3), "p99_ms": round(pick(0.99) * 1e3, 3)}


def per_call(url: str, n: int) -> dict[str, dict[str, float]]:
    s = Store(url)
    s.migrate()
    owner = s.create_account()
    key_ids = [s.create_api_key(owner)[0]["id"] for _ in range(20)]
    out: dict[str, dict[str, float]] = {}
    for name, call in (("get_api_key", lambda i: s.get_api_key(key_ids[i % 20])),
                       ("create_api_key", lambda i: s.create_api_key(owner)),
                       ("create_project", lambda i: s.create_project(owner))):
        for i in range(50):   # warm the pool and caches
            call(i)
        samples = []
        for i in range(n):
            started = time.perf_counter()
            call(i)
            samples.append(time.perf_counter() - started)
        out[name] = _stats(samples)
    s.close()
    return out


def writers(url: str, procs: int, seconds: float) -> float:
    s = Store(url)
    s.migrate()
    owner = s.create_account()
    s.close()
    running = [subprocess.Popen([sys.executable, "-c", _WRITER, url, owner, str(seconds)], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    try:
        total = sum(int(p.communicate(timeout=seconds + 60)[0]) for p in running)
    finally:
        for p in running:
            if p.poll() is None:
                p.kill()
                p.wait()
    return round(total / seconds, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="calls per operation")
    parser.add_argument("--procs", default="1,2,4", help="writer process counts")
    parser.add_argument("--seconds", type=float, default=5.0, help="per writer run")
    args = parser.parse_args()
    result: dict[str, object] = {"load_before": os.getloadavg()[0]}
    pg = PgServer().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result["sqlite"] = per_call(f"sqlite:///{tmp}/hub.db", args.n)
            result["postgresql"] = per_call(pg.new_database(), args.n)
            result["writes_per_s"] = {}
            for procs in (int(p) for p in args.procs.split(",")):
                result["writes_per_s"][f"sqlite_{procs}"] = writers(f"sqlite:///{tmp}/w{procs}.db", procs,
                                                                   args.seconds)
                result["writes_per_s"][f"postgresql_{procs}"] = writers(pg.new_database(), procs,
                                                                       args.seconds)
    finally:
        pg.stop()
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
