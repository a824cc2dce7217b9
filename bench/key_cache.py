"""Micro-benchmark: a cached API key's resolution on the event loop (``KeyResolver.peek``)
and a full ``resolve`` cache hit, in-process against a real SQLite store in a temp dir.

    .venv/bin/python bench/key_cache.py [--n 200000] [--rounds 5]

Prints the best and median per-call time in microseconds over ``--rounds`` rounds (the
machine is shared: the best round is the least disturbed).  Not run by ``run.py``; used to
check that noticing revocations made by other processes (``Store.revocation_mark``) keeps
the hot path cheap.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from projecthub.auth.resolve import KeyResolver  # noqa: E402
from projecthub.store import Store  # noqa: E402


def _per_call_us(fn, key: str, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn(key)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.for_data_dir(tmp)
        store.migrate()
        _, secret = store.create_api_key(store.create_account())
        resolver = KeyResolver(store, cache_ttl=3600, touch_interval=3600)
        assert resolver.resolve(secret) is not None
        assert resolver.peek(secret) is not None
        for name, fn in (("peek (cached)", resolver.peek), ("resolve (cache hit)", resolver.resolve)):
            rounds = [_per_call_us(fn, secret, args.n) for _ in range(args.rounds)]
            print(f"{name:22s} best {min(rounds):6.3f} us  median {statistics.median(rounds):6.3f} us")
        store.close()


if __name__ == "__main__":
    main()
