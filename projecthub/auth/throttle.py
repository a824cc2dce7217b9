"""The bad-key throttle: an address that keeps presenting bad keys waits, and cannot buy work.

Each client address gets ``limit_per_minute`` failed authentications free; each further
failure is answered only after 0.1 s, 0.2 s, 0.4 s ... up to 5 s (``penalty``), so one
connection cannot guess faster than that, and the per-address connection cap
(``--max-connections-per-ip``) bounds the connections.  What a failure costs the server
before that wait is one indexed row read and one HMAC round (``auth/keys.py``,
``auth/resolve.py``); the only expensive check left, a legacy 1000-round hash not yet
upgraded, is paid only *after* the address has waited out its penalty
(``api/requests.authenticate_key``).

Good keys are never delayed by someone else's guessing, not even from the same address
(a NAT): the cheap check answers them before any wait.

The address is the TCP peer.  It is only replaced by an ``X-Forwarded-For`` value when
the operator names the proxies (``projecthub serve --forwarded-allow-ips``): otherwise
a client could pick a fresh "address" per request and never be throttled.
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
        """Seconds ``client`` waits now: 0 within its allowance, then doubling per failure."""
        window = self._window(client, self._clock())
        excess = 0 if window is None else len(window) - self.limit
        if excess <= 0:
            return 0.0
        return min(FIRST_DELAY_S * 2 ** min(excess - 1, 10), MAX_DELAY_S)

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
