"""Run projecthub's benchmarks: one command, its own servers, temp data dirs, loopback only.

    .venv/bin/python bench/run.py [--quick] [--only exec,jupyter,session,cold,stream,scale,first_call,idle_memory,many_projects]

Writes bench/results/<date>[-quick].json, PNG plots in bench/results/, and regenerates
the results section of bench/README.md.  Everything the run starts (projecthub servers
and their project daemons, Kernel Gateway, kernels) is stopped at the end, also on
failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shlex
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH, kdamond_cpu_s, log, machine, run_cleanups, versions  # noqa: E402
from scenarios import SCENARIOS as BASE_SCENARIOS, Ctx  # noqa: E402
import lifecycle  # noqa: E402
import files  # noqa: E402
import client_bench  # noqa: E402
import report  # noqa: E402

SCENARIOS = {**BASE_SCENARIOS, **lifecycle.SCENARIOS, **files.SCENARIOS, **client_bench.SCENARIOS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts (about a minute)")
    ap.add_argument("--only", default="", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    ap.add_argument("--no-readme", action="store_true",
                    help="do not touch bench/README.md (plots go to results/<out stem>-*.png)")
    ap.add_argument("--out", default="", help="results JSON path (default bench/results/<date>.json)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(unknown)}")

    def on_signal(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    atexit.register(run_cleanups)

    started = datetime.now(timezone.utc)
    command = ".venv/bin/python bench/run.py" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
    results: dict = {"meta": {"date": started.isoformat(timespec="seconds"), "command": command,
                              "quick": args.quick, "scenarios": names, "machine": machine(),
                              "versions": versions()},
                     "scenarios": {}}
    ctx = Ctx(quick=args.quick)
    t0 = time.monotonic()
    damon_at_start = kdamond_cpu_s()
    try:
        for name in names:
            log(f"== scenario {name}")
            s0 = time.monotonic()
            try:
                results["scenarios"][name] = SCENARIOS[name](ctx)
            except Exception as exc:  # a scenario that could not even set up
                import traceback
                log(f"scenario {name} FAILED: {exc!r}")
                results["scenarios"][name] = {"error": repr(exc), "trace": traceback.format_exc()[-3000:]}
            ctx.stop_tracked()
            time.sleep(2.0)   # let refills and stopped daemons settle before the next scenario
            results["scenarios"][name]["elapsed_s"] = round(time.monotonic() - s0, 1)
            log(f"== scenario {name} done in {time.monotonic() - s0:.1f} s")
    finally:
        ctx.stop_main()
        run_cleanups()
    results["meta"]["elapsed_s"] = round(time.monotonic() - t0, 1)
    results["meta"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    damon_at_end = kdamond_cpu_s()
    if damon_at_start is not None and damon_at_end is not None:
        results["meta"]["kdamond_cpu_s"] = round(damon_at_end - damon_at_start, 2)
    results["targets"] = report.targets(results)

    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    stem = started.strftime("%Y-%m-%d") + ("-quick" if args.quick else "")
    out = Path(args.out) if args.out else out_dir / f"{stem}.json"
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    log(f"results: {out}")
    # The README embeds results/<name>.png: a run that leaves the README alone draws its
    # plots under its own prefix, so the README's plots keep matching its Results.
    prefix = "quick-" if args.quick else ""
    if args.no_readme:
        prefix = out.stem + "-"
    plots = report.plots(results, out_dir, prefix=prefix)
    log(f"plots: {', '.join(p.name for p in plots)}")
    if not args.no_readme:
        report.update_readme(results, BENCH / "README.md", out, plots)
        log("README.md updated")
    print(report.markdown(results, out, plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
