"""Durable async jobs: persistence across a JobManager reload, streaming, retention."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time

import pytest

from projecthub.errors import RemoteError
from projecthub.project.exec import job_manager, system_exec
from projecthub.project.execution.options import parse_request
from projecthub.project.jobs import JobManager, utf8_safe_end

pytestmark = pytest.mark.anyio


def start(jobs: JobManager, ctx, opts: dict, *, native: bool = False):
    return jobs.start(parse_request(ctx, opts, async_mode=True), native=native)


async def collect(jobs: JobManager, job_id: str, **offsets) -> list[dict]:
    return [ev async for ev in jobs.events(job_id, **offsets)]


async def test_finished_job_survives_reload_with_full_output(ctx):
    jobs = job_manager(ctx)
    # 3 MB of output: the record keeps the 1 MiB default head, the file keeps everything.
    job = start(jobs, ctx, {"command": "yes abcdefghi | head -c 3000000; echo tail >&2"})
    await jobs.wait(job.job_id)
    fresh = JobManager(ctx)
    fresh.load()
    rec = fresh.get(job.job_id)
    assert rec["status"] == "completed" and rec["stderr"] == "tail\n"
    assert rec["stdout"].startswith("abcdefghi\n") and rec["stdout"].endswith(" (truncated at 1048576 characters)")
    full = await fresh.read_output(job.job_id, "stdout", 0, 10 << 20)
    assert full == b"abcdefghi\n" * 300000
    assert await fresh.read_output(job.job_id, "stdout", 2999990, 100) == b"abcdefghi\n"


async def test_running_job_of_dead_daemon_is_marked_error_and_its_processes_stopped(ctx, tmp_path):
    jobs = job_manager(ctx)
    job = start(jobs, ctx, {"command": "echo started; sleep 30"})
    await asyncio.sleep(0.3)
    # A daemon that died mid-job left this state dir behind; "restart" on a copy of it.
    state2 = tmp_path / "state2"
    shutil.copytree(ctx.state_dir, state2)
    restarted = JobManager(dataclasses.replace(ctx, state_dir=state2))
    restarted.load()
    rec = restarted.get(job.job_id)
    assert rec["status"] == "error" and rec["exit_code"] == 1
    assert rec["stdout"] == "started\n" and "daemon stopped while this job was running" in rec["stderr"]
    assert isinstance(rec["elapsed_s"], float)
    # its processes (found by marker) were killed, so the original job ends at once
    done = await asyncio.wait_for(jobs.wait(job.job_id), 2)
    assert done["status"] != "running"


async def test_events_stream_live_then_done(ctx):
    jobs = job_manager(ctx)
    job = start(jobs, ctx, {"command": "echo one; sleep 0.3; echo two >&2; sleep 0.3; echo three"}, native=True)
    seen: list[tuple[float, dict]] = []
    t0 = time.monotonic()
    async for ev in jobs.events(job.job_id):
        seen.append((time.monotonic() - t0, ev))
    kinds = [ev["event"] for _, ev in seen if ev["event"] != "stats"]
    assert kinds == ["stdout", "stderr", "stdout", "done"]
    assert seen[0][0] < 0.2                          # streamed as it happened, not at the end
    assert [ev["data"] for _, ev in seen if ev["event"] in ("stdout", "stderr")] == ["one\n", "two\n", "three\n"]
    assert [ev["offset"] for _, ev in seen if ev["event"] == "stdout"] == [0, 4]
    done = seen[-1][1]["record"]
    assert done["exit_code"] == 0 and done["stdout"] == "one\nthree\n" and done["job_id"] == job.job_id


async def test_events_resume_from_offset_after_finish(ctx):
    jobs = job_manager(ctx)
    job = start(jobs, ctx, {"command": "printf 'hello world'; printf 'E' >&2"})
    await jobs.wait(job.job_id)
    evs = await collect(jobs, job.job_id, offset_stdout=6, offset_stderr=1)
    assert evs[0] == {"event": "stdout", "offset": 6, "end": 11, "data": "world"}
    assert [e["event"] for e in evs] == ["stdout", "done"]
    assert evs[-1]["record"]["status"] == "completed"
    # reload: events come from disk
    fresh = JobManager(ctx)
    fresh.load()
    evs = await collect(fresh, job.job_id)
    assert "".join(e["data"] for e in evs if e["event"] == "stdout") == "hello world"
    assert sum(e["event"] == "done" for e in evs) == 1


async def test_events_unknown_job(ctx):
    evs = await collect(job_manager(ctx), "00000000-0000-4000-8000-00000000dead")
    assert evs == [{"event": "error",
                    "error": "Error: Async operation '00000000-0000-4000-8000-00000000dead' does not exist."}]
    with pytest.raises(RemoteError):
        await job_manager(ctx).read_output("nope", "stdout", 0, 10)


async def test_events_stats(ctx):
    jobs = job_manager(ctx)
    job = start(jobs, ctx, {"command": "sleep 1.3"})
    stats = [ev for ev in await collect(jobs, job.job_id) if ev["event"] == "stats"]
    assert stats and {"timestamp", "mem_rss", "cpu_pct", "cpu_secs"} <= set(stats[0])


async def test_multibyte_output_never_split_in_events(ctx):
    jobs = job_manager(ctx)
    job = start(jobs, ctx, {"command": "python3 -c \"import sys,time\nfor i in range(3):\n"
                                       " sys.stdout.buffer.write('é'.encode()[:1]); sys.stdout.flush(); time.sleep(0.1)\n"
                                       " sys.stdout.buffer.write('é'.encode()[1:]); sys.stdout.flush()\""})
    evs = await collect(jobs, job.job_id)
    data = [e["data"] for e in evs if e["event"] == "stdout"]
    assert "".join(data) == "ééé" and all("\ufffd" not in d for d in data)


def test_utf8_safe_end():
    e = "é".encode()
    assert utf8_safe_end(b"ab") == 2
    assert utf8_safe_end(b"a" + e[:1]) == 1
    assert utf8_safe_end(b"a" + e) == 3
    assert utf8_safe_end("€".encode()[:2]) == 0


async def test_retention_by_count_and_age(ctx):
    jobs = JobManager(ctx, max_jobs=3)
    ids = []
    for i in range(5):
        job = start(jobs, ctx, {"command": f"echo {i}"})
        await jobs.wait(job.job_id)
        ids.append(job.job_id)
    assert [jobs.get(i) is not None for i in ids] == [False, False, True, True, True]
    assert sorted(p.name for p in (ctx.state_dir / "jobs").iterdir()) == sorted(ids[2:])
    aged = JobManager(ctx, ttl_s=0)
    aged.load()
    assert not list((ctx.state_dir / "jobs").iterdir())


async def test_running_jobs_are_never_evicted(ctx):
    jobs = JobManager(ctx, max_jobs=1)
    a = start(jobs, ctx, {"command": "sleep 0.5"})
    b = start(jobs, ctx, {"command": "echo b"})
    assert jobs.get(a.job_id)["status"] == "running"
    await jobs.wait(a.job_id)
    await jobs.wait(b.job_id)


async def test_shutdown_finishes_running_jobs(ctx):
    jobs = JobManager(ctx)
    job = start(jobs, ctx, {"command": "sleep 30"})
    await asyncio.wait_for(jobs.shutdown(), 2)
    rec = jobs.get(job.job_id)
    assert rec["status"] == "error" and rec["stderr"].startswith("killed command")


async def test_async_output_cap_and_spill(ctx):
    rec = await system_exec(ctx, {"command": "head -c 5000 /dev/zero | tr '\\0' z", "async_call": True,
                                  "max_output": 100})
    done = await system_exec(ctx, {"async_get": rec["job_id"], "async_await": True})
    assert done["stdout"] == "z" * 100 + " (truncated at 100 characters)"
    assert len(await job_manager(ctx).read_output(rec["job_id"], "stdout", 0, 1 << 20)) == 5000


async def test_native_jobs_api_wrappers(ctx):
    from projecthub.project.exec import job_events, job_kill, job_list, job_output, job_record, native_exec

    rec = await native_exec(ctx, {"command": "printf 'héllo'; sleep 30", "async": True})
    job_id = rec["job_id"]
    await asyncio.sleep(0.2)
    # a range that would end inside "é" is shortened to a character boundary
    part = await job_output(ctx, {"job_id": job_id, "stream": "stdout", "offset": 0, "length": 2})
    assert part == {"data": "h", "offset": 0, "end": 1, "total": 6, "encoding": "utf-8"}
    assert [j["job_id"] for j in await job_list(ctx)][0] == job_id
    assert await job_kill(ctx, {"job_id": job_id}) == {"job_id": job_id, "killed": True}
    view = await job_record(ctx, {"job_id": job_id, "wait": True}, budget_s=2)
    assert view["status"] == "killed" and view["killed_by"] == "signal" and view["stdout"] == "héllo"
    assert "stats" not in view
    assert await job_kill(ctx, {"job_id": job_id}) == {"job_id": job_id, "killed": False}
    evs = [e async for e in job_events(ctx, {"job_id": job_id, "offset_stdout": 1})]
    assert evs[0] == {"event": "stdout", "offset": 1, "end": 6, "data": "éllo"}
    assert evs[-1]["event"] == "done"
    for bad in ({"job_id": "x"}, {}):
        with pytest.raises(RemoteError, match="does not exist"):
            await job_record(ctx, bad)


async def test_load_validates_quarantines_and_caps(ctx, monkeypatch):
    """Review item 6: load() never raises on what the project planted in its jobs dir, and
    reads only the newest LOAD_MAX job dirs."""
    import json
    import os

    from projecthub.project import jobs as jobs_mod
    jobs = job_manager(ctx)
    good = start(jobs, ctx, {"command": "echo ok"})
    await jobs.wait(good.job_id)
    root = jobs.root
    bad = {
        "00000000-0000-4000-8000-000000000001": '{"meta": {"x": 1}, "record": {"status": "done"}}',
        "00000000-0000-4000-8000-000000000002": "null",
        "00000000-0000-4000-8000-000000000003": "[" * 50000,
        "00000000-0000-4000-8000-000000000004": json.dumps({
            "meta": {"start": 1, "group": "../escape"},
            "record": {"status": "running", "job_id": "00000000-0000-4000-8000-000000000004", "start": 1}}),
    }
    for job_id, text in bad.items():
        (root / job_id).mkdir()
        (root / job_id / "job.json").write_text(text)
    os.mkfifo(root / "00000000-0000-4000-8000-000000000005")          # not a dir: ignored
    (root / "00000000-0000-4000-8000-000000000006").mkdir()
    os.mkfifo(root / "00000000-0000-4000-8000-000000000006" / "job.json")
    fresh = JobManager(ctx)
    fresh.load()
    assert fresh.get(good.job_id)["status"] == "completed"
    for job_id in [*bad, "00000000-0000-4000-8000-000000000006"]:
        assert fresh.get(job_id) is None
        assert (root / job_id / "job.json.bad").exists()
    # the cap: with LOAD_MAX = 1 only the newest dir is read
    os.utime(root / good.job_id, (time.time() + 100, time.time() + 100))
    monkeypatch.setattr(jobs_mod, "LOAD_MAX", 1)
    capped = JobManager(ctx)
    capped.load()
    assert [j["job_id"] for j in capped.list()] == [good.job_id]


async def test_load_leaves_oversized_job_files_alone(ctx, monkeypatch):
    """A job.json over the per-file (or the whole start's) byte budget is not read, and not
    quarantined either: it may be a legitimate job with a large result."""
    from projecthub.project import jobs as jobs_mod
    jobs = job_manager(ctx)
    job = start(jobs, ctx, {"command": "echo ok"})
    await jobs.wait(job.job_id)
    size = (jobs.root / job.job_id / "job.json").stat().st_size
    monkeypatch.setattr(jobs_mod, "JOB_FILE_MAX", size - 1)
    fresh = JobManager(ctx)
    fresh.load()
    assert fresh.get(job.job_id) is None
    assert (jobs.root / job.job_id / "job.json").exists()
    monkeypatch.setattr(jobs_mod, "JOB_FILE_MAX", 64 << 20)
    monkeypatch.setattr(jobs_mod, "LOAD_BYTES_MAX", size - 1)
    fresh = JobManager(ctx)
    fresh.load()
    assert fresh.get(job.job_id) is None
    monkeypatch.setattr(jobs_mod, "LOAD_BYTES_MAX", size)
    fresh = JobManager(ctx)
    fresh.load()
    assert fresh.get(job.job_id)["status"] == "completed"
