"""The audit log: one JSON line per security-relevant event, on the ``projecthub.audit`` logger.

Call ``audit_event(name, **fields)`` from the place that *decided* the event (the hub, never a
project daemon: it runs as the project user, so what it logs could be forged).  The line is

    {"ts": "2026-12-02T13:20:00.123Z", "level": "info", "logger": "projecthub.audit",
     "event": "key_created", "account_id": "...", "key_id": 7}

Events (``EVENTS``; another name is logged too, but keep this list and docs/security.md true):

* ``auth_failure``          a bad, expired or revoked API key / token was presented
                            (fields: surface, reason, key_id when the key names a row, client)
* ``key_created``           an API key was made (account_id, key_id, project_id, by: api|cli)
* ``key_revoked``           an API key was deleted (account_id, key_id, by)
* ``account_disabled``      an account was disabled (account_id, by)
* ``account_enabled``       an account was enabled again (account_id, by)
* ``limit_changed``         account or project limits were set (account_id/project_id, limits, by)
* ``project_created``       (project_id, account_id)
* ``project_deleted``       (project_id, account_id)
* ``timeout_kill``          an exec/job was killed for running out of time (project_id, account_id, ...)
* ``oom_kill``              an exec/job was killed by the kernel's OOM killer (project_id, ...)
* ``sandbox_start_failure`` a project's sandbox or daemon failed to start (project_id, error)

Never a secret: fields named ``key``, ``secret``, ``token``, ``password``, ``api_key`` (or ending
in ``_secret``/``_token``/``_password``) are dropped, and any string value that looks like an API
key secret (``sk-`` + 22 alphanumerics) is replaced by ``"[redacted]"``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from contextvars import ContextVar
from typing import Any

from .logs import PREFORMATTED, utc_iso

log = logging.getLogger("projecthub.audit")

EVENTS = frozenset({
    "auth_failure", "key_created", "key_revoked", "account_disabled", "account_enabled",
    "limit_changed", "project_created", "project_deleted", "timeout_kill", "oom_kill",
    "sandbox_start_failure",
})

_SECRET_NAMES = frozenset({"key", "secret", "token", "password", "api_key", "apikey", "authorization"})
_SECRET_SUFFIXES = ("_secret", "_token", "_password", "_api_key")
_KEY_SHAPE = re.compile(r"sk-[A-Za-z0-9]{22}")
_RESERVED = frozenset({"ts", "level", "logger", "event"})

# The request being served (the request log's dict: account_id, key_id, ...), set by the
# request middleware: an event raised deep in the hub still names who caused it.
current_request: ContextVar[dict[str, Any] | None] = ContextVar("projecthub_request", default=None)


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SECRET_NAMES or lowered.endswith(_SECRET_SUFFIXES)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return _KEY_SHAPE.sub("[redacted]", value) if "sk-" in value else value
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not _is_secret_name(str(k))}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def audit_event(event: str, **fields: Any) -> None:
    """Write one audit line.  Never raises (an audit failure must not fail the action), and
    never writes a secret (see the module docstring)."""
    try:
        if not log.isEnabledFor(logging.INFO):
            return
        entry: dict[str, Any] = {"ts": utc_iso(time.time()), "level": "info",
                                 "logger": "projecthub.audit", "event": event}
        request = current_request.get()
        if request:
            for name in ("account_id", "key_id"):
                if fields.get(name) is None and request.get(name) is not None:
                    fields[name] = request[name]
        for name, value in fields.items():
            if value is None or name in _RESERVED or _is_secret_name(name):
                continue
            entry[name] = _clean(value)
        line = json.dumps(entry, default=str)
        log.info(line, extra=PREFORMATTED)
        from . import metrics   # counters for the kill/failure events (cheap, no registry needed)
        metrics.count_event(event)
    except Exception:  # noqa: BLE001 - auditing must never break the audited action
        logging.getLogger("projecthub.observability").exception("could not write audit event %r", event)


# (project_id, job_id) of async jobs whose kill was audited: a job's final state is read
# many times (every poll), the event is written once.  Bounded: cleared when full.
_seen_jobs: dict[tuple[str, Any], None] = {}
_SEEN_JOBS_MAX = 10_000


def audit_exec_result(project_id: str, function: str, value: Any) -> Any:
    """Called by the hub with every reply of a project call (cheap: two dict lookups for a
    dict reply): a native exec/job result that says it was killed for its timeout or by the
    OOM killer becomes a ``timeout_kill`` / ``oom_kill`` event.  Returns ``value``.

    The hub, not the daemon, writes the line: the daemon runs as the project's user and its
    own log could say anything.  (What the reply says still comes from the daemon: a hostile
    project can at most invent kills of its own processes.)"""
    if type(value) is dict:
        killed_by = value.get("killed_by")
        if killed_by is not None or value.get("oom_killed"):
            _audit_kill(project_id, function, value, killed_by)
        elif type(record := value.get("record")) is dict and (
                record.get("killed_by") is not None or record.get("oom_killed")):
            _audit_kill(project_id, function, record, record.get("killed_by"))   # a job stream's "done"
    return value


def audit_exec_error(project_id: str, function: str, exc: Any) -> None:
    """A ``system.exec`` (CoCalc surfaces) killed for its timeout answers with an error that
    carries ``killed_by``."""
    extra = getattr(exc, "extra", None)
    if extra and extra.get("killed_by") == "timeout":
        audit_event("timeout_kill", project_id=project_id, function=function)


def _audit_kill(project_id: str, function: str, value: dict[str, Any], killed_by: Any) -> None:
    if killed_by == "timeout":
        event = "timeout_kill"
    elif killed_by == "oom" or value.get("oom_killed"):
        event = "oom_kill"
    else:
        return   # killed on request, or for its output: not a security event
    job_id = value.get("job_id")
    if job_id is not None:
        key = (project_id, job_id)
        if key in _seen_jobs:
            return
        if len(_seen_jobs) >= _SEEN_JOBS_MAX:
            _seen_jobs.clear()
        _seen_jobs[key] = None
    audit_event(event, project_id=project_id, function=function, job_id=job_id,
                exit_code=value.get("exit_code"), signal=value.get("signal"),
                wall_s=value.get("wall_s") or value.get("elapsed_s"), max_rss_bytes=value.get("max_rss_bytes"))


def current_exception_text(limit: int = 500) -> str | None:
    """The exception being handled, as one short line (for ``sandbox_start_failure``)."""
    import sys
    exc = sys.exc_info()[1]
    if exc is None:
        return None
    text = f"{type(exc).__name__}: {exc}"
    return text[:limit]
