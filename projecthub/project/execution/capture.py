"""Memory-bounded capture of one output stream.

Keeps the decoded head of the stream up to a character cap, counts every byte, and can
spill the full raw stream to an append-only file (async jobs).  A command printing 50 MB
with ``max_output=100`` therefore costs the daemon ~100 characters, not 50 MB.
"""

from __future__ import annotations

import codecs
import os

SPILL_NOTE = "\n[projecthub: {n} bytes of output beyond the in-memory cap were dropped before this exec became a job]\n"


class StreamCapture:
    def __init__(self, cap_chars: int, spill_limit: int = 1 << 30) -> None:
        self.cap = cap_chars
        self.total_bytes = 0          # everything the process wrote, even beyond the cap
        self.truncated = False        # some data did not fit under the cap
        self.spill_fd: int | None = None
        self.spilled_bytes = 0        # bytes in the spill file (== its size)
        self.spill_limit = spill_limit
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._parts: list[str] = []
        self._chars = 0

    def feed(self, data: bytes) -> None:
        self.total_bytes += len(data)
        if self.spill_fd is not None:
            self._spill(data)
        if self._chars >= self.cap:
            self.truncated = self.truncated or bool(data)
            return
        text = self._decoder.decode(data)
        room = self.cap - self._chars
        if len(text) > room:
            text = text[:room]
            self.truncated = True
        self._parts.append(text)
        self._chars += len(text)

    def close(self) -> None:
        """End of stream: flush an incomplete trailing character (as U+FFFD)."""
        if self._chars < self.cap:
            tail = self._decoder.decode(b"", final=True)
            if tail:
                self._parts.append(tail[: self.cap - self._chars])
                self._chars += len(self._parts[-1])

    def text(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def start_spill(self, fd: int) -> None:
        """Send the raw stream to ``fd`` from now on.  What was already received is
        written first: exactly when nothing was dropped yet, otherwise the head we kept
        plus a note saying how many bytes are missing."""
        self.spill_fd = fd
        if self.total_bytes:
            if self.truncated:
                head = self.text().encode()
                self._spill(head)
                self._spill(SPILL_NOTE.format(n=self.total_bytes - len(head)).encode())
            else:
                self._spill(self.text().encode())

    def _spill(self, data: bytes) -> None:
        room = self.spill_limit - self.spilled_bytes
        if room <= 0 or self.spill_fd is None:
            return
        view = memoryview(data)[:room]
        while view:
            n = os.write(self.spill_fd, view)
            self.spilled_bytes += n
            view = view[n:]
