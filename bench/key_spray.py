"""Key-spray bench: how much do clients spraying bad secrets slow down a legitimate user?

Issue 14 item 10: each bad secret for a real key id used to cost 1000 HMAC rounds on the
hub's single store thread, and X-Forwarded-For was trusted from loopback, so 40 sprayers
with spoofed addresses pushed a legitimate user's median from 11 ms to 849 ms.

This starts a real server (or uses --url), makes an account, and measures the legitimate
user's latency (GET /api/v3/projects: a store read, so it queues behind key checks on the
store thread) alone, then while N sprayers run in a separate process, each sending bad
secrets for the legitimate key's row id as fast as the server answers.  Sprayers come from
distinct loopback source addresses (127.0.0.2...) and add a random spoofed
X-Forwarded-For, so on a server that trusts that header they escape the per-address
throttle; on one that does not, each address gets its free allowance (30 a minute), then
waits before its key is even looked at.

    .venv/bin/python bench/key_spray.py --sprayers 40 --seconds 10

Prints one JSON object: baseline and under-spray p50/p90 (ms), and the sprayers' attempts
per second.  Everything binds to loopback; every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import secrets
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def forged(key: str) -> str:
    """Same row id (last 6 characters), random secret part."""
    alphabet = string.ascii_letters + string.digits
    return key[:3] + "".join(secrets.choice(alphabet) for _ in range(len(key) - 9)) + key[-6:]


def _spoofed() -> str:
    return ".".join(str(random.randint(1, 254)) for _ in range(4))


async def _rotating_sprayer(url: str, key: str, index: int, deadline: float, counter: list[int]) -> None:
    """A fresh loopback source address per request, like a botnet or an IPv6 /64 spray:
    no per-address throttle ever applies, so this measures what a key check costs."""
    host, port = url.removeprefix("http://").split(":")
    n = index * 100_000
    while time.monotonic() < deadline:
        n += 1
        source = f"127.{1 + n // 65000 % 250}.{n // 250 % 250}.{2 + n % 250}"
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port), local_addr=(source, 0)), 5)
            writer.write((f"GET /api/v3/projects HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                          f"Authorization: Bearer {forged(key)}\r\nX-Forwarded-For: {_spoofed()}\r\n\r\n"
                          ).encode())
            await asyncio.wait_for(reader.read(), max(0.1, deadline - time.monotonic()))
            writer.close()
            counter[0] += 1
        except (OSError, asyncio.TimeoutError):
            pass


async def _sprayer(url: str, key: str, index: int, deadline: float, counter: list[int],
                   distinct_sources: bool | str) -> None:
    if distinct_sources == "rotate":
        return await _rotating_sprayer(url, key, index, deadline, counter)
    transport = httpx.AsyncHTTPTransport(local_address=f"127.0.{index // 250}.{2 + index % 250}"
                                         if distinct_sources else None)
    async with httpx.AsyncClient(transport=transport, timeout=30) as client:
        while time.monotonic() < deadline:
            try:
                await client.get(url + "/api/v3/projects",
                                 headers={"Authorization": f"Bearer {forged(key)}",
                                          "X-Forwarded-For": _spoofed()},
                                 timeout=max(0.1, deadline - time.monotonic()))
                counter[0] += 1
            except httpx.HTTPError:
                pass


def _spray_process(url: str, key: str, sprayers: int, seconds: float, distinct_sources: bool | str,
                   result: Any) -> None:
    async def main() -> None:
        counter = [0]
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(_sprayer(url, key, i, deadline, counter, distinct_sources)
                               for i in range(sprayers)))
        result.value = counter[0]
    asyncio.run(main())


def _legit(url: str, key: str, seconds: float) -> list[float]:
    samples: list[float] = []
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            r = client.get(url + "/api/v3/projects")
            samples.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
            time.sleep(0.01)  # a user, not a load generator
    return samples


def _stats(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2),
            "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 2), "max_ms": round(ms[-1], 2)}


def measure(url: str, key: str, sprayers: int = 40, seconds: float = 8.0,
            distinct_sources: bool | str = True) -> dict[str, Any]:
    """Baseline, then under spray (sprayers in a child process, so the client side of the
    spray does not share an interpreter with the measurement)."""
    _legit(url, key, 1.0)  # warm: key cached, connections open
    baseline = _stats(_legit(url, key, seconds / 2))
    ctx = multiprocessing.get_context("spawn")
    attempts = ctx.Value("q", 0)
    proc = ctx.Process(target=_spray_process, args=(url, key, sprayers, seconds + 1.0, distinct_sources,
                                                    attempts))
    proc.start()
    try:
        time.sleep(1.0)  # let the spray ramp up
        loaded = _stats(_legit(url, key, seconds - 1.0))
    finally:
        proc.join(seconds + 30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    return {"sprayers": sprayers, "seconds": seconds, "distinct_sources": distinct_sources,
            "baseline": baseline, "under_spray": loaded,
            "spray_attempts_per_s": round(attempts.value / (seconds + 1.0), 1),
            "slowdown_p50": round(loaded["p50_ms"] / baseline["p50_ms"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sprayers", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sources", choices=["one", "per-sprayer", "rotate"], default="per-sprayer",
                        help="sprayers' source addresses: all 127.0.0.1; one loopback address each "
                             "(default); or a fresh one per request (no per-address throttle applies)")
    parser.add_argument("--url", help="an already running server (then --key is needed)")
    parser.add_argument("--key", help="a valid API key on --url")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="extra `projecthub serve` argument for the server started here")
    args = parser.parse_args()
    sources = {"one": False, "per-sprayer": True, "rotate": "rotate"}[args.sources]
    if args.url:
        print(json.dumps(measure(args.url, args.key, args.sprayers, args.seconds, sources)))
        return
    from tests.server import Server
    with tempfile.TemporaryDirectory(prefix="keyspray") as tmp:
        server = Server(Path(tmp), extra_args=["--spare-projects", "0", *args.serve_arg]).start()
        try:
            account = server.new_account("Legit")
            out = measure(server.url, account.api_key, args.sprayers, args.seconds, sources)
        finally:
            server.stop()
            server.cli("stop-all")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
