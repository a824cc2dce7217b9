"""Profile the exec hot path: py-spy on the server and on the project daemon while a
raw-HTTP `exec true` loop runs (c=1).  Writes results/profile-exec-{server,daemon}.svg.

    .venv/bin/python bench/profile_exec.py [--seconds 10] [--rate 500]

Not part of run.py (py-spy sampling slows what it watches); run it on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402

import common  # noqa: E402
import scenarios  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rate", type=int, default=500)
    args = ap.parse_args()
    spy = os.path.join(os.path.dirname(common.PY), "py-spy")
    out = common.BENCH / "results"
    out.mkdir(exist_ok=True)
    try:
        server = common.Server().start()
        pid = scenarios.new_project(server, "profile")
        assert server.process is not None
        daemon = next(p for p in psutil.Process(server.process.pid).children(recursive=True)
                      if common.classify(" ".join(p.cmdline())) == "daemon")
        spies = [subprocess.Popen([spy, "record", "-o", str(out / f"profile-exec-{name}.svg"), "--pid", str(target),
                                   "-d", str(args.seconds + 2), "-r", str(args.rate), "--nonblocking"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name, target in (("server", server.process.pid), ("daemon", daemon.pid))]
        time.sleep(1)
        result = asyncio.run(scenarios.raw_exec(server, pid, "true", 100_000, 1, args.seconds))
        print({k: v for k, v in result.items() if k != "samples_ms"})
        for s in spies:
            s.wait(60)
        for name, target in (("server", server.process.pid), ("daemon", daemon.pid)):
            print(name, "cpu", psutil.Process(target).cpu_times())
    finally:
        common.run_cleanups()


if __name__ == "__main__":
    main()
