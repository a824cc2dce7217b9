"""Targets, markdown tables and PNG plots from one results JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"


def g(d: Any, *keys: Any) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _div(a: Any, b: Any) -> float | None:
    try:
        return a / b if (a is not None and b) else None
    except TypeError:
        return None


def f(x: Any, digits: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if abs(x) >= 100:
            return f"{x:.0f}"
        if abs(x) >= 10:
            return f"{x:.1f}"
        return f"{x:.{digits}f}"
    return str(x)


# ------------------------------------------------------------------------------ targets

CLIENT = {"raw": "raw HTTP keep-alive", "official": "official client"}


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    s = res.get("scenarios", {})
    ex, ju, se, co, sc = (s.get(k, {}) for k in ("exec", "jupyter", "session", "cold", "scale"))
    rows: list[dict[str, Any]] = []

    def add(name: str, value: Any, goal: str, ok: bool | None, detail: str) -> None:
        rows.append({"target": name, "value": value, "goal": goal,
                     "met": None if value is None else ok, "detail": detail})

    r = _div(g(ex, "projecthub", "official_true_c1", "p50_ms"), g(ex, "floor_spawn", "true_c1", "p50_ms"))
    detail = f"{f(g(ex, 'projecthub', 'official_true_c1', 'p50_ms'))} ms vs {f(g(ex, 'floor_spawn', 'true_c1', 'p50_ms'))} ms"
    bound = g(ex, "floor_http", "httpx_spawn_true_c1", "p50_ms")
    if bound is not None:   # the official client's HTTP stack on a server that only spawns
        detail += (f"; httpx as the official client calls it, on a bare uvicorn+starlette server that "
                   f"only spawns: {f(bound)} ms = {f(_div(bound, g(ex, 'floor_spawn', 'true_c1', 'p50_ms')))}x")
    add("exec `true`, official client, vs direct spawn (p50)", r, "≤ 2.5x", r is not None and r <= 2.5, detail)
    r = _div(g(ex, "projecthub", "raw_true_c64", "per_s"), g(ex, "floor_spawn", "true_c64", "per_s"))
    add("exec throughput at c=64 vs direct spawning", r, "≥ 0.5", r is not None and r >= 0.5,
        f"{f(g(ex, 'projecthub', 'raw_true_c64', 'per_s'))}/s vs {f(g(ex, 'floor_spawn', 'true_c64', 'per_s'))}/s")
    # Stateless Jupyter is judged through the HTTP API itself (a minimal keep-alive client,
    # as for the session rows) when the run has it; the official client's figure (httpx
    # adds ~0.5 ms, ~1.5 ms after a pause) is given beside it.  Older runs: official only.
    via = "raw" if g(ju, "projecthub", "raw_seq") else "official"
    st = g(ju, "projecthub", f"{via}_seq", "p50_ms")
    st_official = g(ju, "projecthub", "official_seq", "p50_ms")
    # The floor measured right before and after the sequential calls when the run has it
    # (older runs: the floor block at the start of the scenario).
    jfloor = g(ju, "projecthub", "floor_bracket", "p50_ms") or g(ju, "floor_warm_kernel", "seq", "p50_ms")
    r = _div(st, jfloor)
    add(f"stateless jupyter_execute 1+1 (sequential, {CLIENT[via]}) vs warm kernel (p50)", r, "≤ 4x",
        r is not None and r <= 4,
        f"{f(st)} ms vs {f(jfloor)} ms" + (f"; official client {f(st_official)} ms: "
                                          f"{f(_div(st_official, jfloor))}x" if via == "raw" else ""))
    r = _div(g(ju, "floor_kernel_per_call", "p50_ms"), st)
    add("stateless jupyter_execute vs kernel-per-call: speed-up (p50)", r, "≥ 15x", r is not None and r >= 15,
        f"{f(g(ju, 'floor_kernel_per_call', 'p50_ms'))} ms / {f(st)} ms")
    pc = g(ju, "projecthub", f"{via}_paced", "p50_ms")
    pc_official = g(ju, "projecthub", "official_paced", "p50_ms")
    fpaced = g(ju, "projecthub", "floor_paced_alternating", "p50_ms")
    if fpaced is not None:
        # Paced calls alternate with floor calls after the same pause: like for like.
        r = _div(pc, fpaced)
        add(f"stateless jupyter_execute with a warm pool (paced, {CLIENT[via]}) vs warm kernel paced alike "
            "(p50; issue 5)", r, "≤ 1.5x", r is not None and r <= 1.5,
            f"{f(pc)} ms vs {f(fpaced)} ms (calls alternating, 2.5 s pause before each); "
            f"vs the back-to-back floor ({f(jfloor)} ms): {f(_div(pc, jfloor))}x"
            + (f"; official client {f(pc_official)} ms: {f(_div(pc_official, fpaced))}x" if via == "raw" else ""))
    else:
        r = _div(pc, g(ju, "floor_warm_kernel", "seq", "p50_ms"))
        rp = _div(pc, g(ju, "floor_warm_kernel", "seq_paced", "p50_ms"))
        add("stateless jupyter_execute with a warm pool (paced) vs warm kernel (p50; issue 5)", r, "≤ 1.5x",
            r is not None and r <= 1.5,
            f"{f(pc)} ms vs {f(g(ju, 'floor_warm_kernel', 'seq', 'p50_ms'))} ms; vs the floor paced the same way "
            f"({f(g(ju, 'floor_warm_kernel', 'seq_paced', 'p50_ms'))} ms): {f(rp)}x")
    ss = g(se, "projecthub", "execute", "p50_ms")
    r = _div(ss, g(se, "floor_warm_kernel", "seq", "p50_ms"))
    add("session execute 1+1 vs warm kernel (p50)", r, "≤ 1.5x", r is not None and r <= 1.5,
        f"{f(ss)} ms vs {f(g(se, 'floor_warm_kernel', 'seq', 'p50_ms'))} ms")
    r = _div(g(se, "kernel_gateway", "ws_execute", "p50_ms"), ss)
    add("session execute vs Kernel Gateway websocket: speed-up (p50)", r, "≥ 5x", r is not None and r >= 5,
        f"{f(g(se, 'kernel_gateway', 'ws_execute', 'p50_ms'))} ms / {f(ss)} ms")
    v = g(co, "projecthub", "create_to_first_exec", "p50_ms")
    add("cold start: create project → first exec answered (p50)", v, "≤ 100 ms", v is not None and v <= 100,
        f"creates 2.5 s apart; back to back: {f(g(co, 'projecthub', 'burst_create_to_first_exec', 'p50_ms'))} ms; "
        f"stopped project's first exec: {f(g(co, 'projecthub', 'stopped_first_exec', 'p50_ms'))} ms")
    levels = [k for k in sc if k.startswith("projects_") and isinstance(sc[k], dict) and "projects" in sc[k]]
    big = max(levels, key=lambda k: sc[k]["projects"]) if levels else None
    v = g(sc, big, "per_project_rss_mib") if big else None
    add("idle project memory (daemon + its bwrap, RSS per project)", v, "≤ 30 MB", v is not None and v * 1.048576 <= 30,
        f"daemon alone {f(g(sc, big, 'daemon_rss_median_mib'))} MiB RSS, "
        f"{f(g(sc, big, 'per_project_pss_mib'))} MiB PSS per project, at {g(sc, big, 'projects')} projects")
    alive = g(sc, "projects_200", "daemons_alive")
    add("200 running projects", alive, "200 alive, exec answers",
        alive is not None and alive >= 200 and g(sc, "projects_200", "exec_true", "p50_ms") is not None,
        f"exec p50 {f(g(sc, 'projects_200', 'exec_true', 'p50_ms'))} ms with 200 running" if alive is not None
        else "not run (quick mode runs 1 and 10)")
    import report_lifecycle   # first calls, idle memory, 1,000 projects (issue 15)
    report_lifecycle.targets(s, add)
    import report_files   # the v3 files API vs cp (issue 18)
    report_files.targets(s, add)
    import report_client   # projecthub.client's own cost (issue 18)
    report_client.targets(s, add)
    return rows


# ------------------------------------------------------------------------------ markdown

def _lat_row(label: str, d: Any, floor: Any = None, extra: str = "") -> str:
    if not isinstance(d, dict):
        return f"| {label} | — | — | — | — | {extra} |"
    if "error" in d:
        return f"| {label} | error: {d['error'][:120]} | | | | |"
    r = _div(d.get("p50_ms"), floor.get("p50_ms")) if isinstance(floor, dict) else None
    return (f"| {label} | {f(d.get('p50_ms'))} | {f(d.get('p99_ms'))} | {f(d.get('per_s'))} | "
            f"{f(r) + 'x' if r else ''} | {extra} |")


LAT_HEAD = "| what | p50 ms | p99 ms | calls/s | p50 ratio | note |\n|---|---|---|---|---|---|"


def markdown(res: dict[str, Any], json_path: Path | None = None, plots: list[Path] | None = None) -> str:
    m = res.get("meta", {})
    s = res.get("scenarios", {})
    mach = m.get("machine", {})
    vers = m.get("versions", {})
    L: list[str] = []
    L.append(f"Run {m.get('date')} — `{m.get('command')}`{' (quick mode: small counts)' if m.get('quick') else ''}, "
             f"{f(m.get('elapsed_s'))} s.  ")
    L.append(f"Machine: {mach.get('nproc')} × {mach.get('cpu_model')}, {mach.get('mem_gib')} GiB, Linux "
             f"{mach.get('kernel')}, load average {mach.get('loadavg_at_start')} at start and "
             f"{m.get('loadavg_at_end')} at end (shared machine: compare within this run only).  ")
    if m.get("kdamond_cpu_s") is not None and m.get("elapsed_s"):
        L.append(f"DAMON memory reclaim in this VM's kernel (thread kdamond, pageout scheme) used {f(m['kdamond_cpu_s'])} s of "
                 f"CPU during the run ({f(100 * m['kdamond_cpu_s'] / m['elapsed_s'])} % of one core).  ")
    L.append("Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()) + ".  ")
    if json_path is not None:
        L.append(f"Raw data: `bench/results/{json_path.name}`.")
    L.append("")
    L.append("### Targets (p50 ratios, floors measured in the same run)")
    L.append("")
    L.append("| target | goal | measured | met? | detail |\n|---|---|---|---|---|")
    for t in res.get("targets", []):
        met = {True: "**met**", False: "**missed**", None: "not measured"}[t["met"]]
        val = t["value"]
        sval = (f(val) + ("x" if "x" in t["goal"] or "≥ 0.5" in t["goal"] else "")) if isinstance(val, float) else f(val)
        if "ms" in t["goal"] and isinstance(val, float):
            sval = f(val) + " ms"
        if "MB" in t["goal"] and isinstance(val, float):
            sval = f(val) + " MiB"
        L.append(f"| {t['target']} | {t['goal']} | {sval} | {met} | {t['detail']} |")
    L.append("")

    ex = s.get("exec")
    if ex:
        fs, fb, fh = ex.get("floor_spawn", {}), ex.get("floor_sandbox_spawn", {}), ex.get("floor_http", {})
        ph, pn = ex.get("projecthub", {}), ex.get("projecthub_nosandbox", {})
        L.append("### 1. exec round trip (ratio: p50 over the direct asyncio spawn at the same concurrency)")
        L.append("")
        L.append(LAT_HEAD)
        for lbl, fkey in (("`true`, c=1", "true_c1"), ("`echo hi`, c=1", "echo_c1"), ("1 MB output, c=1", "1mb_c1"),
                          ("`true`, c=8", "true_c8"), ("`echo hi`, c=8", "echo_c8"),
                          ("`true`, c=64", "true_c64"), ("`echo hi`, c=64", "echo_c64")):
            base = g(fs, fkey)
            if base is None and g(ph, f"raw_{fkey}") is None:
                continue   # a results file from before this row existed
            L.append(_lat_row(f"floor: direct asyncio spawn, {lbl}", base, base))
            L.append(_lat_row(f"floor: spawn inside an equivalent project sandbox, {lbl}", g(fb, fkey), base,
                              "bwrap + cgroup + uid drop, spawner inside"))
            hkey = "spawn_" + fkey
            if hkey in fh:
                L.append(_lat_row(f"floor: HTTP + spawn (uvicorn+starlette), {lbl}", g(fh, hkey), base))
            if "httpx_" + hkey in fh:
                L.append(_lat_row(f"floor: HTTP + spawn, called through httpx like the official client, {lbl}",
                                  g(fh, "httpx_" + hkey), base, "no auth, no sandbox, no daemon hop"))
            c = fkey.split("_c")[-1]
            if f"echo_c{c}" in fh and fkey.startswith("true"):
                L.append(_lat_row(f"floor: HTTP JSON POST only, c={c}", g(fh, f"echo_c{c}"), None))
            for name, src in (("projecthub", ph), ("projecthub `--sandbox none`", pn)):
                for how in ("official", "raw"):
                    d = g(src, f"{how}_{fkey}")
                    if d is not None:
                        client = "official client" if how == "official" else "raw HTTP keep-alive"
                        L.append(_lat_row(f"**{name}**, {client}, {lbl}", d, base))
        r1 = _div(g(ph, "raw_true_c1", "p50_ms"), g(pn, "raw_true_c1", "p50_ms"))
        r2 = _div(g(ph, "raw_1mb_c1", "p50_ms"), g(pn, "raw_1mb_c1", "p50_ms"))
        L.append("")
        L.append(f"Sandbox cost (issue 3), same run, raw HTTP c=1: `true` {f(g(ph, 'raw_true_c1', 'p50_ms'))} ms "
                 f"with the default sandbox vs {f(g(pn, 'raw_true_c1', 'p50_ms'))} ms with `--sandbox none` "
                 f"({f(r1)}x); 1 MB {f(g(ph, 'raw_1mb_c1', 'p50_ms'))} vs {f(g(pn, 'raw_1mb_c1', 'p50_ms'))} ms "
                 f"({f(r2)}x).  Bare spawn inside vs outside the sandbox: {f(g(fb, 'true_c1', 'p50_ms'))} vs "
                 f"{f(g(fs, 'true_c1', 'p50_ms'))} ms.")
        L.append("")
        cpu = ex.get("cpu_per_exec") or {}
        for name, d in cpu.items():
            if isinstance(d, dict) and "server_cpu_ms" in d:
                L.append(f"CPU per `exec true` ({name}, raw HTTP c=1, n={d['n']}): server {f(d['server_cpu_ms'])} ms, "
                         f"project daemon {f(d['daemon_cpu_ms'])} ms, the spawned processes {f(d['children_cpu_ms'])} ms; "
                         f"direct-spawn floor: spawner {f(g(fs, 'true_c1', 'cpu_ms_per_call_spawner'))} ms, "
                         f"spawned {f(g(fs, 'true_c1', 'cpu_ms_per_call_children'))} ms.  ")
        L.append("")

    ju = s.get("jupyter")
    if ju:
        fl = ju.get("floor_warm_kernel", {})
        base = g(fl, "seq")
        ours = ju.get("projecthub", {})
        kg = ju.get("kernel_gateway", {})
        L.append("### 2. stateless `jupyter_execute(input='1+1')` (ratio: p50 over the warm-kernel floor)")
        L.append("")
        L.append(LAT_HEAD)
        L.append(_lat_row("floor: warm kernel, jupyter_client execute_interactive, sequential", base, base))
        if g(fl, "seq_no_execute_sleep"):
            L.append(_lat_row("floor: warm kernel without ipykernel's pre-reply sleep, like projecthub's kernels",
                              g(fl, "seq_no_execute_sleep"), base,
                              "`--IPythonKernel._execute_sleep=0`; for reference, not a target's base"))
        if g(fl, "seq_paced"):
            L.append(_lat_row("floor: warm kernel, paced (same pause as the paced row below)", g(fl, "seq_paced"),
                              base, f"{g(fl, 'seq_paced', 'pause_s') or ''} s untimed pause before each call"))
        if g(ours, "floor_bracket"):
            L.append(_lat_row("floor again, right before and after the 100 sequential calls below",
                              g(ours, "floor_bracket"), base,
                              f"before {f(g(ours, 'floor_bracket', 'before_p50_ms'))} ms, after "
                              f"{f(g(ours, 'floor_bracket', 'after_p50_ms'))} ms; the base of the "
                              "sequential target"))
        if g(ours, "floor_paced_alternating"):
            L.append(_lat_row("floor paced, alternating with the paced row below", g(ours, "floor_paced_alternating"),
                              base, f"{g(ours, 'floor_paced_alternating', 'pause_s') or ''} s untimed pause "
                              "before each call; the base of the paced target"))
        L.append(_lat_row("floor: 8 clients, each on its own warm kernel", g(fl, "conc"), base))
        L.append(_lat_row("naive: kernel started per call (start, wait ready, 1+1, kill)",
                          ju.get("floor_kernel_per_call"), base))
        L.append(_lat_row("Kernel Gateway: POST /api/kernels → first 1+1 result", g(kg, "kernel_start"), base))
        L.append(_lat_row("Kernel Gateway: websocket execute 1+1 (as shipped)", g(kg, "ws_execute"), base))
        L.append(_lat_row("**projecthub** official client, 100 sequential" if not m.get("quick") else
                          "**projecthub** official client, sequential", g(ours, "official_seq"), base,
                          f"first call {f(g(ours, 'first_call_ms'))} ms"))
        if g(ours, "raw_seq"):
            L.append(_lat_row("**projecthub** raw HTTP keep-alive, 100 sequential" if not m.get("quick") else
                              "**projecthub** raw HTTP keep-alive, sequential", g(ours, "raw_seq"), base,
                              "right after the official client's block"))
        L.append(_lat_row("**projecthub** official client, 8 concurrent clients", g(ours, "official_c8"), base))
        L.append(_lat_row("**projecthub** official client, paced (pool refilled before each call)",
                          g(ours, "official_paced"), base,
                          f"{g(ours, 'official_paced', 'pause_s') or ''} s untimed pause before each call"))
        if g(ours, "raw_paced"):
            L.append(_lat_row("**projecthub** raw HTTP keep-alive, paced (pool refilled before each call)",
                              g(ours, "raw_paced"), base,
                              f"{g(ours, 'raw_paced', 'pause_s') or ''} s untimed pause before each call; "
                              "takes turns with the official client's and the floor's paced calls"))
        if g(ours, "hub_alternating"):
            L.append(_lat_row("**projecthub** official client, project `system.jupyter_execute`, alternating",
                              g(ours, "project_alternating"), base, "takes turns with the row below"))
            L.append(_lat_row("**projecthub** official client, hub `jupyter.execute` (project_id), alternating",
                              g(ours, "hub_alternating"), base,
                              f"{f(_div(g(ours, 'hub_alternating', 'p50_ms'), g(ours, 'project_alternating', 'p50_ms')))}x "
                              "the project path (issue 19: ≤ 1.3x)"))
        if "error" in ours:
            L.append(f"| projecthub | error: {ours['error'][:200]} | | | | |")
        L.append("")

    se = s.get("session")
    if se:
        base = g(se, "floor_warm_kernel", "seq")
        ours = se.get("projecthub", {})
        L.append("### 3. persistent kernel session: `POST /api/v3/projects/{id}/sessions/{sid}/execute` `{\"code\": \"1+1\"}`")
        L.append("")
        L.append(LAT_HEAD)
        L.append(_lat_row("floor: warm kernel, jupyter_client, sequential", base, base))
        L.append(_lat_row("Kernel Gateway: websocket execute 1+1 (as shipped)", g(se, "kernel_gateway", "ws_execute"), base))
        L.append(_lat_row("**projecthub** session execute (raw HTTP keep-alive)", g(ours, "execute"), base,
                          f"session create {f(g(ours, 'create_ms'))} ms, create → first result "
                          f"{f(g(ours, 'create_to_first_result_ms'))} ms"))
        if "error" in ours:
            L.append(f"| projecthub | error: {ours['error'][:200]} | | | | |")
        L.append("")

    co = s.get("cold")
    if co:
        ours = co.get("projecthub", {})
        fl = co.get("floor_sandboxed_python", {})
        L.append("### 4. project cold start (official client)")
        L.append("")
        L.append(LAT_HEAD)
        L.append(_lat_row("floor: `python -c pass`", g(fl, "plain_python_pass")))
        L.append(_lat_row("floor: sandbox (bwrap+cgroup+setpriv) + `python -c pass`", g(fl, "sandboxed_python_pass")))
        L.append(_lat_row("floor: sandbox + `python -c 'import projecthub.project.daemon'`",
                          g(fl, "sandboxed_python_import_daemon")))
        L.append(_lat_row("**projecthub** `projects.create_project`", g(ours, "create")))
        L.append(_lat_row("**projecthub** new project's first `exec true`", g(ours, "first_exec")))
        L.append(_lat_row("**projecthub** create → first exec answered", g(ours, "create_to_first_exec"),
                          extra="creates 2.5 s apart (untimed): each finds a spare project"))
        L.append(_lat_row("**projecthub** create → first exec, creates back to back", g(ours, "burst_create_to_first_exec"),
                          extra="burst: most creates find no ready spare"))
        L.append(_lat_row("  of which: daemon spawn → socket answers (server log)", g(ours, "daemon_start_logged")))
        L.append(_lat_row("**projecthub** `projects.stop`", g(ours, "stop_call")))
        L.append(_lat_row("**projecthub** stopped project's first `exec true`", g(ours, "stopped_first_exec")))
        if "error" in ours:
            L.append(f"| projecthub | error: {ours['error'][:200]} | | | | |")
        L.append("")

    sc = s.get("scale")
    if sc:
        L.append("### 5. scale: running projects (exec `true` round-robin over them, raw HTTP c=1; memory via psutil)")
        L.append("")
        L.append("| running projects | bring-up s | exec p50 ms | exec p99 ms | daemons alive | server RSS / PSS MiB "
                 "| all daemons RSS / PSS MiB | per project RSS / PSS MiB | daemon RSS median MiB | total PSS MiB |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        for k in sorted((k for k in sc if k.startswith("projects_")), key=lambda k: int(k.split("_")[1])):
            d = sc[k]
            if "error" in d:
                L.append(f"| {k.split('_')[1]} | error: {d['error'][:150]} | | | | | | | | |")
                continue
            mem = d.get("memory", {})
            L.append(f"| {d.get('projects')} | {f(d.get('bring_up_s'))} | {f(g(d, 'exec_true', 'p50_ms'))} | "
                     f"{f(g(d, 'exec_true', 'p99_ms'))} | {d.get('daemons_alive')} | "
                     f"{f(mem.get('server_rss_mib'))} / {f(mem.get('server_pss_mib'))} | "
                     f"{f(mem.get('daemon_rss_mib'))} / {f(mem.get('daemon_pss_mib'))} | "
                     f"{f(d.get('per_project_rss_mib'))} / {f(d.get('per_project_pss_mib'))} | "
                     f"{f(d.get('daemon_rss_median_mib'))} | {f(mem.get('total_pss_mib'))} |")
        kr = g(s, "session", "projecthub", "kernel_rss_each_mib")
        kp = g(s, "session", "projecthub", "kernel_pss_each_mib")
        fk = g(s, "jupyter", "floor_warm_kernel")
        L.append("")
        L.append(f"Idle memory per kernel (processes of the server's tree running ipykernel, during scenario 3): "
                 f"RSS {kr} MiB, PSS {kp} MiB; a bare ipykernel started by jupyter_client: "
                 f"{f(g(fk, 'idle_kernel_rss_mib'))} MiB RSS / {f(g(fk, 'idle_kernel_pss_mib'))} MiB PSS.")
        L.append("")
        aj = sc.get("async_jobs", {})
        L.append("Concurrent async jobs (`sleep 1` via `system.exec(async_call=True)`, one project, pids limit raised "
                 "to 4096; submitted by 16 keep-alive connections; completion seen through `async_get`+`async_await`):")
        L.append("")
        L.append("| jobs | time to start all s | all seen completed s | submit p50 / p99 ms | statuses | floor: asyncio "
                 "spawn all s | floor: all exited s |")
        L.append("|---|---|---|---|---|---|---|")
        for k in sorted((k for k in aj if k.startswith("jobs_")), key=lambda k: int(k.split("_")[1])):
            d, fl = aj[k], aj.get("floor_" + k, {})
            if "error" in d:
                L.append(f"| {k.split('_')[1]} | error: {d['error'][:150]} | | | | | |")
                continue
            L.append(f"| {d['jobs']} | {f(d['start_all_s'])} | {f(d['all_completed_s'])} | "
                     f"{f(g(d, 'submit', 'p50_ms'))} / {f(g(d, 'submit', 'p99_ms'))} | {d.get('statuses')} | "
                     f"{f(fl.get('started_s'))} | {f(fl.get('done_s'))} |")
        L.append("")

    st = s.get("stream")
    if st:
        L.append(f"### 6. streaming a job's stdout through SSE ({f(g(st, 'params', 'bytes') / 1e6 if g(st, 'params', 'bytes') else None)} MB, "
                 f"median of {g(st, 'params', 'runs')} runs)")
        L.append("")
        L.append("| what | MB/s | time to first byte ms | note |\n|---|---|---|---|")
        for lbl, k, note in (("floor: pipe read by a direct asyncio spawn", "floor_pipe", ""),
                             ("floor: same, inside an equivalent project sandbox", "floor_sandbox_pipe", ""),
                             ("**projecthub** async job → `GET .../jobs/{id}/events` (httpx stream, SSE parsed)",
                              "projecthub_sse", "TTFB from the exec POST")):
            d = st.get(k, {})
            if "error" in d:
                L.append(f"| {lbl} | error: {d['error'][:150]} | | |")
            else:
                L.append(f"| {lbl} | {f(d.get('mb_per_s'))} | {f(d.get('ttfb_ms'))} | {note} |")
        L.append("")

    import report_lifecycle
    L += report_lifecycle.markdown(s, bool(m.get("quick")))
    import report_files
    L += report_files.markdown(s, bool(m.get("quick")))
    import report_client
    L += report_client.markdown(s, bool(m.get("quick")))

    errors = [(n, k, v["error"]) for n, sv in s.items() if isinstance(sv, dict)
              for k, v in sv.items() if isinstance(v, dict) and "error" in v]
    errors += [(n, "round", e) for n, sv in s.items() if isinstance(sv, dict)
               for e in sv.get("round_errors") or []]
    if errors:
        L.append("Errors in this run:")
        L.append("")
        for n, k, e in errors:
            L.append(f"* {n}/{k}: `{e[:300]}`")
        L.append("")
    if plots:
        for p in plots:
            L.append(f"![{p.stem}](results/{p.name})")
        L.append("")
    return "\n".join(L)


def update_readme(res: dict[str, Any], readme: Path, json_path: Path, plots: list[Path]) -> None:
    body = markdown(res, json_path, plots)
    text = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text += f"\n## Results\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{body}\n{END}{tail}")


# ------------------------------------------------------------------------------ plots

def plots(res: dict[str, Any], out_dir: Path, prefix: str = "") -> list[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    s = res.get("scenarios", {})
    made: list[Path] = []
    date = res.get("meta", {}).get("date", "")

    def bars(items: list[tuple[str, Any]], title: str, name: str) -> None:
        items = [(lbl, d) for lbl, d in items if isinstance(d, dict) and d.get("p50_ms") is not None]
        if not items:
            return
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(items) + 1.4))
        y = list(range(len(items)))[::-1]
        p50 = [d["p50_ms"] for _, d in items]
        p99 = [d["p99_ms"] for _, d in items]
        ax.barh(y, p50, color=["#999" if lbl.startswith(("floor", "naive", "KG")) else "#2a6fb0" for lbl, _ in items],
                label="p50")
        ax.scatter(p99, y, color="#c0392b", marker="|", s=200, label="p99", zorder=3)
        ax.set_yticks(y)
        ax.set_yticklabels([lbl for lbl, _ in items], fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("ms (log scale); grey = floor / comparison, blue = projecthub")
        ax.set_title(f"{title}\n{date}", fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
        for yy, v in zip(y, p50):
            ax.text(v, yy, f" {v:.3g}", va="center", fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{prefix}{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

    ex = s.get("exec") or {}
    fs, fb, fh = ex.get("floor_spawn", {}), ex.get("floor_sandbox_spawn", {}), ex.get("floor_http", {})
    ph, pn = ex.get("projecthub", {}), ex.get("projecthub_nosandbox", {})
    bars([("floor: HTTP JSON POST", g(fh, "echo_c1")),
          ("floor: direct spawn true", g(fs, "true_c1")),
          ("floor: spawn in sandbox true", g(fb, "true_c1")),
          ("floor: HTTP + spawn true", g(fh, "spawn_true_c1")),
          ("floor: HTTP + spawn true, httpx", g(fh, "httpx_spawn_true_c1")),
          ("exec true, raw HTTP, --sandbox none", g(pn, "raw_true_c1")),
          ("exec true, raw HTTP", g(ph, "raw_true_c1")),
          ("exec true, official client", g(ph, "official_true_c1")),
          ("floor: direct spawn echo hi", g(fs, "echo_c1")),
          ("floor: spawn in sandbox echo hi", g(fb, "echo_c1")),
          ("exec echo hi, raw HTTP, --sandbox none", g(pn, "raw_echo_c1")),
          ("exec echo hi, raw HTTP", g(ph, "raw_echo_c1")),
          ("exec echo hi, official client", g(ph, "official_echo_c1")),
          ("floor: direct spawn 1 MB", g(fs, "1mb_c1")),
          ("floor: spawn in sandbox 1 MB", g(fb, "1mb_c1")),
          ("floor: HTTP + spawn 1 MB", g(fh, "spawn_1mb_c1")),
          ("exec 1 MB, raw HTTP, --sandbox none", g(pn, "raw_1mb_c1")),
          ("exec 1 MB, raw HTTP", g(ph, "raw_1mb_c1")),
          ("exec 1 MB, official client", g(ph, "official_1mb_c1"))],
         "exec round trip, c=1", "exec")
    if ex:
        fig, ax = plt.subplots(figsize=(7, 4))
        for lbl, src, pre in (("floor: direct spawn", fs, "true_c"), ("floor: spawn in sandbox", fb, "true_c"),
                              ("floor: HTTP + spawn", fh, "spawn_true_c"), ("floor: HTTP JSON POST", fh, "echo_c"),
                              ("projecthub raw HTTP", ph, "raw_true_c"), ("projecthub official client", ph, "official_true_c"),
                              ("floor: direct spawn, echo hi", fs, "echo_c"), ("projecthub raw HTTP, echo hi", ph, "raw_echo_c")):
            pts = [(c, g(src, f"{pre}{c}", "per_s")) for c in (1, 8, 64)]
            pts = [(c, v) for c, v in pts if v]
            if pts:
                ax.plot([c for c, _ in pts], [v for _, v in pts], marker="o", label=lbl,
                        linestyle="--" if lbl.startswith("floor") else "-")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([1, 8, 64])
        ax.set_xticklabels(["1", "8", "64"])
        ax.set_xlabel("concurrency")
        ax.set_ylabel("calls/s (log)")
        ax.set_title(f"exec `true` / `echo hi` throughput\n{date}", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{prefix}exec_concurrency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

    ju, se = s.get("jupyter") or {}, s.get("session") or {}
    kg = ju.get("kernel_gateway") or se.get("kernel_gateway") or {}
    bars([("floor: warm kernel (jupyter_client)", g(ju, "floor_warm_kernel", "seq") or g(se, "floor_warm_kernel", "seq")),
          ("session execute 1+1", g(se, "projecthub", "execute")),
          ("KG websocket execute 1+1", g(kg, "ws_execute")),
          ("stateless jupyter_execute, sequential", g(ju, "projecthub", "official_seq")),
          ("stateless jupyter_execute, 8 clients", g(ju, "projecthub", "official_c8")),
          ("stateless jupyter_execute, paced (pool refilled)", g(ju, "projecthub", "official_paced")),
          ("stateless, raw HTTP, sequential", g(ju, "projecthub", "raw_seq")),
          ("stateless, raw HTTP, paced", g(ju, "projecthub", "raw_paced")),
          ("KG kernel start → first result", g(kg, "kernel_start")),
          ("naive: kernel per call", g(ju, "floor_kernel_per_call"))],
         "Jupyter 1+1 round trip", "jupyter")

    sc = s.get("scale") or {}
    levels = sorted((v for k, v in sc.items() if k.startswith("projects_") and isinstance(v, dict) and "projects" in v),
                    key=lambda v: v["projects"])
    if levels:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        xs = [v["projects"] for v in levels]
        a1.plot(xs, [g(v, "memory", "server_pss_mib") for v in levels], marker="o", label="server PSS")
        a1.plot(xs, [g(v, "memory", "daemon_pss_mib") for v in levels], marker="o", label="all daemons PSS")
        a1.plot(xs, [g(v, "memory", "total_pss_mib") for v in levels], marker="o", label="total PSS")
        a1.set_xlabel("running projects")
        a1.set_ylabel("MiB")
        a1.legend(fontsize=8)
        a1.set_title("memory", fontsize=10)
        a2.plot(xs, [g(v, "exec_true", "p50_ms") for v in levels], marker="o", label="p50")
        a2.plot(xs, [g(v, "exec_true", "p99_ms") for v in levels], marker="o", label="p99")
        a2.set_xlabel("running projects")
        a2.set_ylabel("exec `true` ms")
        a2.legend(fontsize=8)
        a2.set_title("exec latency", fontsize=10)
        for a in (a1, a2):
            a.set_xscale("log")
        a1.set_yscale("log")
        fig.suptitle(f"scale\n{date}", fontsize=10)
        fig.tight_layout()
        path = out_dir / f"{prefix}scale.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def compare(paths: list[Path]) -> str:
    """The target values of several runs side by side (how much they move between runs)."""
    runs = [json.loads(p.read_text()) for p in paths]
    rows = [targets(r) for r in runs]
    L = ["| target | goal | " + " | ".join(f"{r['meta']['date'][11:16]} UTC" for r in runs) + " |",
         "|---|---|" + "---|" * len(runs)]
    older = False
    for i, t in enumerate(rows[-1]):   # the newest run names the rows
        cells = []
        for rr in rows:
            v, met = rr[i]["value"], rr[i]["met"]
            mark = {True: " ✓", False: " ✗", None: ""}[met]
            star = "*" if rr[i]["target"] != t["target"] else ""   # measured another way then
            older = older or bool(star)
            cells.append((f(v) if v is not None else "—") + star + mark)
        L.append(f"| {t['target']} | {t['goal']} | " + " | ".join(cells) + " |")
    if older:
        L += ["", "\\* that run measured this row another way (its own target name: "
              "`python bench/report.py <its json>`), e.g. stateless Jupyter through the "
              "official client before the raw-HTTP rows existed."]
    return "\n".join(L)


if __name__ == "__main__":
    import sys
    if sys.argv[1] == "--compare":
        print(compare([Path(p) for p in sys.argv[2:]]))
    else:
        data = json.loads(Path(sys.argv[1]).read_text())
        print(markdown(data, Path(sys.argv[1])))
