"""The bad-key throttle: a client address that keeps presenting bad keys waits, before any work.

Each address gets ``limit_per_minute`` failed authentications free; beyond that, every
further request from it whose key is not already known good (``KeyResolver.cached``)
first waits 0.1 s, 0.2 s, 0.4 s ... up to 5 s, and only then reaches the store.  So the
wait is paid *before* the row read and hash, not after them: concurrency from one
address buys an attacker at most one resolution per connection per delay, and the
connection cap per address (``api/server.py``) bounds the connections.

The address is the TCP peer.  It is only replaced by an ``X-Forwarded-For`` value when
the operator names the proxies (``projecthub serve --forwarded-allow-ips``): otherwise
a client could pick a fresh "address" per request and never be throttled.

Good keys are never delayed by someone else's guessing: a key that verified seconds ago
is answered from memory first.  A good key that is *not* cached, presented from an
address that is over its budget, waits like any other (the server cannot tell it from a
guess without doing the work the throttle exists to defer).
"""

from __future__ import annotations

import time
from collections import deque

MAX_DELAY_S = 5.0
FIRST_DELAY_S = 0.1
# Bound memory under a spray of addresses: beyond this many tracked addresses, start over.
MAX_TRACKED = 10_000


class BadKeyThrottle:
    def __init__(self, limit_per_minute: int, clock=time.monotonic) -> None:
        self.limit = limit_per_minute
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _window(self, client: str, now: float) -> deque[float] | None:
        window = self._failures.get(client)
        if window is not None:
            while window and window[0] < now - 60:
                window.popleft()
            if not window:
                del self._failures[client]
                return None
        return window

    def penalty(self, client: str) -> float:
        """Seconds a request from ``client`` waits before its key is checked (0 within budget)."""
        window = self._window(client, self._clock())
        excess = 0 if window is None else len(window) - self.limit
        if excess < 0:
            return 0.0
        return min(FIRST_DELAY_S * 2 ** min(excess, 10), MAX_DELAY_S)

    def record_failure(self, client: str) -> None:
        now = self._clock()
        window = self._window(client, now)
        if window is None:
            if len(self._failures) >= MAX_TRACKED:
                self._failures = {}
            window = self._failures[client] = deque()
        window.append(now)
        if len(window) > self.limit + 64:  # the delay is capped long before: keep it short
            window.popleft()
