"""exec ``true`` through hub -> NATS -> host vs the embedded server (issue 17 item 7; target:
at most +0.6 ms at p50).

    .venv/bin/python bench/nats_exec.py [--n 300] [--rounds 5] [--out FILE]

Starts, on loopback with temp dirs: a ``nats-server`` (Debian's; config and credentials from
``projecthub nats-config``), one ``projecthub host``, one ``projecthub hub --nats``, and one
embedded ``projecthub serve``.  The official client (``cocalc_api.Project.system.exec``)
runs ``true`` one call at a time; rounds alternate between the two servers so load on the
shared machine hits both alike, and the merged samples' p50 are compared.  The CPU time the
hub, the host and the embedded server used during their rounds, divided by the calls, is
the per-request CPU for capacity planning.  Not run by ``run.py``; writes ``--out``
(default ``results/<date>-nats-exec.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (PROJECT_ENV, PROJECTHUB, Server, free_port, machine, make_tmp_dir,  # noqa: E402
                    on_cleanup, run_cleanups, stop_process, summarize)

HOST_ID = "bench1"


def start_nats(directory: Path) -> tuple[str, Path]:
    from projecthub.fabric.nats_config import write_config
    if shutil.which("nats-server") is None:
        sys.exit("nats-server is not installed (apt-get install nats-server)")
    port = free_port()
    paths = write_config(directory, [HOST_ID], listen=f"127.0.0.1:{port}")
    log = open(directory / "nats-server.log", "ab")
    proc = subprocess.Popen(["nats-server", "-c", str(paths["config"])], stdout=log, stderr=log)
    on_cleanup(lambda: stop_process(proc))
    time.sleep(0.3)
    return f"nats://127.0.0.1:{port}", directory


def start_host(url: str, creds_dir: Path, data_dir: Path) -> subprocess.Popen:
    from projecthub.fabric.nats_config import creds_path, host_user
    log = open(data_dir.parent / "host.log", "ab")
    proc = subprocess.Popen([*PROJECTHUB, "host", "--nats", url, "--host-id", HOST_ID, "--data-dir",
                             str(data_dir), "--nats-creds", str(creds_path(creds_dir, host_user(HOST_ID)))],
                            stdout=log, stderr=log, env={**os.environ, "PROJECTHUB_PROJECT_ENV": str(PROJECT_ENV)})

    def stop() -> None:
        stop_process(proc)
        from projecthub.host.ledger import LEDGER_NAME
        from projecthub.host.sandbox import Sandbox, SandboxConfig
        ledger = data_dir / LEDGER_NAME
        sandbox = Sandbox(SandboxConfig(data_dir=data_dir))
        for project_id in (json.loads(ledger.read_text()) if ledger.exists() else {}):
            sandbox.stop_project(project_id)   # daemons outlive their host by design
    on_cleanup(stop)
    return proc


def project_client(server: Server) -> Any:
    import cocalc_api
    with server.client() as http:
        pid = server.create_project(http)
        deadline = time.monotonic() + 60
        while True:   # the hub may not have heard the host's first heartbeat yet
            try:
                server.conat_project(http, pid, "system.exec", [{"command": "true"}])
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    client = cocalc_api.Project(api_key=server.api_key, host=server.url, project_id=pid)
    for _ in range(30):   # warm-up
        client.system.exec(command="true")
    return client


def cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="exec calls per round and server")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    started = datetime.now(timezone.utc)
    try:
        work = make_tmp_dir("phbench-nats-")
        (work / "nats").mkdir()
        (work / "host").mkdir()
        url, creds_dir = start_nats(work / "nats")
        host = start_host(url, creds_dir, work / "host" / "data")
        from projecthub.fabric.nats_config import HUB_USER, creds_path
        hub = Server(command="hub", extra_args=["--spare-projects", "0", "--nats", url, "--nats-creds",
                                                str(creds_path(creds_dir, HUB_USER))]).start()
        embedded = Server(extra_args=["--spare-projects", "0"]).start()
        clients = {"nats": project_client(hub), "embedded": project_client(embedded)}
        samples: dict[str, list[float]] = {"nats": [], "embedded": []}
        cpu = {"hub": 0.0, "host": 0.0, "embedded": 0.0}
        for _ in range(args.rounds):
            for name in ("nats", "embedded"):
                client = clients[name]
                pids = {"hub": hub.process.pid, "host": host.pid} if name == "nats" \
                    else {"embedded": embedded.process.pid}
                before = {k: cpu_s(p) for k, p in pids.items()}
                for _ in range(args.n):
                    t0 = time.perf_counter()
                    client.system.exec(command="true")
                    samples[name].append(time.perf_counter() - t0)
                for k, p in pids.items():
                    cpu[k] += cpu_s(p) - before[k]
        calls = args.n * args.rounds
        result = {name: summarize(s) for name, s in samples.items()}
        result["delta_p50_ms"] = round(result["nats"]["p50_ms"] - result["embedded"]["p50_ms"], 4)
        result["cpu_per_call_ms"] = {k: round(v / calls * 1000, 4) for k, v in cpu.items()}
        report = {"started": started.isoformat(timespec="seconds"), "machine": machine(),
                  "command": " ".join(["bench/nats_exec.py", *sys.argv[1:]]), "exec_true": result}
    finally:
        run_cleanups()
    out = Path(args.out) if args.out else (Path(__file__).parent / "results"
                                           / f"{started:%Y-%m-%d-%H%M}-nats-exec.json")
    out.write_text(json.dumps(report, indent=1))
    for name, label in (("embedded", "embedded (serve)"), ("nats", "hub -> NATS -> host")):
        r = result[name]
        print(f"exec true  {label:22s} p50 {r['p50_ms']:.3f} ms  mean {r['mean_ms']:.3f} ms  "
              f"p99 {r['p99_ms']:.3f} ms  n={r['n']}")
    c = result["cpu_per_call_ms"]
    print(f"delta p50 {result['delta_p50_ms']:+.3f} ms; CPU per call: hub {c['hub']:.3f} ms, host "
          f"{c['host']:.3f} ms, embedded server {c['embedded']:.3f} ms; wrote {out}")


if __name__ == "__main__":
    main()
