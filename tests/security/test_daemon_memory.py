"""Item 11: a project cannot OOM-kill its own daemon with what it prints or reads.

The attacks: ten concurrent execs each printing 17 M emoji (68 MB, 4 bytes a character,
so the daemon's decoded text is as big as the bytes) under a 512 MiB project limit; and
``readTextFileFromProject`` of ``/dev/zero`` and of a 100 GiB sparse file.  Before the fix
the daemon kept up to 16 M characters per stream and read files whole, and died.  Now
output is capped in bytes while it is read (per stream and per daemon) and file reads
refuse devices and files over a size limit, so the daemon answers and survives.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

import httpx
import pytest

from tests.security.conftest import Proj, require_cgroup, require_sandbox

EMOJI_LINE = "\U0001F600" * 64
PRINT_17M_EMOJI = f"yes '{EMOJI_LINE}' | head -c 68000000"


@pytest.fixture
def limited(fresh_a) -> Proj:
    require_sandbox()
    require_cgroup("memory")
    p = fresh_a()
    p.set_limits(memory_bytes=512 * 2**20)
    assert p.run("true")["exit_code"] == 0
    return p


def _project_call(p: Proj, name: str, *args: Any) -> Any:
    """The CoCalc project API (/api/conat/project), as the official client sends it."""
    r = httpx.post(p.server.url + "/api/conat/project", auth=(p.key, ""), timeout=120,
                   json={"project_id": p.project_id, "name": name, "args": list(args)})
    assert r.status_code < 500, r.text[:300]
    return r.json()


def _daemon(p: Proj) -> tuple[str, int]:
    status = p.info()["status"]
    return status["instance_id"], status["project.pid"]


def test_concurrent_emoji_floods_do_not_kill_the_daemon(limited: Proj) -> None:
    p = limited
    before = _daemon(p)

    def flood(_: int) -> tuple[int, dict]:
        r = p.v3("POST", "/exec", {"command": PRINT_17M_EMOJI, "bash": True, "timeout": 60}, timeout=120)
        return r.status_code, (r.json() if r.headers.get("content-type", "").startswith("application/json") else {"text": r.text})

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(flood, range(10)))
    for status, body in results:
        assert status == 200, (status, str(body)[:300])
        assert body["exit_code"] == 0, str(body)[:300]
        assert body["stdout_truncated"] is True
        assert body["stdout_bytes"] == 68_000_000          # everything was counted...
        assert len(body["stdout"].encode()) <= 16 * 2**20    # ...but only a bounded head kept
        assert body["stdout"].startswith(EMOJI_LINE)
    assert _daemon(p) == before
    assert p.run("echo survived")["stdout"] == "survived\n"


def test_blocking_cocalc_exec_is_truncated_not_fatal(limited: Proj) -> None:
    """The CoCalc surface (no max_output: unbounded in CoCalc) gets a truncated answer."""
    p = limited
    before = _daemon(p)
    out = p.client.system.exec(command=PRINT_17M_EMOJI, bash=True, timeout=60)
    assert out["exit_code"] == 0
    assert out["stdout"].startswith(EMOJI_LINE) and "(truncated at" in out["stdout"][-80:]
    assert _daemon(p) == before


@pytest.mark.parametrize("setup, path, expect", [
    ("true", "/dev/zero", "not a regular file"),
    ("truncate -s 100G sparse.bin", "sparse.bin", "too large"),
    ("mkfifo fifo", "fifo", "not a regular file"),
])
def test_reading_devices_and_huge_files_is_refused(limited: Proj, setup: str, path: str, expect: str) -> None:
    p = limited
    before = _daemon(p)
    assert p.run(setup)["exit_code"] == 0
    answer = _project_call(p, "system.readTextFileFromProject", {"path": path})
    assert isinstance(answer, dict) and expect in answer.get("error", ""), str(answer)[:300]
    assert _daemon(p) == before
    # a normal file still reads
    assert _project_call(p, "system.writeTextFileToProject", {"path": "ok.txt", "content": "fine\n"}) is None
    assert _project_call(p, "system.readTextFileFromProject", {"path": "ok.txt"}) == "fine\n"
