"""Stateless kernels forked from a pre-imported zygote (real ipykernel processes)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest
from jupyter_client import BlockingKernelClient

from projecthub.errors import RemoteError
from projecthub.project.context import ProjectContext
from projecthub.project.jupyter import JupyterService
from projecthub.project.jupyter.forking import ForkedProcess, eligible
from projecthub.project.tracking_fallback import MarkerTracker
from tests.unit.loops import close_loop

from test_jupyter import (execute, gone, loop, make_ctx, mpl_dir, no_zombie_children,  # noqa: F401
                          reap_earlier_tests_zombies, run, wait_until)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory, mpl_dir: Path) -> ProjectContext:
    return make_ctx(tmp_path_factory.mktemp("zproject"), mpl_dir)


@pytest.fixture(scope="module")
def svc(loop: asyncio.AbstractEventLoop, ctx: ProjectContext) -> Iterator[JupyterService]:
    service = JupyterService(ctx, pool_size=1)
    run(loop, service.start())
    spec = service.catalog.get("python3")
    assert run(loop, service.launcher.zygotes.ready(spec)) is not None
    yield service
    run(loop, service.close())


def zygote_pid(loop: asyncio.AbstractEventLoop, svc: JupyterService) -> int:
    z = run(loop, svc.launcher.zygotes.ready(svc.catalog.get("python3")))
    assert z is not None
    return z.pid


def out_text(items: list[dict[str, Any]]) -> str:
    return "".join(i.get("text", "") for i in items)


def test_python3_spec_is_eligible(svc) -> None:
    assert eligible(svc.catalog.get("python3"))


def test_children_are_fresh_forks_of_the_zygote(loop, svc) -> None:
    zpid = zygote_pid(loop, svc)
    code = "import os, random; print(os.getpid(), os.getppid(), random.random())"
    seen = []
    for _ in range(4):
        pid, ppid, rnd = out_text(execute(loop, svc, code)).split()
        seen.append((int(pid), int(ppid), rnd))
    forked = [s for s in seen if s[1] == zpid]
    assert len(forked) >= 3            # the first may come from a normally launched pool kernel
    assert len({s[0] for s in seen}) == len(seen)   # a new process every call
    assert len({s[2] for s in seen}) == len(seen)   # reseeded random state
    # No state crosses calls (and none was left by the warm-up).
    assert execute(loop, svc, "a = 5; 2+3") == [{"data": {"text/plain": "5"}}]
    out = execute(loop, svc, "print(a)")
    assert len(out) == 1 and out[0]["ename"] == "NameError"
    assert execute(loop, svc, "repr(_), len(Out)") == [{"data": {"text/plain": "(\"''\", 0)"}}]
    # Own session, its own temp cwd, no projecthub module inherited from the zygote.
    text = out_text(execute(loop, svc, "import os, sys; print(os.getsid(0) == os.getpid(), "
                                       "os.getcwd() != os.environ['HOME'], "
                                       "'projecthub' in sys.modules)"))
    assert text.split() == ["True", "True", "False"]


def kernel_output(loop, kernel, code: str) -> str:
    items: list[dict[str, Any]] = []
    run(loop, kernel.collect(kernel.send_execute(code), items.append))
    return "".join(m["content"].get("text", "") for m in items if m["msg_type"] == "stream")


def test_forked_kernel_looks_like_a_launched_one(loop, svc) -> None:
    spec = svc.catalog.get("python3")
    code = ("import os, sys, json; print(json.dumps([sys.path, sys.argv[1:2], "
            # PYDEVD_USE_FRAME_EVAL: set by debugpy's import, which forked kernels skip
            "sorted(k for k in os.environ if k not in ('PROJECTHUB_GROUP', 'JPY_PARENT_PID', "
            "'PYDEVD_USE_FRAME_EVAL')), "
            "get_ipython().__class__.__name__, os.path.basename(os.getcwd())[:6]]))")
    forked = run(loop, svc.launcher.start(spec, scratch=True, warm=False, fork=True))
    normal = run(loop, svc.launcher.start(spec, scratch=True, warm=False, fork=False))
    try:
        assert isinstance(forked.popen, ForkedProcess)
        assert not isinstance(normal.popen, ForkedProcess)
        assert kernel_output(loop, forked, code) == kernel_output(loop, normal, code)
    finally:
        forked.close()
        normal.close()


def test_forked_kernel_is_lean(loop, svc) -> None:
    """No debugger, no subshells (no shell channel thread), no control thread (control
    served on the main thread, and still answering), no parent-poller thread (a
    parent-death SIGKILL instead), no heartbeat (the daemon watches the process);
    debugpy stays importable for user code."""
    spec = svc.catalog.get("python3")
    kernel = run(loop, svc.launcher.start(spec, scratch=True, warm=False, fork=True))
    try:
        # ipykernel 7 greets IOPub subscribers: the daemon takes that as "ready"
        assert kernel.popen.greets is True
        code = ("import ctypes, json; from ipykernel.kernelapp import IPKernelApp; "
                "app = IPKernelApp.instance(); sig = ctypes.c_int(); "
                "ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0); "   # PR_GET_PDEATHSIG
                "features = get_ipython().kernel.kernel_info['supported_features']; "
                "print(json.dumps([sig.value, app.poller is None, "
                "app.heartbeat is None, "
                "app.shell_channel_thread is None, 'debugger' in features, "
                "'kernel subshells' in features, app.control_thread is None, "
                "sorted(t.name for t in __import__('threading').enumerate())]))")
        sig, no_poller, no_heartbeat, no_subshell_thread, debugger, subshells, no_control_thread, threads = \
            json.loads(kernel_output(loop, kernel, code))
        assert (sig, no_poller, no_heartbeat, no_subshell_thread, debugger, subshells, no_control_thread) == \
            (int(signal.SIGKILL), True, True, True, False, False, True), threads
        assert kernel_output(loop, kernel, "import debugpy; print('importable')").strip() == "importable"
        # The control channel is served between cells on the main thread: it answers.
        kc = BlockingKernelClient(connection_file=str(kernel.connection_file))
        kc.load_connection_file()
        kc.start_channels(shell=False, iopub=False, stdin=False, hb=False, control=True)
        try:
            request = kc.session.msg("kernel_info_request")
            kc.control_channel.send(request)
            reply = kc.control_channel.get_msg(timeout=10)
            assert reply["parent_header"]["msg_id"] == request["header"]["msg_id"]
            assert reply["content"]["status"] == "ok"
        finally:
            kc.stop_channels()
    finally:
        kernel.close()


def test_seed_examples_exact(loop, svc) -> None:
    assert execute(loop, svc, "sum(range(100))") == [{"data": {"text/plain": "4950"}}]
    assert execute(loop, svc, 'print("Hello")') == [{"name": "stdout", "text": "Hello\n"}]
    assert execute(loop, svc, "sum(range(a + 1))", history=["a = 100"]) == [
        {"data": {"text/plain": "5050"}}]
    assert execute(loop, svc, "print(a**2)", history=["a=5"]) == [{"name": "stdout", "text": "25\n"}]


def test_stateless_rlimits_apply(loop, svc) -> None:
    text = out_text(execute(loop, svc, "import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], "
                                       "resource.getrlimit(resource.RLIMIT_CPU)[0])"))
    assert text.split() == ["1000", "30"]


def test_zygote_is_single_threaded(loop, svc) -> None:
    zpid = zygote_pid(loop, svc)
    z = run(loop, svc.launcher.zygotes.ready(svc.catalog.get("python3")))
    assert run(loop, z.call({"op": "ping"}))["threads"] == 1
    assert psutil.Process(zpid).num_threads() == 1
    execute(loop, svc, "1+1")
    assert psutil.Process(zpid).num_threads() == 1


def test_hundred_sequential_calls(loop, svc) -> None:
    execute(loop, svc, "1+1")
    t0 = time.perf_counter()
    for _ in range(100):
        assert execute(loop, svc, "1+1") == [{"data": {"text/plain": "2"}}]
    elapsed = time.perf_counter() - t0
    # A normal launch per call costs ~0.3-0.5 s here; forks keep the pool filled.
    assert elapsed < 100 * 0.2, elapsed


def test_killing_a_kernels_group_leaves_no_process(loop, svc) -> None:
    spec = svc.catalog.get("python3")
    kernel = run(loop, svc.launcher.start(spec, scratch=True, warm=False, fork=True))
    try:
        assert isinstance(kernel.popen, ForkedProcess)
        noop = lambda m: None  # noqa: E731
        run(loop, kernel.collect(kernel.send_execute(
            "import subprocess; p = subprocess.Popen(['sleep', '300'], start_new_session=True); "
            "print(p.pid)"), noop))
        wait_until(loop, lambda: len(kernel.group.pids()) == 2)
        members = kernel.group.pids()
        assert kernel.pid in members
        zpid = zygote_pid(loop, svc)
        assert zpid not in members
        kernel.group.kill_all()
        wait_until(loop, lambda: all(gone_or_reaped_orphan(p) for p in members))
        wait_until(loop, lambda: kernel.exited.done())
        assert kernel.exited.result() == -signal.SIGKILL   # the zygote reported the code
        assert psutil.pid_exists(zpid)
    finally:
        run(loop, kernel.close())


def gone_or_reaped_orphan(pid: int) -> bool:
    """Gone; or killed and re-parented to this test process, which earlier tests in the
    same run may have made a child subreaper (as the daemon is): then reap it here, as
    the daemon's orphan reaper would."""
    if gone(pid):
        return True
    try:
        proc = psutil.Process(pid)
        if proc.ppid() != os.getpid() or proc.status() != psutil.STATUS_ZOMBIE:
            return False
        os.waitpid(pid, os.WNOHANG)
    except (psutil.Error, ChildProcessError):
        pass
    return gone(pid)


def test_kernel_death_reports_code_signal_and_stderr(loop, svc) -> None:
    """Exit codes come from the zygote (the forked kernel's parent) and stderr from the
    kernel's own file, exactly as for a launched kernel."""
    zpid = zygote_pid(loop, svc)
    wait_until(loop, lambda: bool(svc.pool.idle_kernels()))
    assert all(isinstance(k.popen, ForkedProcess) and psutil.Process(k.pid).ppid() == zpid
               for k in svc.pool.idle_kernels())
    with pytest.raises(RemoteError) as err:
        execute(loop, svc, "import os; os._exit(1)")
    assert err.value.message.startswith("Error: Kernel last exited with code 1.")
    wait_until(loop, lambda: bool(svc.pool.idle_kernels()))
    with pytest.raises(RemoteError) as err:
        execute(loop, svc, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert err.value.message.startswith("Error: Kernel last terminated by signal SIGKILL.")
    wait_until(loop, lambda: bool(svc.pool.idle_kernels()))
    with pytest.raises(RemoteError) as err:
        execute(loop, svc, "import os, sys\n"
                "os.write(sys.stderr._original_stdstream_copy, b'dying words\\n'); os._exit(3)")
    assert err.value.message == "Error: Kernel last exited with code 3.\n...\ndying words"
    assert execute(loop, svc, "1+1") == [{"data": {"text/plain": "2"}}]


def test_zygote_death_falls_back_and_restarts(loop, svc) -> None:
    old = zygote_pid(loop, svc)
    parked = [k.pid for k in svc.pool.idle_kernels() if isinstance(k.popen, ForkedProcess)]
    os.kill(old, signal.SIGKILL)
    # its kernels die with it (parent-death signal), whether parked or not
    wait_until(loop, lambda: all(gone_or_reaped_orphan(p) for p in parked))
    wait_until(loop, lambda: gone(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE)
    for _ in range(3):   # served anyway: pool kernel, normal launch or the new zygote
        assert execute(loop, svc, "1+1") == [{"data": {"text/plain": "2"}}]
    new = zygote_pid(loop, svc)
    assert new != old
    wait_until(loop, lambda: gone(old))
    parents = {int(out_text(execute(loop, svc, "import os; print(os.getppid())"))) for _ in range(4)}
    assert new in parents   # forks come from the new zygote again


def test_adopt_failure_falls_back_and_disables_forking(tmp_path: Path, mpl_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from projecthub.project.tracking_fallback import MarkerGroup

    def refuse(self, pid: int) -> None:
        raise PermissionError(13, "cgroup.procs")
    monkeypatch.setattr(MarkerGroup, "adopt", refuse)
    lp = asyncio.new_event_loop()
    try:
        ctx = make_ctx(tmp_path, mpl_dir)
        service = JupyterService(ctx, pool_size=0)
        run(lp, service.start())
        spec = service.catalog.get("python3")
        z = run(lp, service.launcher.zygotes.ready(spec))
        assert z is not None
        # The forked child is told to exit, the call gets a normally launched kernel.
        ppid = int(out_text(execute(lp, service, "import os; print(os.getppid())")))
        assert ppid == os.getpid()
        assert service.launcher.zygotes.get(spec) is None   # no more attempts
        assert execute(lp, service, "1+1") == [{"data": {"text/plain": "2"}}]
        wait_until(lp, lambda: psutil.Process(z.pid).children() == [])
        run(lp, service.close())
        assert gone(z.pid)
        assert list(Path(ctx.tmp_dir).iterdir()) == []
    finally:
        close_loop(lp)


def test_kernel_config_change_reaches_the_next_kernel(tmp_path: Path, mpl_dir: Path) -> None:
    """The zygote parses the kernel config once (prebuilt app); a config file changed
    afterwards must still apply to the next kernel: the zygote refuses, the call gets
    a normally launched kernel, and a restarted zygote forks with the new config."""
    lp = asyncio.new_event_loop()
    try:
        service = JupyterService(make_ctx(tmp_path, mpl_dir), pool_size=0)
        run(lp, service.start())
        spec = service.catalog.get("python3")
        old = run(lp, service.launcher.zygotes.ready(spec))
        assert old is not None
        code = "import os; print(os.getppid(), get_ipython().profile_dir.location)"
        ppid, profile = out_text(execute(lp, service, code)).split()
        assert int(ppid) == old.pid
        Path(profile, "ipython_kernel_config.py").write_text("c.IPKernelApp.exec_lines = ['zz = 42']\n")
        assert execute(lp, service, "zz") == [{"data": {"text/plain": "42"}}]
        wait_until(lp, lambda: gone(old.pid))
        new = run(lp, service.launcher.zygotes.ready(spec))
        assert new is not None and new.pid != old.pid
        assert execute(lp, service, "import os; (zz, os.getppid())") == [
            {"data": {"text/plain": f"(42, {new.pid})"}}]
        run(lp, service.close())
    finally:
        close_loop(lp)


def test_disabled_by_setting(tmp_path: Path, mpl_dir: Path) -> None:
    lp = asyncio.new_event_loop()
    try:
        service = JupyterService(make_ctx(tmp_path, mpl_dir, jupyter_zygote=False), pool_size=0)
        run(lp, service.start())
        assert service.launcher.zygotes is None
        assert execute(lp, service, "1+1") == [{"data": {"text/plain": "2"}}]
        run(lp, service.close())
    finally:
        close_loop(lp)


def test_close_leaves_no_process(tmp_path: Path, mpl_dir: Path) -> None:
    lp = asyncio.new_event_loop()
    try:
        ctx = make_ctx(tmp_path, mpl_dir)
        service = JupyterService(ctx, pool_size=2)
        run(lp, service.start())
        spec = service.catalog.get("python3")
        z = run(lp, service.launcher.zygotes.ready(spec))
        assert z is not None
        for _ in range(3):
            execute(lp, service, "1+1")
        # (2, or BURST_SIZE if those calls outran the pool)
        wait_until(lp, lambda: len(service.pool.idle_kernels()) >= 2)
        pids = [k.pid for k in service.launcher.list_alive()] + [z.pid]
        assert any(isinstance(k.popen, ForkedProcess) for k in service.launcher.list_alive())
        run(lp, service.close())
        assert all(gone(p) for p in pids)
        assert no_zombie_children()
        assert list((Path(ctx.state_dir) / "jupyter").iterdir()) == []
        assert list(Path(ctx.tmp_dir).iterdir()) == []
    finally:
        close_loop(lp)


def test_marker_group_adopt() -> None:
    """A process forked inside group A's tree, adopted by B, belongs to B only."""
    tracker = MarkerTracker(subreaper=False)
    a, b = tracker.new_group("zyg-a"), tracker.new_group("zyg-b")
    parent = a.spawn(lambda: subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time\npid = os.fork()\nif pid == 0:\n"
         "    os.setsid(); time.sleep(300)\nprint(pid, flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE, start_new_session=True))
    try:
        child = int(parent.stdout.readline())
        b.adopt(child)
        assert b.pids() == [child]
        assert a.pids() == [parent.pid]
        b.kill_all()
        deadline = time.monotonic() + 5
        while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert parent.poll() is None
    finally:
        a.close()
        b.close()
        parent.wait(5)


def test_specs_interrupted_by_message_are_not_forked(tmp_path) -> None:
    # A forked kernel serves control on its main thread: it could not take an interrupt
    # request while a cell runs, so such specs are launched as the spec says.
    from projecthub.project.jupyter.forking import IPYKERNEL_ARGV
    from projecthub.project.jupyter.specs import KernelSpecInfo
    argv = [sys.executable, *IPYKERNEL_ARGV]
    base = dict(name="p", display_name="P", language="python", resource_dir=str(tmp_path))
    assert eligible(KernelSpecInfo(argv=argv, **base))
    assert eligible(KernelSpecInfo(argv=argv, interrupt_mode="signal", **base))
    assert not eligible(KernelSpecInfo(argv=argv, interrupt_mode="message", **base))
