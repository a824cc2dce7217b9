"""Targets and tables of the project-life scenarios (``lifecycle.py``: first_call,
idle_memory, many_projects), for ``report.py``."""

from __future__ import annotations

from typing import Any, Callable

from report import LAT_HEAD, _div, _lat_row, f, g

Add = Callable[[str, Any, str, "bool | None", str], None]


def targets(s: dict[str, Any], add: Add) -> None:
    fc = g(s, "first_call", "projecthub") or {}
    im = g(s, "idle_memory", "projecthub") or {}
    mp = g(s, "many_projects", "projecthub") or {}
    if fc:
        v = g(fc, "first_jupyter_first_call", "p50_ms")
        floor = g(fc, "floor_warm_kernel_paced", "p50_ms")
        add("first stateless jupyter_execute in a new project, as its first call (p50; issue 15)", v,
            "≤ 150 ms", v is not None and v <= 150,
            f"{f(_div(v, floor))}x the warm-kernel floor paced alike ({f(floor)} ms); after a first exec: "
            f"{f(g(fc, 'first_jupyter_after_exec', 'p50_ms'))} ms; spares without the Jupyter warm-up "
            f"(as before): {f(g(fc, 'cold_first_jupyter_after_exec', 'p50_ms'))} ms; "
            f"{g(fc, 'first_jupyter_first_call', 'n')} projects, each from a warm spare")
        v = g(fc, "first_exec", "p50_ms")
        floor = g(fc, "floor_spawn_paced", "p50_ms")
        add("first exec `true` in a new project (p50; official client, new connection; issue 15)", v,
            "≤ 40 ms", v is not None and v <= 40,
            f"direct spawn paced alike {f(floor)} ms; create {f(g(fc, 'create', 'p50_ms'))} ms; spares "
            f"without the Jupyter warm-up: {f(g(fc, 'cold_first_exec', 'p50_ms'))} ms")
    if im:
        after = im.get("after_idle_window") or {}
        v = after.get("rss_mib")
        add("project that ran Jupyter, after the Jupyter idle window: all its processes, RSS (issue 15)", v,
            "≤ 30 MB", v is not None and v * 1.048576 <= 30,
            f"PSS {f(after.get('pss_mib'))} MiB; {after.get('processes')} processes (daemon "
            f"{f(after.get('daemon_rss_mib'))} MiB RSS); zygote and kernels gone "
            f"{f(im.get('shrunk_after_s'))} s after the last call, the daemon re-executed in place "
            f"{f(im.get('restarted_after_s'))} s after it (idle window "
            f"{g(s, 'idle_memory', 'params', 'jupyter_idle_s')} s, shortened for the bench); right after Jupyter: "
            f"{f(g(im, 'after_jupyter', 'rss_mib'))} MiB RSS / {f(g(im, 'after_jupyter', 'pss_mib'))} MiB PSS; "
            f"a project that never ran Jupyter: {f(g(im, 'never_ran_jupyter', 'rss_mib'))} / "
            f"{f(g(im, 'never_ran_jupyter', 'pss_mib'))} MiB")
    if mp:
        a, one = g(mp, "exec_active", "p50_ms"), g(mp, "exec_one_project", "p50_ms")
        r = _div(a, one)
        mem = mp.get("memory_active") or {}
        add(f"{g(s, 'many_projects', 'params', 'created')} created projects, "
            f"{g(s, 'many_projects', 'params', 'active')} active: exec p50 vs 1 project (issue 15)", r,
            "≤ 1.5x", r is not None and r <= 1.5,
            f"{f(a)} ms round-robin over the active ones vs {f(one)} ms in one project (before "
            f"{f(g(mp, 'exec_one_project', 'before_p50_ms'))}, after {f(g(mp, 'exec_one_project', 'after_p50_ms'))}); "
            f"all the server runs: {f(mem.get('total_pss_mib'))} MiB PSS / {f(mem.get('total_rss_mib'))} MiB RSS "
            f"of {f(g(mp, 'machine', 'total_gib'))} GiB")


def _mem_row(label: str, d: Any) -> str:
    if not isinstance(d, dict) or not d:
        return f"| {label} | — | | | | | | |"
    if "error" in d:
        return f"| {label} | error: {str(d['error'])[:120]} | | | | | | |"

    def pair(kind: str) -> str:
        if not d.get(f"{kind}_count"):
            return "—"
        n = d[f"{kind}_count"]
        return (f"{f(d.get(f'{kind}_rss_mib'))} / {f(d.get(f'{kind}_pss_mib'))}"
                + (f" ({n})" if n > 1 else ""))
    return (f"| {label} | {d.get('processes')} | {f(d.get('rss_mib'))} / {f(d.get('pss_mib'))} | "
            f"{pair('daemon')} | {pair('bwrap')} | {pair('zygote')} | {pair('kernel')} | {pair('other')} |")


def markdown(s: dict[str, Any], quick: bool) -> list[str]:
    L: list[str] = []
    fc = g(s, "first_call", "projecthub")
    if isinstance(fc, dict):
        L.append("### 7. a new project's first calls (official client, a new connection per project)")
        L.append("")
        L.append(LAT_HEAD)
        fk, fs = fc.get("floor_warm_kernel_paced"), fc.get("floor_spawn_paced")
        L.append(_lat_row("floor: direct asyncio spawn `true`, paced", fs, fs,
                          f"{g(s, 'first_call', 'params', 'settle_s')} s untimed pause before each"))
        L.append(_lat_row("floor: warm kernel 1+1 (jupyter_client), paced", fk, fk, "alternating with the rows below"))
        L.append(_lat_row("**projecthub** `create_project`", fc.get("create")))
        L.append(_lat_row("**projecthub** new project's first `exec true`", fc.get("first_exec"), fs,
                          "a warm spare waits"))
        L.append(_lat_row("**projecthub** then its first `jupyter_execute` 1+1", fc.get("first_jupyter_after_exec"), fk))
        L.append(_lat_row("**projecthub** `jupyter_execute` 1+1 as a new project's first call",
                          fc.get("first_jupyter_first_call"), fk))
        L.append(_lat_row("spares without the Jupyter warm-up (as before): first `exec true`",
                          fc.get("cold_first_exec"), fs, "`PROJECTHUB_SPARE_JUPYTER=0`, a second server"))
        L.append(_lat_row("spares without the Jupyter warm-up: then its first `jupyter_execute`",
                          fc.get("cold_first_jupyter_after_exec"), fk))
        if "error" in fc:
            L.append(f"| projecthub | error: {fc['error'][:200]} | | | | |")
        L.append("")
        L.append(f"Waiting for a warm spare before each create (untimed): p50 {f(g(fc, 'spare_warm_wait', 'p50_ms'))} ms, "
                 f"max {f(g(fc, 'spare_warm_wait', 'max_ms'))} ms; samples that found none: "
                 f"{fc.get('samples_without_warm_spare')}.")
        L.append("")
    im = g(s, "idle_memory", "projecthub")
    if isinstance(im, dict):
        idle_s = g(s, "idle_memory", "params", "jupyter_idle_s")
        L.append(f"### 8. one project's memory through its life (MiB, RSS / PSS; Jupyter idle window {idle_s} s)")
        L.append("")
        L.append("| phase | processes | all | daemon | bwrap | zygote | kernels | other |")
        L.append("|---|---|---|---|---|---|---|---|")
        L.append(_mem_row("a spare waiting (Jupyter warmed up)", im.get("spare_waiting")))
        L.append(_mem_row("the new project after its first exec", im.get("after_first_exec")))
        L.append(_mem_row("right after 5 stateless `jupyter_execute` (pool refilled)", im.get("after_jupyter")))
        L.append(_mem_row(f"after the idle window (shrunk {f(im.get('shrunk_after_s'))} s, daemon re-executed "
                          f"{f(im.get('restarted_after_s'))} s after the last call)",
                          im.get("after_idle_window")))
        L.append(_mem_row("a project that never ran Jupyter (fresh daemon, no warm-up)", im.get("never_ran_jupyter")))
        if "error" in im:
            L.append(f"| error: {im['error'][:200]} | | | | | | | |")
        L.append("")
        L.append(f"The next `jupyter_execute` after the shrink: {f(im.get('jupyter_after_shrink_ms'))} ms (the pool "
                 "and the zygote start again).")
        L.append("")
    mp = g(s, "many_projects", "projecthub")
    if isinstance(mp, dict):
        p = g(s, "many_projects", "params") or {}
        L.append(f"### 9. {p.get('created')} created projects, {p.get('active')} of them active "
                 "(exec `true` raw HTTP c=1; memory via psutil)")
        L.append("")
        L.append(LAT_HEAD)
        one = mp.get("exec_one_project")
        L.append(_lat_row("exec in 1 running project (before and after the block below)", one, one,
                          f"before {f(g(one, 'before_p50_ms'))}, after {f(g(one, 'after_p50_ms'))}"))
        L.append(_lat_row(f"exec round-robin over the {p.get('active')} active projects", mp.get("exec_active"), one,
                          "each ran one stateless `jupyter_execute` (its zygote and pooled kernel are up)"))
        L.append(_lat_row("their first exec (starts each project), 4 at a time", g(mp, "activate", "first_exec")))
        L.append(_lat_row("their first `jupyter_execute` (no warm spare: cold)", g(mp, "activate", "first_jupyter")))
        if "error" in mp:
            L.append(f"| projecthub | error: {mp['error'][:200]} | | | | |")
        L.append("")
        for label, key in (("after the creates", "memory_created"), ("with the active ones running", "memory_active")):
            m = mp.get(key) or {}
            parts = [f"server {f(m.get('server_rss_mib'))} / {f(m.get('server_pss_mib'))}"]
            for kind in ("daemon", "bwrap", "zygote", "kernel", "other"):
                if m.get(f"{kind}_count"):
                    parts.append(f"{m[f'{kind}_count']} {kind} {f(m.get(f'{kind}_rss_mib'))} / "
                                 f"{f(m.get(f'{kind}_pss_mib'))}")
            L.append(f"Memory {label} (MiB RSS / PSS): " + ", ".join(parts)
                     + f"; total {f(m.get('total_rss_mib'))} / {f(m.get('total_pss_mib'))}.  ")
        L.append(f"Creating {p.get('created')} projects took {f(mp.get('create_all_s'))} s; starting the "
                 f"{p.get('active')} took {f(mp.get('activate_s'))} s.  Available memory "
                 f"{f(g(mp, 'machine', 'available_gib_before'))} GiB before, "
                 f"{f(g(mp, 'machine', 'available_gib_after'))} GiB with them running "
                 f"({f(g(mp, 'machine', 'total_gib'))} GiB total).")
        L.append("")
    return L
