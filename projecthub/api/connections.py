"""Connection-level defences of ``projecthub serve`` against slow and many connections.

uvicorn bounds idle keep-alive connections (``--keep-alive``) but nothing else: a client that
sends half a request line and then waits holds its socket (and a file descriptor) forever, so
20 k such sockets made the hub run out of descriptors and stop answering.  This module owns the
fix, as a subclass of uvicorn's httptools protocol (``Config(http=...)``):

* **Header timeout**: a request whose headers are not complete ``header_timeout`` seconds after
  it started (the connection opened, or its first byte arrived on a kept-alive connection) is
  answered 408 and closed.  Headers are also capped in size (431), since neither httptools nor
  uvicorn bounds them.
* **Body timeout**: a request body that stalls (no byte for ``body_timeout`` seconds) or trickles
  (slower than ``MIN_BODY_RATE`` after the first ``body_timeout`` seconds) is answered 408 and
  closed.  Only *incomplete requests* are timed: a response in progress (SSE, a blocking exec
  of minutes) is never touched, and idle keep-alive stays governed by ``--keep-alive``.
* **Caps**: at most ``max_connections`` open connections, and ``max_per_ip`` per client address
  (IPv6 by /64).  Over the per-address cap a new connection gets a 503 and is closed; at the
  global cap the oldest connection still waiting for its headers, from the address holding the
  most connections, is closed to make room (so a flood of slow sockets from many addresses cannot
  lock out a client that sends a whole request),
  and only when none is waiting does the new one get a 503.
* **Bounded logging**: the module's own lines and uvicorn's / asyncio's (``Invalid HTTP request
  received``, ``socket.accept() out of system resource``) pass a token bucket; a line that gets
  through after a burst says how many were suppressed.

Cost on the hot path: no timer per request.  One sweeper timer per server ticks while some
request is incomplete; a request adds and removes its protocol from two dicts (insertion order
is start order, so the sweep stops at the first request that is still in time).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("projecthub.connections")

# A body slower than this (bytes/s, averaged since its headers) is closed once it is older than
# body_timeout: Apache mod_reqtimeout's MinRate idea; a stall-only timeout lets 1 byte / 29 s through.
MIN_BODY_RATE = 1024
# Request line + headers; nginx's large_client_header_buffers default is 4 x 8 KiB.
MAX_HEADER_BYTES = 64 * 1024

# Connections one sweep closes before it yields the loop (closing thousands at once would stall
# the legitimate requests in between); the rest go 10 ms later.
SWEEP_BATCH = 256

_IDLE, _HEADERS, _BODY = 0, 1, 2


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the soft limit now in force.

    Every connection costs the hub a descriptor; the default soft limit (often 1024) is what
    made a few thousand slow sockets enough to make accept() fail with EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def default_max_connections(fd_limit: int) -> int:
    """Leave a quarter of the descriptors (at least 256) to the hub itself: its store, daemon
    sockets, subprocess pipes.  Staying under the fd limit keeps accept() from ever failing,
    which would make asyncio stop accepting anyone for a second."""
    return max(64, min(fd_limit - max(256, fd_limit // 4), 16384))


@dataclass
class ConnectionLimits:
    """The knobs; 0 disables a cap or a timeout.  ``projecthub serve`` fills them from its
    flags and ``$PROJECTHUB_*`` variables (``max_connections`` from the fd limit by default)."""

    max_connections: int = 4096
    max_per_ip: int = 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    # --forwarded-allow-ips: behind a proxy every connection comes from the proxy, so the
    # per-address cap would cap everyone; trusted proxies count only against the global cap.
    trusted_proxies: str | None = None

    def validate(self) -> None:
        for name in ("max_connections", "max_per_ip", "header_timeout", "body_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0")


class RateLimitFilter(logging.Filter):
    """Token bucket for one logger: ``burst`` lines at once, then ``per_second``.  The first line
    let through after some were dropped carries their count."""

    def __init__(self, per_second: float = 2.0, burst: int = 10) -> None:
        super().__init__()
        self.per_second = per_second
        self.burst = burst
        self.tokens = float(burst)
        self.last = time.monotonic()
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.per_second)
        self.last = now
        if self.tokens < 1:
            self.suppressed += 1
            return False
        self.tokens -= 1
        if self.suppressed:
            record.msg = f"{record.getMessage()} [{self.suppressed} similar log lines suppressed]"
            record.args = None
            self.suppressed = 0
        return True


# Loggers an unauthenticated client can make write one line per connection.
FLOODABLE_LOGGERS = ("projecthub.connections", "uvicorn.error", "uvicorn", "asyncio")


def install_log_limits(per_second: float = 2.0, burst: int = 10) -> None:
    """One bucket per floodable logger (idempotent)."""
    for name in FLOODABLE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimitFilter) for f in logger.filters):
            logger.addFilter(RateLimitFilter(per_second, burst))


def _response(status: str, text: str) -> bytes:
    body = text.encode()
    return (f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


BUSY = _response("503 Service Unavailable", "Too many connections from this address.\n")
FULL = _response("503 Service Unavailable", "Too many connections.\n")
TIMEOUT = _response("408 Request Timeout", "Request not received in time.\n")
TOO_LARGE = _response("431 Request Header Fields Too Large", "Request headers too large.\n")


def peer_key(transport: asyncio.BaseTransport) -> str:
    """The client address the per-address cap counts: the IP, or its /64 for IPv6 (one host
    usually owns a whole /64)."""
    peer = transport.get_extra_info("peername")
    if not isinstance(peer, tuple) or not peer:
        return "unix"
    host = str(peer[0])
    if ":" in host:
        try:
            addr = ipaddress.IPv6Address(host.split("%", 1)[0])
            if addr.ipv4_mapped is not None:
                return str(addr.ipv4_mapped)
            return str(ipaddress.IPv6Network((addr, 64), strict=False))
        except ValueError:
            return host
    return host


def _parse_trusted(value: str | None) -> tuple[bool, set[str], list[Any]]:
    """uvicorn's --forwarded-allow-ips syntax: '*', or comma-separated addresses and networks
    (other entries, like a unix socket literal, exempt nothing here)."""
    addrs: set[str] = set()
    nets: list[Any] = []
    for item in (value or "").split(","):
        item = item.strip()
        if item == "*":
            return True, set(), []
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError:
            continue
        if net.version == 6 and net.prefixlen >= 64:   # peer_key counts IPv6 by /64
            addrs.add(str(net.supernet(new_prefix=64)))
        elif net.num_addresses == 1:
            addrs.add(str(net.network_address))
        else:
            nets.append(net)
    return False, addrs, nets


class ConnectionGuard:
    """Counts and timers shared by every connection of one server (one event loop)."""

    def __init__(self, limits: ConnectionLimits) -> None:
        limits.validate()
        self.limits = limits
        self._exempt_all, self._exempt_addrs, self._exempt_nets = _parse_trusted(limits.trusted_proxies)
        self.open = 0
        self.per_peer: dict[str, int] = {}
        # protocol -> None, in the order their current request started
        self.awaiting_headers: dict[GuardedHttpToolsProtocol, None] = {}
        self.awaiting_body: dict[GuardedHttpToolsProtocol, None] = {}
        self.stats = {"refused_per_ip": 0, "refused_full": 0, "evicted": 0,
                      "header_timeouts": 0, "body_timeouts": 0, "headers_too_large": 0}
        self._sweeper: asyncio.TimerHandle | None = None
        timeouts = [t for t in (limits.header_timeout, limits.body_timeout) if t > 0]
        self.tick = max(0.05, min([1.0] + [t / 4 for t in timeouts]))

    # ---------------------------------------------------------------- admission

    def admit(self, proto: GuardedHttpToolsProtocol, key: str) -> bytes | None:
        """Count ``proto`` in, or return the response that refuses it."""
        limits = self.limits
        n = self.per_peer.get(key, 0)
        if limits.max_per_ip and n >= limits.max_per_ip and not self._exempt(key):
            self.stats["refused_per_ip"] += 1
            log.warning("refused a connection from %s: %d open from this address (--max-connections-per-ip)",
                        key, n)
            return BUSY
        if limits.max_connections and self.open >= limits.max_connections:
            if not self._evict_oldest_waiting():
                self.stats["refused_full"] += 1
                log.warning("refused a connection from %s: %d connections open (--max-connections)",
                            key, self.open)
                return FULL
        self.open += 1
        self.per_peer[key] = n + 1
        proto._peer = key
        return None

    def _exempt(self, key: str) -> bool:
        if self._exempt_all or key in self._exempt_addrs:
            return True
        if self._exempt_nets:
            try:
                addr = ipaddress.ip_network(key, strict=False)
            except ValueError:
                return False
            return any(addr.version == net.version and addr.subnet_of(net) for net in self._exempt_nets)
        return False

    def _evict_oldest_waiting(self) -> bool:
        """Close the oldest connection still waiting for its request headers among those of the
        address holding the most connections.

        Not simply the oldest: a client whose whole request is already in its socket buffer still
        counts as waiting until the loop reads it, and a burst of accepts can fill the cap before
        that read (a legitimate connection opened just before a flood was the oldest waiting one,
        and was closed).  Taking from the heaviest address makes the flood pay for itself."""
        heaviest = max(self.per_peer.values(), default=0)
        victim, victim_load = None, 0
        for proto in self.awaiting_headers:
            if proto._response_in_progress():
                continue
            load = self.per_peer.get(proto._peer or "", 0)
            if load > victim_load:
                victim, victim_load = proto, load
                if load >= heaviest:
                    break   # oldest waiting connection of a heaviest address
        if victim is not None:
            self.stats["evicted"] += 1
            log.warning("connection limit reached: closed a connection from %s that had not sent "
                        "its request headers, to admit a new one", victim._peer)
            victim._close_with(None)
            return True
        return False

    def release(self, proto: GuardedHttpToolsProtocol) -> None:
        """Uncount ``proto`` (idempotent: timeouts release before connection_lost runs)."""
        key = proto._peer
        if key is None:
            return
        proto._peer = None
        self.awaiting_headers.pop(proto, None)
        self.awaiting_body.pop(proto, None)
        self.open -= 1
        n = self.per_peer.get(key, 1) - 1
        if n > 0:
            self.per_peer[key] = n
        else:
            self.per_peer.pop(key, None)

    # ---------------------------------------------------------------- timing

    def wait_headers(self, proto: GuardedHttpToolsProtocol, now: float) -> None:
        proto._phase = _HEADERS
        proto._since = now
        proto._header_bytes = 0
        if self.limits.header_timeout:
            self.awaiting_headers[proto] = None
            self._arm(proto.loop)

    def wait_body(self, proto: GuardedHttpToolsProtocol, now: float) -> None:
        self.awaiting_headers.pop(proto, None)
        proto._phase = _BODY
        proto._since = proto._body_start = now
        proto._body_bytes = 0
        if self.limits.body_timeout:
            self.awaiting_body[proto] = None
            self._arm(proto.loop)

    def _arm(self, loop: asyncio.AbstractEventLoop, delay: float | None = None) -> None:
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.tick if delay is None else delay, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = None
        now = loop.time()
        expired_headers = expired_bodies = 0
        budget = SWEEP_BATCH
        if self.limits.header_timeout:
            deadline = now - self.limits.header_timeout
            while self.awaiting_headers and budget:
                proto = next(iter(self.awaiting_headers))
                if proto._since > deadline:
                    break   # started in time; every later entry started later still
                if proto._response_in_progress():
                    # a pipelined request behind a response still streaming: its clock starts
                    # when it can be read; move it to the back to keep the order by start time
                    del self.awaiting_headers[proto]
                    proto._since = now
                    self.awaiting_headers[proto] = None
                    continue
                expired_headers += 1
                budget -= 1
                proto._close_with(TIMEOUT)
        if self.limits.body_timeout and self.awaiting_body:
            stall = self.limits.body_timeout
            for proto in list(self.awaiting_body):
                if not budget:
                    break
                cycle = proto.cycle
                if ((proto.flow is not None and proto.flow.read_paused)
                        or (cycle is not None and cycle.waiting_for_100_continue)):
                    # the app is not reading yet (or has not sent 100 Continue): not the client's fault
                    proto._since = proto._body_start = now
                    continue
                too_slow = (now - proto._body_start > stall + proto._body_bytes / MIN_BODY_RATE)
                if now - proto._since > stall or too_slow:
                    expired_bodies += 1
                    budget -= 1
                    proto._close_with(TIMEOUT)
        if expired_headers:
            self.stats["header_timeouts"] += expired_headers
            log.warning("closed %d connections whose request headers were not complete within %g s "
                        "(--header-timeout)", expired_headers, self.limits.header_timeout)
        if expired_bodies:
            self.stats["body_timeouts"] += expired_bodies
            log.warning("closed %d connections whose request body stalled for %g s (--body-timeout)",
                        expired_bodies, self.limits.body_timeout)
        if self.awaiting_headers or self.awaiting_body:
            self._arm(loop, None if budget else 0.01)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, counted and timed by the class's ``guard``.

    Use :func:`protocol_class` to bind a guard; uvicorn instantiates one per connection."""

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._peer: str | None = None
        self._phase = _IDLE
        self._since = 0.0
        self._body_start = 0.0
        self._header_bytes = 0
        self._body_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        refusal = self.guard.admit(self, peer_key(transport))
        if refusal is not None:
            # not registered with uvicorn (no keep-alive timer, no shutdown bookkeeping)
            self.transport = transport
            transport.write(refusal)
            transport.close()
            return
        super().connection_made(transport)
        self.guard.wait_headers(self, self.loop.time())

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Still inside the headers after this chunk: count it (a chunk that completed them is
        # not counted, so a large body sent along with the headers is not mistaken for them).
        if self._phase == _HEADERS and self._peer is not None:
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self.guard.stats["headers_too_large"] += 1
                log.warning("closed a connection from %s: request headers over %d bytes",
                            self._peer, MAX_HEADER_BYTES)
                self._close_with(TOO_LARGE)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase != _HEADERS and self._peer is not None:   # next request on a kept-alive connection
            self.guard.wait_headers(self, self.loop.time())

    def on_headers_complete(self) -> None:
        if self._peer is not None:
            self.guard.wait_body(self, self.loop.time())
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._since = self.loop.time()
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        # before super(): it returns early when the response was already sent
        self._phase = _IDLE
        self.guard.awaiting_body.pop(self, None)
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        # The connection leaves this protocol (and its connection_lost) for the websocket one.
        # It stays counted against the caps (an open WebSocket holds a descriptor like any
        # connection) until the websocket protocol loses it; it is no longer timed.
        guard = self.guard
        guard.awaiting_headers.pop(self, None)
        guard.awaiting_body.pop(self, None)
        self._phase = _IDLE
        super().handle_websocket_upgrade()
        websocket = self.transport.get_protocol()
        if websocket is self:   # no websocket implementation took it
            guard.release(self)
            return
        lost = websocket.connection_lost

        def release_then_lost(exc: Exception | None) -> None:
            guard.release(self)
            lost(exc)

        websocket.connection_lost = release_then_lost  # type: ignore[method-assign]

    def _response_in_progress(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _close_with(self, response: bytes | None) -> None:
        self.guard.release(self)
        self._phase = _IDLE
        if not self.transport.is_closing():
            cycle = self.cycle
            if response is not None and (cycle is None or cycle.response_complete
                                         or not cycle.response_started):
                self.transport.write(response)
            self.transport.close()


def protocol_class(guard: ConnectionGuard) -> type[GuardedHttpToolsProtocol]:
    """A protocol class bound to ``guard``, for ``uvicorn.Config(http=...)``."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"guard": guard})


def serve_guard(max_connections: int | None, max_per_ip: int, header_timeout: float,
                body_timeout: float, trusted_proxies: str | None = None) -> ConnectionGuard:
    """What ``projecthub serve`` calls once before uvicorn starts: raise the fd limit, size the
    global cap from it (``max_connections=None``), bound the floodable loggers."""
    fd_limit = raise_fd_limit()
    if max_connections is None:
        max_connections = default_max_connections(fd_limit)
    install_log_limits()
    guard = ConnectionGuard(ConnectionLimits(max_connections, max_per_ip, header_timeout, body_timeout,
                                             trusted_proxies))
    log.info("connection limits: %d connections (fd limit %d), %d per client address, "
             "header timeout %g s, body timeout %g s", max_connections, fd_limit, max_per_ip,
             header_timeout, body_timeout)
    return guard
