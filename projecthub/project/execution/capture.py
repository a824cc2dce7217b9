"""Memory-bounded capture of one output stream.

Keeps the decoded head of the stream up to a character cap, counts every byte, and can
spill the full raw stream to an append-only file (async jobs).  A command printing 50 MB
with ``max_output=100`` therefore costs the daemon ~100 characters, not 50 MB.

The character cap is CoCalc's (``max_output``); it does not bound memory on its own: a
character costs 1, 2 or 4 bytes in a Python str (the widest character of a string decides,
so one emoji makes a whole ASCII text 4 bytes a character), and a control character
becomes 6 in the JSON reply.  So every capture is also capped in *bytes*, counted as what
its kept text will cost as a joined str and as JSON (``cost``), and applied while reading:

* per stream: ``cap_bytes`` (``exec_output_bytes``, default 8 MiB);
* per daemon: every running capture draws on one ``OUTPUT_BUDGET`` (``exec_output_budget``,
  default 32 MiB), so 10 or 64 concurrent execs flooding their pipes keep at most that much
  together, well inside the daemon's memory reserve.  A capture gives its share back when
  its execution finishes (``settle``).  The first ``GUARANTEED_BYTES`` (256 KiB) of every
  stream are kept whatever the budget says, so long-running jobs that hold the budget
  never leave a quick exec without its output (at most 96 exec groups x 2 streams x
  256 KiB beyond the budget).

Past a cap the rest is counted (``total_bytes``) and dropped (or spilled to the job's file),
never decoded; the process is not killed (CoCalc semantics) unless the caller asked for it.
Decoding runs on the pipe's bounded reads (64 KiB) through an incremental decoder, so a
character split across reads is joined and a cut always falls between characters.
"""

from __future__ import annotations

import codecs
import errno
import os
import sys

SPILL_NOTE = "\n[projecthub: {n} bytes of output beyond the in-memory cap were dropped before this exec became a job]\n"

DEFAULT_STREAM_BYTES = 8 * 2**20
DEFAULT_DAEMON_BYTES = 32 * 2**20
GUARANTEED_BYTES = 256 * 2**10
# Bytes JSON escapes: control characters become \u00XX (6 characters), '"' and '\' two.
_JSON_ESCAPED = bytes(range(0x20)) + b'"\\'
_ESCAPE_EXTRA = 5


class OutputBudget:
    """The daemon-wide pool of memory that captured output may hold at once."""

    def __init__(self, limit: int = DEFAULT_DAEMON_BYTES) -> None:
        self.limit = limit
        self.used = 0

    def available(self) -> int:
        return max(0, self.limit - self.used)

    def take(self, n: int) -> None:
        self.used += n

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)


OUTPUT_BUDGET = OutputBudget()


def _width(text: str) -> int:
    """Bytes per character of ``text`` as CPython stores it (1, 2 or 4).  sys.getsizeof
    is O(1): header (72 bytes for a non-ASCII compact str) + (len + 1) * width."""
    if text.isascii():
        return 1
    return max(1, (sys.getsizeof(text) - 72) // (len(text) + 1))


def cost(chars: int, escapes: int, width: int) -> int:
    """What ``chars`` kept characters (``escapes`` of them JSON-escaped) cost at most as
    one joined str, and as its JSON text."""
    return (chars + escapes * _ESCAPE_EXTRA) * width


class StreamCapture:
    def __init__(self, cap_chars: int, spill_limit: int = 1 << 30,
                 cap_bytes: int = DEFAULT_STREAM_BYTES, budget: OutputBudget | None = None) -> None:
        self.cap = cap_chars
        self.cap_bytes = cap_bytes
        self.total_bytes = 0          # everything the process wrote, even beyond the cap
        self.truncated = False        # some data did not fit under the cap
        self.memory_truncated = False  # ... because of a byte cap or the daemon budget
        self.spill_fd: int | None = None
        self.spilled_bytes = 0        # bytes in the spill file (== its size)
        self.spill_limit = spill_limit
        self.spill_error: str | None = None   # why the spill file stopped short, if it did
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._parts: list[str] = []
        self._chars = 0
        self._escapes = 0
        self._width = 1
        self._charged = 0             # taken from the budget (== cost of what is kept)
        self._full = cap_chars <= 0
        self._budget = OUTPUT_BUDGET if budget is None else budget
        self._settled = False

    def feed(self, data: bytes) -> None:
        self.total_bytes += len(data)
        if self.spill_fd is not None:
            self._spill(data)
        if self._full or self._settled:
            self.truncated = self.truncated or bool(data)
            return
        text = self._decoder.decode(data)
        if not text:
            return
        room = self.cap - self._chars
        if len(text) >= room:
            self._full = True
            if len(text) > room:
                text = text[:room]
                self.truncated = True
        self._keep(text, len(data) - len(data.translate(None, _JSON_ESCAPED)))

    def _keep(self, text: str, escapes: int) -> None:
        """Keep as much of ``text`` as the byte caps allow (a cut between characters)."""
        width = max(self._width, _width(text))
        escapes = min(escapes, len(text))
        allowed = min(self.cap_bytes, max(GUARANTEED_BYTES, self._charged + self._budget.available()))
        new_cost = cost(self._chars + len(text), self._escapes + escapes, width)
        if new_cost > allowed:
            self.truncated = self.memory_truncated = True
            self._full = True
            fit = allowed // width - (self._escapes + escapes) * _ESCAPE_EXTRA - self._chars
            text = text[:max(0, fit)]
            if not text:
                return
            new_cost = cost(self._chars + len(text), self._escapes + escapes, width)
        self._budget.take(new_cost - self._charged)
        self._charged = new_cost
        self._width = width
        self._escapes += escapes
        self._parts.append(text)
        self._chars += len(text)

    def close(self) -> None:
        """End of stream: flush an incomplete trailing character (as U+FFFD)."""
        if not self._full and not self._settled and self._chars < self.cap:
            tail = self._decoder.decode(b"", final=True)
            if tail:
                self._keep(tail[: self.cap - self._chars], 0)

    def settle(self) -> None:
        """The execution is over: nothing more is kept, and the capture's share of the
        daemon budget goes back (its text lives on only until the reply is sent)."""
        if not self._settled:
            self._settled = True
            self._budget.give(self._charged)
            self._charged = 0

    def __del__(self) -> None:
        # A capture dropped without settle() (a spawn failure path): give its share back.
        if not self._settled and self._charged:
            self._budget.give(self._charged)

    def text(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    @property
    def kept_chars(self) -> int:
        return self._chars

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
        if room <= 0 or self.spill_fd is None or self.spill_error is not None:
            return
        view = memoryview(data)[:room]
        try:
            while view:
                n = os.write(self.spill_fd, view)
                self.spilled_bytes += n
                view = view[n:]
        except OSError as exc:
            # The project's disk is full (or the file went away): the output file ends
            # here, and the job's record says so instead of ending short in silence.
            reason = "the project's disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            self.spill_error = (f"output after byte {self.spilled_bytes} was not kept: {reason}")
