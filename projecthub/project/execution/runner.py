"""One running command: spawn, capture, time out, kill the whole group, reap.

The only way the daemon runs a command; blocking execs, async jobs, yield_after and
budget conversion all drive an ``Execution`` and differ only in who waits for it.

Why it is built this way (this is the hot path):

* ``subprocess.Popen`` without ``preexec_fn``/``user``/``group`` keeps CPython's vfork
  path (~0.6 ms); it is called through ``group.spawn`` so a cgroup backend can place it.
* No asyncio subprocess machinery: on 3.11 its default child watcher costs a thread per
  child.  We own the waiting: a pidfd registered with ``loop.add_reader`` says when the
  child exited, then ``os.wait4`` reaps it and returns its rusage (cpu, peak rss).
* Our own ``os.pipe2`` pipes read with ``loop.add_reader`` + ``os.read``: no transports,
  no file objects, no threads.  stdin is a shared ``/dev/null`` fd (EOF at once).
* The timeout is a loop timer owned by the execution, independent of who is waiting, so a
  caller giving up (budget) never leaves a command without its limit.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import json
import math
import os
import random
import shutil
import signal
import string
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..context import ProjectContext
from ..tracking import ProcessGroup, own_maxrss, reap
from .capture import DEFAULT_STREAM_BYTES, OUTPUT_BUDGET, StreamCapture
from .options import ExecRequest

# After a kill, give the streams this long to reach EOF; a process we could not find
# (e.g. one that cleared its marker and escaped) may still hold a pipe open.
KILL_GRACE_S = 0.3
# Without accounting the group is given back by the caller right after its reply; at
# the latest this long after the end.
RELEASE_FALLBACK_S = 0.5
_READ_SIZE = 1 << 16
_DEVNULL: int | None = None


def _devnull() -> int:
    global _DEVNULL
    if _DEVNULL is None:
        _DEVNULL = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return _DEVNULL


@dataclass
class Outcome:
    pid: int | None
    exit_code: int | None          # None: killed by a signal, or never ran
    signal: int | None             # the signal that ended the root process
    spawn_error: dict[str, Any] | None   # node-style error object when the program never ran
    killed_by: str | None          # why WE killed it: "timeout" | "output" | "cancelled" (caller gone, daemon stop) | "killed" (jobs API)
    stdout: StreamCapture
    stderr: StreamCapture
    wall_s: float
    cpu_user_s: float = 0.0
    cpu_sys_s: float = 0.0
    max_rss_bytes: int = 0
    oom_killed: bool = False
    kill_text: str = ""            # E3 "killed command '...'" text

    @property
    def timed_out(self) -> bool:
        return self.killed_by == "timeout"


def spawn_error_object(exc: OSError, program: str, spawnargs: list[str]) -> dict[str, Any]:
    """The JSON node puts on stderr for a failed spawn: it names the program even when
    the missing thing was the working directory."""
    code = exc.errno or errno_mod.EIO
    return {"errno": -code, "code": errno_mod.errorcode.get(code, "EIO"),
            "syscall": f"spawn {program}", "path": program, "spawnargs": spawnargs}

# Not `secrets`: it imports hmac/hashlib, which maps OpenSSL's libcrypto (~3 MiB resident)
# into every project daemon.  SystemRandom reads the same os.urandom.
_RNG = random.SystemRandom()


def _make_script_dir(tmp_dir: str) -> str:
    """``<tmp>/cocalc-XXXXXX`` with 6 random characters, mode 0700."""
    os.makedirs(tmp_dir, exist_ok=True)
    alphabet = string.ascii_letters + string.digits
    for _ in range(100):
        path = os.path.join(tmp_dir, "cocalc-" + "".join(_RNG.choice(alphabet) for _ in range(6)))
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise OSError(errno_mod.EEXIST, "could not create a temporary directory")


class Execution:
    def __init__(self, ctx: ProjectContext, req: ExecRequest, name: str,
                 on_change: Callable[[], None] | None = None) -> None:
        self.ctx = ctx
        self.req = req
        self.name = name
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[Outcome] = self.loop.create_future()
        self.on_change = on_change          # called on new output and at the end
        # Group accounting (cpu, peak memory, OOM) for the Outcome.  CoCalc's blocking
        # system.exec reply carries none of it, so that path turns it off and saves the
        # control-file reads; an execution that becomes a job turns it back on.
        self.accounting = True
        self._released = False
        self._release_timer: asyncio.TimerHandle | None = None
        spill_limit = int(ctx.settings.get("job_output_spill_limit", 1 << 30))
        # Output memory is capped while reading, per stream and for the whole daemon
        # (capture.py): what a project prints must never be able to OOM its daemon.
        cap_bytes = int(ctx.settings.get("exec_output_bytes", DEFAULT_STREAM_BYTES))
        if "exec_output_budget" in ctx.settings:
            OUTPUT_BUDGET.limit = int(ctx.settings["exec_output_budget"])
        self.stdout = StreamCapture(req.output_limit, spill_limit, cap_bytes)
        self.stderr = StreamCapture(req.output_limit, spill_limit, cap_bytes)
        self.pid: int | None = None
        self.started_at = time.monotonic()
        self.killed_by: str | None = None
        self._group: ProcessGroup | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._fds: dict[int, StreamCapture] = {}
        self._status: int | None = None
        self._rusage: Any = None
        self._timers: list[asyncio.TimerHandle] = []
        self._script_dir: str | None = None
        self._argv: list[str] = list(req.argv)

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        """Spawn now (synchronously).  A spawn failure resolves ``done`` at once."""
        req = self.req
        try:
            if req.script is not None:
                self._script_dir = _make_script_dir(str(self.ctx.tmp_dir))
                script_path = os.path.join(self._script_dir, "a.sh")
                body = req.script
                if req.timeout_s and req.ulimit_timeout:
                    body = f"ulimit -t {math.ceil(req.timeout_s)}\n{body}"
                fd = os.open(script_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o700)
                with open(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
                    f.write(body)
                self._argv = ["bash", script_path]
        except OSError as exc:
            self._fail(exc)
            return
        if req.uid_requested:   # an unprivileged daemon cannot switch users: fail like node
            self._fail(PermissionError(errno_mod.EPERM, "uid/gid not permitted"))
            return

        try:
            self._group = self.ctx.tracker.new_group(self.name)
        except OSError as exc:   # e.g. EAGAIN: every process group of the project is in use
            self._fail(exc)
            return
        env = self.ctx.child_env(req.env)
        env.update(self._group.env_marker())        # after the overlay: a user cannot spoof it
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            self._proc = self._group.spawn(lambda: subprocess.Popen(
                self._argv, stdin=_devnull(), stdout=out_w, stderr=err_w, cwd=req.cwd,
                env=env, start_new_session=True, close_fds=True))
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            for fd in (out_r, out_w, err_r, err_w):
                os.close(fd)
            self._fail(exc if isinstance(exc, OSError) else OSError(errno_mod.EINVAL, str(exc)))
            return
        finally:
            if self._proc is not None:
                os.close(out_w)
                os.close(err_w)
        self.pid = self._proc.pid
        self.started_at = time.monotonic()
        for fd, cap in ((out_r, self.stdout), (err_r, self.stderr)):
            os.set_blocking(fd, False)
            self._fds[fd] = cap
            self.loop.add_reader(fd, self._on_readable, fd)
        self._pidfd = os.pidfd_open(self.pid)
        self.loop.add_reader(self._pidfd, self._on_exit)
        if req.timeout_s is not None:
            self._timers.append(self.loop.call_later(req.timeout_s, self.kill, "timeout"))

    def _fail(self, exc: OSError) -> None:
        program = self._argv[0]
        err = spawn_error_object(exc, program, self._argv[1:])
        self.stderr.feed(json.dumps(err, separators=(",", ":")).encode())
        self._finish(spawn_error=err)

    # ------------------------------------------------------------------ events
    def _on_readable(self, fd: int) -> None:
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        cap = self._fds[fd]
        if data:
            cap.feed(data)
            if self.req.kill_on_output and cap.truncated and self.killed_by is None:
                self.kill("output")
            if self.on_change:
                self.on_change()
            return
        self._close_fd(fd)
        cap.close()
        self._maybe_finish()

    def _on_exit(self) -> None:
        assert self._pidfd is not None and self.pid is not None
        reaped = reap(self.pid, self._proc, self._group)
        if reaped is None:
            return
        self._status, self._rusage = reaped
        self.loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        self._maybe_finish()

    def kill(self, reason: str) -> None:
        """Kill the whole group; finish within KILL_GRACE_S even if a pipe stays open."""
        if self.done.done() or self.killed_by is not None:
            return
        self.killed_by = reason
        if self._group is not None:
            self._group.kill_all()
        self._timers.append(self.loop.call_later(KILL_GRACE_S, self._force_finish))

    def _maybe_finish(self) -> None:
        if self._status is not None and not self._fds:
            self._finish()
        # Root gone but a background process still holds a pipe: keep reading until EOF
        # or the timeout timer fires and kills the group (CoCalc would hang here).

    def _force_finish(self) -> None:
        for fd in list(self._fds):
            self._fds[fd].close()
            self._close_fd(fd)
        self._finish()

    def _close_fd(self, fd: int) -> None:
        if fd in self._fds:
            self.loop.remove_reader(fd)
            os.close(fd)
            del self._fds[fd]

    # ------------------------------------------------------------------ end
    def _finish(self, spawn_error: dict[str, Any] | None = None) -> None:
        if self.done.done():
            return
        for t in self._timers:
            t.cancel()
        self._timers.clear()
        self.stdout.settle()    # the budget share goes back; the text waits for the reply
        self.stderr.settle()
        wall = time.monotonic() - self.started_at
        usage = None
        if self._group is not None:
            # Nothing of a finished exec survives: background children die with it.
            if self.accounting:
                self._group.kill_all()
                usage = self._group.usage()
                self.release()
            else:
                # Giving the group back is not part of the answer: the caller replies first
                # and then calls release() (exec._run), whose close() runs the complete
                # kill_all; the timer is the safety net if it never does.  Before the reply
                # a cgroup group may only look where its processes were started.
                getattr(self._group, "kill_all_but_migrants", self._group.kill_all)()
                self._release_timer = self.loop.call_later(RELEASE_FALLBACK_S, self.release)
        if self._pidfd is not None:
            # Root not reaped yet (forced finish): leave it to the tracker's orphan reaper.
            self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
            if self._proc is not None:
                self._proc.returncode = -signal.SIGKILL   # keep Popen.__del__ from waiting
            if self.pid is not None and hasattr(self.ctx.tracker, "disown"):
                self.ctx.tracker.disown(self.pid)  # type: ignore[attr-defined]
        if self._script_dir is not None:
            shutil.rmtree(self._script_dir, ignore_errors=True)
        exit_code: int | None = None
        sig: int | None = None
        if self._status is not None:
            if os.WIFSIGNALED(self._status):
                sig = os.WTERMSIG(self._status)
            else:
                exit_code = os.waitstatus_to_exitcode(self._status)
        elif spawn_error is not None:
            exit_code = None
        elif self.killed_by is not None:
            sig = signal.SIGKILL
        ru = self._rusage
        outcome = Outcome(
            pid=self.pid, exit_code=exit_code, signal=sig, spawn_error=spawn_error,
            killed_by=self.killed_by, stdout=self.stdout, stderr=self.stderr, wall_s=wall,
            kill_text=f"killed command '{self._argv[0]} {' '.join(self._argv[1:])}'",
        )
        if ru is not None:
            # precise, but only for the root and the children it waited for
            outcome.cpu_user_s, outcome.cpu_sys_s = ru.ru_utime, ru.ru_stime
        if usage is not None:
            # the group's counters also cover orphans and children nobody waited for
            outcome.cpu_user_s = max(outcome.cpu_user_s, usage.cpu_user_s)
            outcome.cpu_sys_s = max(outcome.cpu_sys_s, usage.cpu_sys_s)
            outcome.oom_killed = usage.oom_killed
        if usage is not None and usage.exact_peak:
            outcome.max_rss_bytes = usage.max_rss_bytes
        elif self.accounting:   # no peak of the group's own: the root's, unless it is the daemon's
            outcome.max_rss_bytes = max(own_maxrss(ru) if ru is not None else 0,
                                        usage.max_rss_bytes if usage is not None else 0)
        self.done.set_result(outcome)
        if self.on_change:
            self.on_change()

    def release(self) -> None:
        """Give a finished execution's group back (to the pool, or remove it).  Idempotent.
        ``_finish`` has already killed what was left in it; with ``accounting`` on it also
        releases at once (after reading the usage)."""
        if self._released:
            return
        self._released = True
        if self._release_timer is not None:
            self._release_timer.cancel()
        if self._group is not None:
            self._group.close()

    @property
    def group(self) -> ProcessGroup | None:
        return self._group

    @property
    def finished(self) -> bool:
        return self.done.done()
