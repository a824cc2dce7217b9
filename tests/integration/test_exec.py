"""system.exec through the official client and raw HTTP (spec 4; checklist 10-26)."""

from __future__ import annotations

import concurrent.futures
import re
import time
import uuid

import httpx
import psutil
import pytest

from tests.server import Server


def raw_exec(server: Server, key: str, project_id: str, opts: dict, timeout_ms: int | None = None):
    body = {"name": "system.exec", "args": [opts], "project_id": project_id}
    if timeout_ms is not None:
        body["timeout"] = timeout_ms
    return httpx.post(server.url + "/api/conat/project", json=body,
                      headers={"Authorization": f"Bearer {key}"}, timeout=120).json()


def test_echo_exact(project) -> None:
    assert project.system.exec(command="echo 'hello from cocalc'") == {
        "type": "blocking", "stdout": "hello from cocalc\n", "stderr": "", "exit_code": 0}


def test_direct_exec_with_args(project) -> None:
    out = project.system.exec(command="date", args=["-Is"])
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", out["stdout"])


def test_forced_bash_and_bash_with_args(project) -> None:
    assert project.system.exec(command="echo 'abc' | wc -c", bash=False)["stdout"].strip() == "4"
    assert project.system.exec(command="echo", args=["a b"], bash=True)["stdout"] == "a b\n"


def test_nonzero_exit_error_string(project) -> None:
    with pytest.raises(RuntimeError) as info:
        project.system.exec(command="echo 'x' >&2; exit 42", bash=True)
    assert str(info.value) == "command 'echo 'x' >&2; exit 42' exited with nonzero code 42 -- stderr='x\n'"


def test_err_on_exit_false_returns_real_code(server: Server, account, project_id: str) -> None:
    result = raw_exec(server, account.api_key, project_id,
                      {"command": "echo out; echo err >&2; exit 3", "bash": True, "err_on_exit": False})
    assert result == {"type": "blocking", "stdout": "out\n", "stderr": "err\n", "exit_code": 3}


def test_direct_mode_error_has_doubled_quotes(project) -> None:
    with pytest.raises(RuntimeError) as info:
        project.system.exec(command="ls", args=["/nonexistent"])
    assert str(info.value).startswith("command ''ls' (args=/nonexistent)' exited with nonzero code")


def test_long_stderr_is_cut(project) -> None:
    with pytest.raises(RuntimeError) as info:
        project.system.exec(command="python3 -c \"import sys; sys.stderr.write('e'*3000); sys.exit(1)\"")
    stderr = str(info.value).split("stderr='", 1)[1][:-1]
    assert stderr == "e" * 1023 + "…"


def test_unknown_program_enoent(server: Server, account, project_id: str, project) -> None:
    with pytest.raises(RuntimeError) as info:
        project.system.exec(command="nosuchprog", args=["x"])
    assert "ENOENT" in str(info.value) and "exited with nonzero code 1" in str(info.value)
    result = raw_exec(server, account.api_key, project_id,
                      {"command": "nosuchprog", "args": ["x"], "err_on_exit": False})
    assert "was not able to run" in result["error"] and "ENOENT" in result["error"]


def test_timeout_kills_whole_tree(server: Server, account, project_id: str) -> None:
    marker = uuid.uuid4().hex
    started = time.monotonic()
    result = raw_exec(server, account.api_key, project_id, {
        "command": f"setsid sleep 300 {marker} & (sleep 301 {marker} &) ; sleep 60", "timeout": 1}, 3000)
    elapsed = time.monotonic() - started
    assert re.fullmatch(r"killed command 'bash /tmp/cocalc-[A-Za-z0-9]{6}/a\.sh'", result["error"]), result
    assert 0.9 < elapsed < 2.5
    time.sleep(0.3)
    survivors = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    assert survivors == []


def test_finished_exec_leaves_nothing_behind(server: Server, account, project_id: str) -> None:
    # Background children, also setsid'd and double-forked ones, are dead before the
    # answer arrives (checked right after it, from the host).
    marker = uuid.uuid4().hex
    for command in (f"setsid sleep 300 {marker} > /dev/null 2>&1 & (sleep 301 {marker} > /dev/null 2>&1 &); echo bg",
                    f"sleep 302 {marker} > /dev/null 2>&1 & echo bg"):
        result = raw_exec(server, account.api_key, project_id, {"command": command})
        assert result["stdout"] == "bg\n", result
        survivors = [p for p in psutil.process_iter(["cmdline", "status"])
                     if marker in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]
        assert survivors == []


def test_max_output(project) -> None:
    assert project.system.exec(command="echo", args=["xyz", "abc"], max_output=3)["stdout"] == \
        "xyz (truncated at 3 characters)"
    out = project.system.exec(command="echo hi; echo longer-error >&2", max_output=5)
    assert out["stdout"] == "hi\n"
    assert out["stderr"] == "longe (truncated at 5 characters)"


def test_working_directory_rules(project) -> None:
    project.system.exec(command="mkdir -p sub")
    home = project.system.exec(command="pwd")["stdout"].strip()
    assert project.system.exec(command="pwd", path="sub")["stdout"].strip() == home + "/sub"
    assert project.system.exec(command="pwd", path="/tmp")["stdout"].strip() == "/tmp"
    assert project.system.exec(command="pwd", path="sub", cwd="/tmp")["stdout"].strip() == "/tmp"
    with pytest.raises(RuntimeError, match="ENOENT"):
        project.system.exec(command="pwd", path="does/not/exist")


def test_env_overlay_and_home(project) -> None:
    out = project.system.exec(command="echo $FOO:$HOME", env={"FOO": "bar"})
    assert out["stdout"].startswith("bar:/")


def test_stdin_is_closed_not_a_hanging_pipe(project) -> None:
    # deliberate deviation (docs/compatibility.md): stdin is /dev/null, so cat ends at once
    started = time.monotonic()
    assert project.system.exec(command="cat", timeout=10)["stdout"] == ""
    assert time.monotonic() - started < 3


def test_killed_by_own_signal_is_success(project) -> None:
    assert project.system.exec(command="kill -9 $$", bash=True)["exit_code"] == 0


def test_async_job_lifecycle(server: Server, account, project_id: str) -> None:
    started = raw_exec(server, account.api_key, project_id,
                       {"command": "echo first; sleep 1.5; echo second", "async_call": True})
    assert started["type"] == "async" and started["status"] == "running"
    assert str(uuid.UUID(started["job_id"])) == started["job_id"]
    assert isinstance(started["start"], int) and started["pid"] > 0
    assert (started["stdout"], started["stderr"], started["exit_code"]) == ("", "", 0)
    time.sleep(0.5)
    partial = raw_exec(server, account.api_key, project_id, {"async_get": started["job_id"]})
    assert partial["status"] == "running" and partial["stdout"] == "first\n" and "elapsed_s" not in partial
    done = raw_exec(server, account.api_key, project_id,
                    {"async_get": started["job_id"], "async_await": True, "async_stats": True})
    assert done["status"] == "completed" and done["stdout"] == "first\nsecond\n"
    assert isinstance(done["elapsed_s"], float)
    assert isinstance(done["stats"], list)
    for sample in done["stats"]:
        assert set(sample) == {"timestamp", "mem_rss", "cpu_pct", "cpu_secs"}
    plain = raw_exec(server, account.api_key, project_id, {"async_get": started["job_id"]})
    assert "stats" not in plain


def test_async_unknown_and_failure_normalisation(server: Server, account, project_id: str) -> None:
    bogus = str(uuid.uuid4())
    assert raw_exec(server, account.api_key, project_id, {"async_get": bogus}) == {
        "error": f"Error: Async operation '{bogus}' does not exist."}
    job = raw_exec(server, account.api_key, project_id, {"command": "echo o; exit 2", "async_call": True})
    final = raw_exec(server, account.api_key, project_id, {"async_get": job["job_id"], "async_await": True})
    assert (final["status"], final["stdout"], final["stderr"], final["exit_code"]) == ("error", "", "No result", 1)
    timed = raw_exec(server, account.api_key, project_id, {"command": "sleep 30", "async_call": True, "timeout": 1})
    final = raw_exec(server, account.api_key, project_id, {"async_get": timed["job_id"], "async_await": True})
    assert final["status"] == "error" and final["stderr"].startswith("killed command")


def test_hundred_concurrent_execs_unmixed(server: Server, account, project_id: str) -> None:
    def one(i: int) -> tuple[int, dict]:
        return i, raw_exec(server, account.api_key, project_id,
                           {"command": "printf", "args": [f"out-{i}-" + "x" * 2000]})

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(100)))
    for i, result in results:
        assert result["stdout"] == f"out-{i}-" + "x" * 2000, result


def test_fifty_megabytes_with_small_cap_stays_bounded(server: Server, account, hub, project_id: str) -> None:
    hub.projects.start(project_id)
    daemon = psutil.Process(hub.projects.status(project_id)["project.pid"])
    hub_process = psutil.Process(server.process.pid)
    result = raw_exec(server, account.api_key, project_id,
                      {"command": "head -c 52428800 /dev/zero | tr '\\0' x", "max_output": 100})
    assert result["stdout"] == "x" * 100 + " (truncated at 100 characters)"
    assert hub_process.memory_info().rss < 200 * 2**20
    assert all(p.memory_info().rss < 200 * 2**20 for p in [daemon, *daemon.children(recursive=True)]
               if p.is_running())


def test_commands_are_the_oom_killers_first_choice_and_the_daemon_is_not(
        server: Server, account, hub, project_id: str) -> None:
    from projecthub.host.sandbox.tracker import CHILD_OOM_SCORE_ADJ
    hub.projects.start(project_id)
    top = psutil.Process(hub.projects.status(project_id)["project.pid"])
    daemon = next(p for p in [top, *top.children(recursive=True)]
                  if "projecthub.project.daemon" in " ".join(p.cmdline()))
    baseline = int(open(f"/proc/{daemon.pid}/oom_score_adj").read())
    assert baseline < CHILD_OOM_SCORE_ADJ
    for _ in range(3):   # every exec raises the daemon's value for its spawn, then restores it
        result = raw_exec(server, account.api_key, project_id,
                          {"command": "cat", "args": ["/proc/self/oom_score_adj"]})
        assert int(result["stdout"]) == CHILD_OOM_SCORE_ADJ, result
        assert int(open(f"/proc/{daemon.pid}/oom_score_adj").read()) == baseline


@pytest.mark.parametrize("opts, needle", [
    ({}, "Cannot read properties of undefined"),
    ({"command": 42}, "command"),
    ({"command": "echo", "args": ["a\x00b"]}, "null bytes"),
    ({"command": "echo hi", "timeout": -1}, "timeout"),
    ({"command": "echo hi", "env": {"BIG": "x" * (2 * 2**20)}}, "env"),
    ({"command": "echo hi", "args": "notalist"}, "args"),
])
def test_bad_exec_input(server: Server, account, project_id: str, opts: dict, needle: str) -> None:
    result = raw_exec(server, account.api_key, project_id, opts)
    assert needle.lower() in result["error"].lower(), result


def test_signal_only_own_processes(server: Server, account, project_id: str) -> None:
    # direct exec, so the job's pid is sleep itself (a bash job's orphans would keep its output open)
    job = raw_exec(server, account.api_key, project_id, {"command": "sleep", "args": ["30"], "async_call": True})
    body = {"name": "system.signal", "args": [{"signal": 9, "pid": job["pid"]}], "project_id": project_id}
    headers = {"Authorization": f"Bearer {account.api_key}"}
    assert httpx.post(server.url + "/api/conat/project", json=body, headers=headers).json() is None
    done = raw_exec(server, account.api_key, project_id, {"async_get": job["job_id"], "async_await": True})
    assert done["status"] in ("completed", "error", "killed")
    body["args"] = [{"signal": 9, "pid": 1}]
    assert "error" in httpx.post(server.url + "/api/conat/project", json=body, headers=headers).json()


def test_compute_server_id(server: Server, account, project_id: str) -> None:
    result = raw_exec(server, account.api_key, project_id, {"command": "echo", "compute_server_id": 7})
    assert "compute server" in result["error"]
    headers = {"Authorization": f"Bearer {account.api_key}"}
    body = {"name": "system.ping", "args": [{}], "project_id": project_id, "compute_server_id": 3}
    assert "compute server 3" in httpx.post(server.url + "/api/conat/project", json=body, headers=headers).json()["error"]


def test_project_path_is_clean_and_has_python(project) -> None:
    path = project.system.exec(command="echo $PATH")["stdout"].strip().split(":")
    assert "/usr/bin" in path and not any(".pyenv" in d for d in path)
    out = project.system.exec(command="python3 -c 'import ipykernel, sys; print(sys.prefix)'")
    assert out["stdout"].strip()
