"""native_exec (rich results, yield_after, idempotency, async, budget) and system_signal."""

from __future__ import annotations

import asyncio
import os
import time

import psutil
import pytest

from projecthub.errors import RemoteError
from projecthub.project.exec import job_manager, native_exec, system_exec, system_signal

pytestmark = pytest.mark.anyio


async def test_rich_result_normal_exit(ctx):
    r = await native_exec(ctx, {"command": "echo out; echo err >&2; exit 7"})
    assert r["exit_code"] == 7 and r["signal"] is None and r["killed_by"] is None
    assert not r["timed_out"]
    assert (r["stdout"], r["stderr"], r["stdout_bytes"], r["stderr_bytes"]) == ("out\n", "err\n", 4, 4)
    # no cgroups here: a command this small has no known peak (its ru_maxrss is this
    # process's, see tracking.own_maxrss), reported as 0 rather than ours
    assert r["wall_s"] > 0 and r["max_rss_bytes"] == 0
    assert "job_id" not in r


async def test_cpu_and_memory_accounting(ctx):
    # Without cgroups a child's ru_maxrss starts at this process's peak (tracking.own_maxrss),
    # so only a peak above ours is known: allocate 64 MiB more than this test process's peak
    # (which depends on the tests that ran before).
    import resource
    size = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 + (64 << 20)
    code = f"x = bytearray({size}); import time; t = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    r = await native_exec(ctx, {"command": "python3", "args": ["-c", code]})
    assert r["exit_code"] == 0
    assert r["cpu_user_s"] + r["cpu_sys_s"] >= 0.25
    assert r["max_rss_bytes"] >= size


async def test_killed_by_signal_and_timeout(ctx):
    r = await native_exec(ctx, {"command": "kill -TERM $$", "bash": True})
    assert r["exit_code"] is None and r["signal"] == "SIGTERM" and r["killed_by"] == "signal"
    r = await native_exec(ctx, {"command": "echo partial; sleep 30", "timeout": 0.3})
    assert r["timed_out"] and r["killed_by"] == "timeout" and r["stdout"] == "partial\n"


async def test_output_totals_beyond_cap(ctx):
    r = await native_exec(ctx, {"command": "head -c 100000 /dev/zero | tr '\\0' a", "max_output": 10})
    assert r["stdout"] == "a" * 10 and r["stdout_truncated"] and r["stdout_bytes"] == 100000
    assert not r["stderr_truncated"]


async def test_spawn_error(ctx):
    r = await native_exec(ctx, {"command": "nosuchprog_q", "args": []})
    assert r["exit_code"] is None and r["spawn_error"]["code"] == "ENOENT"


async def test_50mb_output_keeps_daemon_memory_bounded(ctx):
    me = psutil.Process()
    before = me.memory_info().rss
    r = await native_exec(ctx, {"command": "yes 0123456789abcdef | head -c 50000000", "max_output": 100})
    after = me.memory_info().rss
    assert r["stdout_bytes"] == 50_000_000 and len(r["stdout"]) == 100
    assert after - before < 10 << 20, f"daemon grew by {(after - before) >> 20} MiB"


async def test_yield_after_returns_running_record_then_finishes(ctx):
    t0 = time.monotonic()
    rec = await native_exec(ctx, {"command": "echo early; sleep 0.6; echo late", "yield_after": 0.2})
    assert time.monotonic() - t0 < 0.5
    assert rec["status"] == "running" and rec["stdout"] == "early\n" and rec["job_id"]
    done = await job_manager(ctx).wait(rec["job_id"])
    assert done["status"] == "completed" and done["stdout"] == "early\nlate\n"
    view = job_manager(ctx).native_view(rec["job_id"])
    assert view["exit_code"] == 0 and view["stdout_bytes"] == len("early\nlate\n")
    assert view["job_id"] == rec["job_id"]


async def test_yield_after_not_reached_returns_result(ctx):
    r = await native_exec(ctx, {"command": "echo quick", "yield_after": 5})
    assert r["stdout"] == "quick\n" and "job_id" not in r


async def test_yield_after_still_has_hard_timeout(ctx):
    rec = await native_exec(ctx, {"command": "sleep 30", "yield_after": 0.1, "timeout": 0.5})
    await job_manager(ctx).wait(rec["job_id"])
    view = job_manager(ctx).native_view(rec["job_id"])
    assert view["timed_out"] and view["status"] == "error"


async def test_async_native(ctx):
    rec = await native_exec(ctx, {"command": "echo hi", "async": True})
    assert rec["status"] == "running" and rec["type"] == "async"
    await job_manager(ctx).wait(rec["job_id"])
    assert job_manager(ctx).native_view(rec["job_id"])["stdout"] == "hi\n"


async def test_idempotency_key_runs_once(ctx):
    counter = ctx.home / "count"
    opts = {"command": f"echo x >> {counter}; cat {counter} | wc -l", "idempotency_key": "k-1"}
    a = await native_exec(ctx, dict(opts))
    b = await native_exec(ctx, dict(opts))
    assert a["job_id"] == b["job_id"] and a["stdout"] == b["stdout"] == "1\n"
    # concurrent first calls with a new key: still one run
    opts2 = {**opts, "idempotency_key": "k-2"}
    c, d = await asyncio.gather(native_exec(ctx, dict(opts2)), native_exec(ctx, dict(opts2)))
    assert c["job_id"] == d["job_id"] and counter.read_text() == "x\nx\n"
    # the mapping is durable: a fresh JobManager on the same state dir knows the key
    from projecthub.project.jobs import JobManager
    fresh = JobManager(ctx)
    fresh.load()
    assert fresh.find_key("k-1") == a["job_id"]


async def test_native_budget_conversion(ctx):
    with pytest.raises(RemoteError) as info:
        await native_exec(ctx, {"command": "sleep 0.5; echo ok"}, budget_s=0.1)
    assert "timeout" in info.value.message
    job_id = info.value.extra["job_id"]
    await job_manager(ctx).wait(job_id)
    assert job_manager(ctx).native_view(job_id)["stdout"] == "ok\n"


async def test_native_bad_input(ctx):
    for opts, text in [
        ({"command": "x", "yield_after": -1}, "error invalid yield_after"),
        ({"command": "x", "idempotency_key": 5}, "error invalid idempotency_key"),
        ({"command": "x", "compute_server_id": 2}, "no connection to compute server"),
        ({"command": "x", "max_output": -1}, "error invalid max_output"),
    ]:
        with pytest.raises(RemoteError) as info:
            await native_exec(ctx, opts)
        assert info.value.message.startswith(text)


# ---------------------------------------------------------------- system.signal

async def test_signal_project_process(ctx):
    rec = await system_exec(ctx, {"command": "sleep", "args": ["30"], "async_call": True})
    assert await system_signal(ctx, {"signal": 9, "pid": rec["pid"]}) is None
    done = await system_exec(ctx, {"async_get": rec["job_id"], "async_await": True})
    assert done["status"] == "completed" and done["exit_code"] == 0   # killed externally


async def test_signal_refuses_foreign_and_reports_last_failure(ctx):
    with pytest.raises(RemoteError) as info:
        await system_signal(ctx, {"signal": 0, "pid": 1})
    assert info.value.message == "Error: kill EPERM"
    with pytest.raises(RemoteError) as info:
        await system_signal(ctx, {"signal": 0, "pid": os.getpid()})
    assert info.value.message == "Error: kill EPERM"
    with pytest.raises(RemoteError) as info:
        await system_signal(ctx, {"signal": 0, "pids": [1, 4_000_000]})
    assert info.value.message == "Error: kill ESRCH"
    with pytest.raises(RemoteError) as info:
        await system_signal(ctx, {"signal": "KILL", "pid": 1})
    assert info.value.message == "Error: kill EINVAL"


async def test_kill_on_output_limit(ctx):
    r = await native_exec(ctx, {"command": "yes", "max_output": 1000, "kill_on_output_limit": True})
    assert r["killed_by"] == "output" and r["stdout_truncated"] and len(r["stdout"]) == 1000
