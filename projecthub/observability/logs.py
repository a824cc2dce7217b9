"""Where the server's JSON log goes: stdout (or a rotating file), never blocking the event loop.

Every line is one JSON object.  Ordinary log records are formatted by ``JsonLogFormatter``
(``ts``, ``level``, ``logger``, ``msg``); the request log and the audit log build their whole
line with one ``json.dumps`` (``PREFORMATTED`` records, or ``write_line`` for the request log,
which skips the ``logging`` machinery altogether: it is the one line every request writes).

Lines are written by one thread (``LogWriter``), in batches every ``FLUSH_INTERVAL_S``: the
event loop only appends a string to a bounded deque, and the writer thread is not woken per
request line (a wake-up per request costs the loop a GIL hand-off every time).  Ordinary
records and audit lines (rare) wake it, so they are written at once.  When the consumer is
slow (a blocked pipe, a full disk) and ``QUEUE_SIZE`` lines wait, new lines are dropped and
counted (``dropped_lines()``; also the ``projecthub_log_lines_dropped_total`` metric) instead
of growing memory or stalling requests.  A file log is rotated by size like
``logging.handlers.RotatingFileHandler`` (it does the renaming), checked once per batch.

Audit lines also go to the data dir's ``audit.log`` (rotated the same way), where the CLI's
admin commands append theirs (``use_audit_file``).  The first-start admin key banner is not
part of this log: it is plain text on stderr (cli.py).
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import logging.handlers
import os
import sys
import threading
import time
from pathlib import Path
from typing import IO

# ``extra=PREFORMATTED``: the record's message already is the whole JSON line.
PREFORMATTED = {"preformatted": True}
AUDIT_LOGGER = "projecthub.audit"

QUEUE_SIZE = 10_000
FLUSH_INTERVAL_S = 0.05
_dropped = 0
_writer: LogWriter | None = None


def utc_iso(timestamp: float) -> str:
    """ISO 8601 UTC with milliseconds and ``Z``, e.g. ``2026-12-02T13:20:00.123Z``."""
    seconds = int(timestamp)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%03dZ" % ((timestamp - seconds) * 1000)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log line: easy to grep, easy to ship."""

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "preformatted", False):
            return record.msg if isinstance(record.msg, str) else str(record.msg)
        entry = {"ts": utc_iso(record.created), "level": record.levelname.lower(),
                 "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _Sink:
    """One destination: a stream (stdout), or a file rotated at ``max_bytes``."""

    def __init__(self, stream: IO[str] | None = None, path: str | Path | None = None,
                 max_bytes: int = 0, backups: int = 0) -> None:
        self.rotator: logging.handlers.RotatingFileHandler | None = None
        if path is not None:
            # opens the file now (an unwritable path fails at start-up, not later); its
            # doRollover does the renaming
            self.rotator = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups,
                                                                encoding="utf-8")
            assert self.rotator.stream is not None
            self.stream: IO[str] = self.rotator.stream
            self.size = os.fstat(self.stream.fileno()).st_size
        else:
            assert stream is not None
            self.stream = stream
            self.size = 0
        self.max_bytes = max_bytes

    def write(self, lines: list[str]) -> None:
        text = "\n".join(lines) + "\n"
        if self.rotator is not None and self.max_bytes > 0 and self.size > 0 \
                and self.size + len(text) > self.max_bytes:
            self.rotator.doRollover()
            assert self.rotator.stream is not None
            self.stream = self.rotator.stream
            self.size = 0
        self.stream.write(text)
        self.stream.flush()
        self.size += len(text)

    def close(self) -> None:
        if self.rotator is not None:
            self.rotator.close()


class LogWriter(logging.Handler):
    """The root logger's handler: formats a record on the spot (start-up lines, warnings:
    rare) and leaves the writing to its thread."""

    def __init__(self, main: _Sink, audit: _Sink | None = None) -> None:
        super().__init__()
        self.setFormatter(JsonLogFormatter())
        self.main = main
        self.audit = audit
        # (line, is_audit); deque append/popleft are atomic: no lock on the hot path
        self.pending: collections.deque[tuple[str, bool]] = collections.deque()
        self._stop = threading.Event()
        self._wake = threading.Event()   # set by ordinary records (rare): written at once
        self._drain_lock = threading.Lock()   # the thread, or flush() from the caller
        self._thread = threading.Thread(target=self._run, name="projecthub-log-writer", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        global _dropped
        if len(self.pending) >= QUEUE_SIZE:
            _dropped += 1
            return
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - a bad log call must not break the caller
            self.handleError(record)
            return
        self.pending.append((line, record.name == AUDIT_LOGGER))
        self._wake.set()

    def write_line(self, line: str) -> None:
        global _dropped
        if len(self.pending) >= QUEUE_SIZE:
            _dropped += 1
            return
        self.pending.append((line, False))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(FLUSH_INTERVAL_S)
            self._wake.clear()
            self._drain()
        self._drain()

    def flush(self) -> None:
        """Write what is pending now, from the calling thread."""
        self._drain()

    def _drain(self) -> None:
        with self._drain_lock:
            self._drain_locked()

    def _drain_locked(self) -> None:
        global _dropped
        pending = self.pending
        batch = []
        while pending:
            batch.append(pending.popleft())
        if not batch:
            return
        for sink, lines in ((self.main, [line for line, _ in batch]),
                            (self.audit, [line for line, audit in batch if audit])):
            if sink is None or not lines:
                continue
            try:
                sink.write(lines)
            except (OSError, ValueError):   # full disk, closed pipe: the lines are lost, counted
                _dropped += len(lines)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)
        for sink in (self.main, self.audit):
            if sink is not None:
                sink.close()
        super().close()


def flush_logging() -> None:
    """Write the pending lines now (the server calls it as it shuts down: uvicorn then
    re-raises SIGTERM/SIGINT, and a process killed by a signal runs no atexit hook)."""
    writer = _writer
    if writer is not None:
        writer.flush()


def dropped_lines() -> int:
    return _dropped


def write_line(line: str) -> None:
    """Write a ready JSON line (the request log): straight onto the writer's deque when the
    server's log is set up, else through the ``projecthub.requests`` logger."""
    writer = _writer
    if writer is not None:
        writer.write_line(line)
    else:
        logging.getLogger("projecthub.requests").info(line, extra=PREFORMATTED)


def setup_logging(level: str = "info", log_file: str | Path | None = None,
                  max_bytes: int = 50 * 2**20, backups: int = 5,
                  audit_file: str | Path | None = None) -> None:
    """The root logger writes JSON lines to stdout, or to ``log_file`` rotated at
    ``max_bytes`` with ``backups`` old files kept.  Audit lines also go to ``audit_file``
    (the data dir's ``audit.log``, rotated the same way).  Raises OSError for a file that
    cannot be opened."""
    global _writer
    stop_logging()
    main = _Sink(path=log_file, max_bytes=max_bytes, backups=backups) if log_file else _Sink(stream=sys.stdout)
    audit = _Sink(path=audit_file, max_bytes=max_bytes, backups=backups) if audit_file else None
    _writer = LogWriter(main, audit)
    atexit.register(stop_logging)
    root = logging.getLogger()
    root.handlers[:] = [_writer]
    root.setLevel(level.upper())


def stop_logging() -> None:
    """Write what is pending and stop the writer thread (idempotent)."""
    global _writer
    writer, _writer = _writer, None
    if writer is not None:
        root = logging.getLogger()
        if writer in root.handlers:
            root.removeHandler(writer)
        writer.close()


def use_audit_file(path: str | Path) -> None:
    """For the CLI's admin commands (no server log): append their audit lines to ``path``
    (the data dir's ``audit.log``, the file the server writes its audit lines to as well).
    Idempotent; the line is written before the command prints its result."""
    logger = logging.getLogger(AUDIT_LOGGER)
    if any(getattr(h, "_projecthub_audit", False) for h in logger.handlers):
        return
    handler = logging.FileHandler(path, encoding="utf-8")   # O_APPEND: lines never interleave
    handler.setFormatter(JsonLogFormatter())
    handler._projecthub_audit = True   # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
