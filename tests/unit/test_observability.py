"""Audit redaction, the log writer's bound and rotation, bounded metric labels (in process)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from projecthub.observability import audit, logs, metrics


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def captured() -> list[str]:
    logger = logging.getLogger(logs.AUDIT_LOGGER)
    handler = Capture()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def test_audit_never_writes_a_secret(captured: list[str]) -> None:
    secret = "sk-AbCdEfGhIjKlMnOp000007"
    audit.audit_event("key_created", account_id="a", key_id=7, key=secret, secret="s", token="t",
                      password="p", api_key=secret, session_token="x", note=f"made {secret} today",
                      nested={"api_key": secret, "ok": [secret, 1]})
    assert len(captured) == 1
    entry = json.loads(captured[0])
    assert entry["event"] == "key_created" and entry["key_id"] == 7 and entry["ts"].endswith("Z")
    assert secret not in captured[0]
    for name in ("key", "secret", "token", "password", "api_key", "session_token"):
        assert name not in entry
    assert entry["note"] == "made [redacted] today" and entry["nested"] == {"ok": ["[redacted]", 1]}


def test_audit_names_the_request_caller(captured: list[str]) -> None:
    token = audit.current_request.set({"account_id": "acc", "key_id": 3})
    try:
        audit.audit_event("project_deleted", project_id="p")
        audit.audit_event("key_revoked", account_id="owner", key_id=9)
    finally:
        audit.current_request.reset(token)
    first, second = (json.loads(line) for line in captured)
    assert first["account_id"] == "acc" and first["key_id"] == 3
    assert second["account_id"] == "owner" and second["key_id"] == 9   # given fields win


def test_kill_events_once_per_job(captured: list[str]) -> None:
    before = metrics._event_counts["timeout_kill"]
    result = {"killed_by": "timeout", "job_id": "unit-job-1", "exit_code": None}
    for _ in range(3):   # a finished job is polled many times
        audit.audit_exec_result("p1", "native.job", result)
    audit.audit_exec_result("p1", "native.exec", {"killed_by": "oom", "oom_killed": True})
    audit.audit_exec_result("p1", "native.exec", {"killed_by": "signal"})   # on request: no event
    audit.audit_exec_result("p1", "native.exec", {"killed_by": None, "exit_code": 0})
    events = [json.loads(line)["event"] for line in captured]
    assert events == ["timeout_kill", "oom_kill"]
    assert metrics._event_counts["timeout_kill"] == before + 1


def test_writer_drops_and_counts_when_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "QUEUE_SIZE", 5)
    monkeypatch.setattr(logs, "FLUSH_INTERVAL_S", 3600.0)   # the writer does not drain meanwhile
    logs.setup_logging("info", tmp_path / "x.log")
    try:
        before = logs.dropped_lines()
        for i in range(8):
            logs.write_line(json.dumps({"n": i}))
        assert logs.dropped_lines() == before + 3
    finally:
        logs.stop_logging()   # drains what is queued
        logging.getLogger().handlers[:] = []
    assert [json.loads(line)["n"] for line in (tmp_path / "x.log").read_text().splitlines()] == [0, 1, 2, 3, 4]


def test_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "FLUSH_INTERVAL_S", 0.01)
    logs.setup_logging("info", tmp_path / "r.log", max_bytes=300, backups=2,
                       audit_file=tmp_path / "audit.log")
    try:
        import time
        for i in range(40):
            logs.write_line(json.dumps({"n": i, "pad": "x" * 40}))
            logging.getLogger(logs.AUDIT_LOGGER).info(json.dumps({"event": "e", "n": i}), extra=logs.PREFORMATTED)
            time.sleep(0.02)
    finally:
        logs.stop_logging()
        logging.getLogger().handlers[:] = []
    assert (tmp_path / "r.log.1").exists() and (tmp_path / "r.log.2").exists()
    assert not (tmp_path / "r.log.3").exists()
    assert all(json.loads(line) for line in (tmp_path / "audit.log.1").read_text().splitlines())
    assert '"pad"' not in (tmp_path / "audit.log").read_text()   # only audit lines there


def test_metric_labels_are_bounded_and_registries_independent() -> None:
    a, b = metrics.Metrics(), metrics.Metrics()   # two apps in one process: no clash
    for i in range(metrics.MAX_LABEL_SETS + 50):
        a.observe("conat-hub", f"f{i}", 200, 0.001)
    text = a.render({}).decode()
    assert 'function="other"' in text
    assert text.count("projecthub_request_duration_seconds_count") <= metrics.MAX_LABEL_SETS + 1
    assert "projecthub_requests_total{" not in b.render({}).decode()
