"""system.exec at the engine level: checklist items 10-26 of the CoCalc spec, with real
processes, plus our documented deviations and input validation."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid

import psutil
import pytest

from projecthub.errors import RemoteError
from projecthub.project.exec import system_exec
from projecthub.project.tracking_fallback import MARKER_ENV

pytestmark = pytest.mark.anyio


async def exec_error(ctx, opts, **kw) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        await system_exec(ctx, opts, **kw)
    return info.value


def marked_processes() -> list[int]:
    """Live descendants of this (subreaper) test process that carry an exec marker:
    survivors of our execs, including setsid/double-fork escapes."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and MARKER_ENV in p.environ():
                out.append(p.pid)
        except psutil.Error:
            pass
    return out


# ---------------------------------------------------------------- 10-12 basics

async def test_10_echo_exact(ctx):
    assert await system_exec(ctx, {"command": "echo 'hello from cocalc'"}) == {
        "type": "blocking", "stdout": "hello from cocalc\n", "stderr": "", "exit_code": 0}


async def test_11_direct_exec_date(ctx):
    r = await system_exec(ctx, {"command": "date", "args": ["-Is"]})
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d\n$", r["stdout"])
    # direct: a program literally named "ls -l" does not exist
    err = await exec_error(ctx, {"command": "ls -l", "args": ["x"]})
    assert "ENOENT" in err.message and "spawn ls -l" in err.message


async def test_12_forced_bash_and_quoting(ctx):
    r = await system_exec(ctx, {"command": "echo 'abc' | wc -c", "bash": False})
    assert r["stdout"].strip() == "4"
    r = await system_exec(ctx, {"bash": True, "command": "echo", "args": ["a b"]})
    assert r["stdout"] == "a b\n"
    r = await system_exec(ctx, {"bash": True, "command": "printf", "args": ["%s|", "it's", "$HOME", "*"]})
    assert r["stdout"] == "it's|$HOME|*|"
    # leading whitespace yields an empty piece, which forces bash too
    r = await system_exec(ctx, {"command": " pwd"})
    assert r["stdout"] == f"{ctx.home}\n"


# ---------------------------------------------------------------- 13-16 errors

async def test_13_nonzero_exit_bash(ctx):
    err = await exec_error(ctx, {"command": "echo 'x' >&2; exit 42", "bash": True})
    assert err.message == "command 'echo 'x' >&2; exit 42' exited with nonzero code 42 -- stderr='x\n'"


async def test_13_bash_args_display_is_quoted_line(ctx):
    err = await exec_error(ctx, {"bash": True, "command": "exit", "args": ["3"]})
    assert err.message == "command 'exit 3' exited with nonzero code 3 -- stderr=''"


async def test_14_err_on_exit_false(ctx):
    r = await system_exec(ctx, {"command": "echo out; echo err >&2; exit 3", "err_on_exit": False})
    assert r == {"type": "blocking", "stdout": "out\n", "stderr": "err\n", "exit_code": 3}


async def test_15_direct_formatting_and_stderr_cut(ctx):
    err = await exec_error(ctx, {"command": "ls", "args": ["/nonexistent"]})
    assert err.message.startswith("command ''ls' (args=/nonexistent)' exited with nonzero code")
    err = await exec_error(ctx, {"command": "python3 -c \"import sys; sys.stderr.write('e'*3000); sys.exit(1)\""})
    stderr = err.message.split("-- stderr='", 1)[1][:-1]
    assert stderr == "e" * 1023 + "\u2026"
    err = await exec_error(ctx, {"command": "python3 -c \"import sys; sys.stderr.write('e'*1024); sys.exit(1)\""})
    assert err.message.endswith("e" * 1024 + "'")


async def test_16_unknown_program(ctx):
    err = await exec_error(ctx, {"command": "nosuchprog"})
    assert err.message.startswith("command ''nosuchprog' (args=)' exited with nonzero code 1 -- stderr='{")
    blob = json.loads(err.message.split("stderr='", 1)[1][:-1])
    assert blob == {"errno": -2, "code": "ENOENT", "syscall": "spawn nosuchprog",
                    "path": "nosuchprog", "spawnargs": []}
    err = await exec_error(ctx, {"command": "nosuchprog", "args": ["x"], "err_on_exit": False})
    assert err.message.startswith("command ''nosuchprog' (args=x)' was not able to run -- stderr='{")
    assert '"spawnargs":["x"]' in err.message


async def test_16_permission_denied(ctx):
    script = ctx.home / "noexec.sh"
    script.write_text("echo hi\n")
    err = await exec_error(ctx, {"command": str(script), "args": ["a"]})
    assert '"code":"EACCES"' in err.message and '"errno":-13' in err.message


# ---------------------------------------------------------------- 17 timeout

async def test_17_timeout_kills_group(ctx):
    t0 = time.monotonic()
    err = await exec_error(ctx, {"command": "echo started; sleep 60", "timeout": 1})
    elapsed = time.monotonic() - t0
    assert 0.9 < elapsed < 1.5
    assert re.fullmatch(rf"killed command 'bash {re.escape(str(ctx.tmp_dir))}/cocalc-[A-Za-z0-9]{{6}}/a\.sh'",
                        err.message)
    # deviation: partial output travels with the error
    assert err.extra == {"stdout": "started\n", "stderr": "", "killed_by": "timeout"}
    assert not marked_processes()
    assert os.listdir(ctx.tmp_dir) == []          # the script dir is removed


async def test_17_timeout_direct_mode_text(ctx):
    err = await exec_error(ctx, {"command": "sleep", "args": ["30"], "timeout": 0.3})
    assert err.message == "killed command 'sleep 30'"
    err = await exec_error(ctx, {"command": "yes", "timeout": 0.2, "max_output": 10})
    assert err.message == "killed command 'yes '"


async def test_17_setsid_and_double_fork_escape_are_killed(ctx):
    cmd = ("setsid sleep 300 & (setsid bash -c 'sleep 301 & exit' &) ; "
           "bash -c '(sleep 302 &) &'; echo ready; sleep 100")
    t0 = time.monotonic()
    err = await exec_error(ctx, {"command": cmd, "timeout": 1})
    assert time.monotonic() - t0 < 1.6
    assert err.extra["stdout"] == "ready\n"
    assert not marked_processes()
    assert not [p for p in psutil.Process().children(recursive=True)
                if p.status() != psutil.STATUS_ZOMBIE and p.cmdline()[:1] == ["sleep"]]


async def test_background_holding_stdout_does_not_hang(ctx):
    # CoCalc would wait for the background sleep's EOF; we stop at the timeout.
    t0 = time.monotonic()
    err = await exec_error(ctx, {"command": "sleep 30 & echo main-done", "timeout": 0.7})
    assert time.monotonic() - t0 < 1.3
    assert err.extra["stdout"] == "main-done\n" and err.extra["killed_by"] == "timeout"
    assert not marked_processes()


async def test_finished_exec_leaves_nothing_behind(ctx):
    r = await system_exec(ctx, {"command": "sleep 100 > /dev/null 2>&1 & echo bg"})
    assert r["stdout"] == "bg\n"
    assert not marked_processes()


async def test_timeout_zero_means_no_limit_and_no_ulimit(ctx):
    r = await system_exec(ctx, {"command": "ulimit -t", "timeout": 0})
    assert r["stdout"] == "unlimited\n"
    r = await system_exec(ctx, {"command": "ulimit -t", "timeout": 2.5})
    assert r["stdout"] == "3\n"
    r = await system_exec(ctx, {"command": "ulimit -t", "timeout": 5, "ulimit_timeout": False})
    assert r["stdout"] == "unlimited\n"


async def test_bash_error_line_number_includes_ulimit_line(ctx):
    err = await exec_error(ctx, {"command": "nosuchcmd_zz bar"})
    assert re.fullmatch(r"command 'nosuchcmd_zz bar' exited with nonzero code 127 -- "
                        r"stderr='.*/cocalc-[A-Za-z0-9]{6}/a\.sh: line 2: nosuchcmd_zz: command not found\n'",
                        err.message)


# ---------------------------------------------------------------- 18 max_output

async def test_18_max_output(ctx):
    r = await system_exec(ctx, {"command": "echo xyz abc", "max_output": 3})
    assert r["stdout"] == "xyz (truncated at 3 characters)"
    r = await system_exec(ctx, {"command": "echo xyz abc", "max_output": 0})
    assert r["stdout"] == " (truncated at 0 characters)"
    r = await system_exec(ctx, {"command": "printf abc", "max_output": 3})   # exactly M: suffix too
    assert r["stdout"] == "abc (truncated at 3 characters)"
    r = await system_exec(ctx, {"command": "echo hi; echo 0123456789 >&2", "max_output": 5})
    assert r["stdout"] == "hi\n" and r["stderr"] == "01234 (truncated at 5 characters)"
    # errors never carry the suffix
    err = await exec_error(ctx, {"command": "echo 0123456789 >&2; exit 1", "max_output": 4})
    assert err.message.endswith("stderr='0123'")


async def test_18_unicode_cap_in_characters(ctx):
    r = await system_exec(ctx, {"command": "printf 'ééééé'", "max_output": 3})
    assert r["stdout"] == "ééé (truncated at 3 characters)"


# ---------------------------------------------------------------- 19-20 cwd/env

async def test_19_working_directory(ctx):
    (ctx.home / "sub").mkdir()
    assert (await system_exec(ctx, {"command": "pwd", "path": "sub"}))["stdout"] == f"{ctx.home}/sub\n"
    assert (await system_exec(ctx, {"command": "pwd", "path": "/tmp"}))["stdout"] == "/tmp\n"
    assert (await system_exec(ctx, {"command": "pwd"}))["stdout"] == f"{ctx.home}\n"
    r = await system_exec(ctx, {"command": "pwd", "path": "sub", "cwd": "/"})
    assert r["stdout"] == "/\n"
    other = ctx.home / "other"
    (other / "sub").mkdir(parents=True)
    r = await system_exec(ctx, {"command": "pwd", "path": "sub", "home": str(other)})
    assert r["stdout"] == f"{other}/sub\n"


async def test_19_missing_directory_is_enoent_naming_program(ctx):
    err = await exec_error(ctx, {"command": "pwd", "path": "nope"})
    assert '"code":"ENOENT"' in err.message and '"syscall":"spawn pwd"' in err.message
    err = await exec_error(ctx, {"command": "echo a b", "path": "nope"})
    assert '"syscall":"spawn bash"' in err.message


async def test_20_env(ctx):
    r = await system_exec(ctx, {"command": "echo $FOO:$NUM:$NUL:$T:$HOME",
                                "env": {"FOO": "bar", "NUM": 1.0, "NUL": None, "T": True}})
    assert r["stdout"] == f"bar:1:null:true:{ctx.home}\n"
    # the group marker cannot be spoofed by the caller
    r = await system_exec(ctx, {"command": "printenv", "args": [MARKER_ENV], "env": {MARKER_ENV: "evil"}})
    assert r["stdout"].strip() != "evil"


# ---------------------------------------------------------------- 21-22

async def test_21_stdin_is_eof_deviation(ctx):
    t0 = time.monotonic()
    r = await system_exec(ctx, {"command": "cat", "timeout": 5})
    assert r == {"type": "blocking", "stdout": "", "stderr": "", "exit_code": 0}
    assert time.monotonic() - t0 < 1


async def test_22_killed_by_signal_is_success(ctx):
    r = await system_exec(ctx, {"command": "echo before; kill -9 $$", "bash": True})
    assert r == {"type": "blocking", "stdout": "before\n", "stderr": "", "exit_code": 0}


# ---------------------------------------------------------------- 23-26 async

async def test_23_async_call_record(ctx):
    r = await system_exec(ctx, {"command": "sleep 0.5; echo done", "async_call": True})
    assert r["type"] == "async" and r["status"] == "running"
    assert uuid.UUID(r["job_id"]).version == 4
    assert isinstance(r["start"], int) and abs(r["start"] / 1000 - time.time()) < 5
    assert isinstance(r["pid"], int)
    assert (r["stdout"], r["stderr"], r["exit_code"]) == ("", "", 0)
    assert "stats" not in r and "elapsed_s" not in r
    await system_exec(ctx, {"async_get": r["job_id"], "async_await": True})


async def test_24_async_get(ctx):
    r = await system_exec(ctx, {"command": "echo first; sleep 0.6; echo second", "async_call": True})
    job_id = r["job_id"]
    await asyncio.sleep(0.3)
    mid = await system_exec(ctx, {"async_get": job_id})
    assert mid["status"] == "running" and mid["stdout"] == "first\n" and "elapsed_s" not in mid
    done = await system_exec(ctx, {"async_get": job_id, "async_await": True})
    assert done["status"] == "completed" and done["stdout"] == "first\nsecond\n"
    assert isinstance(done["elapsed_s"], float) and done["job_id"] == job_id
    err = await exec_error(ctx, {"async_get": "nope"})
    assert err.message == "Error: Async operation 'nope' does not exist."
    err = await exec_error(ctx, {"async_get": "../../etc"})
    assert err.message == "Error: Async operation '../../etc' does not exist."


async def test_25_async_failure_normalization(ctx):
    async def final(opts):
        r = await system_exec(ctx, {**opts, "async_call": True})
        return await system_exec(ctx, {"async_get": r["job_id"], "async_await": True})

    r = await final({"command": "echo out; echo bad >&2; exit 3"})
    assert (r["status"], r["stdout"], r["stderr"], r["exit_code"]) == ("error", "", "bad\n", 1)
    r = await final({"command": "echo out; exit 3"})
    assert (r["status"], r["stdout"], r["stderr"], r["exit_code"]) == ("error", "", "No result", 1)
    r = await final({"command": "echo out; exit 3", "err_on_exit": False})
    assert (r["status"], r["stdout"], r["stderr"], r["exit_code"]) == ("completed", "out\n", "", 3)
    r = await final({"command": "echo out; sleep 10", "timeout": 0.3})
    assert r["status"] == "error" and r["stdout"] == "" and r["exit_code"] == 1
    assert re.fullmatch(r"killed command 'bash .*/cocalc-[A-Za-z0-9]{6}/a\.sh'", r["stderr"])
    r = await final({"command": "nosuchprog"})
    assert r["status"] == "error" and r["exit_code"] == 1 and json.loads(r["stderr"])["code"] == "ENOENT"
    assert "pid" not in r
    r = await final({"command": "nosuchprog", "err_on_exit": False})
    assert r["stderr"].startswith("command ''nosuchprog' (args=)' was not able to run -- stderr='{")
    r = await final({"command": "kill -9 $$"})
    assert (r["status"], r["exit_code"]) == ("completed", 0)
    r = await final({"command": "echo xyz abc", "max_output": 3})
    assert r["stdout"] == "xyz (truncated at 3 characters)"


async def test_26_await_and_stats(ctx):
    r = await system_exec(ctx, {"command": "echo $TEST_ENV; for i in 1 2 3; do sleep 0.5; done; echo i=10",
                                "env": {"TEST_ENV": "123"}, "async_call": True})
    done = await system_exec(ctx, {"async_get": r["job_id"], "async_await": True, "async_stats": True})
    assert done["status"] == "completed" and done["stdout"].splitlines()[0] == "123"
    assert "i=10" in done["stdout"]
    assert done["stats"] and set(done["stats"][0]) == {"timestamp", "mem_rss", "cpu_pct", "cpu_secs"}
    plain = await system_exec(ctx, {"async_get": r["job_id"]})
    assert "stats" not in plain


async def test_async_await_bounded_by_budget(ctx):
    r = await system_exec(ctx, {"command": "sleep 1", "async_call": True})
    t0 = time.monotonic()
    rec = await system_exec(ctx, {"async_get": r["job_id"], "async_await": True}, budget_s=0.3)
    assert rec["status"] == "running" and time.monotonic() - t0 < 0.8
    await system_exec(ctx, {"async_get": r["job_id"], "async_await": True})


# ---------------------------------------------------------------- budget conversion

async def test_budget_converts_blocking_exec_into_job(ctx):
    t0 = time.monotonic()
    err = await exec_error(ctx, {"command": "echo one; sleep 0.8; echo two"}, budget_s=0.3)
    assert time.monotonic() - t0 < 0.7
    job_id = err.extra["job_id"]
    assert err.message == (f"timeout: the call's time budget ran out after 0.3s; the command keeps "
                           f"running as async job {job_id} (poll it with async_get)")
    rec = await system_exec(ctx, {"async_get": job_id, "async_await": True})
    assert rec["status"] == "completed" and rec["stdout"] == "one\ntwo\n"


async def test_budget_job_keeps_its_own_timeout(ctx):
    err = await exec_error(ctx, {"command": "sleep 30", "timeout": 0.6}, budget_s=0.2)
    rec = await system_exec(ctx, {"async_get": err.extra["job_id"], "async_await": True})
    assert rec["status"] == "error" and rec["stderr"].startswith("killed command")
    assert not marked_processes()


async def test_cancelled_caller_kills_the_exec(ctx):
    task = asyncio.ensure_future(system_exec(ctx, {"command": "sleep 30"}))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not marked_processes()


# ---------------------------------------------------------------- misc options

async def test_compute_server(ctx):
    assert (await system_exec(ctx, {"command": "true", "compute_server_id": 0}))["exit_code"] == 0
    err = await exec_error(ctx, {"command": "true", "compute_server_id": 3})
    assert err.message == "no connection to compute server -- please start or restart it"


async def test_uid_fails_like_unprivileged_spawn(ctx):
    err = await exec_error(ctx, {"command": "id", "uid": 1234})
    assert '"code":"EPERM"' in err.message


async def test_aggregate_coalesces(ctx):
    opts = {"command": "echo $RANDOM$RANDOM; sleep 0.3", "aggregate": 1}
    a, b = await asyncio.gather(system_exec(ctx, opts), system_exec(ctx, dict(opts)))
    assert a == b                                    # joined the running call
    c = await system_exec(ctx, dict(opts))
    assert c == a                                    # finished result reused (agg <= stored)
    d = await system_exec(ctx, {**opts, "aggregate": 2})
    assert d["stdout"] != a["stdout"]                # larger aggregate: runs again
    e = await system_exec(ctx, {**opts, "aggregate": {"value": "v"}})
    f = await system_exec(ctx, {**opts, "aggregate": {"value": "v"}})
    assert e == f


async def test_aggregate_queue_behind_smaller(ctx):
    base = {"command": "echo $RANDOM$RANDOM; sleep 0.3"}
    first = asyncio.ensure_future(system_exec(ctx, {**base, "aggregate": 1}))
    await asyncio.sleep(0.05)
    second, third = await asyncio.gather(system_exec(ctx, {**base, "aggregate": 2}),
                                         system_exec(ctx, {**base, "aggregate": 3}))
    assert second == third and second != await first


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("opts, text", [
    ({}, "TypeError: Cannot read properties of undefined (reading 'split')"),
    ({"command": 5}, "error invalid command: expected a string, got int"),
    ({"command": "ec\0ho"}, "error TypeError [ERR_INVALID_ARG_VALUE]: The argument 'command' must be a string without null bytes."),
    ({"command": "echo", "args": ["a\0"]}, "error TypeError [ERR_INVALID_ARG_VALUE]: The argument 'args[0]' must be a string without null bytes."),
    ({"command": "echo", "args": "a"}, "error invalid args: expected a list of strings"),
    ({"command": "echo", "args": [{"a": 1}]}, "error invalid args: expected a string, got dict"),
    ({"command": "echo", "env": ["A"]}, "error invalid env: expected an object of strings"),
    ({"command": "echo", "env": {"A": "b\0"}}, "error TypeError [ERR_INVALID_ARG_VALUE]: The argument 'env.A' must be a string without null bytes."),
    ({"command": "echo", "env": {"A=B": "c"}}, "error invalid env: bad variable name 'A=B'"),
    ({"command": "echo", "env": {"A": "x" * (1 << 20)}}, "error invalid env: larger than 1048576 bytes"),
    ({"command": "echo", "path": "a\0"}, "error TypeError [ERR_INVALID_ARG_VALUE]: The argument 'path' must be a string without null bytes."),
    ({"command": "echo", "timeout": -1}, "error invalid timeout: must not be negative, got -1"),
    ({"command": "echo", "timeout": "5"}, "error invalid timeout: expected a number, got '5'"),
    ({"command": "echo", "max_output": -3}, "error invalid max_output: must not be negative, got -3"),
])
async def test_bad_input(ctx, opts, text):
    assert (await exec_error(ctx, opts)).message == text


async def test_non_dict_options(ctx):
    assert (await exec_error(ctx, "ls")).message == "error invalid options: expected an object"


async def test_non_string_args_converted_like_node(ctx):
    r = await system_exec(ctx, {"command": "echo", "args": [1, 2.5, True, None]})
    assert r["stdout"] == "1 2.5 true null\n"


# ---------------------------------------------------------------- concurrency

async def test_100_concurrent_execs_unmixed(ctx):
    # 20 000 lines each: far more than a pipe buffer, so reads of all 100 interleave.
    async def one(i: int):
        return i, await system_exec(ctx, {"command": f"yes {i} | head -n 20000; echo e{i} >&2"})

    results = await asyncio.gather(*(one(i) for i in range(100)))
    for i, r in results:
        assert r["stdout"] == f"{i}\n" * 20000 and r["stderr"] == f"e{i}\n" and r["exit_code"] == 0
    assert not marked_processes()


# ---------------------------------------------------------------- group release

def _exec_groups(ctx) -> set[str]:
    # the marker tracker is shared by every test in this process: compare before/after
    return {name for name in ctx.tracker._groups if name.startswith("x")}


async def test_blocking_exec_gives_its_group_back_right_after_the_reply(ctx):
    # Background children are killed before the reply; the group itself is released in
    # the next loop iteration (after the fabric reply is sent), never later than that.
    before = _exec_groups(ctx)
    r = await system_exec(ctx, {"command": "sleep 100 > /dev/null 2>&1 & echo bg"})
    assert r["stdout"] == "bg\n"
    assert not marked_processes()
    await asyncio.sleep(0)
    assert _exec_groups(ctx) <= before


async def test_failed_and_cancelled_execs_give_their_groups_back(ctx):
    before = _exec_groups(ctx)
    await exec_error(ctx, {"command": "false"})
    await exec_error(ctx, {"command": "sleep 30", "timeout": 0.2})
    task = asyncio.ensure_future(system_exec(ctx, {"command": "sleep 30"}))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.6)   # a cancelled exec finishes after the kill; the fallback timer releases it
    assert _exec_groups(ctx) <= before
    assert not marked_processes()
