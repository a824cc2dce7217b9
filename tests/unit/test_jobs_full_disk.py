"""Async jobs on a full project disk.

The bug: a job whose output filled the project's disk stayed "running" for good after its
processes ended.  Its final record could not be written (ENOSPC), the job left memory anyway,
and every later look read the job.json written while it ran.  Now a finished job whose record
is not on disk stays in memory (bounded) and is saved at a later look once there is room; a
record lost for good reads as an error that says so.

The state dir is a real 4 MiB tmpfs, filled for real by the job's own output.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from projecthub.project import jobs as jobs_module
from projecthub.project.context import ProjectContext
from projecthub.project.exec import job_manager
from projecthub.project.execution.options import parse_request
from projecthub.project.jobs import JobManager

from tests.conftest import require

pytestmark = pytest.mark.anyio

FLOOD = "head -c 20000000 /dev/zero | tr '\\0' x; echo end >&2"


@pytest.fixture
def small_ctx(ctx: ProjectContext, tmp_path: Path) -> Iterator[ProjectContext]:
    require("root, to mount a small tmpfs as the state dir", os.geteuid() == 0)
    state = tmp_path / "small-state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state)], check=True)
    try:
        yield dataclasses.replace(ctx, state_dir=state)
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def _on_disk(jobs: JobManager, job_id: str) -> dict:
    return json.loads((jobs.root / job_id / "job.json").read_text())


def _start(jobs: JobManager, ctx: ProjectContext, command: str, native: bool = True):
    return jobs.start(parse_request(ctx, {"command": command, "bash": True}, async_mode=True), native=native)


async def test_a_job_that_fills_the_disk_finishes_and_is_saved_once_there_is_room(small_ctx) -> None:
    jobs = job_manager(small_ctx)
    job = _start(jobs, small_ctx, FLOOD)
    rec = await jobs.wait(job.job_id, 30)
    assert rec["status"] == "completed" and rec["exit_code"] == 0, rec
    view = jobs.native_view(job.job_id)
    assert view["status"] == "completed" and "disk is full" in (view.get("stdout_error") or ""), view
    events = [ev async for ev in jobs.events(job.job_id)]
    assert events[-1]["event"] == "done" and events[-1]["record"]["status"] == "completed"
    assert _on_disk(jobs, job.job_id)["record"]["status"] == "running"   # the write failed

    os.truncate(jobs.root / job.job_id / "stdout", 0)   # room again
    assert jobs.get(job.job_id)["status"] == "completed"
    assert _on_disk(jobs, job.job_id)["record"]["status"] == "completed"
    assert not jobs._unsaved


async def test_a_job_started_on_a_full_disk_runs_and_finishes(small_ctx) -> None:
    jobs = job_manager(small_ctx)
    with open(Path(small_ctx.state_dir) / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    job = _start(jobs, small_ctx, "echo done", native=False)
    rec = await jobs.wait(job.job_id, 30)
    assert rec["status"] == "completed" and rec["stdout"] == "done\n", rec


async def test_a_record_lost_for_good_reads_as_an_error_not_running(small_ctx, monkeypatch) -> None:
    monkeypatch.setattr(jobs_module, "UNSAVED_MAX", 0)
    jobs = job_manager(small_ctx)
    job = _start(jobs, small_ctx, FLOOD, native=False)
    await jobs.wait(job.job_id, 30)
    rec = jobs.get(job.job_id)
    assert rec["status"] == "error" and rec["exit_code"] == 1, rec
    assert "final record could not be saved" in rec["stderr"]
    assert rec["stdout"].startswith("xxxx")
    events = [ev async for ev in jobs.events(job.job_id)]
    assert events[-1]["event"] == "done" and events[-1]["record"]["status"] == "error"
