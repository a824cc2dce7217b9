"""Profile the exec hot path: py-spy on the server and on the project daemon while a
raw-HTTP `exec true` loop runs (c=1).  Writes results/profile-exec-{server,daemon}.svg.

    .venv/bin/python bench/profile_exec.py [--seconds 10] [--rate 500] [--raw] [--top 25]

``--raw`` records collapsed stacks instead (results/profile-exec-*.txt) and prints, per
process, the functions with the most inclusive and self samples: quicker to read than a
flame graph when comparing two versions of the hot path.

Not part of run.py (py-spy sampling slows what it watches); run it on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402

import common  # noqa: E402
import scenarios  # noqa: E402


def summarize_raw(path: Path, top: int) -> None:
    """Print the ``top`` frames by inclusive and by self samples of a collapsed-stack file."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    print(f"== {path.name}: {total} samples")
    for title, counter in (("inclusive", inclusive), ("self", own)):
        print(f"-- {title}")
        for frame, n in counter.most_common(top):
            print(f"{100 * n / max(total, 1):5.1f}%  {frame}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--raw", action="store_true", help="collapsed stacks + a printed summary")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    spy = os.path.join(os.path.dirname(common.PY), "py-spy")
    out = common.BENCH / "results"
    out.mkdir(exist_ok=True)
    suffix, fmt = (".txt", ["--format", "raw"]) if args.raw else (".svg", [])
    try:
        server = common.Server().start()
        pid = scenarios.new_project(server, "profile")
        assert server.process is not None
        # the project's own daemon (a server may also run pre-started spare projects)
        daemon = next(p for p in psutil.Process(server.process.pid).children(recursive=True)
                      if common.classify(" ".join(p.cmdline())) == "daemon" and pid in p.cmdline())
        targets = (("server", server.process.pid), ("daemon", daemon.pid))
        spies = [subprocess.Popen([spy, "record", "-o", str(out / f"profile-exec-{name}{suffix}"), "--pid",
                                   str(target), "-d", str(args.seconds + 2), "-r", str(args.rate),
                                   "--nonblocking", *fmt],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name, target in targets]
        time.sleep(1)
        result = asyncio.run(scenarios.raw_exec(server, pid, "true", 100_000, 1, args.seconds))
        print({k: v for k, v in result.items() if k != "samples_ms"})
        for s in spies:
            s.wait(60)
        for name, target in targets:
            print(name, "cpu", psutil.Process(target).cpu_times())
        if args.raw:
            for name, _ in targets:
                summarize_raw(out / f"profile-exec-{name}{suffix}", args.top)
    finally:
        common.run_cleanups()


if __name__ == "__main__":
    main()
