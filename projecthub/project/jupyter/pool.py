"""Warm pool of stateless kernels, one pool per kernelspec (spec 6.4 (a)).

Each pooled kernel is started, warmed and parked in its own fresh temp dir; it serves
exactly one stateless call and is then killed.  Refills run in ONE background worker
that boots one kernel at a time: on 2 cores, booting several at once only slows down
the kernel somebody is waiting for.  Kernels forked from the spec's zygote are the
exception: a fork-boot is ~25-30 ms of CPU on one core, so two run side by side.  A
caller that finds the pool empty either takes the kernel the worker is booting for that
same spec (it started earlier, so it is the fastest one to get) or starts its own; it
never waits for an unrelated refill.
While calls keep finding the pool empty it holds BURST_SIZE kernels instead of
the default size (see ``_Pool.target``), shrinking back once the burst is over; a
size the caller chose (``pool.size``) is kept exactly.

A pool without a stateless call for its ``timeout_s`` (the daemon's default: a few
minutes, ``jupyter/__init__.py``; CoCalc's ``pool.timeout_s`` per call) shrinks to zero,
and the spec's zygote is closed with it: a project that ran Jupyter once must not keep
a kernel and a zygote (~120 MiB) forever.  The next call starts a kernel the ordinary
way (~0.5 s) while the zygote comes back in the background.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass, field

from .kernels import STATELESS_RLIMITS, Kernel, KernelLauncher
from .specs import KernelSpecInfo

MAX_POOL_SIZE = 10
RETRY_DELAYS_S = (1.0, 5.0, 30.0, 120.0)   # after failed refills, so a broken spec cannot spin
FORKED_PARALLEL_BOOTS = 2                   # concurrent refills when the spec has a zygote
REFILL_DELAY_S = 0.25                       # refill this long after a hit if not released sooner
# A kernel parked unwarmed during a burst (see ``_boot``) that nobody has taken after this
# long is warmed after all: calls are no longer queueing for it, and its first cell would
# otherwise pay ~3 ms of first-run costs on the caller's latency.
DEFERRED_WARM_S = 0.25
# Calls that outrun the pool (one finds it empty) make it "hot": it then keeps
# BURST_SIZE kernels ready until BURST_HOLD_S after the last such call.  Back-to-back
# callers then find a kernel that refills booted while earlier calls ran, and refills
# use both cores, instead of each call waiting for the one kernel booting for it.
BURST_SIZE = 4
BURST_HOLD_S = 30.0
WARM_UP_TIMEOUT_S = 10.0
# A used kernel is killed after its call, and its replacement starts in the background.
# ``system.listJupyterKernels`` right after an execute must still find a live kernel
# (CoCalc's list is never empty then): when no other kernel of the project is alive, the
# used one stays until a replacement is, or this long at most.
LISTING_HOLD_S = 10.0


@dataclass
class _Pool:
    spec: KernelSpecInfo
    size: int
    timeout_s: float
    last_request: float = field(default_factory=time.monotonic)
    idle: collections.deque[Kernel] = field(default_factory=collections.deque)
    booting: int = 0
    waiters: collections.deque[asyncio.Future[Kernel]] = field(default_factory=collections.deque)
    failures: int = 0
    retry_at: float = 0.0
    primed: bool = False       # a refill has delivered a kernel (misses before are cold starts)
    hot_until: float = 0.0
    chosen_size: bool = False  # a caller set `size`: keep exactly that many, never burst
    held: bool = False         # ``KernelPool.hold``: never idle (a spare project's warm pool)

    def is_idle(self, now: float) -> bool:
        return not self.held and now - self.last_request > self.timeout_s

    def target(self, now: float) -> int:
        # Idle for timeout_s: no kernel at all (CoCalc keeps one; here the memory of an
        # idle project goes back to the machine).
        if self.is_idle(now):
            return 0
        if self.bursting(now):
            return max(self.size, BURST_SIZE)
        return self.size

    def bursting(self, now: float) -> bool:
        return self.size >= 1 and not self.chosen_size and now < self.hot_until

    def missed(self, now: float) -> None:
        """A call found no ready kernel: demand outruns the pool."""
        if self.primed:
            self.hot_until = now + BURST_HOLD_S


class KernelPool:
    def __init__(self, launcher: KernelLauncher, *, size: int = 1, timeout_s: float = 1800,
                 rlimits: dict[str, int] | None = STATELESS_RLIMITS) -> None:
        self.launcher = launcher
        self.default_size = size
        self.default_timeout_s = timeout_s
        self.rlimits = rlimits
        self._pools: dict[str, _Pool] = {}
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._boots: set[asyncio.Task[None]] = set()
        self._closed = False
        self._listed: list[Kernel] = []   # used kernels kept for the list (LISTING_HOLD_S)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._refill_loop(), name="jupyter-pool-refill")

    # --- handing out ------------------------------------------------------------------

    async def acquire(self, spec: KernelSpecInfo, *, size: int | None = None,
                      timeout_s: float | None = None) -> Kernel:
        """A fresh, warm kernel for one stateless call; the caller must release() it."""
        pool = self._pool(spec)
        now = time.monotonic()
        woke = pool.is_idle(now)   # the first call after an idle shrink: no burst for it
        pool.last_request = now
        if size is not None:
            pool.size = max(0, min(int(size), MAX_POOL_SIZE))
            pool.chosen_size = True
        if timeout_s is not None:
            pool.timeout_s = float(timeout_s)
        if pool.size <= 0:
            self._trim(pool, 0)
            return await self._start(spec, warm=False)
        kernel = self._take_idle(pool)
        if kernel is not None:
            self._refill_later()
            return kernel
        if not woke:
            pool.missed(now)
        if pool.booting > len(pool.waiters):
            waiter: asyncio.Future[Kernel] = asyncio.get_running_loop().create_future()
            pool.waiters.append(waiter)
            try:
                kernel = await waiter
                self._refill_later()
                return kernel
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    waiter.result().close()   # handed over just as we were cancelled
                raise
            except Exception:
                pass  # that refill failed: start our own below
        kernel = await self._start(spec, warm=False)
        self._refill_later()
        return kernel

    @staticmethod
    def _take_idle(pool: _Pool) -> Kernel | None:
        """The oldest warmed parked kernel, else the oldest parked one; dead ones are
        dropped on the way."""
        for kernel in [k for k in pool.idle if not k.alive]:
            pool.idle.remove(kernel)
            kernel.close()
        for kernel in pool.idle:
            if kernel.warmed:
                pool.idle.remove(kernel)
                return kernel
        return pool.idle.popleft() if pool.idle else None

    def _refill_later(self) -> None:
        # Refill when the caller releases its kernel: booting the replacement right now
        # would take a core from the cell it is about to run (~+4 ms per call on 2
        # cores).  Long cells still get their refill after REFILL_DELAY_S.
        asyncio.get_running_loop().call_later(REFILL_DELAY_S, self._wake.set)

    def release(self, kernel: Kernel) -> None:
        """The stateless call is over: kill its kernel and top the pool up, on the
        loop's next turn.  By then the caller has written its reply (the daemon sends
        it without yielding), so neither the kernel's teardown (the OS frees its
        memory on a core we share: ~1 ms) nor the refill's set-up delays the answer."""
        asyncio.get_running_loop().call_soon(self._retire, kernel)

    def _retire(self, kernel: Kernel) -> None:
        pool = self._pools.get(kernel.spec.name)
        alone = not any(k is not kernel for k in self.launcher.list_alive())
        if (alone and kernel.alive and not self._closed and pool is not None
                and pool.target(time.monotonic()) > 0):
            # its replacement is about to start: keep this one listed until then
            self._listed.append(kernel)
            asyncio.get_running_loop().call_later(LISTING_HOLD_S, self._unlist, kernel)
        else:
            kernel.close()
        self._wake.set()

    def _unlist(self, kernel: Kernel | None = None) -> None:
        """Kill the used kernels kept for the list (all of them: a replacement is alive)."""
        for held in [kernel] if kernel is not None else list(self._listed):
            if held in self._listed:
                self._listed.remove(held)
                held.close()

    async def _start(self, spec: KernelSpecInfo, *, warm: bool) -> Kernel:
        # Warm-up (a first cell) only pays off for kernels that wait in the pool: a
        # caller who is waiting runs its own cell at once, which warms just as well.
        # fork=True: from the spec's zygote when it has one ready (a few ms instead of a
        # ~0.4 s interpreter start), so sustained load no longer drains the pool.
        return await self.launcher.start(spec, rlimits=self.rlimits, scratch=True, warm=warm,
                                         fork=True)

    def _pool(self, spec: KernelSpecInfo) -> _Pool:
        pool = self._pools.get(spec.name)
        if pool is None or pool.spec != spec:
            pool = _Pool(spec=spec, size=self.default_size, timeout_s=self.default_timeout_s)
            old = self._pools.get(spec.name)
            if old is not None:   # the kernelspec changed on disk: drop the old kernels
                self._trim(old, 0)
            self._pools[spec.name] = pool
        return pool

    def hold(self, spec: KernelSpecInfo) -> None:
        """Keep the spec's pool filled, and so its zygote running, however long no call
        comes: a spare project's warm-up (``jupyter/warm.py``), until ``release_holds``."""
        self._pool(spec).held = True
        self._wake.set()

    def release_holds(self) -> None:
        """The project is in use now: held pools age like any other from this moment."""
        now = time.monotonic()
        for pool in self._pools.values():
            if pool.held:
                pool.held = False
                pool.last_request = now

    def idle_kernels(self) -> list[Kernel]:
        return [k for p in self._pools.values() for k in p.idle]

    # --- background upkeep ---------------------------------------------------------------

    def housekeeping(self) -> None:
        """Shrink pools idle for too long (to zero, with their zygotes) and drop dead idle
        kernels; wakes refills."""
        now = time.monotonic()
        zygotes = getattr(self.launcher, "zygotes", None)
        for pool in self._pools.values():
            dead = [k for k in pool.idle if not k.alive]
            for k in dead:
                pool.idle.remove(k)
                k.close()
            self._trim(pool, pool.target(now))
            if (zygotes is not None and pool.is_idle(now) and not pool.idle and not pool.booting
                    and not pool.waiters):
                zygotes.retire(pool.spec)   # only if none of its kernels is still in use
        self._wake.set()

    def _trim(self, pool: _Pool, keep: int) -> None:
        while len(pool.idle) > keep:
            pool.idle.popleft().close()   # oldest first

    def _parallel(self, pool: _Pool) -> int:
        zygotes = getattr(self.launcher, "zygotes", None)
        if zygotes is not None and zygotes.get(pool.spec) is not None:
            return FORKED_PARALLEL_BOOTS
        return 1

    def _next_deficit(self, now: float) -> _Pool | None:
        for pool in self._pools.values():
            short = len(pool.idle) + pool.booting < pool.target(now) or len(pool.waiters) > pool.booting
            if not short and pool.is_idle(now):
                continue   # asking for the parallelism (re)starts the spec's zygote: not when idle
            if pool.retry_at > now or pool.booting >= self._parallel(pool):
                continue
            if short:
                return pool
        return None

    async def _refill_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._closed:
                await self._wake.wait()
                self._wake.clear()
                while not self._closed:
                    pool = self._next_deficit(time.monotonic())
                    if pool is None:
                        break
                    pool.booting += 1
                    task = loop.create_task(self._refill_one(pool, loop))
                    self._boots.add(task)
                    task.add_done_callback(self._boots.discard)
        finally:
            for task in list(self._boots):
                task.cancel()
            await asyncio.gather(*self._boots, return_exceptions=True)

    async def _refill_one(self, pool: _Pool, loop: asyncio.AbstractEventLoop) -> None:
        try:
            kernel = await self._boot(pool)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            delay = RETRY_DELAYS_S[min(pool.failures, len(RETRY_DELAYS_S) - 1)]
            pool.failures += 1
            pool.retry_at = time.monotonic() + delay
            loop.call_later(delay, self._wake.set)
            while pool.waiters:
                waiter = pool.waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        finally:
            pool.booting -= 1
            self._wake.set()   # the worker may start the next boot
        pool.failures = 0
        if kernel is None:
            return   # handed to a waiter
        if self._closed or self._pools.get(pool.spec.name) is not pool:
            kernel.close()
            return
        if self._hand_over(pool, kernel):
            return
        pool.idle.append(kernel)
        # A parked kernel that dies must leave the pool and be replaced at once.
        kernel.exited.add_done_callback(lambda _f: self._on_idle_exit(pool, kernel))
        if not kernel.warmed:
            loop.call_later(DEFERRED_WARM_S, self._warm_parked, pool, kernel)

    def _warm_parked(self, pool: _Pool, kernel: Kernel) -> None:
        """Warm a kernel a burst parked unwarmed, if it is still waiting.  While its
        warm-up cell runs it counts as booting, so a caller arriving meanwhile waits for
        it (``acquire``) instead of forking another."""
        if self._closed or kernel.warmed or kernel not in pool.idle or not kernel.alive:
            return
        pool.idle.remove(kernel)
        pool.booting += 1
        task = asyncio.get_running_loop().create_task(self._finish_warming(pool, kernel))
        self._boots.add(task)
        task.add_done_callback(self._boots.discard)

    async def _finish_warming(self, pool: _Pool, kernel: Kernel) -> None:
        try:
            await kernel.until_exit(kernel.warm_up(), timeout=WARM_UP_TIMEOUT_S)
        except asyncio.CancelledError:
            kernel.close()
            raise
        except Exception:
            kernel.close()   # died or hung in its first cell: never hand it out
            return
        finally:
            pool.booting -= 1
            self._wake.set()
        if self._closed or self._pools.get(pool.spec.name) is not pool:
            kernel.close()
        elif not self._hand_over(pool, kernel):
            pool.idle.appendleft(kernel)   # it is the oldest parked kernel

    async def _boot(self, pool: _Pool) -> Kernel | None:
        """A ready kernel for the pool, warmed up unless a waiting caller took it first
        (None then): a caller who waits runs its own cell at once, which warms just as
        well, so it should not also wait for the warm-up cells.  Nor is a kernel warmed
        that a burst will take next (none other is parked): the warm-up request (~5 ms
        of CPU, kernel and daemon) is worth more to the calls queueing for the cores
        than the ~1-3 ms it saves on a first cell.  If no call takes it within
        DEFERRED_WARM_S, it is warmed after all (``_warm_parked``)."""
        kernel = await self._start(pool.spec, warm=False)
        pool.primed = True
        self._unlist()   # a live kernel again: the used ones kept for the list can go
        if self._hand_over(pool, kernel):
            return None
        if pool.bursting(time.monotonic()) and not pool.idle:
            return kernel
        try:
            await kernel.until_exit(kernel.warm_up(), timeout=WARM_UP_TIMEOUT_S)
        except BaseException:
            kernel.close()
            raise
        return kernel

    @staticmethod
    def _hand_over(pool: _Pool, kernel: Kernel) -> bool:
        """Give ``kernel`` to the oldest caller waiting for a refill, if any."""
        while pool.waiters:
            waiter = pool.waiters.popleft()
            if not waiter.done():
                waiter.set_result(kernel)
                return True
        return False

    def _on_idle_exit(self, pool: _Pool, kernel: Kernel) -> None:
        if kernel in pool.idle:
            pool.idle.remove(kernel)
            kernel.close()
            self._wake.set()

    async def close(self) -> None:
        self._closed = True
        self._unlist()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker
        for pool in self._pools.values():
            self._trim(pool, 0)
            while pool.waiters:
                waiter = pool.waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(asyncio.CancelledError())
