"""Micro-benchmark of projecthub's Jupyter layer against jupyter_client baselines.

    .venv/bin/python bench/jupyter_micro.py [--n 200] [--starts 8] [--transport ipc|tcp|both]

Measures `1+1` round trips (ms, perf_counter around the whole call):

* direct      : stock jupyter_client (AsyncKernelManager + execute_interactive) on an
                already-running kernel - the floor a Jupyter client library gives;
* session     : JupyterService.execute_in_session on a persistent kernel;
* stateless   : JupyterService.jupyter_execute with a warm pooled kernel ready (the
                pool refill is allowed to finish between calls, untimed);
* stateless back-to-back : same, no pause (the pool may be empty: shows refill limits);
* 100 sequential stateless : the issue's target, 100 calls in a row after one warm call,
                with the kernel zygote (pool refills fork pre-imported kernels) and
                without it (``jupyter_zygote: False``: every refill is a full launch);
* memory      : PSS of the zygote and of one idle forked kernel (copy-on-write sharing);
* cold        : a kernel per call, stock jupyter_client (start_kernel + wait_for_ready +
                execute + shutdown_kernel(now=True));
* cold (ours) : JupyterService with pool size 0 (launch + kernel_info + warm-up + execute + kill).

The machine is shared and noisy: compare numbers from the same run only.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jupyter_client.manager import AsyncKernelManager  # noqa: E402

from projecthub.project.context import ProjectContext  # noqa: E402
from projecthub.project.jupyter import JupyterService  # noqa: E402
from projecthub.project.tracking_fallback import MarkerTracker  # noqa: E402


def summary(name: str, samples_s: list[float]) -> str:
    ms = sorted(x * 1000 for x in samples_s)
    n = len(ms)

    def pct(p: float) -> float:
        return ms[min(n - 1, int(p * n))]

    return (f"{name:<44} n={n:<4} p50={statistics.median(ms):7.2f}  p90={pct(0.9):7.2f}  "
            f"p99={pct(0.99):7.2f}  min={ms[0]:7.2f} ms")


async def timed(n: int, call: Callable[[], Awaitable[object]],
                between: Callable[[], Awaitable[None]] | None = None) -> list[float]:
    out = []
    for _ in range(n):
        if between is not None:
            await between()
        t0 = time.perf_counter()
        await call()
        out.append(time.perf_counter() - t0)
    return out


def make_ctx(transport: str, **settings: object) -> ProjectContext:
    root = Path(tempfile.mkdtemp(prefix="jbench"))
    for d in ("home", "state", "tmp"):
        (root / d).mkdir()
    return ProjectContext(project_id="bench", home=root / "home", state_dir=root / "state",
                          tmp_dir=root / "tmp", tracker=MarkerTracker(subreaper=False),
                          base_env=ProjectContext.default_base_env("bench", root / "home"),
                          settings={"jupyter_transport": transport, **settings})


async def bench_direct(n: int) -> list[str]:
    km = AsyncKernelManager(kernel_name="python3")
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    try:
        for _ in range(20):
            await kc.execute_interactive("1+1", output_hook=lambda m: None)
        samples = await timed(n, lambda: kc.execute_interactive("1+1", output_hook=lambda m: None))
        return [summary("direct jupyter_client, running kernel (tcp)", samples)]
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


async def bench_cold_stock(n: int) -> list[str]:
    async def once() -> None:
        km = AsyncKernelManager(kernel_name="python3")
        await km.start_kernel()
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)
        await kc.execute_interactive("1+1", output_hook=lambda m: None)
        kc.stop_channels()
        await km.shutdown_kernel(now=True)

    return [summary("cold: stock kernel per call (start..kill)", await timed(n, once))]


async def bench_service(transport: str, n: int, starts: int) -> list[str]:
    lines = []
    svc = JupyterService(make_ctx(transport), pool_size=1)
    await svc.start()
    try:
        sid = (await svc.create_session({}))["session_id"]
        call_session = lambda: svc.execute_in_session(sid, {"code": "1+1"})  # noqa: E731
        await timed(20, call_session)
        lines.append(summary(f"session execute ({transport})", await timed(n, call_session)))
        await svc.delete_session(sid)

        call = lambda: svc.jupyter_execute({"input": "1+1", "kernel": "python3"})  # noqa: E731
        await call()

        async def pool_ready() -> None:
            while not svc.pool.idle_kernels():
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)   # let the just-killed kernel's cleanup finish

        m = max(10, n // 5)
        lines.append(summary(f"stateless, warm pool hit ({transport})", await timed(m, call, pool_ready)))
        lines.append(summary(f"stateless back-to-back ({transport})", await timed(m, call)))
    finally:
        await svc.close()

    for zygote, size in ((True, 1), (True, 2), (False, 1)):
        svc = JupyterService(make_ctx(transport, jupyter_zygote=zygote), pool_size=size)
        await svc.start()
        try:
            call = lambda: svc.jupyter_execute({"input": "1+1", "kernel": "python3"})  # noqa: E731
            if zygote:
                await svc.launcher.zygotes.ready(svc.catalog.get("python3"))
            await call()
            while not svc.pool.idle_kernels():
                await asyncio.sleep(0.01)
            label = f"{'zygote' if zygote else 'no zygote'}, pool {size}"
            lines.append(summary(f"100 sequential stateless, {label} ({transport})",
                                 await timed(100, call)))
            if zygote and size == 1:
                while not svc.pool.idle_kernels():
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.5)
                lines.append(memory_line(svc))
        finally:
            await svc.close()

    cold = JupyterService(make_ctx(transport), pool_size=0)
    await cold.start()
    try:
        call = lambda: cold.jupyter_execute({"input": "1+1", "kernel": "python3"})  # noqa: E731
        lines.append(summary(f"cold: ours, kernel per call ({transport})", await timed(starts, call)))
    finally:
        await cold.close()
    return lines


def pss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def memory_line(svc: JupyterService) -> str:
    zygotes = svc.launcher.zygotes.zygotes() if svc.launcher.zygotes else []
    kernels = svc.pool.idle_kernels()
    z = ", ".join(f"{pss_mib(x.pid):.1f}" for x in zygotes if x.pid)
    k = ", ".join(f"{pss_mib(x.pid):.1f}" for x in kernels)
    return f"{'memory: PSS MiB zygote / idle forked kernel':<44} zygote={z}  kernel={k}"


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--starts", type=int, default=8)
    ap.add_argument("--transport", default="both", choices=["ipc", "tcp", "both"])
    args = ap.parse_args()
    transports = ["ipc", "tcp"] if args.transport == "both" else [args.transport]
    lines = await bench_direct(args.n)
    for t in transports:
        lines += await bench_service(t, args.n, args.starts)
    lines += await bench_cold_stock(args.starts)
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
