"""projecthub.client's own cost (issue 18 item 4), in one run against the same server:

* exec ``true`` at c=1 through ``Client.exec`` (and ``AsyncClient.exec``) vs the same
  ``POST /api/v3/projects/{id}/exec`` from raw HTTP keep-alive (``RawHTTP``, asyncio streams)
  and from a bare ``httpx.Client``, taking turns call by call so the machine's drift hits all
  alike.  Target: the client adds <= 0.3 ms p50 over
  raw HTTP keep-alive.
* ``job.stream()`` of a job writing N bytes vs the SSE throughput row of the stream scenario
  (``_stream_once``: httpx stream + a minimal SSE parser), runs taking turns.  Target: >= 80 %.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from common import RawHTTP, log, merge, summarize
from scenarios import Ctx, _stream_once, attempt, new_project

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from projecthub.client import AsyncClient, Client  # noqa: E402


async def _make_async(url: str, key: str) -> AsyncClient:
    return AsyncClient(url, key)


def scenario_client(ctx: Ctx) -> dict[str, Any]:
    rounds = ctx.q(2, 6)
    n = ctx.q(200, 600) // rounds
    max_s = ctx.q(20, 60)
    # a job's output is stored in its project's disk image (256 MiB on bench servers): each run
    # gets a fresh project, else the runs' output fills the image and the stream ends early
    nbytes = ctx.q(20_000_000, 50_000_000)
    runs = ctx.q(1, 5)
    res: dict[str, Any] = {"params": {"n_true": n * rounds, "rounds": rounds, "stream_bytes": nbytes,
                                      "stream_runs": runs}}
    server = ctx.main()
    pid = new_project(server, "client bench")
    ctx.track(server, pid)
    path = f"/api/v3/projects/{pid}/exec"
    body = {"command": "true"}

    def exec_rows() -> dict[str, Any]:
        """Each round takes turns call by call (raw, httpx, Client, AsyncClient, raw, ...), so
        the machine's drift (other work on the 2 cores) hits all four alike; the asyncio calls
        are timed inside the loop (no run_until_complete in their time)."""
        parts: dict[str, list[dict[str, Any]]] = {}
        paired: dict[str, list[float]] = {}   # call i of X minus call i of raw HTTP (adjacent in time)
        raw = RawHTTP(server.port, server.api_key)
        http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.api_key}"},
                            timeout=60)
        client = Client(server.url, server.api_key)
        loop = asyncio.new_event_loop()
        aclient = loop.run_until_complete(_make_async(server.url, server.api_key))
        try:
            async def raw_call() -> float:
                t0 = time.perf_counter()
                status, out = await raw.post(path, body)
                t = time.perf_counter() - t0
                if status != 200 or out.get("exit_code") != 0:
                    raise RuntimeError(f"raw exec failed: {status} {str(out)[:200]}")
                return t

            async def async_client_call() -> float:
                t0 = time.perf_counter()
                result = await aclient.exec(pid, "true")
                t = time.perf_counter() - t0
                if result.exit_code != 0:
                    raise RuntimeError("async client exec failed")
                return t

            def httpx_call() -> float:
                t0 = time.perf_counter()
                r = http.post(path, json=body)
                out = r.json()
                t = time.perf_counter() - t0
                if r.status_code != 200 or out["exit_code"] != 0:
                    raise RuntimeError(f"httpx exec failed: {r.status_code} {r.text[:200]}")
                return t

            def client_call() -> float:
                t0 = time.perf_counter()
                result = client.exec(pid, "true")
                t = time.perf_counter() - t0
                if result.exit_code != 0:
                    raise RuntimeError("client exec failed")
                return t

            calls = {"raw_http": lambda: loop.run_until_complete(raw_call()), "httpx": httpx_call,
                     "client": client_call, "async_client": lambda: loop.run_until_complete(async_client_call())}
            for _ in range(20):   # warm every connection and code path
                for call in calls.values():
                    call()
            for r in range(rounds):
                log(f"  exec round {r + 1}/{rounds}")
                lat: dict[str, list[float]] = {k: [] for k in calls}
                end = time.monotonic() + max_s
                for i in range(n):
                    if time.monotonic() > end:
                        break
                    order = list(calls.items())
                    order = order[i % 4:] + order[:i % 4]   # nobody always goes first
                    for key, call in order:
                        lat[key].append(call())
                for key, values in lat.items():
                    parts.setdefault(key, []).append(summarize(values, sum(values), c=1))
                for key in ("client", "async_client", "httpx"):
                    paired.setdefault(key, []).extend(a - b for a, b in zip(lat[key], lat["raw_http"]))
        finally:
            loop.run_until_complete(raw.close())
            loop.run_until_complete(aclient.aclose())
            loop.close()
            http.close()
            client.close()
        out = {k: merge(v, c=1) for k, v in parts.items()}
        # the per-round p50 differences (same round, same machine state), and their median
        for other in ("raw_http", "httpx"):
            diffs = [c["p50_ms"] - o["p50_ms"] for c, o in zip(parts["client"], parts[other])]
            out[f"client_minus_{other}_p50_ms"] = round(statistics.median(diffs), 3)
            out[f"client_minus_{other}_p50_ms_rounds"] = [round(d, 3) for d in diffs]
        diffs = [c["p50_ms"] - o["p50_ms"] for c, o in zip(parts["async_client"], parts["raw_http"])]
        out["async_client_minus_raw_http_p50_ms"] = round(statistics.median(diffs), 3)
        # the target's number: the median of paired differences (each client call against the
        # raw call next to it), which the drift between calls hardly touches
        for key, values in paired.items():
            out[f"paired_{key}_minus_raw_http_median_ms"] = round(statistics.median(values) * 1000, 3)
        return out
    attempt(res, "exec_true_c1", exec_rows)

    def stream_rows() -> dict[str, Any]:
        sse: list[dict[str, Any]] = []
        ours: list[dict[str, Any]] = []
        cmd = f"head -c {nbytes} /dev/zero | tr '\\0' x"
        with Client(server.url, server.api_key, timeout=120) as client:
            for r in range(runs):
                log(f"  stream run {r + 1}/{runs}")
                run_pid = new_project(server, f"client stream {r}")
                ctx.track(server, run_pid)
                sse.append(asyncio.run(_stream_once(server, run_pid, nbytes)))
                t0 = time.perf_counter()
                job = client.start(run_pid, cmd, timeout=600)
                got, first = 0, None
                for chunk in job.stream():
                    got += len(chunk.data)
                    if first is None:
                        first = time.perf_counter() - t0
                wall = time.perf_counter() - t0
                if got != nbytes or job.result is None or job.result.exit_code != 0:
                    raise RuntimeError(f"client streamed {got} of {nbytes} bytes")
                ours.append({"mb_per_s": round(nbytes / wall / 1e6, 2), "ttfb_ms": round((first or 0) * 1000, 3),
                             "wall_s": round(wall, 3)})
        sse_mbs = statistics.median(r["mb_per_s"] for r in sse)
        our_mbs = statistics.median(r["mb_per_s"] for r in ours)
        return {"sse_row": {"runs": sse, "mb_per_s": sse_mbs},
                "client_stream": {"runs": ours, "mb_per_s": our_mbs},
                "ratio": round(our_mbs / sse_mbs, 3) if sse_mbs else None}
    attempt(res, "stream", stream_rows)
    return res


SCENARIOS = {"client": scenario_client}
