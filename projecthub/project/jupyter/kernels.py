"""One kernel process: launch it in its own ProcessGroup, wait until it answers, kill it.

We launch with ``subprocess.Popen`` ourselves (through ``group.spawn`` so the tracker
accounts the whole tree) and talk to the kernel with jupyter_client's
``AsyncKernelClient``; jupyter_client's KernelManager would spawn outside the group.

Readiness is ``kernel_info_reply`` plus one IOPub message (ipykernel >= 7 greets each
subscriber with ``iopub_welcome``): that proves outputs will reach us, without the
stock ``wait_for_ready`` 0.2 s flush.  Exit is noticed through a pidfd registered with
the event loop, so a death interrupts whatever is waiting on the kernel at once.

Transport: IPC sockets in a 0700 directory by default — as fast as loopback TCP here
(see ``bench/jupyter_micro.py``), no port races between concurrent starts, and not
reachable by other local users.  On TCP, libzmq already sets TCP_NODELAY on every
socket it opens, so there is no Nagle delay to remove.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import zmq
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.connect import write_connection_file

from ...errors import RemoteError
from ..context import ProjectContext
from ..tracking import ProcessGroup
from .forking import ForkedProcess, ZygoteManager, ZygoteProcess
from .specs import KernelSpecInfo
from .zygote import KERNEL_EXTRA_ARGV

T = TypeVar("T")

START_TIMEOUT_S = 60.0
MAX_CONCURRENT_STARTS = 4     # ~3.6 starts/s saturate 2 cores; more in parallel only adds latency
STDERR_TAIL_CHARS = 2000
IPC_PATH_MAX = 100            # sun_path is 108 bytes; keep room for "-<port>"

# ulimit CoCalc applies to stateless kernels (spec 6.3): -n 1000 -f 10485760 -t 30 -v 3000000
STATELESS_RLIMITS: dict[str, int] = {
    "nofile": 1000,
    "fsize": 10485760 * 1024,
    "cpu": 30,
    "as": 3000000 * 1024,
}
_RLIMIT_IDS = {"nofile": resource.RLIMIT_NOFILE, "fsize": resource.RLIMIT_FSIZE,
               "cpu": resource.RLIMIT_CPU, "as": resource.RLIMIT_AS}


class KernelDied(RemoteError):
    """The kernel process exited while we were waiting on it."""


class KernelStartError(RemoteError):
    pass


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


# How long a forked kernel gets to greet our IOPub subscription before we fall back to
# kernel_info (a fork-boot takes ~20-40 ms; a busy machine may need more).
WELCOME_TIMEOUT_S = 2.0


class Kernel:
    """A running kernel process and the client connected to it."""

    def __init__(self, *, spec: KernelSpecInfo, group: ProcessGroup,
                 popen: "subprocess.Popen | ForkedProcess",
                 client: AsyncKernelClient, connection_file: Path, ipc_prefix: str | None,
                 stderr_path: Path, scratch_dir: Path | None, cwd: str,
                 closing: set[asyncio.Future[None]]) -> None:
        self.spec = spec
        self.group = group
        self.popen = popen
        self.pid = popen.pid
        self.client = client
        self.connection_file = connection_file
        self.ipc_prefix = ipc_prefix
        self.stderr_path = stderr_path
        self.scratch_dir = scratch_dir    # temp cwd owned by this kernel, removed with it
        self.cwd = cwd
        self.created = time.time()
        self.killed_by_us = False
        self.warmed = False   # a first cell has run (warm_up): lazy imports and caches are paid
        self._loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int] = self._loop.create_future()
        self._closed: asyncio.Future[None] | None = None
        self._closing = closing   # the launcher awaits these on shutdown
        self._watch_exit()

    # --- liveness -----------------------------------------------------------------

    @property
    def alive(self) -> bool:
        # A kernel we have sent SIGKILL is dead to us even before the kernel reaps it.
        return not (self.killed_by_us or self.exited.done() or self._has_exited())

    def _has_exited(self) -> bool:
        """Exited but maybe not reaped yet (the pidfd callback may still be queued).
        WNOWAIT leaves the zombie for ``_reap``, whose wait4 collects the rusage."""
        if self.popen.returncode is not None:
            return True
        if isinstance(self.popen, ForkedProcess):
            return self.popen.has_exited()
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def _watch_exit(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            # No pidfd (old kernel / seccomp): fall back to a slow poll.
            loop.create_task(self._poll_exit())
            return

        def on_readable() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            self._reap()

        loop.add_reader(fd, on_readable)

    async def _poll_exit(self) -> None:
        while self.popen.poll() is None:
            await asyncio.sleep(0.2)
        self._reap()

    def _reap(self) -> None:
        if isinstance(self.popen, ForkedProcess):
            self._reap_forked(self.popen)
            return
        code = self.popen.returncode
        if code is None:
            # wait4 rather than Popen.wait: the rusage (cpu, peak rss of the kernel and
            # the children it waited for) goes to the group's accounting.
            try:
                pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status, usage = 0, 0, None
            if pid == self.pid:
                code = self.popen.returncode = os.waitstatus_to_exitcode(status)
                record = getattr(self.group, "record_rusage", None)
                if record is not None:
                    record(usage)
            else:
                code = self.popen.poll()
                if code is None:   # pidfd said it exited; the status must be there
                    code = self.popen.wait()
        if not self.exited.done():
            self.exited.set_result(code)

    def _reap_forked(self, proc: ForkedProcess) -> None:
        """The zygote reaps its children and reports their codes just after the pidfd
        fires; wait briefly for that report (none comes if the zygote died)."""
        def settle(_f: object = None) -> None:
            if not self.exited.done():
                self.exited.set_result(proc.returncode)
        if proc.reported.done():
            settle()
            return
        proc.reported.add_done_callback(settle)
        self._loop.call_later(1.0, settle)

    def death_message(self) -> str:
        code = self.popen.returncode
        if code is None:
            text = "Error: Kernel died."
        elif code < 0:
            text = f"Error: Kernel last terminated by signal {_signal_name(-code)}."
        else:
            text = f"Error: Kernel last exited with code {code}."
        tail = self.stderr_tail()
        return f"{text}\n...\n{tail}" if tail else text

    def stderr_tail(self) -> str:
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - STDERR_TAIL_CHARS))
                return f.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    async def until_exit(self, aw: Awaitable[T], timeout: float | None = None) -> T:
        """Await ``aw`` unless the kernel dies first (KernelDied) or time runs out
        (asyncio.TimeoutError).  ``aw`` is cancelled in both cases."""
        task = asyncio.ensure_future(aw)
        try:
            done, _ = await asyncio.wait({task, self.exited}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        if task in done:
            return task.result()
        task.cancel()
        if self.exited in done:
            raise KernelDied(self.death_message())
        raise asyncio.TimeoutError

    # --- protocol -------------------------------------------------------------------

    async def _next_msg(self, channel: Any) -> dict[str, Any]:
        """The channel's next message.  ``get_msg`` would first await a poll and only
        then receive: two futures and one more loop turn for every message."""
        session = self.client.session
        _idents, parts = session.feed_identities(await channel.socket.recv_multipart())
        return session.deserialize(parts)

    async def _shell_reply(self, msg_id: str) -> dict[str, Any]:
        shell = self.client.shell_channel
        while True:
            msg = await self._next_msg(shell)
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg

    async def wait_ready(self) -> None:
        """kernel_info_reply, then one IOPub message so outputs are known to flow.

        A kernel forked from our zygote whose ipykernel greets every IOPub subscription
        with an ``iopub_welcome`` (7.x; the zygote says so) needs no more: the welcome
        proves outputs will flow, and requests sent before its shell loop runs wait in
        the shell socket's queue.  So the kernel_info round trip (a request, its reply and
        two status messages, ~1-2 ms of CPU across kernel and daemon for every stateless
        call) is skipped for it."""
        iopub = self.client.iopub_channel
        if getattr(self.popen, "greets", False):
            deadline = self._loop.time() + WELCOME_TIMEOUT_S
            try:
                while True:   # a "starting" status may come first
                    msg = await asyncio.wait_for(self._next_msg(iopub),
                                                 max(0.0, deadline - self._loop.time()))
                    if msg.get("msg_type") == "iopub_welcome":
                        return
            except asyncio.TimeoutError:
                pass   # no welcome after all: ask the usual way
        while True:
            await self._shell_reply(self.client.kernel_info())
            try:
                await asyncio.wait_for(self._next_msg(iopub), 0.5)
                return
            except asyncio.TimeoutError:
                continue  # subscription not through yet: ask again (pre-7 kernels)

    def send_execute(self, code: str, *, silent: bool = False, store_history: bool = True) -> str:
        return self.client.execute(code, silent=silent, store_history=store_history,
                                   allow_stdin=False, stop_on_error=False)

    async def collect(self, msg_id: str, on_msg: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Feed the cell's IOPub messages to ``on_msg`` until the kernel is idle again;
        return the shell ``execute_reply``."""
        iopub = self.client.iopub_channel
        while True:
            msg = await self._next_msg(iopub)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue  # leftovers of an earlier (interrupted) cell, or a welcome
            if msg["msg_type"] == "status":
                if msg["content"].get("execution_state") == "idle":
                    break
                continue
            on_msg(msg)
        return await self._shell_reply(msg_id)

    def interrupt(self) -> None:
        if self.spec.interrupt_by_message:
            self.client.control_channel.send(self.client.session.msg("interrupt_request", {}))
            return
        try:
            # Kernels run in their own session (pgid == pid): reach `!cmd` children too.
            os.killpg(self.pid, signal.SIGINT)
        except OSError:
            try:
                os.kill(self.pid, signal.SIGINT)
            except OSError:
                pass

    async def warm_up(self) -> None:
        """Run a first cell so the first real execute does not pay for lazy imports."""
        noop: Callable[[dict[str, Any]], None] = lambda m: None
        if self.spec.is_ipykernel:
            # An expression exercises the displayhook (worth ~4 ms on the first result);
            # flush() then drops the `_`/Out entries it left, so no state leaks.  As a
            # user expression it runs after the cell's displayhook within the same
            # request: one round trip and one cell's overhead less per pooled kernel.
            msg_id = self.client.execute("0", store_history=False, allow_stdin=False,
                                         stop_on_error=False,
                                         user_expressions={"_": "get_ipython().displayhook.flush()"})
            await self.collect(msg_id, noop)
        else:
            await self.collect(self.send_execute("", store_history=False), noop)
        self.warmed = True

    # --- teardown ---------------------------------------------------------------------

    def kill_now(self) -> None:
        """SIGKILL the kernel, synchronously and cheaply.

        The kernel leads its own session, so one killpg reaches it and every child that
        stayed in its process group.  The tracker's ``kill_all`` (which also finds
        setsid'd or re-parented descendants, but scans /proc and can take ms) runs from
        ``close()`` once the kernel is reaped, off the caller's latency path.
        """
        self.killed_by_us = True
        try:
            os.killpg(self.pid, signal.SIGKILL)
            return
        except OSError:
            pass
        try:
            self.group.kill_all()
        except Exception:
            pass

    def close(self) -> "asyncio.Future[None]":
        """Kill, reap and remove every file of this kernel.  Idempotent; the returned
        future may be ignored (the kill itself happens before this returns)."""
        if self._closed is None:
            self.kill_now()
            self._closed = self._loop.create_task(self._finish_close())
            self._closing.add(self._closed)
            self._closed.add_done_callback(self._closing.discard)
        return self._closed

    async def _finish_close(self) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), 10)
        except asyncio.TimeoutError:
            pass  # unkillable (D state): still release what we can
        _stop_started_channels(self.client)
        try:
            self.group.kill_all()   # descendants that left the kernel's process group
            self.group.close()
        except Exception:
            pass
        for path in self._files():
            try:
                os.unlink(path)
            except OSError:
                pass
        if self.scratch_dir is not None:
            try:
                os.rmdir(self.scratch_dir)   # usually empty: skip rmtree's walk
            except OSError:
                shutil.rmtree(self.scratch_dir, ignore_errors=True)

    def _files(self) -> list[str]:
        files = [str(self.connection_file), str(self.stderr_path)]
        if self.ipc_prefix:
            for name in ("shell", "iopub", "stdin", "control", "hb"):
                port = getattr(self.client, f"{name}_port", 0)
                files.append(f"{self.ipc_prefix}-{port}")
        return files

    def describe(self) -> dict[str, Any]:
        return {"pid": self.pid, "connectionFile": str(self.connection_file),
                "kernel_name": self.spec.name}


class KernelLauncher:
    """Starts kernels for one project; knows every live kernel it started."""

    def __init__(self, ctx: ProjectContext, *, transport: str | None = None,
                 start_timeout_s: float = START_TIMEOUT_S,
                 max_concurrent_starts: int = MAX_CONCURRENT_STARTS, zygote: bool = False) -> None:
        self.ctx = ctx
        self.start_timeout_s = start_timeout_s
        self.runtime_dir = self._pick_runtime_dir(ctx)
        transport = transport or str(ctx.settings.get("jupyter_transport", "ipc"))
        if transport == "ipc" and len(str(self.runtime_dir)) + 12 > IPC_PATH_MAX:
            transport = "tcp"  # socket path would not fit in sun_path
        self.transport = transport
        self.zygotes = ZygoteManager(ctx, self.runtime_dir, start_timeout_s=start_timeout_s) if zygote else None
        self.live: dict[int, Kernel] = {}
        self._closing: set[asyncio.Future[None]] = set()
        self._slots = asyncio.Semaphore(max_concurrent_starts)
        # One zmq context for all clients: one IO thread, not one per kernel.
        self.zmq_context = zmq.asyncio.Context()
        # The client connects before the kernel binds; retry every 10 ms instead of
        # libzmq's 100 ms so start-up is not rounded up to the next retry.
        self.zmq_context.setsockopt(zmq.RECONNECT_IVL, 10)
        # No exponential back-off either: a forked kernel binds ~50 ms after we connect,
        # and backing off to 20-40 ms steps would add that much to its start.
        self.zmq_context.setsockopt(zmq.RECONNECT_IVL_MAX, 0)
        # Never drop IOPub messages on our side (default high-water mark: 1000 queued):
        # a dropped "idle" status would leave a cell looking busy until its timeout.
        self.zmq_context.setsockopt(zmq.RCVHWM, 0)

    @staticmethod
    def _pick_runtime_dir(ctx: ProjectContext) -> Path:
        for base in (Path(ctx.state_dir) / "jupyter", Path(ctx.tmp_dir) / ".jupyter-runtime"):
            if len(str(base)) + 12 <= IPC_PATH_MAX:
                break
        base.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o700)  # connection files hold the HMAC key
        return base

    async def start(self, spec: KernelSpecInfo, *, cwd: str | None = None,
                    env: dict[str, str] | None = None, rlimits: dict[str, int] | None = None,
                    scratch: bool = False, warm: bool = True, fork: bool = False) -> Kernel:
        """Start a kernel and return it ready (and warm).  ``scratch``: run it in a fresh
        temp dir under the project's tmp, removed when the kernel is closed.  ``fork``:
        fork it from the spec's zygote when one is ready (fresh kernel in a few ms),
        else launch it normally."""
        async with self._slots:
            if fork and not env and self.zygotes is not None:
                zygote = self.zygotes.get(spec)
                if zygote is not None:
                    kernel = await self._fork(zygote, spec, cwd=cwd, rlimits=rlimits, scratch=scratch)
                    if kernel is not None:
                        try:
                            await kernel.until_exit(self._ready(kernel, warm),
                                                    timeout=min(10.0, self.start_timeout_s))
                            return kernel
                        except asyncio.CancelledError:
                            kernel.close()
                            raise
                        except Exception:
                            kernel.close()   # a zygote problem: launch normally below
            kernel = self._spawn(spec, cwd=cwd, env=env, rlimits=rlimits, scratch=scratch)
            try:
                await kernel.until_exit(self._ready(kernel, warm), timeout=self.start_timeout_s)
            except asyncio.TimeoutError:
                kernel.close()
                raise KernelStartError(
                    f"Error: Kernel '{spec.name}' did not start within "
                    f"{self.start_timeout_s:g} seconds (pid {kernel.pid} killed)."
                    + (f"\n...\n{kernel.stderr_tail()}" if kernel.stderr_tail() else "")) from None
            except BaseException:
                kernel.close()
                raise
            return kernel

    async def _ready(self, kernel: Kernel, warm: bool) -> None:
        await kernel.wait_ready()
        if warm:
            await kernel.warm_up()

    def _prepare(self, spec: KernelSpecInfo, *, cwd: str | None, env: dict[str, str] | None,
                 scratch: bool) -> "_Launch":
        kid = uuid.uuid4().hex[:12]
        connection_file = self.runtime_dir / f"kernel-{kid}.json"
        ipc_prefix = str(self.runtime_dir / kid) if self.transport == "ipc" else None
        write_connection_file(str(connection_file), transport=self.transport,
                              ip=ipc_prefix or "127.0.0.1", kernel_name=spec.name)
        with open(connection_file, encoding="utf-8") as f:
            info = json.load(f)
        stderr_path = self.runtime_dir / f"kernel-{kid}.stderr"

        scratch_dir = None
        if scratch:
            Path(self.ctx.tmp_dir).mkdir(parents=True, exist_ok=True)
            scratch_dir = Path(tempfile.mkdtemp(prefix="cocalc", dir=self.ctx.tmp_dir))
        run_cwd = str(scratch_dir or cwd or self.ctx.home)

        extra: list[str] = []
        if spec.is_ipykernel:
            extra.extend(KERNEL_EXTRA_ARGV)   # why each: see its definition
        try:
            group = self.ctx.tracker.new_group(f"jupyter-{kid}")
        except BaseException:
            connection_file.unlink(missing_ok=True)
            if scratch_dir is not None:
                shutil.rmtree(scratch_dir, ignore_errors=True)
            raise
        child_env = self.ctx.child_env({**spec.env, **(env or {})})
        child_env.update(group.env_marker())
        child_env.setdefault("PLOTLY_RENDERER", "colab")
        child_env["COCALC_JUPYTER_KERNELNAME"] = spec.name
        # ipykernel exits by itself when this process (its parent) goes away.
        child_env["JPY_PARENT_PID"] = str(os.getpid())
        return _Launch(spec, connection_file, info, ipc_prefix, stderr_path, scratch_dir,
                       run_cwd, extra, group, child_env)

    async def _fork(self, zygote: ZygoteProcess, spec: KernelSpecInfo, *, cwd: str | None,
                    rlimits: dict[str, int] | None, scratch: bool) -> Kernel | None:
        """A kernel forked by ``zygote``, or None (nothing left behind) if that failed."""
        prep = self._prepare(spec, cwd=cwd, env=None, scratch=scratch)
        env = zygote.env()
        env.update(prep.group.env_marker())
        env["JPY_PARENT_PID"] = str(zygote.pid)
        try:
            proc = await zygote.fork(group=prep.group, connection_file=str(prep.connection_file),
                                     cwd=prep.run_cwd, env=env, rlimits=rlimits,
                                     stderr=str(prep.stderr_path), argv=prep.extra)
        except asyncio.CancelledError:
            prep.discard()
            raise
        except Exception:
            prep.discard()
            return None
        return self._make_kernel(prep, proc)

    def _spawn(self, spec: KernelSpecInfo, *, cwd: str | None, env: dict[str, str] | None,
               rlimits: dict[str, int] | None, scratch: bool) -> Kernel:
        prep = self._prepare(spec, cwd=cwd, env=env, scratch=scratch)
        cmd = spec.command(str(prep.connection_file), prep.extra)
        stderr = open(prep.stderr_path, "wb")
        try:
            popen = prep.group.spawn(lambda: subprocess.Popen(
                cmd, cwd=prep.run_cwd, env=prep.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True))
        except BaseException as exc:
            prep.discard()
            if isinstance(exc, OSError):   # e.g. the spec's argv[0] does not exist
                raise KernelStartError(f"Error: could not start kernel '{spec.name}': {exc}") from exc
            raise
        finally:
            stderr.close()
        if rlimits:
            _apply_rlimits(popen.pid, rlimits)
        return self._make_kernel(prep, popen)

    def _make_kernel(self, prep: "_Launch", popen: "subprocess.Popen | ForkedProcess") -> Kernel:
        client = AsyncKernelClient(context=self.zmq_context)
        client.load_connection_info(prep.info)
        # The control channel only carries interrupts for kernels that want them as
        # messages; ``interrupt`` opens it on first use (the client creates it lazily).
        client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
        kernel = Kernel(spec=prep.spec, group=prep.group, popen=popen, client=client,
                        connection_file=prep.connection_file, ipc_prefix=prep.ipc_prefix,
                        stderr_path=prep.stderr_path, scratch_dir=prep.scratch_dir,
                        cwd=prep.run_cwd, closing=self._closing)
        self.live[kernel.pid] = kernel
        kernel.exited.add_done_callback(lambda _f: self.live.pop(kernel.pid, None))
        return kernel

    def get(self, pid: int) -> Kernel | None:
        kernel = self.live.get(pid)
        return kernel if kernel is not None and kernel.alive else None

    def list_alive(self) -> list[Kernel]:
        return [k for k in self.live.values() if k.alive]

    async def close(self) -> None:
        kernels = list(self.live.values())
        await asyncio.gather(*(k.close() for k in kernels), return_exceptions=True)
        await asyncio.gather(*list(self._closing), return_exceptions=True)
        if self.zygotes is not None:
            await self.zygotes.close()
        self.zmq_context.destroy(linger=0)


@dataclass
class _Launch:
    """Everything a kernel needs before its process exists (files, group, env)."""
    spec: KernelSpecInfo
    connection_file: Path
    info: dict[str, Any]
    ipc_prefix: str | None
    stderr_path: Path
    scratch_dir: Path | None
    run_cwd: str
    extra: list[str]
    group: ProcessGroup
    env: dict[str, str]

    def discard(self) -> None:
        self.group.close()
        for p in (self.connection_file, self.stderr_path):
            p.unlink(missing_ok=True)
        if self.scratch_dir is not None:
            shutil.rmtree(self.scratch_dir, ignore_errors=True)


def _stop_started_channels(client: AsyncKernelClient) -> None:
    """Close the channels this client started.  ``KernelClient.stop_channels`` asks each
    channel property whether it is alive, and asking creates (and connects) a socket for
    every channel never started (stdin, hb): two sockets made only to be closed, for
    every kernel."""
    try:
        channels = [getattr(client, f"_{name}_channel")
                    for name in ("shell", "iopub", "stdin", "hb", "control")]
    except AttributeError:   # another jupyter_client layout: take the public way
        channels = None
    try:
        if channels is None:
            client.stop_channels()
            return
        for channel in channels:
            if channel is not None and channel.is_alive():
                channel.stop()
    except Exception:
        pass


def _apply_rlimits(pid: int, rlimits: dict[str, int]) -> None:
    """Set limits on the just-spawned kernel (no preexec_fn: that would force a full
    fork and break the tracker's spawn path)."""
    for name, value in rlimits.items():
        rid = _RLIMIT_IDS.get(name)
        if rid is None:
            continue
        try:
            soft, hard = resource.prlimit(pid, rid)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.prlimit(pid, rid, (value, value))
        except (OSError, ValueError):
            pass  # process already gone, or not permitted: best effort
