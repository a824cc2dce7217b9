"""JupyterService with real ipykernel processes (no mocks).

One service (and event loop) per module keeps the run short: kernel starts cost
~0.4 s of CPU each on this 2-core machine.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, TypeVar

import psutil
import pytest

from projecthub.errors import RemoteError
from projecthub.project.context import ProjectContext
from projecthub.project.jupyter import JupyterService
from projecthub.project.tracking_fallback import MarkerTracker
from tests.unit.loops import close_loop

T = TypeVar("T")
PROJECT_ID = "00000000-0000-4000-8000-00000000jjjj"


def make_ctx(root: Path, mpl_dir: Path, **settings: Any) -> ProjectContext:
    home = root / "home"
    home.mkdir(parents=True)
    (home / "sub").mkdir()
    env = ProjectContext.default_base_env(PROJECT_ID, home)
    env["MPLCONFIGDIR"] = str(mpl_dir)   # build matplotlib's font cache once per run
    return ProjectContext(project_id=PROJECT_ID, home=home, state_dir=root / "state",
                          tmp_dir=root / "tmp", tracker=MarkerTracker(subreaper=False),
                          base_env=env, settings=settings)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    close_loop(lp)


@pytest.fixture(scope="module")
def mpl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mpl")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory, mpl_dir: Path) -> ProjectContext:
    return make_ctx(tmp_path_factory.mktemp("jproject"), mpl_dir)


@pytest.fixture(scope="module")
def svc(loop: asyncio.AbstractEventLoop, ctx: ProjectContext) -> Iterator[JupyterService]:
    service = JupyterService(ctx, pool_size=1)
    loop.run_until_complete(service.start())
    yield service
    loop.run_until_complete(service.close())


def run(loop: asyncio.AbstractEventLoop, aw: Awaitable[T], timeout: float = 60) -> T:
    return loop.run_until_complete(asyncio.wait_for(aw, timeout))


def execute(loop: asyncio.AbstractEventLoop, svc: JupyterService, code: str, **opts: Any) -> list[dict]:
    return run(loop, svc.jupyter_execute({"input": code, "kernel": "python3", **opts}))


def wait_until(loop: asyncio.AbstractEventLoop, cond: Callable[[], bool], timeout: float = 20) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.05)
    run(loop, poll(), timeout)


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid)   # a zombie still exists: gone means reaped


def zombie_children() -> list[int]:
    zombies = []
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                zombies.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return zombies


def no_zombie_children() -> bool:
    return not zombie_children()


@pytest.fixture(autouse=True)
def reap_earlier_tests_zombies() -> None:
    """Zombies this process holds before a test starts are not the test's: orphans of earlier
    tests (their servers' sandboxes), re-parented here once the suite's process became a child
    subreaper (conftest's MarkerTracker).  Reap them, so the checks below see only the zombies
    the service under test leaves."""
    for pid in zombie_children():
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


# --- system.jupyterExecute ----------------------------------------------------------------


def test_seed_examples_exact(loop, svc) -> None:
    assert execute(loop, svc, "sum(range(100))") == [{"data": {"text/plain": "4950"}}]
    assert execute(loop, svc, 'print("Hello")') == [{"name": "stdout", "text": "Hello\n"}]
    assert execute(loop, svc, "sum(range(a + 1))", history=["a = 100"]) == [
        {"data": {"text/plain": "5050"}}]
    assert execute(loop, svc, "print(a**2)", history=["a=5"]) == [{"name": "stdout", "text": "25\n"}]


def test_stateless(loop, svc) -> None:
    assert execute(loop, svc, "a=5; 2+3") == [{"data": {"text/plain": "5"}}]
    out = execute(loop, svc, "print(a)")
    assert len(out) == 1 and out[0]["ename"] == "NameError"
    assert "is not defined" in out[0]["evalue"]
    # nothing left over from the warm-up either
    assert execute(loop, svc, "repr(_), len(Out)") == [{"data": {"text/plain": "(\"''\", 0)"}}]


def test_error_shape(loop, svc) -> None:
    out = execute(loop, svc, "1/0")
    assert len(out) == 1
    item = out[0]
    assert set(item) == {"ename", "evalue", "traceback"}
    assert item["ename"] == "ZeroDivisionError" and item["evalue"] == "division by zero"
    assert isinstance(item["traceback"], list)
    assert any("division by zero" in line for line in item["traceback"])


def test_two_writes_two_items(loop, svc) -> None:
    out = execute(loop, svc, "import sys\nsys.stdout.write('1'); sys.stdout.flush(); print('2')")
    assert out == [{"name": "stdout", "text": "1"}, {"name": "stdout", "text": "2\n"}]
    for item in out:
        assert "output_type" not in item and "execution_count" not in item


def test_history_output_discarded_and_errors_ignored(loop, svc) -> None:
    out = execute(loop, svc, "b", history=["print('noise')", "b = 7", "1/0", "b = 8"])
    assert out == [{"data": {"text/plain": "7"}}]


def test_output_cap_notice_exact(loop, svc) -> None:
    out = execute(loop, svc, "import sys\nprint('hi'); sys.stdout.flush()\nprint('x'*100)",
                  limits={"max_output_per_cell": 50})
    assert out == [{"name": "stdout", "text": "hi\n"},
                   {"name": "stdout", "output_type": "stream",
                    "text": ["Output truncated since it exceeded the cell output limit of 50 characters"]}]


def test_timeout_returns_partial_output_and_service_recovers(loop, svc) -> None:
    t0 = time.monotonic()
    out = execute(loop, svc, "print('before', flush=True)\nwhile True: pass",
                  limits={"timeout_ms_per_cell": 500})
    assert time.monotonic() - t0 < 10
    assert out[0] == {"name": "stdout", "text": "before\n"}
    assert out[-1]["ename"] == "KeyboardInterrupt"
    assert execute(loop, svc, "40+2") == [{"data": {"text/plain": "42"}}]


def test_kernel_death_error_then_next_call_ok(loop, svc) -> None:
    with pytest.raises(RemoteError) as err:
        execute(loop, svc, "import os; os._exit(1)")
    assert err.value.message.startswith("Error: Kernel last exited with code 1.")
    with pytest.raises(RemoteError) as err:
        execute(loop, svc, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert err.value.message.startswith("Error: Kernel last terminated by signal SIGKILL.")
    with pytest.raises(RemoteError) as err:
        # fd 2 is ipykernel's capture pipe; write to the real stderr it saved
        execute(loop, svc, "import os, sys\n"
                "os.write(sys.stderr._original_stdstream_copy, b'dying words\\n'); os._exit(3)")
    assert err.value.message == "Error: Kernel last exited with code 3.\n...\ndying words"
    assert execute(loop, svc, "1+1") == [{"data": {"text/plain": "2"}}]


def test_unknown_kernel_lists_specs(loop, svc) -> None:
    with pytest.raises(RemoteError) as err:
        execute(loop, svc, "1", kernel="no-such-kernel")
    assert 'No spec available for kernel "no-such-kernel".  Available specs: [' in err.value.message
    assert '"python3"' in err.value.message
    with pytest.raises(RemoteError):   # case-sensitive, like CoCalc
        execute(loop, svc, "1", kernel="Python3")


def test_path_and_default_cwd(loop, svc, ctx) -> None:
    home = str(ctx.home)
    assert execute(loop, svc, "import os; os.getcwd()", path="sub") == [
        {"data": {"text/plain": repr(os.path.join(home, "sub"))}}]
    assert execute(loop, svc, "import os; os.getcwd()", path="") == [
        {"data": {"text/plain": repr(home)}}]
    # a missing directory is ignored silently
    out = execute(loop, svc, "import os; os.getcwd()", path="does-not-exist")
    assert "does-not-exist" not in out[0]["data"]["text/plain"]
    # no path: a fresh temp dir under the project's tmp, removed afterwards
    out = execute(loop, svc, "import os; os.getcwd()")
    cwd = eval(out[0]["data"]["text/plain"])
    assert cwd.startswith(str(ctx.tmp_dir)) and os.path.basename(cwd).startswith("cocalc")
    wait_until(loop, lambda: not os.path.exists(cwd), 10)


def test_twenty_concurrent_executes(loop, svc) -> None:
    async def many() -> list[list[dict]]:
        return await asyncio.gather(*(
            svc.jupyter_execute({"input": f"import os\nprint(os.getpid())\n{i}*{i}", "kernel": "python3"})
            for i in range(20)))

    results = run(loop, many(), timeout=90)
    pids = set()
    for i, out in enumerate(results):
        assert out[1] == {"data": {"text/plain": str(i * i)}}
        pids.add(out[0]["text"])
    assert len(pids) == 20   # every call had its own kernel


def test_list_and_stop_kernels(loop, svc) -> None:
    execute(loop, svc, "1")
    wait_until(loop, lambda: bool(svc.pool.idle_kernels()))   # the refill parked one
    listed = run(loop, svc.list_kernels())
    assert listed
    for entry in listed:
        assert isinstance(entry["pid"], int) and entry["pid"] > 0
        assert isinstance(entry["connectionFile"], str) and entry["kernel_name"] == "python3"
        assert psutil.pid_exists(entry["pid"])
    pid = listed[0]["pid"]
    assert run(loop, svc.stop_kernel({"pid": pid})) == {"success": True}
    assert pid not in [k["pid"] for k in run(loop, svc.list_kernels())]
    assert gone(pid)
    assert run(loop, svc.stop_kernel({"pid": pid})) == {"success": False}
    assert run(loop, svc.stop_kernel({"pid": 999999999})) == {"success": False}
    assert execute(loop, svc, "2+2") == [{"data": {"text/plain": "4"}}]


def test_pool_replaces_a_killed_pooled_kernel(loop, svc) -> None:
    execute(loop, svc, "1")
    wait_until(loop, lambda: bool(svc.pool.idle_kernels()))
    victim = svc.pool.idle_kernels()[0].pid
    os.kill(victim, signal.SIGKILL)
    # (earlier tests' bursts may have left several kernels parked: wait for the victim
    # to leave and for a live one to be there)
    wait_until(loop, lambda: victim not in [k.pid for k in svc.pool.idle_kernels()]
               and any(k.alive for k in svc.pool.idle_kernels()))
    assert victim not in [k["pid"] for k in run(loop, svc.list_kernels())]
    out = execute(loop, svc, "import os; os.getpid()")
    assert out[0]["data"]["text/plain"] != str(victim)
    # the kernel just used is SIGKILLed on return and reaped on the loop's next turn
    wait_until(loop, no_zombie_children, 5)


def test_pool_size_option(loop, svc) -> None:
    execute(loop, svc, "1", pool={"size": 2})
    wait_until(loop, lambda: len(svc.pool.idle_kernels()) == 2, 30)
    execute(loop, svc, "1", pool={"size": 1})
    loop.call_soon(svc.pool.housekeeping)
    wait_until(loop, lambda: len(svc.pool.idle_kernels()) == 1, 30)


def test_kernel_specs_format(loop, svc) -> None:
    specs = run(loop, svc.kernel_specs())
    assert [s["display_name"] for s in specs] == sorted(s["display_name"] for s in specs)
    py = next(s for s in specs if s["name"] == "python3")
    assert py["language"] == "python"
    for key in ("display_name", "env", "resource_dir", "argv"):
        assert key in py


# --- sessions -------------------------------------------------------------------------------


def test_session_keeps_state_and_survives_interrupt(loop, svc, ctx) -> None:
    s = run(loop, svc.create_session({"name": "work", "cwd": "sub", "env": {"FOO": "bar"}}))
    assert s["name"] == "work" and s["kernel"] == "python3" and s["state"] == "idle"
    assert s["cwd"] == os.path.join(str(ctx.home), "sub") and s["pid"] > 0
    sid = s["session_id"]
    try:
        r = run(loop, svc.execute_in_session(sid, {"code": "x = 41"}))
        assert r["status"] == "ok" and r["outputs"] == [] and not r["timed_out"]
        r = run(loop, svc.execute_in_session(sid, {"code": "import os; x + 1, os.environ['FOO'], os.getcwd()"}))
        assert r["outputs"] == [{"data": {"text/plain": repr((42, "bar", s["cwd"]))}}]
        assert r["execution_count"] == 2 and r["state_survived"] and not r["restarted"]

        t0 = time.monotonic()
        r = run(loop, svc.execute_in_session(sid, {"code": "print('spin', flush=True)\nwhile True: pass",
                                                    "timeout_s": 0.5}))
        assert time.monotonic() - t0 < 5
        assert r["status"] == "timeout" and r["timed_out"] and r["interrupted"]
        assert r["state_survived"] and not r["restarted"]
        assert r["outputs"][0] == {"name": "stdout", "text": "spin\n"}
        r = run(loop, svc.execute_in_session(sid, {"code": "x"}))
        assert r["outputs"] == [{"data": {"text/plain": "41"}}]

        r = run(loop, svc.execute_in_session(sid, {"code": "1/0"}))
        assert r["status"] == "error" and r["outputs"][0]["ename"] == "ZeroDivisionError"

        assert [x["session_id"] for x in run(loop, svc.list_sessions())] == [sid]
        assert run(loop, svc.get_session(sid))["state"] == "idle"
        assert s["pid"] in [k["pid"] for k in run(loop, svc.list_kernels())]
    finally:
        run(loop, svc.delete_session(sid))
    assert gone(s["pid"])
    with pytest.raises(RemoteError, match="does not exist"):
        run(loop, svc.get_session(sid))


def test_session_restarts_a_kernel_that_ignores_interrupts(loop, svc) -> None:
    sid = run(loop, svc.create_session({}))["session_id"]
    try:
        code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ny = 1\nwhile True: pass"
        r = run(loop, svc.execute_in_session(sid, {"code": code, "timeout_s": 0.3}))
        assert r["status"] == "timeout" and r["restarted"] and not r["state_survived"]
        r = run(loop, svc.execute_in_session(sid, {"code": "'y' in dir()"}))
        assert r["outputs"] == [{"data": {"text/plain": "False"}}]
    finally:
        run(loop, svc.delete_session(sid))


def test_session_matplotlib_png(loop, svc) -> None:
    sid = run(loop, svc.create_session({"name": "plots"}))["session_id"]
    try:
        code = ("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()\n"
                "from IPython.display import HTML, display\ndisplay(HTML('<b>bold</b>'))")
        r = run(loop, svc.execute_in_session(sid, {"code": code}), timeout=90)
        pngs = [o for o in r["outputs"] if "image/png" in o.get("data", {})]
        assert len(pngs) == 1
        assert base64.b64decode(pngs[0]["data"]["image/png"]).startswith(b"\x89PNG")
        assert {"data": {"text/html": "<b>bold</b>", "text/plain": "<IPython.core.display.HTML object>"}} \
            in r["outputs"]
    finally:
        run(loop, svc.delete_session(sid))


def test_session_stream_and_kernel_death(loop, svc) -> None:
    sid = run(loop, svc.create_session({}))["session_id"]
    try:
        async def collect(code: str) -> list[dict]:
            return [ev async for ev in svc.stream_in_session(sid, {"code": code})]

        events = run(loop, collect("import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.05)\n7"))
        assert [e["event"] for e in events] == ["output"] * 4 + ["done"]
        assert events[0]["item"] == {"name": "stdout", "text": "0\n"}
        assert events[-1]["result"]["outputs"][-1] == {"data": {"text/plain": "7"}}

        events = run(loop, collect("import os; os._exit(2)"))
        assert events == [{"event": "error", "error": "Error: Kernel last exited with code 2."}]
        assert run(loop, svc.get_session(sid))["state"] == "dead"
        r = run(loop, svc.execute_in_session(sid, {"code": "3"}))
        assert r["restarted"] and not r["state_survived"]
        assert r["outputs"] == [{"data": {"text/plain": "3"}}]

        with pytest.raises(RemoteError, match="does not exist"):
            svc.stream_in_session("nope", {"code": "1"})
    finally:
        run(loop, svc.delete_session(sid))


def test_session_interrupt_and_restart_calls(loop, svc) -> None:
    sid = run(loop, svc.create_session({}))["session_id"]
    try:
        async def interrupt_later() -> dict:
            await asyncio.sleep(0.5)
            return await svc.interrupt_session(sid)

        async def both() -> tuple[dict, dict]:
            r, _ = await asyncio.gather(
                svc.execute_in_session(sid, {"code": "z = 5\nimport time\ntime.sleep(30)"}),
                interrupt_later())
            return r, _

        r, _ = run(loop, both())
        assert r["status"] == "error" and r["outputs"][-1]["ename"] == "KeyboardInterrupt"
        assert r["interrupted"] and r["state_survived"] and not r["timed_out"]
        old_pid = run(loop, svc.get_session(sid))["pid"]
        rec = run(loop, svc.restart_session(sid))
        assert rec["pid"] != old_pid and rec["state"] == "idle"
        assert gone(old_pid)
        r = run(loop, svc.execute_in_session(sid, {"code": "'z' in dir()"}))
        assert r["outputs"] == [{"data": {"text/plain": "False"}}]
    finally:
        run(loop, svc.delete_session(sid))


def test_unknown_session_errors(loop, svc) -> None:
    for call in (svc.get_session("x"), svc.execute_in_session("x", {"code": "1"}),
                 svc.interrupt_session("x"), svc.restart_session("x"), svc.delete_session("x")):
        with pytest.raises(RemoteError, match="Jupyter session 'x' does not exist"):
            run(loop, call)


# --- lifecycle on separate services ------------------------------------------------------------


def test_close_leaves_nothing_behind(tmp_path: Path, mpl_dir: Path) -> None:
    lp = asyncio.new_event_loop()
    try:
        ctx = make_ctx(tmp_path, mpl_dir)
        service = JupyterService(ctx, pool_size=1)
        run(lp, service.start())
        assert run(lp, service.list_kernels()) == []   # nothing pre-started
        run(lp, service.jupyter_execute({"input": "1", "kernel": "python3"}))
        run(lp, service.create_session({"name": "s"}))
        wait_until(lp, lambda: bool(service.pool.idle_kernels()))
        pids = [k["pid"] for k in run(lp, service.list_kernels())]
        assert len(pids) == 2
        run(lp, service.close())
        assert all(gone(p) for p in pids)
        assert no_zombie_children()
        runtime = Path(ctx.state_dir) / "jupyter"
        assert list(runtime.iterdir()) == []
        assert list(Path(ctx.tmp_dir).iterdir()) == []
        with pytest.raises(RemoteError):
            run(lp, service.jupyter_execute({"input": "1", "kernel": "python3"}))
    finally:
        close_loop(lp)


def test_start_timeout_kills_the_kernel(tmp_path: Path, mpl_dir: Path) -> None:
    lp = asyncio.new_event_loop()
    try:
        ctx = make_ctx(tmp_path, mpl_dir, jupyter_start_timeout_s=0.05)
        service = JupyterService(ctx, pool_size=0)
        run(lp, service.start())
        before = {c.pid for c in psutil.Process().children()}
        with pytest.raises(RemoteError, match="did not start within 0.05 seconds"):
            run(lp, service.jupyter_execute({"input": "1", "kernel": "python3"}))
        run(lp, asyncio.sleep(0.2))
        after = {c.pid for c in psutil.Process().children() if c.status() != psutil.STATUS_ZOMBIE}
        assert after <= before
        run(lp, service.close())
        assert no_zombie_children()
    finally:
        close_loop(lp)


def test_idle_sessions_are_culled(tmp_path: Path, mpl_dir: Path) -> None:
    lp = asyncio.new_event_loop()
    try:
        service = JupyterService(make_ctx(tmp_path, mpl_dir), session_idle_timeout_s=0.5)
        run(lp, service.start())
        rec = run(lp, service.create_session({}))
        wait_until(lp, lambda: not service.sessions.list(), 10)
        wait_until(lp, lambda: gone(rec["pid"]), 10)
        run(lp, service.close())
    finally:
        close_loop(lp)


def test_idle_pool_shrinks_to_zero_with_its_zygote(tmp_path: Path, mpl_dir: Path) -> None:
    """A project that ran Jupyter once must not keep a pool and a zygote forever (issue 15)."""
    lp = asyncio.new_event_loop()
    try:
        service = JupyterService(make_ctx(tmp_path, mpl_dir), pool_size=2, pool_idle_timeout_s=60)
        run(lp, service.start())
        run(lp, service.jupyter_execute({"input": "1", "kernel": "python3"}))
        wait_until(lp, lambda: len(service.pool.idle_kernels()) == 2, 30)
        zygotes = service.launcher.zygotes
        wait_until(lp, lambda: zygotes.zygotes(), 30)
        zygote = zygotes.zygotes()[0].popen
        # no request for longer than the idle timeout (the per-call `pool.timeout_s`
        # shortens it): no kernel left, and the zygote is closed too
        service.pool._pools["python3"].timeout_s = 0.2
        run(lp, asyncio.sleep(0.3))
        lp.call_soon(service.pool.housekeeping)   # what the upkeep task runs periodically
        wait_until(lp, lambda: not service.pool.idle_kernels() and not zygotes.zygotes()
                   and zygote.poll() is not None, 10)
        run(lp, asyncio.sleep(1.0))
        lp.call_soon(service.pool.housekeeping)
        run(lp, asyncio.sleep(0.5))
        assert not service.pool.idle_kernels() and not zygotes.zygotes()   # nothing restarts them
        # the next call works (an ordinary kernel start) and brings the pool back, without a burst
        assert run(lp, service.jupyter_execute({"input": "2+2", "kernel": "python3"})) == [
            {"data": {"text/plain": "4"}}]
        service.pool._pools["python3"].timeout_s = 60   # (the per-call value would stay 0.2)
        wait_until(lp, lambda: len(service.pool.idle_kernels()) == 2 and zygotes.zygotes(), 30)
        assert not service.pool._pools["python3"].bursting(time.monotonic())
        run(lp, service.close())
    finally:
        close_loop(lp)


def test_pool_bursts_while_calls_outrun_it(tmp_path: Path, mpl_dir: Path) -> None:
    """Back-to-back calls that find the pool empty make it keep BURST_SIZE kernels
    ready; once the burst is over it trims back to its size.  Each call still gets
    its own kernel."""
    from projecthub.project.jupyter.pool import BURST_SIZE
    lp = asyncio.new_event_loop()
    try:
        service = JupyterService(make_ctx(tmp_path, mpl_dir), pool_size=1)
        run(lp, service.start())
        pids = [run(lp, service.jupyter_execute({"input": "import os; os.getpid()", "kernel": "python3"}))
                for _ in range(6)]
        assert len({str(p) for p in pids}) == 6
        wait_until(lp, lambda: len(service.pool.idle_kernels()) == BURST_SIZE, 60)
        # a burst parks its first refill unwarmed (the next call is expected at once);
        # once nobody has taken it for DEFERRED_WARM_S it is warmed after all
        wait_until(lp, lambda: len(service.pool.idle_kernels()) == BURST_SIZE
                   and all(k.warmed for k in service.pool.idle_kernels()), 10)
        out = run(lp, service.jupyter_execute({"input": "1+1", "kernel": "python3"}))
        assert out == [{"data": {"text/plain": "2"}}]   # the warm-up left no trace
        service.pool._pools["python3"].hot_until = 0.0   # the burst is over
        lp.call_soon(service.pool.housekeeping)
        wait_until(lp, lambda: len(service.pool.idle_kernels()) == 1, 10)
        run(lp, service.close())
    finally:
        close_loop(lp)


def test_interrupt_by_message_opens_the_control_channel(tmp_path: Path, mpl_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Kernels get no control channel until one is needed: a spec asking for interrupts
    # as messages must still have its timed-out cell interrupted (not killed).
    import json
    import sys
    spec_dir = tmp_path / "share" / "kernels" / "pymsg"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (interrupt by message)", "language": "python",
        "interrupt_mode": "message"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share"))
    lp = asyncio.new_event_loop()
    try:
        service = JupyterService(make_ctx(tmp_path / "p", mpl_dir), pool_size=0)
        run(lp, service.start())
        assert service.catalog.get("pymsg").interrupt_by_message
        out = run(lp, service.jupyter_execute({"input": "print('on', flush=True)\nwhile True: pass",
                                               "kernel": "pymsg",
                                               "limits": {"timeout_ms_per_cell": 500}}))
        assert out[0] == {"name": "stdout", "text": "on\n"}
        assert out[-1]["ename"] == "KeyboardInterrupt"
        run(lp, service.close())
    finally:
        close_loop(lp)
