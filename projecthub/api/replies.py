"""The hub's memory for replies in flight: one global budget of reply bytes not yet sent.

A reply is held whole from the moment it is rendered until the client has taken it.  A
client that never reads (a stalled socket) would otherwise pin every big reply it asks
for: 16 stalled readers of an 8 MiB file pinned 16 x ~50 MiB.  So every reply larger than
SMALL_REPLY_BYTES takes its size from one budget (``settings.reply_buffer_bytes``, default
256 MiB) before it is sent and gives it back once the last byte is in the kernel; a reply
that does not fit is answered 503 with a clear error instead (the project's work is done,
the client may retry).  The fabric frame the reply came from is already in memory when it
arrives, so checking at render time bounds what stays held, not just what is started.

The body goes out in SEND_CHUNK_BYTES slices, awaiting the server's flow control between
them, so the transport's own buffer holds at most one slice on top of the body: a stalled
reader costs its reply's size once, not twice.
"""

from __future__ import annotations

import logging
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

log = logging.getLogger("projecthub.api")

SMALL_REPLY_BYTES = 256 * 2**10   # always sent: errors and ordinary replies never see a 503
SEND_CHUNK_BYTES = 256 * 2**10


class ReplyBudget:
    """Bytes of rendered replies not yet handed to the kernel, against one limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)


def _budget(scope: Scope) -> ReplyBudget | None:
    app = scope.get("app")
    return getattr(getattr(app, "state", None), "replies", None)


class BoundedJSONResponse(JSONResponse):
    """A JSONResponse whose bytes count against the app's ReplyBudget while in flight."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        size = len(self.body)
        budget = _budget(scope) if size > SMALL_REPLY_BYTES else None
        if budget is not None and not budget.take(size):
            log.warning("reply of %d bytes refused: %d of %d reply bytes in flight",
                        size, budget.used, budget.limit)
            self.body = b""   # the only reference the hub still has: released right away
            refusal = JSONResponse({"error": f"server busy: too many large replies are waiting for slow "
                                             f"clients ({budget.used} of {budget.limit} bytes); this reply "
                                             f"({size} bytes) was dropped, retry later"},
                                   status_code=503, headers={"Retry-After": "5"})
            await refusal(scope, receive, send)
            return
        try:
            await self._send_chunked(send)
        finally:
            if budget is not None:
                self.body = b""
                budget.give(size)

    async def _send_chunked(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        body = memoryview(self.body)
        if len(body) <= SEND_CHUNK_BYTES:
            await send({"type": "http.response.body", "body": self.body})
            return
        for start in range(0, len(body), SEND_CHUNK_BYTES):
            end = start + SEND_CHUNK_BYTES
            # bytes(): servers and middlewares expect bytes; one slice at a time is the point
            await send({"type": "http.response.body", "body": bytes(body[start:end]),
                        "more_body": end < len(body)})
