"""Spawn floor: a stdlib-only asyncio loop that spawns a command N times.

    python spawner.py '<json list of cases>'

Each case: {"mode": "lat", "argv": [...], "n": N, "c": C, "max_s": S}
         | {"mode": "burst", "argv": [...], "n": N}              (N at once: time to start all, all done)
         | {"mode": "stream", "argv": [...]}                     (read stdout: bytes/s, time to first byte)
Prints one JSON list of results on stdout.  It imports nothing outside the standard
library, so ``floors.py`` can also run its source with ``python -c`` inside a project
sandbox (where the bench directory is not mounted).
"""

import asyncio
import json
import os
import sys
import time

PIPE = asyncio.subprocess.PIPE


async def one(argv):
    proc = await asyncio.create_subprocess_exec(*argv, stdout=PIPE, stderr=PIPE, stdin=asyncio.subprocess.DEVNULL)
    out, err = await proc.communicate()
    return len(out)


async def lat(case):
    argv, n, c = case["argv"], case["n"], case["c"]
    end = time.monotonic() + case.get("max_s", 60)
    samples = []
    it = iter(range(n))

    async def worker():
        for _ in it:
            if time.monotonic() > end:
                return
            t0 = time.perf_counter()
            await one(argv)
            samples.append(time.perf_counter() - t0)

    for _ in range(min(20, n)):   # warm-up
        await one(argv)
    cpu0 = os.times()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(c)))
    cpu1 = os.times()
    return {"samples_s": samples, "wall_s": time.perf_counter() - t0,
            "cpu_self_s": cpu1.user + cpu1.system - cpu0.user - cpu0.system,
            "cpu_children_s": (cpu1.children_user + cpu1.children_system
                               - cpu0.children_user - cpu0.children_system)}


async def burst(case):
    argv, n = case["argv"], case["n"]
    t0 = time.perf_counter()
    procs = []
    for _ in range(n):
        procs.append(await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                          stdout=asyncio.subprocess.DEVNULL,
                                                          stderr=asyncio.subprocess.DEVNULL))
    started = time.perf_counter() - t0
    await asyncio.gather(*(p.wait() for p in procs))
    return {"started_s": started, "done_s": time.perf_counter() - t0}


async def stream(case):
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(*case["argv"], stdout=PIPE, stdin=asyncio.subprocess.DEVNULL)
    first = None
    total = 0
    while True:
        chunk = await proc.stdout.read(1 << 16)
        if not chunk:
            break
        if first is None:
            first = time.perf_counter() - t0
        total += len(chunk)
    await proc.wait()
    return {"bytes": total, "wall_s": time.perf_counter() - t0, "ttfb_s": first}


async def main(cases):
    out = []
    for case in cases:
        out.append(await {"lat": lat, "burst": burst, "stream": stream}[case["mode"]](case))
    return out


if __name__ == "__main__":
    results = asyncio.run(main(json.loads(sys.argv[1])))
    sys.stdout.write(json.dumps({"uid": os.getuid(), "results": results}))
