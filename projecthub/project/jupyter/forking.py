"""Daemon side of the kernel zygote (``zygote.py``): fork fresh ipykernels in milliseconds.

One zygote per kernelspec, started lazily in its own ProcessGroup the first time the
spec is used, restarted (with back-off) when it dies, killed by ``close()``.  Until it is
ready, or whenever it fails, callers get ``None`` and launch normally: the zygote is
an accelerator, never a reason for a call to fail.

Only specs whose argv is exactly ``[python, -m, ipykernel_launcher, -f,
{connection_file}]`` with ``python`` being the daemon's interpreter are eligible (the
zygote is that interpreter with ipykernel pre-imported).

Control protocol: newline-delimited JSON on a socketpair.  See ``zygote.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path
from typing import Any

from ..context import ProjectContext
from ..tracking import ProcessGroup
from .specs import KernelSpecInfo

ZYGOTE_PATH = str(Path(__file__).with_name("zygote.py"))
# run_path, not `python zygote.py` (its directory would shadow stdlib-like module names
# such as `specs`) nor `-m` (would need projecthub importable inside the sandbox).
ZYGOTE_BOOT = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"
IPYKERNEL_ARGV = ["-m", "ipykernel_launcher", "-f", "{connection_file}"]
SPAWN_TIMEOUT_S = 5.0
RESTART_DELAYS_S = (0.0, 1.0, 5.0, 30.0, 120.0)
STABLE_AFTER_S = 60.0     # a zygote that lived this long resets the restart back-off


def _parent_of(pid: int) -> int | None:
    """The parent pid from /proc/<pid>/stat (the command name may hold spaces or ')')."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def eligible(spec: KernelSpecInfo) -> bool:
    """Our own interpreter's ipykernel, interrupted by signal: a forked kernel serves its
    control channel on its main thread (``zygote.Prebuilt._init_sockets``), so it could
    not take an interrupt request while a cell runs."""
    if list(spec.argv[1:]) != IPYKERNEL_ARGV or spec.interrupt_by_message:
        return False
    return spec.command("cf")[0] == sys.executable


class ForkedProcess:
    """The ``subprocess.Popen`` subset ``Kernel`` uses, for a kernel the zygote forked.

    The zygote (its parent) reaps it and reports the exit code and rusage."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.greets = False   # its ipykernel sends iopub_welcome (the zygote says so)
        self.reported: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except OSError:
            self._pidfd = None

    def has_exited(self) -> bool:
        if self.returncode is not None:
            return True
        if self._pidfd is not None:
            return bool(select.select([self._pidfd], [], [], 0)[0])
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            return True
        return raw[raw.rfind(b")") + 2:][:1] in (b"Z", b"X")

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode

    def report(self, code: int | None) -> None:
        if self.returncode is None:
            self.returncode = code
        if not self.reported.done():
            self.reported.set_result(code)
        self.close_fd()

    def close_fd(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class ZygoteProcess:
    """One running zygote and its control connection."""

    def __init__(self, ctx: ProjectContext, spec: KernelSpecInfo, runtime_dir: Path) -> None:
        self.ctx = ctx
        self.spec = spec
        self.runtime_dir = runtime_dir
        self.group: ProcessGroup | None = None
        self.popen: subprocess.Popen | None = None
        self.pid: int | None = None
        self.ready = False
        self.dead = False
        self.started = time.monotonic()
        self.stderr_path = runtime_dir / f"zygote-{uuid.uuid4().hex[:8]}.stderr"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._next_id = 0
        self.adopt_failed = False
        self.welcome = False   # its kernels greet IOPub subscribers (from the hello)
        self._calls: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.children: dict[int, tuple[ForkedProcess, ProcessGroup]] = {}

    async def start(self, timeout_s: float) -> None:
        ctx, spec = self.ctx, self.spec
        self.group = ctx.tracker.new_group(f"jupyter-zygote-{uuid.uuid4().hex[:12]}")
        env = self.env()
        env.update(self.group.env_marker())
        ours, theirs = socket.socketpair()
        stderr = open(self.stderr_path, "wb")
        try:
            self.popen = self.group.spawn(lambda: subprocess.Popen(
                # -I and cwd "/": the zygote imports nothing from the project's home, cwd,
                # PYTHON* variables or user site (a planted ~/json.py would taint every
                # kernel forked from it); each kernel enters its own cwd after the fork.
                [sys.executable, "-I", "-c", ZYGOTE_BOOT, ZYGOTE_PATH, str(theirs.fileno())],
                cwd="/", env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=stderr, pass_fds=(theirs.fileno(),), start_new_session=True))
        finally:
            theirs.close()
            stderr.close()
        self.pid = self.popen.pid
        self._reader, self._writer = await asyncio.open_unix_connection(sock=ours)
        line = await asyncio.wait_for(self._reader.readline(), timeout_s)
        hello = json.loads(line) if line else {}
        if not hello.get("ready") or hello.get("threads") != 1:
            raise RuntimeError(f"zygote did not start: {hello!r}")
        self.welcome = bool(hello.get("welcome"))
        self.ready = True
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    def env(self) -> dict[str, str]:
        """The environment a normally launched stateless kernel of this spec gets."""
        env = self.ctx.child_env(dict(self.spec.env))
        env.setdefault("PLOTLY_RENDERER", "colab")
        env["COCALC_JUPYTER_KERNELNAME"] = self.spec.name
        env["JPY_PARENT_PID"] = str(os.getpid())
        return env

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                msg = json.loads(line)
                if "exit" in msg:
                    self._on_exit(msg)
                    continue
                fut = self._calls.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (OSError, ValueError, asyncio.CancelledError):
            pass
        finally:
            self._mark_dead()

    def _on_exit(self, msg: dict[str, Any]) -> None:
        entry = self.children.pop(int(msg["exit"]), None)
        if entry is None:
            return
        proc, group = entry
        record = getattr(group, "record_rusage", None)
        if record is not None:
            record(types.SimpleNamespace(ru_utime=msg.get("utime", 0.0), ru_stime=msg.get("stime", 0.0),
                                         ru_maxrss=msg.get("maxrss", 0)))
        proc.report(msg.get("code"))

    def _mark_dead(self) -> None:
        self.ready = False
        self.dead = True
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(RuntimeError("zygote died"))
        self._calls.clear()
        # Our kernels re-parent elsewhere: nobody reports their codes any more.
        for proc, _group in self.children.values():
            if not proc.reported.done():
                proc.reported.set_result(None)
        self.children.clear()

    def _send(self, msg: dict[str, Any]) -> None:
        if self._writer is None or self.dead:
            raise RuntimeError("zygote is not running")
        self._writer.write(json.dumps(msg).encode() + b"\n")

    async def call(self, msg: dict[str, Any], timeout_s: float = SPAWN_TIMEOUT_S) -> dict[str, Any]:
        self._next_id += 1
        msg["id"] = self._next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._calls[self._next_id] = fut
        try:
            self._send(msg)
            return await asyncio.wait_for(fut, timeout_s)
        finally:
            self._calls.pop(msg["id"], None)

    async def fork(self, *, group: ProcessGroup, connection_file: str, cwd: str,
                   env: dict[str, str], rlimits: dict[str, int] | None, stderr: str,
                   argv: list[str]) -> ForkedProcess:
        """Fork a kernel, move it into ``group``, let it start.  Raises on any failure
        (the caller then launches normally)."""
        reply = await self.call({"op": "spawn", "connection_file": connection_file, "cwd": cwd,
                                 "env": env, "rlimits": rlimits or {}, "stderr": stderr,
                                 "argv": argv})
        if "pid" not in reply:
            raise RuntimeError(f"zygote could not fork: {reply.get('error')}")
        pid = int(reply["pid"])
        if self.pid is None or _parent_of(pid) != self.pid:
            # Only a fresh child of this zygote may be moved into a kernel's group (through
            # the host's root-opened cgroup descriptors): never a pid the zygote names.
            raise RuntimeError(f"zygote reported pid {pid}, which is not its child")
        proc = ForkedProcess(pid)
        proc.greets = self.welcome
        self.children[pid] = (proc, group)
        try:
            group.adopt(pid)
        except BaseException as exc:
            if isinstance(exc, OSError):
                self.adopt_failed = True   # e.g. no permission: forking is useless here
            # Not in its own group: it must never run.  Closing its release pipe ends it.
            self.children.pop(pid, None)
            proc.close_fd()
            with contextlib.suppress(Exception):
                self._send({"op": "release", "pid": pid, "go": False})
            raise
        self._send({"op": "release", "pid": pid})
        return proc

    async def close(self) -> None:
        self.ready = False
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        if self.group is not None:
            with contextlib.suppress(Exception):
                self.group.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self.popen is not None:
            deadline = time.monotonic() + 5
            while self.popen.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        self.stderr_path.unlink(missing_ok=True)
        self._mark_dead()


class ZygoteManager:
    """Zygotes of one project, one per eligible kernelspec."""

    def __init__(self, ctx: ProjectContext, runtime_dir: Path, *, start_timeout_s: float = 60) -> None:
        self.ctx = ctx
        self.runtime_dir = runtime_dir
        self.start_timeout_s = start_timeout_s
        self._zygotes: dict[str, ZygoteProcess] = {}
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._closed_specs: set[str] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._retiring: set[asyncio.Task[None]] = set()
        self._closed = False

    def get(self, spec: KernelSpecInfo) -> ZygoteProcess | None:
        """The spec's ready zygote, or None (then starting one in the background)."""
        if self._closed or not eligible(spec):
            return None
        z = self._zygotes.get(spec.name)
        if z is not None and z.adopt_failed:
            self._closed_specs.add(spec.name)   # the tracker cannot move processes: give up
        if spec.name in self._closed_specs:
            return None
        if z is not None and z.ready and not z.dead and z.spec == spec:
            return z
        if z is not None and z.dead and spec.name not in self._starting:
            # Died under us: restart, backing off if it keeps dying young.
            now = time.monotonic()
            n = 0 if now - z.started > STABLE_AFTER_S else self._failures.get(spec.name, 0) + 1
            self._failures[spec.name] = n
            self._retry_at[spec.name] = max(self._retry_at.get(spec.name, 0),
                                            now + RESTART_DELAYS_S[min(max(n - 1, 0), len(RESTART_DELAYS_S) - 1)])
            self._zygotes.pop(spec.name, None)
            task = asyncio.get_running_loop().create_task(z.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        if spec.name not in self._starting and time.monotonic() >= self._retry_at.get(spec.name, 0):
            self._starting[spec.name] = asyncio.get_running_loop().create_task(self._start(spec))
        return None

    def retire(self, spec: KernelSpecInfo) -> bool:
        """Close the spec's zygote (its pool went idle): its memory goes back to the project.
        Kernels it forked that still run (a long cell) would die with it, so it is closed
        once they have exited; no new kernel forks from it meanwhile.  Not a failure: the
        next ``get`` starts a new zygote at once, without back-off."""
        z = self._zygotes.pop(spec.name, None)
        if z is None:
            return False
        self._failures.pop(spec.name, None)
        self._retry_at.pop(spec.name, None)
        task = asyncio.get_running_loop().create_task(self._close_when_unused(z))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return True

    @staticmethod
    async def _close_when_unused(z: ZygoteProcess) -> None:
        try:
            running = [proc.reported for proc, _group in z.children.values()]
            if running:
                await asyncio.wait(running)
        finally:   # also when the manager closes meanwhile
            await z.close()

    async def ready(self, spec: KernelSpecInfo) -> ZygoteProcess | None:
        """Wait for the spec's zygote (tests, warm-up); None if it cannot start."""
        z = self.get(spec)
        if z is None and spec.name in self._starting:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._starting[spec.name])
            z = self.get(spec)
        return z

    async def _start(self, spec: KernelSpecInfo) -> None:
        old = self._zygotes.pop(spec.name, None)
        if old is not None:
            await old.close()
        z = ZygoteProcess(self.ctx, spec, self.runtime_dir)
        try:
            await z.start(self.start_timeout_s)
        except BaseException:
            await z.close()
            n = self._failures.get(spec.name, 0)
            self._failures[spec.name] = n + 1
            self._retry_at[spec.name] = time.monotonic() + RESTART_DELAYS_S[min(n + 1, len(RESTART_DELAYS_S) - 1)]
            return
        finally:
            self._starting.pop(spec.name, None)
        if self._closed:
            await z.close()
            return
        self._zygotes[spec.name] = z

    def zygotes(self) -> list[ZygoteProcess]:
        return list(self._zygotes.values())

    async def close(self) -> None:
        self._closed = True
        for task in [*self._starting.values(), *self._retiring]:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await asyncio.gather(*(z.close() for z in self._zygotes.values()), *self._closing,
                             return_exceptions=True)
        self._zygotes.clear()
