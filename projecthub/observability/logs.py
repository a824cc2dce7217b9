"""Where the server's JSON log goes: stdout (or a rotating file), never blocking the event loop.

Every line is one JSON object.  Ordinary log records are formatted by ``JsonLogFormatter``
(``ts``, ``level``, ``logger``, ``msg``); the request log and the audit log build their whole
line with one ``json.dumps`` and mark the record ``PREFORMATTED``, so the formatter writes it
as is.

The handlers that write (a stream or a file) run in a ``QueueListener`` thread: the event loop
only puts the record on a bounded queue.  When the consumer is slow (a blocked pipe, a full
disk) and the queue is full, records are dropped and counted (``dropped_lines()``; also the
``projecthub_log_lines_dropped_total`` metric) instead of growing memory or stalling requests.
The first-start admin key banner is not part of this log: it is plain text on stderr (cli.py).
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import time
from pathlib import Path

# ``extra=PREFORMATTED``: the record's message already is the whole JSON line.
PREFORMATTED = {"preformatted": True}

QUEUE_SIZE = 10_000
_dropped = 0
_listener: logging.handlers.QueueListener | None = None


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
        elif record.exc_text:   # formatted already (a record that passed the queue)
            entry["exc"] = record.exc_text
        return json.dumps(entry)


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """A QueueHandler on a bounded queue that drops (and counts) instead of blocking or
    printing a traceback when the queue is full."""

    def enqueue(self, record: logging.LogRecord) -> None:
        global _dropped
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            _dropped += 1

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if getattr(record, "preformatted", False):
            return record   # the message is final: nothing to render, nothing to copy
        # Render the message and traceback here (the arguments may change after we return),
        # but leave the JSON formatting to the listener thread.
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


def dropped_lines() -> int:
    return _dropped


AUDIT_LOGGER = "projecthub.audit"


def _audit_only(record: logging.LogRecord) -> bool:
    return record.name == AUDIT_LOGGER


def setup_logging(level: str = "info", log_file: str | Path | None = None,
                  max_bytes: int = 50 * 2**20, backups: int = 5,
                  audit_file: str | Path | None = None) -> None:
    """The root logger writes JSON lines to stdout, or to ``log_file`` rotated at
    ``max_bytes`` with ``backups`` old files kept, through a bounded queue.  Audit lines
    also go to ``audit_file`` (the data dir's ``audit.log``, rotated the same way), where
    the CLI's admin commands append theirs too (``use_audit_file``)."""
    global _listener
    if _listener is not None:
        _listener.stop()
    targets: list[logging.Handler] = []
    target: logging.Handler
    if log_file:
        target = logging.handlers.RotatingFileHandler(log_file, maxBytes=max_bytes, backupCount=backups,
                                                      encoding="utf-8")
    else:
        target = logging.StreamHandler(sys.stdout)
    targets.append(target)
    if audit_file:
        audit = logging.handlers.RotatingFileHandler(audit_file, maxBytes=max_bytes, backupCount=backups,
                                                     encoding="utf-8")
        audit.addFilter(_audit_only)
        targets.append(audit)
    for target in targets:
        target.setFormatter(JsonLogFormatter())
    handler = DroppingQueueHandler(queue.Queue(QUEUE_SIZE))
    _listener = logging.handlers.QueueListener(handler.queue, *targets, respect_handler_level=False)
    _listener.start()
    atexit.register(stop_logging)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def stop_logging() -> None:
    """Flush what is queued and stop the writer thread (idempotent)."""
    global _listener
    listener, _listener = _listener, None
    if listener is not None:
        listener.stop()
        for handler in listener.handlers:
            handler.close()


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
