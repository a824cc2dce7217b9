"""The NATS fabric's framing: chunking, bounded reassembly, host names that cannot be
subject wildcards, credentials files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from projecthub.errors import RemoteError
from projecthub.fabric import nats_wire
from projecthub.fabric.messages import FrameError
from projecthub.fabric.nats_config import host_permissions, write_config
from projecthub.fabric.nats_wire import Reassembler, check_host_name, chunks, load_credentials


def test_a_big_message_is_chunked_and_reassembled() -> None:
    message = {"t": "res", "ok": True, "result": "x" * 100_000}
    parts = list(chunks(message, 16 * 1024))
    assert len(parts) > 5 and all(len(p) <= 16 * 1024 for p in parts)
    r = Reassembler()
    assert [r.feed("s", p) for p in parts[:-1]] == [None] * (len(parts) - 1)
    assert r.feed("s", parts[-1])[0] == message
    assert chunks(message, 1 << 20).__next__()[:1] == b"="   # small enough: one message


def test_reassembly_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nats_wire, "MAX_FRAME", 50_000)
    r = Reassembler(max_partial=2)
    with pytest.raises(FrameError, match="exceeds"):
        for part in [b"+" + b"y" * 20_000] * 3:
            r.feed("big", part)
    for key in ("a", "b", "c"):   # a third message in reassembly drops the oldest
        r.feed(key, b"+[")
    assert list(r._partial) == ["b", "c"]
    with pytest.raises(FrameError):
        r.feed("z", b"?junk")
    with pytest.raises(RemoteError, match="too large"):
        list(chunks({"data": "x" * 60_000}, 1 << 20))


@pytest.mark.parametrize("name", ["", "H1", "h1.x", "*", ">", "h1>", "-h", "a" * 64, "h 1", "h\n1"])
def test_host_names_are_single_plain_subject_tokens(name: str) -> None:
    with pytest.raises(ValueError):
        check_host_name(name)
    with pytest.raises(ValueError):
        host_permissions(name)


def test_config_keeps_existing_passwords_and_files_are_private(tmp_path: Path) -> None:
    first = write_config(tmp_path, ["h1"])
    h1 = load_credentials(first["host-h1"])
    second = write_config(tmp_path, ["h1", "h2"])
    assert load_credentials(second["host-h1"]) == h1 and load_credentials(second["host-h2"]) != h1
    for path in second.values():
        assert path.stat().st_mode & 0o077 == 0
    config = json.loads(second["config"].read_text())
    users = {u["user"]: u for u in config["authorization"]["users"]}
    assert set(users) == {"hub", "host-h1", "host-h2"}
    assert users["host-h2"]["permissions"]["publish"]["allow"] == ["_R.h2.>", "ph.heartbeat.h2"]
    (tmp_path / "bad.creds").write_text('{"user": 1}')
    with pytest.raises(ValueError, match="needs string fields"):
        load_credentials(tmp_path / "bad.creds")
