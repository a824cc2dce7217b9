"""Running one cell with a deadline: the interrupt-then-kill policy both APIs share."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable

from .kernels import Kernel

# CoCalc's escalation after a cell's time is up: SIGINT, wait 1 s; again, 1.3 s;
# again, 1.69 s; then SIGKILL.
INTERRUPT_WAITS: tuple[float, ...] = (1.0, 1.3, 1.69)


@dataclass
class CellOutcome:
    reply: dict[str, Any] | None = None  # the shell execute_reply (None if killed)
    timed_out: bool = False
    interrupted: bool = False            # an interrupt brought the kernel back to idle
    killed: bool = False                 # interrupts did not help; the kernel was SIGKILLed
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.reply is None:
            return "timeout" if self.timed_out else "error"
        return str(self.reply["content"].get("status", "ok"))

    @property
    def execution_count(self) -> int | None:
        if self.reply is None:
            return None
        return self.reply["content"].get("execution_count")


async def run_cell(kernel: Kernel, code: str, on_msg: Callable[[dict[str, Any]], None], *,
                   timeout_s: float | None, silent: bool = False, store_history: bool = True,
                   interrupt_waits: tuple[float, ...] = INTERRUPT_WAITS) -> CellOutcome:
    """Execute ``code``; every IOPub message of the cell goes to ``on_msg``.

    Raises KernelDied if the kernel exits (other than by our own timeout kill).
    """
    msg_id = kernel.send_execute(code, silent=silent, store_history=store_history)
    collecting = asyncio.ensure_future(kernel.collect(msg_id, on_msg))
    try:
        if await _finished(kernel, collecting, timeout_s):
            return CellOutcome(reply=collecting.result())
        for wait in interrupt_waits:
            kernel.interrupt()
            if await _finished(kernel, collecting, wait):
                return CellOutcome(reply=collecting.result(), timed_out=True, interrupted=True)
        kernel.kill_now()
        return CellOutcome(timed_out=True, killed=True)
    finally:
        collecting.cancel()


async def _finished(kernel: Kernel, task: asyncio.Future[Any], timeout_s: float | None) -> bool:
    """True when ``task`` is done, False on timeout; KernelDied if the kernel died."""
    try:
        await kernel.until_exit(asyncio.shield(task), timeout=timeout_s)
        return True
    except asyncio.TimeoutError:
        return False
