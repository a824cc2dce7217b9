"""Event-loop helpers for tests that run their own loop."""

from __future__ import annotations

import asyncio
import signal


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close a test's own event loop without a stray "Bad file descriptor" report.

    The loop's SIGCHLD handler (the MarkerTracker reaps orphans with one) makes the
    loop's self-pipe the process's signal wakeup fd, and asyncio closes that pipe before
    it drops its signal handlers: a kernel or zygote exiting in between has its SIGCHLD
    written to a closed fd.  Dropping the handler first restores the default action.
    """
    loop.remove_signal_handler(signal.SIGCHLD)
    loop.close()
