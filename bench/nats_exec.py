"""hub -> NATS -> hosts vs the embedded server (issue 17 item 7), four rows in one run:
exec ``true`` (target: at most +0.6 ms at p50), stateless Jupyter (target: at most 1.2x at p50),
throughput of exec ``true`` at concurrency with one host and with two, and 1,000 projects
created and first-exec'd over two hosts.

    .venv/bin/python bench/nats_exec.py [--n 300] [--rounds 5] [--jn 50] [--projects 1000]
                                        [--tn 2000] [--concurrency 32,64] [--out FILE]

Starts, on loopback with temp dirs: a ``nats-server`` (Debian's; config and credentials from
``projecthub nats-config``), one ``projecthub host``, one ``projecthub hub --nats``, and one
embedded ``projecthub serve``.  The official client (``cocalc_api.Project.system.exec``)
runs ``true`` one call at a time; rounds alternate between the two servers so load on the
shared machine hits both alike, and the merged samples' p50 are compared.  The CPU time the
hub, the host and the embedded server used during their rounds, divided by the calls, is
the per-request CPU for capacity planning.  Stateless Jupyter (``system.jupyterExecute`` of
``1+1`` without a session, raw keep-alive HTTP like bench/README.md's Jupyter rows) alternates
the same way.  Throughput: ``--tn`` exec ``true`` calls from C raw keep-alive HTTP clients
over 4 projects, first all on host 1 (before host 2 starts), then 2 on each host; the CPU
seconds of the hub and of each host process over the batch, divided by the calls.  Scale:
``--projects`` projects created (``POST /api/v3/projects``) and given a first exec through the
hub, 8 at a time; each is stopped after its first exec except the last 40, whose daemons
give the memory per project; placement is read from each host's ledger.  Not run by
``run.py``; writes ``--out`` (default ``results/<date>-nats-exec.json``).
"""

from __future__ import annotations

import argparse
import asyncio
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

from common import (PROJECT_ENV, PROJECTHUB, RawHTTP, Server, _mem, free_port, log,  # noqa: E402
                    machine, make_tmp_dir, on_cleanup, project_memory, run_cleanups, stop_process,
                    summarize, timed_concurrent)

HOST_ID = "bench1"
HOST_IDS = ["bench1", "bench2"]
UID_RANGES = {"bench1": "1700000-1701999", "bench2": "1702000-1703999"}
KEEP_RUNNING = 40   # running at the end (each reserves its image on the shared data disk)
HOST_LIMITS = '{"disk_bytes": "256M"}'   # as every bench server's


NATS_PID: list[int] = []


def start_nats(directory: Path) -> tuple[str, Path]:
    from projecthub.fabric.nats_config import write_config
    if shutil.which("nats-server") is None:
        sys.exit("nats-server is not installed (apt-get install nats-server)")
    port = free_port()
    paths = write_config(directory, HOST_IDS, listen=f"127.0.0.1:{port}")
    log = open(directory / "nats-server.log", "ab")
    proc = subprocess.Popen(["nats-server", "-c", str(paths["config"])], stdout=log, stderr=log)
    on_cleanup(lambda: stop_process(proc))
    NATS_PID.append(proc.pid)
    time.sleep(0.3)
    return f"nats://127.0.0.1:{port}", directory


def start_host(url: str, creds_dir: Path, data_dir: Path, host_id: str = HOST_ID) -> subprocess.Popen:
    from projecthub.fabric.nats_config import creds_path, host_user
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    log = open(data_dir.parent / "host.log", "ab")
    proc = subprocess.Popen([*PROJECTHUB, "host", "--nats", url, "--host-id", host_id, "--data-dir",
                             str(data_dir), "--uid-range", UID_RANGES[host_id],
                             "--nats-creds", str(creds_path(creds_dir, host_user(host_id)))],
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


def sandbox_pids(data_dir: Path) -> list[int]:
    """The outermost process of every running project of a host (``run/*/host.json``)."""
    out = []
    for record in (data_dir / "run").glob("*/host.json"):
        try:
            pid = json.loads(record.read_text()).get("pid")
        except (OSError, ValueError):
            continue
        if isinstance(pid, int) and psutil.pid_exists(pid):
            out.append(pid)
    return out


def tree_cpu_s(pids: list[int]) -> float:
    """CPU seconds of these processes and all their descendants: the live ones, and the
    reaped ones (``children_*`` of whoever reaped them: each ``true`` the daemon ran)."""
    total = 0.0
    for pid in pids:
        try:
            top = psutil.Process(pid)
            for proc in [top, *top.children(recursive=True)]:
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


JUPYTER_ARGS = [{"input": "1+1", "kernel": "python3"}]


def jupyter_ok(status: int, answer: Any) -> None:
    if status != 200 or not (isinstance(answer, list) and answer
                             and answer[0].get("data", {}).get("text/plain") == "2"):
        raise RuntimeError(f"unexpected jupyter_execute answer: {status} {str(answer)[:300]}")


def ledger(data_dir: Path) -> list[str]:
    from projecthub.host.ledger import LEDGER_NAME
    path = data_dir / LEDGER_NAME
    return list(json.loads(path.read_text())) if path.exists() else []


def host_memory(data_dir: Path, host_pid: int) -> dict[str, Any]:
    """RSS/PSS (MiB) of a host process and of its running projects (each sandbox's outermost
    process from ``run/<project>/host.json``, and everything under it): daemons outlive their
    host, so they are not its children."""
    mib = 2**20
    rss, pss = _mem(psutil.Process(host_pid))
    out: dict[str, Any] = {"host_rss_mib": round(rss / mib, 1), "host_pss_mib": round(pss / mib, 1)}
    per = []
    for record in (data_dir / "run").glob("*/host.json"):
        try:
            top = json.loads(record.read_text()).get("pid")
        except (OSError, ValueError):
            continue
        mem = project_memory(top) if isinstance(top, int) else {}
        if mem.get("daemon_count"):
            per.append(mem)
    out["running_projects"] = len(per)
    if per:
        out["projects_rss_mib"] = round(sum(m["rss_mib"] for m in per), 1)
        out["projects_pss_mib"] = round(sum(m["pss_mib"] for m in per), 1)
        out["per_project_rss_mib"] = round(out["projects_rss_mib"] / len(per), 2)
        out["per_project_pss_mib"] = round(out["projects_pss_mib"] / len(per), 2)
        out["processes_per_project"] = round(sum(m["processes"] for m in per) / len(per), 2)
    from projecthub.host.sandbox.disk import IMAGE_NAME
    sizes = sorted({img.stat().st_size for img in (data_dir / "projects").glob(f"*/{IMAGE_NAME}")})
    out["disk_image_sizes_mib"] = [round(x / 2**20, 1) for x in sizes]   # each project's disk_bytes
    return out


def raw_exec_body(pid: str) -> dict[str, Any]:
    return {"project_id": pid, "name": "system.exec", "args": [{"command": "true"}]}


async def throughput(server: Server, pids: list[str], n: int, c: int, cpu_pids: dict[str, int],
                     daemon_tops: list[int]) -> dict[str, Any]:
    """n exec ``true`` from c raw keep-alive clients, worker w on project w % len(pids);
    the CPU seconds of each named process over the batch, per call, and of the projects'
    sandboxes (daemons, and the ``true`` they spawn) and of this client."""
    clients = [RawHTTP(server.port, server.api_key) for _ in range(c)]
    bodies = [raw_exec_body(pids[w % len(pids)]) for w in range(c)]

    async def call(w: int) -> None:
        status, answer = await clients[w].post("/api/conat/project", bodies[w])
        if status != 200 or not isinstance(answer, dict) or answer.get("exit_code") != 0:
            raise RuntimeError(f"exec failed: {status} {str(answer)[:300]}")

    await timed_concurrent(min(n, 4 * c), c, call, 120)   # warm-up: every connection open
    before = {k: cpu_s(p) for k, p in cpu_pids.items()}
    before["daemons"] = tree_cpu_s(daemon_tops)
    before["client"] = time.process_time()
    load0 = os.getloadavg()[0]
    lat, wall = await timed_concurrent(n, c, call, 300)
    after = {k: cpu_s(p) for k, p in cpu_pids.items()}
    after["daemons"] = tree_cpu_s(daemon_tops)
    after["client"] = time.process_time()
    cpu = {k: round((after[k] - before[k]) / len(lat) * 1000, 4) for k in before}
    for cl in clients:
        await cl.close()
    out = summarize(lat, wall, c=c, projects=len(pids), cpu_per_call_ms=cpu,
                    loadavg_1m=[round(load0, 2), round(os.getloadavg()[0], 2)])
    return out


async def scale(server: Server, n: int, c: int, host_dirs: dict[str, Path]) -> dict[str, Any]:
    """n projects created and first-exec'd through the hub, c at a time; all but the last
    KEEP_RUNNING are stopped after their first exec (the machine is shared)."""
    import httpx
    created: list[float] = []
    first: list[float] = []
    stopped: list[float] = []
    errors: list[str] = []
    counter = iter(range(n))
    auth = {"Authorization": f"Bearer {server.api_key}"}
    async with httpx.AsyncClient(base_url=server.url, headers=auth, timeout=120) as http:
        async def worker() -> None:
            for i in counter:
                try:
                    t0 = time.perf_counter()
                    r = await http.post("/api/v3/projects", json={"title": f"scale {i}", "start": False})
                    r.raise_for_status()
                    pid = r.json()["project_id"]
                    t1 = time.perf_counter()
                    r = await http.post("/api/conat/project", json=raw_exec_body(pid))
                    answer = r.json()
                    if r.status_code != 200 or not isinstance(answer, dict) or answer.get("exit_code") != 0:
                        raise RuntimeError(f"first exec: {r.status_code} {str(answer)[:200]}")
                    t2 = time.perf_counter()
                    created.append(t1 - t0)
                    first.append(t2 - t1)
                    if i < n - KEEP_RUNNING:
                        r = await http.post(f"/api/v3/projects/{pid}/stop")
                        r.raise_for_status()
                        stopped.append(time.perf_counter() - t2)
                except Exception as exc:   # counted and reported, the run goes on
                    errors.append(f"{i}: {exc}"[:300])
                    if len(errors) > 50:
                        raise

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(c)))
        wall = time.perf_counter() - t0
    placement = {h: len(ledger(d)) for h, d in host_dirs.items()}
    return {"projects": n, "c": c, "wall_s": round(wall, 2), "projects_per_s": round(len(first) / wall, 2),
            "create": summarize(created), "first_exec": summarize(first), "stop": summarize(stopped),
            "errors": len(errors), "error_samples": errors[:5], "placement": placement,
            "kept_running": min(n, KEEP_RUNNING)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="exec calls per round and server")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jn", type=int, default=50, help="stateless Jupyter calls per round and server")
    parser.add_argument("--tn", type=int, default=2000, help="exec calls per throughput batch")
    parser.add_argument("--concurrency", default="32,64")
    parser.add_argument("--projects", type=int, default=1000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    started = datetime.now(timezone.utc)
    at_start = machine()   # its load average is the one at the start
    report: dict[str, Any] = {}
    try:
        work = make_tmp_dir("phbench-nats-")
        (work / "nats").mkdir()
        url, creds_dir = start_nats(work / "nats")
        host_dirs = {h: work / h / "data" for h in HOST_IDS}
        hosts = {HOST_ID: start_host(url, creds_dir, host_dirs[HOST_ID])}
        from projecthub.fabric.nats_config import HUB_USER, creds_path
        limits = ["--default-limits", HOST_LIMITS]
        hub = Server(command="hub", extra_args=["--spare-projects", "0", *limits, "--nats", url, "--nats-creds",
                                                str(creds_path(creds_dir, HUB_USER))]).start()
        embedded = Server(extra_args=["--spare-projects", "0", *limits]).start()
        clients = {"nats": project_client(hub), "embedded": project_client(embedded)}
        samples: dict[str, list[float]] = {"nats": [], "embedded": []}
        jsamples: dict[str, list[float]] = {"nats": [], "embedded": []}
        cpu = {"hub": 0.0, "host": 0.0, "embedded": 0.0}
        loop = asyncio.new_event_loop()
        raws = {name: (RawHTTP(srv.port, srv.api_key),
                       {"project_id": clients[name].project_id, "name": "system.jupyterExecute",
                        "args": JUPYTER_ARGS}) for name, srv in (("nats", hub), ("embedded", embedded))}
        for name in raws:   # warm-up: the project's Jupyter pool
            for _ in range(5):
                jupyter_ok(*loop.run_until_complete(raws[name][0].post("/api/conat/project", raws[name][1])))
        log("exec and Jupyter rounds")
        for _ in range(args.rounds):
            for name in ("nats", "embedded"):
                client = clients[name]
                pids = {"hub": hub.process.pid, "host": hosts[HOST_ID].pid} if name == "nats" \
                    else {"embedded": embedded.process.pid}
                before = {k: cpu_s(p) for k, p in pids.items()}
                for _ in range(args.n):
                    t0 = time.perf_counter()
                    client.system.exec(command="true")
                    samples[name].append(time.perf_counter() - t0)
                for k, p in pids.items():
                    cpu[k] += cpu_s(p) - before[k]
            for name in ("nats", "embedded"):
                raw, body = raws[name]
                for _ in range(args.jn):
                    t0 = time.perf_counter()
                    status, answer = loop.run_until_complete(raw.post("/api/conat/project", body))
                    jsamples[name].append(time.perf_counter() - t0)
                    jupyter_ok(status, answer)
        for raw, _ in raws.values():
            loop.run_until_complete(raw.close())
        calls = args.n * args.rounds
        result = {name: summarize(s) for name, s in samples.items()}
        result["delta_p50_ms"] = round(result["nats"]["p50_ms"] - result["embedded"]["p50_ms"], 4)
        result["cpu_per_call_ms"] = {k: round(v / calls * 1000, 4) for k, v in cpu.items()}
        jresult = {name: summarize(s) for name, s in jsamples.items()}
        jresult["ratio_p50"] = round(jresult["nats"]["p50_ms"] / jresult["embedded"]["p50_ms"], 3)
        embedded.stop()   # the rest is the cluster's alone

        # Throughput: 4 projects on host 1, then host 2 joins and 4 more projects land there.
        concurrency = [int(x) for x in args.concurrency.split(",")]
        with hub.client() as http:
            one = [hub.create_project(http) for _ in range(4)]
            for pid in one:
                hub.conat_project(http, pid, "system.exec", [{"command": "true"}])
        hosts["bench2"] = start_host(url, creds_dir, host_dirs["bench2"], "bench2")
        deadline = time.monotonic() + 30
        with hub.client() as http:
            while True:   # until the hub has heard host 2 and places on it
                pid = hub.create_project(http)
                try:
                    hub.conat_project(http, pid, "system.exec", [{"command": "true"}])
                except Exception:
                    pass
                if pid in ledger(host_dirs["bench2"]):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("host 2 never received a project")
                time.sleep(0.5)
            two_on_2 = [pid]
            while len(two_on_2) < 2:
                pid = hub.create_project(http)
                hub.conat_project(http, pid, "system.exec", [{"command": "true"}])
                if pid in ledger(host_dirs["bench2"]):
                    two_on_2.append(pid)
        two = one[:2] + two_on_2
        tput: dict[str, Any] = {}
        log("throughput")
        for c in concurrency:
            for label, pids in (("one_host", one), ("two_hosts", two)):
                cpu_pids = {"hub": hub.process.pid, **{h: p.pid for h, p in hosts.items()},
                            "nats-server": NATS_PID[0]}
                tops = [t for d in host_dirs.values() for t in sandbox_pids(d)]
                tput[f"{label}_c{c}"] = loop.run_until_complete(
                    throughput(hub, pids, args.tn, c, cpu_pids, tops))
                r = tput[f"{label}_c{c}"]
                log(f"  {label} c={c}: {r['per_s']}/s p50 {r['p50_ms']} ms cpu/call {r['cpu_per_call_ms']}")

        log(f"scale: {args.projects} projects")
        load0 = os.getloadavg()[0]
        before_p = {h: set(ledger(d)) for h, d in host_dirs.items()}
        scaled = loop.run_until_complete(scale(hub, args.projects, 8, host_dirs))
        scaled["placement_new"] = {h: len(set(ledger(d)) - before_p[h]) for h, d in host_dirs.items()}
        scaled["loadavg_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        time.sleep(3)
        hub_rss, hub_pss = _mem(psutil.Process(hub.process.pid))
        scaled["memory"] = {"hub_rss_mib": round(hub_rss / 2**20, 1), "hub_pss_mib": round(hub_pss / 2**20, 1),
                            **{h: host_memory(host_dirs[h], p.pid) for h, p in hosts.items()}}
        loop.close()
        report = {"started": started.isoformat(timespec="seconds"), "machine": at_start,
                  "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
                  "command": " ".join(["bench/nats_exec.py", *sys.argv[1:]]), "exec_true": result,
                  "jupyter_stateless": jresult, "throughput": tput, "scale": scaled}
    finally:
        run_cleanups()
    out = Path(args.out) if args.out else (Path(__file__).parent / "results"
                                           / f"{started:%Y-%m-%d-%H%M}-nats-exec.json")
    out.write_text(json.dumps(report, indent=1))
    for name, label in (("embedded", "embedded (serve)"), ("nats", "hub -> NATS -> host")):
        r = result[name]
        j = jresult[name]
        print(f"exec true  {label:22s} p50 {r['p50_ms']:.3f} ms  mean {r['mean_ms']:.3f} ms  "
              f"p99 {r['p99_ms']:.3f} ms  n={r['n']};  jupyter 1+1 p50 {j['p50_ms']:.3f} ms")
    c = result["cpu_per_call_ms"]
    print(f"delta p50 {result['delta_p50_ms']:+.3f} ms; jupyter ratio {jresult['ratio_p50']:.2f}x; CPU per "
          f"call: hub {c['hub']:.3f} ms, host {c['host']:.3f} ms, embedded server {c['embedded']:.3f} ms")
    for key, r in tput.items():
        print(f"throughput {key}: {r['per_s']}/s p50 {r['p50_ms']} ms, CPU per call {r['cpu_per_call_ms']}")
    print(f"scale: {json.dumps({k: v for k, v in scaled.items() if k not in ('create', 'first_exec', 'stop')})}")
    print(f"scale: create p50 {scaled['create'].get('p50_ms')} ms, first exec p50 "
          f"{scaled['first_exec'].get('p50_ms')} ms; wrote {out}")


if __name__ == "__main__":
    main()
