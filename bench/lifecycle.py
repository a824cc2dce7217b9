"""Scenarios of a project's life (issue 15 items 5 and 6): the first calls of a new
project, its memory after it ran Jupyter and went idle, and 1,000 created projects of
which 50 are active.

* ``first_call``: a new project's first ``exec`` and first stateless ``jupyter_execute``
  when a spare project with its Jupyter machinery warmed up is waiting (host/spares.py),
  alternating with a warm-kernel floor and a direct-spawn floor paced alike; and the same
  first calls on a server whose spares do not warm Jupyter (``PROJECTHUB_SPARE_JUPYTER=0``:
  how every new project's first Jupyter call went before).
* ``idle_memory``: one project's processes (RSS and PSS, by kind) while it waits as a
  spare, after its first exec, right after it ran Jupyter, and once the Jupyter idle
  window has passed; on a server whose window is set short (``PROJECTHUB_JUPYTER_IDLE_S``)
  so the scenario runs in about a minute.
* ``many_projects``: 1,000 projects created (rows only: they do not run), 50 of them
  started and used (an exec, a stateless Jupyter call); exec p50 round-robin over the 50
  against the 1-project figure measured right before and after on the same server, and
  the memory of everything the server runs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import cocalc_api
import psutil

import floors
from common import (RawHTTP, Server, classify, kind_of, log, merge, project_memory, summarize,
                    timed_concurrent, tree_memory)
from scenarios import Ctx, _exec_round_robin, attempt, exec_body, official

WARM_WAIT_S = 45.0     # a spare's daemon start + Jupyter warm-up, on a loaded 2-core VM
SETTLE_S = 1.0         # untimed pause before each first call (and before each floor call)


# ------------------------------------------------------------------------------ helpers

def _project_arg(proc: psutil.Process) -> str | None:
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return None
    return cmd[cmd.index("--project-id") + 1] if "--project-id" in cmd else None


def warm_spares(server: Server) -> dict[str, dict[str, int]]:
    """Projects of ``server`` whose daemon runs a zygote with a kernel forked from it: the
    spare's Jupyter warm-up is done (or that project used Jupyter)."""
    assert server.process is not None
    out: dict[str, dict[str, int]] = {}
    try:
        procs = psutil.Process(server.process.pid).children(recursive=True)
    except psutil.Error:
        return out
    daemons = {p.pid: _project_arg(p) for p in procs if classify(" ".join(_cmdline(p))) == "daemon"}
    for p in procs:
        if kind_of(p) != "zygote":
            continue
        try:
            project = daemons.get(p.ppid())
            kernels = len(p.children())
        except psutil.Error:
            continue
        if project and kernels:
            out[project] = {"zygote_pid": p.pid, "zygote_started": p.create_time(), "kernels": kernels}
    return out


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def wait_for_warm_spare(server: Server, known: set[str], timeout: float = WARM_WAIT_S) -> float | None:
    """Seconds until a project not in ``known`` (a spare) has its Jupyter warm, or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if set(warm_spares(server)) - known:
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def wait_for_spare(server: Server, known: set[str], timeout: float = WARM_WAIT_S) -> float | None:
    """Seconds until a daemon of a project not in ``known`` runs (a spare without warm-up)."""
    assert server.process is not None
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with_daemon = {_project_arg(p) for p in psutil.Process(server.process.pid).children(recursive=True)
                       if classify(" ".join(_cmdline(p))) == "daemon"}
        if with_daemon - known - {None}:
            time.sleep(0.3)   # its warm-up exec
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def _jupyter_ok(r: Any) -> None:
    if not (isinstance(r, list) and r and r[0].get("data", {}).get("text/plain") == "2"):
        raise RuntimeError(f"unexpected jupyter_execute answer: {str(r)[:300]}")


def _one_spawn() -> float:
    """One paced direct spawn of `true` (the spawner's first spawn is its warm-up)."""
    r = floors.direct_spawn([{"mode": "lat", "argv": ["true"], "n": 1, "c": 1, "max_s": 10}])[0]
    return r["samples_ms"][0] / 1000


# ------------------------------------------------------------------------------ first calls

def _first_calls(server: Server, hub: cocalc_api.Hub, variant: str, known: set[str]) -> dict[str, Any]:
    """Create a project and time its first calls; ``variant``: exec then Jupyter, or
    Jupyter as the project's very first call."""
    spares_before = warm_spares(server)
    started_before = time.time()
    t0 = time.perf_counter()
    pid = hub.projects.create_project(title=f"first-{variant}")
    t1 = time.perf_counter()
    known.add(pid)
    p = official(server, pid)
    out: dict[str, Any] = {"create_s": t1 - t0, "project_id": pid, "warm_spare": pid in spares_before}
    try:
        if variant == "exec_first":
            t = time.perf_counter()
            p.system.exec(command="true")
            out["exec_s"] = time.perf_counter() - t
            t = time.perf_counter()
            _jupyter_ok(p.system.jupyter_execute(input="1+1", kernel="python3"))
            out["jupyter_s"] = time.perf_counter() - t
        else:
            t = time.perf_counter()
            _jupyter_ok(p.system.jupyter_execute(input="1+1", kernel="python3"))
            out["jupyter_s"] = time.perf_counter() - t
        status = hub.projects.status(pid)
        # a spare's daemon started before the project was created
        out["from_spare"] = bool(status.get("start_ts")) and status["start_ts"] / 1000 < started_before
    finally:
        p.client.close()
    hub.projects.stop(pid)   # keep the machine as quiet for the next sample as for this one
    return out


def scenario_first_call(ctx: Ctx) -> dict[str, Any]:
    n = ctx.q(2, 10)        # new projects per variant
    n_cold = ctx.q(1, 4)    # on the server whose spares skip the Jupyter warm-up
    res: dict[str, Any] = {"params": {"n_per_variant": n, "n_cold": n_cold, "settle_s": SETTLE_S}}

    def run() -> dict[str, Any]:
        server = ctx.main()
        cold = Server(env={"PROJECTHUB_SPARE_JUPYTER": "0"}).start()
        hub = cocalc_api.Hub(api_key=server.api_key, host=server.url)
        cold_hub = cocalc_api.Hub(api_key=cold.api_key, host=cold.url)
        known: set[str] = set()
        cold_known: set[str] = set()
        samples: dict[str, list[dict[str, Any]]] = {"exec_first": [], "jupyter_first": [], "cold": []}
        floor_kernel: list[float] = []
        floor_spawn: list[float] = []
        waits: list[float] = []
        misses = 0
        try:
            with floors.WarmKernelFloor() as floor:
                for i in range(n):
                    for variant in ("exec_first", "jupyter_first"):
                        waited = wait_for_warm_spare(server, known)
                        if waited is None:
                            misses += 1
                            log(f"  no warm spare within {WARM_WAIT_S:.0f} s ({variant} {i})")
                        else:
                            waits.append(waited)
                        time.sleep(SETTLE_S)
                        samples[variant].append(_first_calls(server, hub, variant, known))
                        time.sleep(SETTLE_S)
                        floor_kernel += floor.measure(1)
                        time.sleep(SETTLE_S)
                        floor_spawn.append(_one_spawn())
                    if i < n_cold:
                        if wait_for_spare(cold, cold_known) is None:
                            log("  no spare on the cold server")
                        time.sleep(SETTLE_S)
                        samples["cold"].append(_first_calls(cold, cold_hub, "exec_first", cold_known))
        finally:
            hub.client.close()
            cold_hub.client.close()
            cold.stop()

        def pick(variant: str, key: str, only_warm: bool = True) -> dict[str, Any]:
            rows = [s for s in samples[variant] if key in s and (s["warm_spare"] or not only_warm)]
            return summarize([s[key] for s in rows], n_from_spare=sum(bool(s.get("from_spare")) for s in rows))

        out: dict[str, Any] = {
            "first_exec": pick("exec_first", "exec_s"),
            "first_jupyter_after_exec": pick("exec_first", "jupyter_s"),
            "first_jupyter_first_call": pick("jupyter_first", "jupyter_s"),
            "create": summarize([s["create_s"] for v in ("exec_first", "jupyter_first") for s in samples[v]]),
            "floor_warm_kernel_paced": summarize(floor_kernel, pause_s=SETTLE_S),
            "floor_spawn_paced": summarize(floor_spawn, pause_s=SETTLE_S),
            "cold_first_exec": pick("cold", "exec_s", only_warm=False),
            "cold_first_jupyter_after_exec": pick("cold", "jupyter_s", only_warm=False),
            "spare_warm_wait": summarize(waits),
            "samples_without_warm_spare": misses + sum(not s["warm_spare"] for v in ("exec_first", "jupyter_first")
                                                       for s in samples[v]),
            "raw": samples,
        }
        return out
    attempt(res, "projecthub", run)
    return res


# ------------------------------------------------------------------------------ idle memory

def _status_pid(hub: cocalc_api.Hub, pid: str) -> int:
    return int(hub.projects.status(pid)["project.pid"])


def _sandbox_of(server: Server, project_id: str) -> int | None:
    """The outermost process of ``project_id``'s sandbox (a spare is not addressable
    through the API): the daemon's farthest ancestor below the server."""
    assert server.process is not None
    for p in psutil.Process(server.process.pid).children(recursive=True):
        if classify(" ".join(_cmdline(p))) == "daemon" and _project_arg(p) == project_id:
            top = p
            while True:
                parent = top.parent()
                if parent is None or parent.pid == server.process.pid or classify(" ".join(_cmdline(parent))) != "bwrap":
                    return top.pid
                top = parent
    return None


def _daemon_maps_zmq(top: int) -> bool:
    """Whether the daemon of the sandbox ``top`` still has Jupyter's zmq in its memory."""
    try:
        root = psutil.Process(top)
        for proc in [root, *root.children(recursive=True)]:
            if classify(" ".join(_cmdline(proc))) == "daemon":
                with open(f"/proc/{proc.pid}/maps") as f:
                    return "zmq" in f.read()
    except (psutil.Error, OSError):
        pass
    return False


def scenario_idle_memory(ctx: Ctx) -> dict[str, Any]:
    idle_s = ctx.q(10, 20)
    calls = 5
    res: dict[str, Any] = {"params": {"jupyter_idle_s": idle_s, "stateless_calls": calls}}

    def run() -> dict[str, Any]:
        server = Server(env={"PROJECTHUB_JUPYTER_IDLE_S": str(idle_s)}).start()
        hub = cocalc_api.Hub(api_key=server.api_key, host=server.url)
        out: dict[str, Any] = {}
        try:
            if wait_for_warm_spare(server, set()) is None:
                raise RuntimeError("no warm spare")
            time.sleep(2.0)
            spare = next(iter(warm_spares(server)))
            sandbox = _sandbox_of(server, spare)
            out["spare_waiting"] = project_memory(sandbox) if sandbox else {"error": "spare not found"}
            pid = hub.projects.create_project(title="idle-memory")
            p = official(server, pid)
            # right after: no spare is ready, so this one starts a fresh daemon that never
            # imports Jupyter (the comparison: a project that never ran Jupyter)
            plain = hub.projects.create_project(title="idle-memory-plain")
            q = official(server, plain)
            p.system.exec(command="true")
            q.system.exec(command="true")
            out["from_spare"] = pid == spare
            time.sleep(2.0)
            top = _status_pid(hub, pid)
            out["after_first_exec"] = project_memory(top)
            for _ in range(calls):
                _jupyter_ok(p.system.jupyter_execute(input="1+1", kernel="python3"))
            t_last = time.monotonic()
            time.sleep(2.0)   # the pool's refill after the last call
            out["after_jupyter"] = project_memory(top)
            series = []
            deadline = t_last + 2 * idle_s + 60
            shrunk_at = None
            while time.monotonic() < deadline:
                m = project_memory(top)
                series.append({"t_s": round(time.monotonic() - t_last, 1), "rss_mib": m.get("rss_mib"),
                               "pss_mib": m.get("pss_mib"), "processes": m.get("processes")})
                if not m.get("zygote_count") and not m.get("kernel_count"):
                    shrunk_at = time.monotonic() - t_last
                    break
                time.sleep(1.0)
            out["shrunk_after_s"] = round(shrunk_at, 1) if shrunk_at is not None else None
            # then the daemon re-executes in place to drop the Jupyter modules it imported
            # (project/recycle.py): within one of its checks (a quarter of the window)
            restarted_at = None
            while time.monotonic() < deadline:
                if not _daemon_maps_zmq(top):
                    restarted_at = time.monotonic() - t_last
                    break
                time.sleep(0.5)
            out["restarted_after_s"] = round(restarted_at, 1) if restarted_at is not None else None
            time.sleep(2.0)
            out["after_idle_window"] = project_memory(top)
            out["series"] = series
            out["never_ran_jupyter"] = project_memory(_status_pid(hub, plain))
            # the same project's next Jupyter call after the shrink (a cold start again)
            t = time.perf_counter()
            _jupyter_ok(p.system.jupyter_execute(input="1+1", kernel="python3"))
            out["jupyter_after_shrink_ms"] = round((time.perf_counter() - t) * 1000, 1)
            p.client.close()
            q.client.close()
        finally:
            hub.client.close()
            server.stop()
        return out
    attempt(res, "projecthub", run)
    return res


# ------------------------------------------------------------------------------ 1,000 / 50

async def _create(server: Server, count: int, c: int = 4) -> list[str]:
    clients = [RawHTTP(server.port, server.api_key) for _ in range(c)]
    pids: list[str] = []

    async def one(w: int) -> None:
        status, body = await clients[w].post("/api/v3/projects", {"title": "many"})
        if status != 201:
            raise RuntimeError(f"create: {status} {body}")
        pids.append(body["project_id"])
    try:
        await timed_concurrent(count, c, one, 900)
    finally:
        for cl in clients:
            await cl.close()
    return pids


async def _activate(server: Server, pids: list[str], c: int, jupyter: bool) -> dict[str, Any]:
    """Start each project with an exec (and run one stateless Jupyter call in it)."""
    clients = [RawHTTP(server.port, server.api_key) for _ in range(c)]
    todo = iter(pids)
    first_exec: list[float] = []
    first_jupyter: list[float] = []

    async def one(w: int) -> None:
        pid = next(todo)
        t0 = time.perf_counter()
        status, out = await clients[w].post("/api/conat/project", exec_body(pid, "true"))
        if status != 200 or "error" in out:
            raise RuntimeError(f"start exec: {status} {out}")
        first_exec.append(time.perf_counter() - t0)
        if jupyter:
            t0 = time.perf_counter()
            status, out = await clients[w].post("/api/conat/project", {
                "project_id": pid, "name": "system.jupyterExecute",
                "args": [{"input": "1+1", "kernel": "python3"}], "timeout": 120000})
            if status != 200 or not isinstance(out, list):
                raise RuntimeError(f"jupyter: {status} {str(out)[:300]}")
            first_jupyter.append(time.perf_counter() - t0)
    try:
        _, wall = await timed_concurrent(len(pids), c, one, 900)
    finally:
        for cl in clients:
            await cl.close()
    return {"wall_s": round(wall, 2), "first_exec": summarize(first_exec), "first_jupyter": summarize(first_jupyter)}


async def _round_robin(server: Server, pids: list[str], n: int) -> dict[str, Any]:
    # every project touched once before timing: the first call to each starts its daemon
    out = await _exec_round_robin(server, pids, n, warmup=min(len(pids), 50) + 10, timeout_s=120)
    out["projects"] = len(pids)
    return out


def scenario_many_projects(ctx: Ctx) -> dict[str, Any]:
    created = 1000
    active = ctx.q(10, 50)
    n = ctx.q(100, 300)
    res: dict[str, Any] = {"params": {"created": created, "active": active, "n_exec": n}}
    ctx.stop_main()   # a server of its own: only this scenario's projects run

    def run() -> dict[str, Any]:
        server = Server().start()
        assert server.process is not None
        out: dict[str, Any] = {}
        try:
            mem0 = psutil.virtual_memory()
            t0 = time.perf_counter()
            pids = asyncio.run(_create(server, created))
            out["create_all_s"] = round(time.perf_counter() - t0, 2)
            # the creates took spares as fast as they came: let the last refill and its
            # Jupyter warm-up finish, so the 1-project figure is taken on a quiet machine
            wait_for_warm_spare(server, set(pids))
            time.sleep(2.0)
            out["memory_created"] = tree_memory(server.process.pid)
            # the 1-project figure, measured before and after the 50 run (bracket: this VM drifts)
            one = pids[:1]
            asyncio.run(_activate(server, one, 1, jupyter=False))
            before = asyncio.run(_round_robin(server, one, n // 2))
            group = pids[1:active + 1]
            t0 = time.perf_counter()
            out["activate"] = asyncio.run(_activate(server, group, 4, jupyter=True))
            out["activate_s"] = round(time.perf_counter() - t0, 2)
            time.sleep(5.0)   # pool refills and zygotes settle
            out["memory_active"] = tree_memory(server.process.pid)
            out["exec_active"] = asyncio.run(_round_robin(server, group, n))
            after = asyncio.run(_round_robin(server, one, n // 2))
            out["exec_one_project"] = merge([before, after], c=1, before_p50_ms=before.get("p50_ms"),
                                            after_p50_ms=after.get("p50_ms"))
            out["daemons_running"] = tree_memory(server.process.pid).get("daemon_count")
            mem1 = psutil.virtual_memory()
            out["machine"] = {"total_gib": round(mem0.total / 2**30, 1),
                              "available_gib_before": round(mem0.available / 2**30, 2),
                              "available_gib_after": round(mem1.available / 2**30, 2)}
        finally:
            server.stop()
        return out
    attempt(res, "projecthub", run)
    return res


SCENARIOS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "first_call": scenario_first_call,
    "idle_memory": scenario_idle_memory,
    "many_projects": scenario_many_projects,
}
