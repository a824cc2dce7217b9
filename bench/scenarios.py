"""The benchmark scenarios.  Each takes a Ctx and returns a JSON-able dict; a failing
sub-measurement is recorded as {"error": ...} and the rest goes on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import statistics
import threading
import time
import traceback
from typing import Any, Callable

import cocalc_api
import httpx
import psutil

import floors
from common import (ONE_MB_CMD, RawHTTP, Server, classify, log, merge, summarize, timed_concurrent,
                    timed_sync, tree_memory)


class Ctx:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self._main: Server | None = None
        self.shared: dict[str, Any] = {}   # results one scenario may reuse in another
        self.tracked: list[tuple[Server, str]] = []

    def q(self, quick_value: Any, full_value: Any) -> Any:
        return quick_value if self.quick else full_value

    def main(self) -> Server:
        if self._main is None:
            log("starting projecthub server (default sandbox)")
            self._main = Server().start()
        return self._main

    def track(self, server: Server, project_id: str) -> None:
        self.tracked.append((server, project_id))

    def stop_tracked(self) -> None:
        """Stop the projects a scenario started, so the next one runs on a quiet machine."""
        while self.tracked:
            server, pid = self.tracked.pop()
            if server.process is None or server.process.poll() is not None:
                continue
            try:
                with server.client(timeout=30) as http:
                    http.post(f"/api/v3/projects/{pid}/stop")
            except Exception as exc:
                log("stop project failed:", exc)

    def stop_main(self) -> None:
        if self._main is not None:
            self._main.stop()
            self._main = None


def attempt(out: dict[str, Any], key: str, fn: Callable[[], Any]) -> Any:
    log(f"  {key} ...")
    try:
        out[key] = fn()
    except Exception as exc:
        log(f"  {key} FAILED: {exc!r}")
        out[key] = {"error": f"{type(exc).__name__}: {exc}"[:2000],
                    "trace": traceback.format_exc()[-3000:]}
    return out[key]


def official(server: Server, project_id: str) -> cocalc_api.Project:
    return cocalc_api.Project(api_key=server.api_key, host=server.url, project_id=project_id)


def official_concurrent(server: Server, project_id: str, call: Callable[[cocalc_api.Project], Any],
                        n: int, c: int, max_s: float, warm: bool = True) -> dict[str, Any]:
    """n calls from c threads, each with its own official client (own keep-alive connection),
    warmed by one call each unless warm=False."""
    clients = [official(server, project_id) for _ in range(c)]
    for cl in clients:
        if warm:
            call(cl)
        else:
            cl.system.ping()
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    remaining = [n]
    end = time.monotonic() + max_s

    def worker(cl: cocalc_api.Project) -> None:
        while time.monotonic() < end:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            t0 = time.perf_counter()
            try:
                call(cl)
            except Exception as exc:
                errors.append(repr(exc))
                continue
            lat.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(cl,), daemon=True) for cl in clients]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max_s + 120)
    wall = time.perf_counter() - t0
    for cl in clients:
        cl.client.close()
    return summarize(lat, wall, c=c, errors=len(errors), first_error=errors[0] if errors else None)


def exec_body(project_id: str, command: str, **opts: Any) -> dict[str, Any]:
    return {"project_id": project_id, "name": "system.exec", "args": [{"command": command, **opts}]}


async def raw_exec(server: Server, project_id: str, command: str, n: int, c: int, max_s: float,
                   check: Callable[[Any], bool] | None = None, **opts: Any) -> dict[str, Any]:
    """POST /api/conat/project (what the official client sends) from c keep-alive
    connections of the small asyncio client.  ``check`` (if given) must accept every
    answer, the warm-up ones and the timed ones."""
    body = exec_body(project_id, command, **opts)
    clients = [RawHTTP(server.port, server.api_key) for _ in range(c)]
    try:
        for cl in clients:
            status, out = await cl.post("/api/conat/project", body)
            if status != 200 or (check and not check(out)):
                raise RuntimeError(f"bad exec answer: {status} {str(out)[:300]}")

        async def call(w: int) -> None:
            status, out = await clients[w].post("/api/conat/project", body)
            if status != 200 or "error" in out or (check and not check(out)):
                raise RuntimeError(f"exec failed: {status} {str(out)[:300]}")

        lat, wall = await timed_concurrent(n, c, call, max_s)
        return summarize(lat, wall, c=c)
    finally:
        for cl in clients:
            await cl.close()


def new_project(server: Server, title: str = "bench") -> str:
    with server.client() as http:
        pid = server.create_project(http, title)
        server.conat_project(http, pid, "system.exec", [{"command": "true"}])  # starts the daemon
    return pid


def _1mb_ok(out: Any) -> bool:
    return isinstance(out, dict) and len(out.get("stdout", "")) == 1_000_000


ECHO_ARGV = ["echo", "hi"]            # direct exec (no shell): {"command": "echo", "args": ["hi"]}
ECHO_OPTS = {"args": ["hi"]}


def _echo_ok(out: Any) -> bool:
    return isinstance(out, dict) and out.get("stdout") == "hi\n" and out.get("exit_code", 0) == 0


def official_echo(p: cocalc_api.Project) -> None:
    r = p.system.exec(command="echo", args=["hi"])
    if not _echo_ok(r):
        raise RuntimeError(f"unexpected echo answer: {str(r)[:300]}")


# ================================================================================ 1. exec

def scenario_exec(ctx: Ctx) -> dict[str, Any]:
    """c=1 measurements run in interleaved rounds (floor, sandboxed floor, HTTP floor,
    projecthub, projecthub --sandbox none, again ...) so machine noise hits all alike;
    so do the c=8/c=64 blocks, in rounds of their own (floors, then projecthub): this VM's
    speed drifts by 10-30 % over minutes, and one block each, minutes apart, put that
    drift into the throughput ratio."""
    rounds = ctx.q(1, 5)
    n1 = ctx.q(100, 500) // rounds
    nmb = ctx.q(20, 100) // rounds
    conc_rounds = ctx.q(1, 4)
    nconc = {8: ctx.q(200, 1000) // conc_rounds, 64: ctx.q(320, 2000) // conc_rounds}
    max_s = ctx.q(15, 60)
    res: dict[str, Any] = {"params": {"n_true": n1 * rounds, "n_echo": n1 * rounds, "n_1mb": nmb * rounds,
                                      "rounds": rounds, "conc_rounds": conc_rounds,
                                      "n_conc": {c: n * conc_rounds for c, n in nconc.items()}}}
    true_argv, mb_argv = ["true"], ["bash", "-c", ONE_MB_CMD]
    c1_keys = ["true_c1", "echo_c1", "1mb_c1"]
    c1_cases = [{"mode": "lat", "argv": true_argv, "n": n1, "c": 1, "max_s": max_s},
                {"mode": "lat", "argv": ECHO_ARGV, "n": n1, "c": 1, "max_s": max_s},
                {"mode": "lat", "argv": mb_argv, "n": nmb, "c": 1, "max_s": max_s}]
    conc_keys = [f"{what}_c{c}" for c in (8, 64) for what in ("true", "echo")]
    conc_cases = [{"mode": "lat", "argv": argv, "n": nconc[c], "c": c, "max_s": max_s}
                  for c in (8, 64) for argv in (true_argv, ECHO_ARGV)]
    parts: dict[str, dict[str, list]] = {}

    def keep(group: str, values: dict[str, Any]) -> None:
        for k, v in values.items():
            parts.setdefault(group, {}).setdefault(k, []).append(v)

    servers: dict[str, tuple[Server, str]] = {}

    def setup(name: str, server: Server) -> None:
        pid = new_project(server, "exec")
        ctx.track(server, pid)
        p = official(server, pid)
        for _ in range(20):
            p.system.exec(command="true")
        official_echo(p)
        r = p.system.exec(command=ONE_MB_CMD, bash=True)
        p.client.close()
        if len(r["stdout"]) != 1_000_000:
            raise RuntimeError(f"1 MB exec returned {len(r['stdout'])} chars")
        servers[name] = (server, pid)

    def ours_c1(server: Server, pid: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        p = official(server, pid)
        lat = timed_sync(n1, lambda: p.system.exec(command="true"), max_s)
        out["official_true_c1"] = summarize(lat, sum(lat), c=1)
        lat = timed_sync(n1, lambda: official_echo(p), max_s)
        out["official_echo_c1"] = summarize(lat, sum(lat), c=1)
        lat = timed_sync(nmb, lambda: p.system.exec(command=ONE_MB_CMD, bash=True), max_s)
        out["official_1mb_c1"] = summarize(lat, sum(lat), c=1)
        p.client.close()
        out["raw_true_c1"] = asyncio.run(raw_exec(server, pid, "true", n1, 1, max_s))
        out["raw_echo_c1"] = asyncio.run(raw_exec(server, pid, "echo", n1, 1, max_s, check=_echo_ok, **ECHO_OPTS))
        out["raw_1mb_c1"] = asyncio.run(raw_exec(server, pid, ONE_MB_CMD, nmb, 1, max_s, check=_1mb_ok,
                                                 bash=True))
        return out

    attempt(res, "setup_projecthub", lambda: setup("projecthub", ctx.main()))

    def setup_none() -> None:
        server = Server(sandbox="none").start()
        setup("projecthub_nosandbox", server)
    attempt(res, "setup_projecthub_nosandbox", setup_none)
    floor_http = floors.FloorHTTP().__enter__()
    try:
        for r in range(rounds):
            log(f"  round {r + 1}/{rounds}")
            try:
                keep("floor_spawn", dict(zip(c1_keys, floors.direct_spawn(c1_cases))))
                keep("floor_sandbox_spawn", dict(zip(c1_keys, floors.sandboxed_spawn(c1_cases))))
                keep("floor_http", {
                    "echo_c1": asyncio.run(floor_http.measure("/echo", {"x": 1}, n1 * 4, 1, max_s)),
                    "spawn_true_c1": asyncio.run(floor_http.measure("/spawn", {"argv": true_argv}, n1, 1, max_s)),
                    "httpx_spawn_true_c1": floor_http.measure_httpx("/spawn", {"argv": true_argv}, n1, max_s),
                    "spawn_1mb_c1": asyncio.run(floor_http.measure("/spawn", {"argv": mb_argv}, nmb, 1, max_s))})
                for name, (server, pid) in servers.items():
                    keep(name, ours_c1(server, pid))
            except Exception as exc:
                log(f"  round {r + 1} FAILED: {exc!r}")
                res.setdefault("round_errors", []).append(f"{type(exc).__name__}: {exc}"[:1000])
        for group, values in parts.items():
            res[group] = {k: merge(v, c=1) for k, v in values.items()}

        def conc_http() -> dict[str, Any]:
            out: dict[str, Any] = {}
            for c in (8, 64):
                out[f"echo_c{c}"] = asyncio.run(floor_http.measure("/echo", {"x": 1}, nconc[c], c, max_s))
                out[f"spawn_true_c{c}"] = asyncio.run(
                    floor_http.measure("/spawn", {"argv": true_argv}, nconc[c], c, max_s))
            return out

        def conc_ours() -> dict[str, Any]:
            server, pid = servers["projecthub"]
            out: dict[str, Any] = {}
            for c in (8, 64):
                out[f"raw_true_c{c}"] = asyncio.run(raw_exec(server, pid, "true", nconc[c], c, max_s))
                out[f"raw_echo_c{c}"] = asyncio.run(raw_exec(server, pid, "echo", nconc[c], c, max_s,
                                                             check=_echo_ok, **ECHO_OPTS))
            for c in (8, 64):
                out[f"official_true_c{c}"] = official_concurrent(
                    server, pid, lambda cl: cl.system.exec(command="true"), nconc[c], c, max_s)
            return out

        conc_blocks: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("floor_spawn", lambda: dict(zip(conc_keys, floors.direct_spawn(conc_cases)))),
            ("floor_sandbox_spawn", lambda: dict(zip(conc_keys, floors.sandboxed_spawn(conc_cases)))),
            ("floor_http", conc_http)]
        if "projecthub" in servers:
            conc_blocks.append(("projecthub", conc_ours))
        conc_parts: dict[str, dict[str, list]] = {}
        for r in range(conc_rounds):
            log(f"  concurrency round {r + 1}/{conc_rounds}")
            for group, block in conc_blocks:
                got = attempt(res, f"conc_{group}", block)
                del res[f"conc_{group}"]
                if "error" in got:
                    res.setdefault("round_errors", []).append(f"conc_{group}: {got['error']}"[:1000])
                    continue
                for k, v in got.items():
                    conc_parts.setdefault(group, {}).setdefault(k, []).append(v)
        for group, values in conc_parts.items():
            res.setdefault(group, {}).update(
                {k: merge(v, c=int(k.rsplit("_c", 1)[1]), errors=sum(x.get("errors") or 0 for x in v))
                 for k, v in values.items()})
    finally:
        floor_http.__exit__()

    def cpu_per_exec() -> dict[str, Any]:
        """CPU (user+sys) per `exec true` in the server, the daemon and the daemon's reaped
        children, over a raw-HTTP c=1 block; the floor's spawner reports the same."""
        out: dict[str, Any] = {}
        for name, (server, pid) in servers.items():
            assert server.process is not None
            procs = {"server": psutil.Process(server.process.pid)}
            # the project's own daemon: the server also keeps a spare project's daemon
            daemons = [p for p in procs["server"].children(recursive=True)
                       if classify(cmd := " ".join(p.cmdline())) == "daemon" and pid in cmd]
            if len(daemons) != 1:
                out[name] = {"error": f"expected one daemon, found {len(daemons)}"}
                continue
            procs["daemon"] = daemons[0]
            before = {k: p.cpu_times() for k, p in procs.items()}
            lat = asyncio.run(raw_exec(server, pid, "true", n1 * 2, 1, max_s))
            after = {k: p.cpu_times() for k, p in procs.items()}
            n = lat["n"]
            d = {k: (after[k].user + after[k].system - before[k].user - before[k].system) * 1000 / n for k in procs}
            kids = (after["daemon"].children_user + after["daemon"].children_system
                    - before["daemon"].children_user - before["daemon"].children_system) * 1000 / n
            out[name] = {"n": n, "p50_ms": lat["p50_ms"], "server_cpu_ms": round(d["server"], 3),
                         "daemon_cpu_ms": round(d["daemon"], 3), "children_cpu_ms": round(kids, 3)}
        return out
    attempt(res, "cpu_per_exec", cpu_per_exec)
    for k in [k for k, v in res.items() if k.startswith(("conc_", "setup_")) and v is None]:
        del res[k]
    if "projecthub_nosandbox" in servers:
        servers["projecthub_nosandbox"][0].stop()
    return res


# ================================================================================ 2./3. Jupyter

def _jupyter_floor(ctx: Ctx) -> dict[str, Any]:
    return asyncio.run(floors.jupyter_floor(ctx.q(100, 500), ctx.q(40, 400), 8, ctx.q(20, 60),
                                            n_paced=0, pause_s=PACE_S))


def _kg(ctx: Ctx) -> dict[str, Any]:
    if "kg" not in ctx.shared:
        with floors.KernelGateway() as kg:
            ctx.shared["kg"] = asyncio.run(kg.measure(ctx.q(1, 8), ctx.q(20, 200), ctx.q(20, 60)))
    return ctx.shared["kg"]


PACE_S = 2.5


def scenario_jupyter(ctx: Ctx) -> dict[str, Any]:
    nseq = ctx.q(5, 100)
    nconc = ctx.q(8, 48)
    res: dict[str, Any] = {"params": {"n_seq": nseq, "n_conc": nconc, "clients": 8}}
    attempt(res, "floor_warm_kernel", lambda: _jupyter_floor(ctx))
    attempt(res, "floor_kernel_per_call", lambda: asyncio.run(floors.kernel_per_call(ctx.q(1, 10), 60)))
    attempt(res, "kernel_gateway", lambda: _kg(ctx))

    def ours() -> dict[str, Any]:
        server = ctx.main()
        pid = new_project(server, "jupyter")
        ctx.track(server, pid)
        p = official(server, pid)
        out: dict[str, Any] = {}

        def call(cl: cocalc_api.Project = p) -> None:
            r = cl.system.jupyter_execute(input="1+1", kernel="python3")
            if not (isinstance(r, list) and r and r[0].get("data", {}).get("text/plain") == "2"):
                raise RuntimeError(f"unexpected jupyter_execute answer: {str(r)[:300]}")

        # The same call over a minimal keep-alive HTTP client (as the session rows use):
        # what the HTTP API itself costs, without httpx's own ~0.5 ms (more when cold).
        loop = asyncio.new_event_loop()
        raw = RawHTTP(server.port, server.api_key)
        raw_body = {"project_id": pid, "name": "system.jupyterExecute",
                    "args": [{"input": "1+1", "kernel": "python3"}]}

        def raw_call() -> None:
            status, r = loop.run_until_complete(raw.post("/api/conat/project", raw_body))
            if status != 200 or not (isinstance(r, list) and r and r[0].get("data", {}).get("text/plain") == "2"):
                raise RuntimeError(f"unexpected jupyter_execute answer: {status} {str(r)[:300]}")

        t0 = time.perf_counter()
        call()
        out["first_call_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        for _ in range(ctx.q(1, 3)):
            call()
            raw_call()
        settle_s = ctx.q(0.5, 3.0)   # the pool's refills after earlier calls settle first
        try:
            with floors.WarmKernelFloor() as floor:
                # The floor right before and right after the back-to-back calls (the ratio's
                # base): the machine's drift over the minutes between the floor block above
                # and this one would otherwise go into the ratio.
                time.sleep(settle_s)
                before = floor.measure(nseq)
                lat = timed_sync(nseq, call, ctx.q(30, 150))
                time.sleep(settle_s)
                lat_raw = timed_sync(nseq, raw_call, ctx.q(30, 150))
                after = floor.measure(nseq)
                out["official_seq"] = summarize(lat, sum(lat), c=1)
                out["raw_seq"] = summarize(lat_raw, sum(lat_raw), c=1)
                out["floor_bracket"] = summarize(before + after, before_p50_ms=summarize(before)["p50_ms"],
                                                 after_p50_ms=summarize(after)["p50_ms"])
                out["official_c8"] = official_concurrent(server, pid, call, nconc, 8, ctx.q(40, 150),
                                                         warm=not ctx.quick)
                # paced: a pause before each call lets the pool refill, so this is the latency
                # of a call that finds a warm pooled kernel (what a bursty, not back-to-back,
                # client sees).  Official client, raw HTTP and floor calls take turns, each
                # after the same pause: an idle machine slows every round trip, so the floor
                # must be paced alike.
                paced: list[float] = []
                paced_raw: list[float] = []
                floor_paced: list[float] = []
                for _ in range(ctx.q(2, 20)):
                    for fn, into in ((call, paced), (raw_call, paced_raw)):
                        time.sleep(PACE_S)
                        t0 = time.perf_counter()
                        fn()
                        into.append(time.perf_counter() - t0)
                    time.sleep(PACE_S)
                    floor_paced += floor.measure(1)
                out["official_paced"] = summarize(paced, pause_s=PACE_S)
                out["raw_paced"] = summarize(paced_raw, pause_s=PACE_S)
                out["floor_paced_alternating"] = summarize(floor_paced, pause_s=PACE_S)
            # Hub jupyter.execute (the official client's Hub) against the project path, calls
            # taking turns (issue 19 item 7: the hub path must stay within 1.3x).
            hub = cocalc_api.Hub(api_key=server.api_key, host=server.url)

            def hub_call() -> None:
                r = hub.jupyter.execute(input="1+1", kernel="python3", project_id=pid)
                output = r.get("output") if isinstance(r, dict) else None
                if not (isinstance(output, list) and output and output[0].get("data", {}).get("text/plain") == "2"):
                    raise RuntimeError(f"unexpected hub jupyter.execute answer: {str(r)[:300]}")

            hub_call()
            via_project: list[float] = []
            via_hub: list[float] = []
            for _ in range(nseq):
                for fn, into in ((call, via_project), (hub_call, via_hub)):
                    t0 = time.perf_counter()
                    fn()
                    into.append(time.perf_counter() - t0)
            out["hub_alternating"] = summarize(via_hub, sum(via_hub), c=1)
            out["project_alternating"] = summarize(via_project, sum(via_project), c=1)
            hub.client.close()
        finally:
            loop.run_until_complete(raw.close())
            loop.close()
        p.client.close()
        return out
    attempt(res, "projecthub", ours)
    return res


def scenario_session(ctx: Ctx) -> dict[str, Any]:
    """Session execute vs a warm jupyter_client kernel vs Kernel Gateway's websocket, in
    interleaved rounds within one event loop (noise hits all three alike)."""
    rounds = ctx.q(1, 5)
    n = ctx.q(50, 500) // rounds
    n_kg = ctx.q(20, 100) // rounds
    res: dict[str, Any] = {"params": {"n": n * rounds, "n_kg": n_kg * rounds, "rounds": rounds}}
    server = ctx.main()
    pid = new_project(server, "session")
    ctx.track(server, pid)
    base = f"/api/v3/projects/{pid}/sessions"
    ours: dict[str, Any] = {}
    res["projecthub"] = ours

    async def run(kg: floors.KernelGateway | None) -> None:
        import uuid as _uuid
        from jupyter_client.manager import AsyncKernelManager
        import subprocess as _sp
        import websockets

        km = AsyncKernelManager(kernel_name="python3")
        await km.start_kernel(stderr=_sp.DEVNULL)
        kc = km.client()
        kc.start_channels()
        cl = RawHTTP(server.port, server.api_key)
        ws = None
        session = _uuid.uuid4().hex
        try:
            await kc.wait_for_ready(timeout=120)
            t0 = time.perf_counter()
            status, body = await cl.post(base, {"kernel": "python3"})
            t1 = time.perf_counter()
            if status != 201:
                raise RuntimeError(f"session create: {status} {body}")
            sid = body["session_id"]
            status, body = await cl.post(f"{base}/{sid}/execute", {"code": "1+1"})
            t2 = time.perf_counter()
            ours.update(create_ms=round((t1 - t0) * 1000, 2), create_to_first_result_ms=round((t2 - t0) * 1000, 2),
                        first_answer=body)
            if kg is not None:
                async with httpx.AsyncClient(headers=kg.headers, timeout=60) as http:
                    r = await http.post(kg.url + "/api/kernels", json={"name": "python3"})
                    r.raise_for_status()
                    kid = r.json()["id"]
                    kg.kernels.append(kid)
                ws = await websockets.connect(f"ws://127.0.0.1:{kg.port}/api/kernels/{kid}/channels",
                                              additional_headers=kg.headers, max_size=None)
                await floors._ws_execute(ws, session, timeout=60)

            async def session_call(w: int) -> None:
                status, body = await cl.post(f"{base}/{sid}/execute", {"code": "1+1"})
                if status != 200:
                    raise RuntimeError(f"session execute: {status} {body}")
            for _ in range(20):
                await floors._execute(kc)
                await session_call(0)
            if ws is not None:
                for _ in range(5):
                    await floors._ws_execute(ws, session)
            parts: dict[str, list] = {"floor": [], "session": [], "kg": []}
            for r in range(rounds):
                lat, wall = await timed_concurrent(n, 1, lambda w: floors._execute(kc), 60)
                parts["floor"].append(summarize(lat, wall))
                lat, wall = await timed_concurrent(n, 1, session_call, 60)
                parts["session"].append(summarize(lat, wall))
                if ws is not None:
                    lat, wall = await timed_concurrent(n_kg, 1, lambda w: floors._ws_execute(ws, session), 60)
                    parts["kg"].append(summarize(lat, wall))
            res["floor_warm_kernel"] = {"seq": merge(parts["floor"], c=1)}
            ours["execute"] = merge(parts["session"], c=1)
            if parts["kg"]:
                res["kernel_gateway"] = {"ws_execute": merge(parts["kg"], c=1)}
            mem = tree_memory(server.process.pid) if server.process else {}
            ours["kernel_rss_each_mib"] = mem.get("kernel_rss_each_mib")
            ours["kernel_pss_each_mib"] = mem.get("kernel_pss_each_mib")
        finally:
            if ws is not None:
                await ws.close()
            await cl.close()
            kc.stop_channels()
            await km.shutdown_kernel(now=True)

    def go() -> None:
        try:
            with floors.KernelGateway() as kg:
                asyncio.run(run(kg))
        except RuntimeError as exc:
            if "kernel gateway" not in str(exc):
                raise
            res["kernel_gateway"] = {"error": str(exc)}
            asyncio.run(run(None))
    attempt(res, "run", go)
    if res.get("run") is None:
        del res["run"]
    return res


# ================================================================================ 4. cold start

SPARE_PACE_S = 2.5   # > the spare refill delay (1 s) + one daemon start


def scenario_cold(ctx: Ctx) -> dict[str, Any]:
    n = ctx.q(5, 20)
    res: dict[str, Any] = {"params": {"n": n}}
    attempt(res, "floor_sandboxed_python", lambda: floors.sandboxed_python_start(ctx.q(3, 10)))

    def ours() -> dict[str, Any]:
        server = ctx.main()
        hub = cocalc_api.Hub(api_key=server.api_key, host=server.url)
        create, first, total, pids = [], [], [], []
        end = time.monotonic() + ctx.q(30, 120)
        for i in range(n):
            # Paced like a user who creates a project and then uses it: the server's spare
            # project (host/spares.py) has been replaced by the time of the next create.
            time.sleep(SPARE_PACE_S)
            t0 = time.perf_counter()
            pid = hub.projects.create_project(title=f"cold{i}")
            t1 = time.perf_counter()
            p = official(server, pid)
            p.system.exec(command="true")
            t2 = time.perf_counter()
            p.client.close()
            create.append(t1 - t0)
            first.append(t2 - t1)
            total.append(t2 - t0)
            pids.append(pid)
            if time.monotonic() > end:
                break
        out = {"create": summarize(create), "first_exec": summarize(first), "create_to_first_exec": summarize(total)}
        # A burst: creates back to back, so most find no ready spare and start a daemon.
        burst = []
        for i in range(ctx.q(5, 10)):
            t0 = time.perf_counter()
            pid = hub.projects.create_project(title=f"burst{i}")
            p = official(server, pid)
            p.system.exec(command="true")
            burst.append(time.perf_counter() - t0)
            p.client.close()
            pids.append(pid)
        out["burst_create_to_first_exec"] = summarize(burst)
        restart, stop = [], []
        for pid in pids:
            t0 = time.perf_counter()
            hub.projects.stop(pid)
            stop.append(time.perf_counter() - t0)
            p = official(server, pid)
            t0 = time.perf_counter()
            p.system.exec(command="true")
            restart.append(time.perf_counter() - t0)
            p.client.close()
            if time.monotonic() > end + 60:
                break
        out["stop_call"] = summarize(stop)
        out["stopped_first_exec"] = summarize(restart)
        # the host's own measure: daemon process spawned -> socket answered daemon.info
        starts = [float(m.group(2)) / 1000 for m in re.finditer(
            r"started daemon of ([0-9a-f-]+) \(pid \d+\) in (\d+) ms", server.log_tail(10_000_000))
            if m.group(1) in set(pids)]
        out["daemon_start_logged"] = summarize(starts)
        for pid in pids:
            hub.projects.stop(pid)
        hub.client.close()
        return out
    attempt(res, "projecthub", ours)
    return res


# ================================================================================ 5. scale

async def _start_projects(server: Server, count: int, c: int = 4) -> list[str]:
    """Create and start `count` projects (create, then one exec of `true`), c at a time."""
    pids: list[str] = []
    clients = [RawHTTP(server.port, server.api_key) for _ in range(c)]

    async def one(w: int) -> None:
        status, body = await clients[w].post("/api/v3/projects", {"title": "scale"})
        if status != 201:
            raise RuntimeError(f"create: {status} {body}")
        pid = body["project_id"]
        status, out = await clients[w].post("/api/conat/project", exec_body(pid, "true"))
        if status != 200 or "error" in out:
            raise RuntimeError(f"start exec: {status} {out}")
        pids.append(pid)
    try:
        await timed_concurrent(count, c, one, 600)
    finally:
        for cl in clients:
            await cl.close()
    return pids


async def _exec_round_robin(server: Server, pids: list[str], n: int, warmup: int = 10,
                            timeout_s: float = 60) -> dict[str, Any]:
    """``n`` sequential execs of ``true``, each in the next project of ``pids``, after
    ``warmup`` untimed ones."""
    cl = RawHTTP(server.port, server.api_key)
    i = 0

    async def call(w: int) -> None:
        nonlocal i
        pid = pids[i % len(pids)]
        i += 1
        status, out = await cl.post("/api/conat/project", exec_body(pid, "true"))
        if status != 200 or "error" in out:
            raise RuntimeError(f"exec: {status} {out}")
    try:
        for _ in range(warmup):
            await call(0)
        lat, wall = await timed_concurrent(n, 1, call, timeout_s)
        return summarize(lat, wall, c=1, projects_touched=min(n, len(pids)))
    finally:
        await cl.close()


async def _jobs(server: Server, pid: int, count: int, c: int = 16) -> dict[str, Any]:
    clients = [RawHTTP(server.port, server.api_key) for _ in range(c)]
    job_ids: list[str] = []
    statuses: dict[str, int] = {}
    try:
        for cl in clients:
            await cl.post("/api/conat/project", exec_body(pid, "true"))   # connect

        async def submit(w: int) -> None:
            status, out = await clients[w].post("/api/conat/project",
                                                exec_body(pid, "sleep 1", async_call=True, timeout=120))
            if status != 200 or "job_id" not in out:
                raise RuntimeError(f"async submit: {status} {str(out)[:300]}")
            job_ids.append(out["job_id"])

        t0 = time.perf_counter()
        submit_lat, _ = await timed_concurrent(count, c, submit, 300)
        started = time.perf_counter() - t0
        pending = list(job_ids)

        async def await_job(w: int) -> None:
            job = pending.pop()
            for _ in range(60):
                status, out = await clients[w].post("/api/conat/project", {
                    "project_id": pid, "name": "system.exec",
                    "args": [{"async_get": job, "async_await": True, "timeout": 30}], "timeout": 30000})
                if status == 200 and out.get("status") != "running":
                    statuses[out.get("status", "?")] = statuses.get(out.get("status", "?"), 0) + 1
                    return
            raise RuntimeError(f"job {job} did not finish")

        await timed_concurrent(len(job_ids), c, await_job, 300)
        done = time.perf_counter() - t0
    finally:
        for cl in clients:
            await cl.close()
    return {"jobs": count, "submitted": len(job_ids), "start_all_s": round(started, 3),
            "all_completed_s": round(done, 3), "statuses": statuses, "submit": summarize(submit_lat)}


def scenario_scale(ctx: Ctx) -> dict[str, Any]:
    levels = ctx.q([1, 10], [1, 10, 50, 200])
    job_counts = ctx.q([1, 100], [1, 100, 1000])
    res: dict[str, Any] = {"params": {"levels": levels, "jobs": job_counts}}
    ctx.stop_main()   # a fresh server: only this scenario's projects run, counts are exact
    server = Server().start()
    assert server.process is not None
    try:
        return _scale(ctx, server, levels, job_counts, res)
    finally:
        server.stop()


def _daemons_of(server: Server, project_ids: set[str]) -> int:
    assert server.process is not None
    count = 0
    for p in psutil.Process(server.process.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmd = p.cmdline()
            if classify(" ".join(cmd)) == "daemon" and "--project-id" in cmd \
                    and cmd[cmd.index("--project-id") + 1] in project_ids:
                count += 1
    return count


def _scale(ctx: Ctx, server: Server, levels: list[int], job_counts: list[int],
           res: dict[str, Any]) -> dict[str, Any]:
    assert server.process is not None
    pids: list[str] = []

    def level(n: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        new = asyncio.run(_start_projects(server, n - len(pids)))
        pids.extend(new)
        up = time.perf_counter() - t0
        time.sleep(2.0)   # let the daemons settle to idle
        mem = tree_memory(server.process.pid)
        lat = asyncio.run(_exec_round_robin(server, pids, ctx.q(50, 200)))
        out = {"projects": len(pids), "bring_up_s": round(up, 2), "exec_true": lat, "memory": mem,
               "daemons_alive": _daemons_of(server, set(pids)),   # not counting the spare's
               "daemons_total": mem.get("daemon_count", 0)}
        daemons = mem.get("daemon_rss_each_mib") or []
        if daemons:
            out["daemon_rss_median_mib"] = statistics.median(daemons)
            out["daemon_pss_median_mib"] = statistics.median(mem["daemon_pss_each_mib"])
            per_proj_rss = (mem.get("daemon_rss_mib", 0) + mem.get("bwrap_rss_mib", 0)) / len(daemons)
            per_proj_pss = (mem.get("daemon_pss_mib", 0) + mem.get("bwrap_pss_mib", 0)) / len(daemons)
            out["per_project_rss_mib"] = round(per_proj_rss, 2)
            out["per_project_pss_mib"] = round(per_proj_pss, 2)
        return out

    for n in levels:
        attempt(res, f"projects_{n}", lambda n=n: level(n))

    def jobs() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with server.client() as http:
            pid = server.create_project(http, "jobs")
            out["limits"] = server.set_limits(http, pid, {"pids": 4096})
            server.conat_project(http, pid, "system.exec", [{"command": "true"}])
        for count in job_counts:
            attempt(out, f"jobs_{count}", lambda count=count: asyncio.run(_jobs(server, pid, count)))
            attempt(out, f"floor_jobs_{count}", lambda count=count: floors.direct_spawn(
                [{"mode": "burst", "argv": ["bash", "-c", "sleep 1"], "n": count}])[0])
        with server.client() as http:
            server.conat_project(http, pid, "system.exec", [{"command": "true"}])
            out["memory_after"] = tree_memory(server.process.pid)
        return out
    attempt(res, "async_jobs", jobs)
    return res


# ================================================================================ 6. streaming

async def _stream_once(server: Server, pid: str, nbytes: int) -> dict[str, Any]:
    cmd = f"head -c {nbytes} /dev/zero | tr '\\0' x"
    headers = {"Authorization": f"Bearer {server.api_key}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=120) as http:
        t0 = time.perf_counter()
        r = await http.post(f"/api/v3/projects/{pid}/exec", json={"command": cmd, "async": True, "timeout": 600})
        r.raise_for_status()
        job_id = r.json()["job_id"]
        t_submit = time.perf_counter() - t0
        got = raw = events = 0
        first = None
        final = None
        buf = b""
        async with http.stream("GET", f"/api/v3/projects/{pid}/jobs/{job_id}/events") as resp:
            resp.raise_for_status()
            async for chunk in resp.aiter_bytes():
                raw += len(chunk)
                buf += chunk
                *blocks, buf = buf.split(b"\n\n")
                for block in blocks:
                    kind, data = "message", []
                    for line in block.split(b"\n"):
                        if line.startswith(b"event: "):
                            kind = line[7:].decode()
                        elif line.startswith(b"data: "):
                            data.append(line[6:])
                    if not data:
                        continue
                    events += 1
                    if kind == "stdout":
                        payload = json.loads(b"\n".join(data))
                        got += len(payload["data"])
                        if first is None:
                            first = time.perf_counter() - t0
                    elif kind in ("done", "error"):
                        final = json.loads(b"\n".join(data))
                if final is not None:
                    break
        wall = time.perf_counter() - t0
    if got != nbytes:
        raise RuntimeError(f"streamed {got} of {nbytes} bytes; final event {str(final)[:300]}")
    return {"bytes": got, "sse_bytes": raw, "events": events, "wall_s": round(wall, 3),
            "mb_per_s": round(got / wall / 1e6, 2), "ttfb_ms": round((first or 0) * 1000, 2),
            "submit_ms": round(t_submit * 1000, 2)}


def scenario_stream(ctx: Ctx) -> dict[str, Any]:
    nbytes = ctx.q(20_000_000, 200_000_000)
    runs = ctx.q(1, 3)
    res: dict[str, Any] = {"params": {"bytes": nbytes, "runs": runs}}
    argv = ["bash", "-c", f"head -c {nbytes} /dev/zero | tr '\\0' x"]

    def floor(fn: Callable) -> dict[str, Any]:
        rs = fn([{"mode": "stream", "argv": argv}] * runs)
        mbs = [r["bytes"] / r["wall_s"] / 1e6 for r in rs]
        return {"runs": rs, "mb_per_s": round(statistics.median(mbs), 2),
                "ttfb_ms": round(statistics.median(r["ttfb_s"] * 1000 for r in rs), 3)}
    attempt(res, "floor_pipe", lambda: floor(floors.direct_spawn))
    attempt(res, "floor_sandbox_pipe", lambda: floor(floors.sandboxed_spawn))

    def ours() -> dict[str, Any]:
        server = ctx.main()
        rs = []
        for _ in range(runs):
            # a project per run: a job's output is kept in its project, and two 200 MB jobs
            # do not fit the bench's 256 MiB disk (the second one's output stopped at ~43 MB)
            pid = new_project(server, "stream")
            ctx.track(server, pid)
            rs.append(asyncio.run(_stream_once(server, pid, nbytes)))
        return {"runs": rs, "mb_per_s": statistics.median(r["mb_per_s"] for r in rs),
                "ttfb_ms": statistics.median(r["ttfb_ms"] for r in rs)}
    attempt(res, "projecthub_sse", ours)
    return res


SCENARIOS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "exec": scenario_exec,
    "jupyter": scenario_jupyter,
    "session": scenario_session,
    "cold": scenario_cold,
    "stream": scenario_stream,
    "scale": scenario_scale,
}
