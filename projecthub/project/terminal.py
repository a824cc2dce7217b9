"""Terminals: ``bash -l`` on a pseudo-terminal, owned by the project daemon.

A terminal is started like an exec (``execution/runner.py``): in the daemon's sandbox, as
the project's uid, in a process group of the tracker of its own (a child cgroup), from the
project's environment, with the home as cwd.  Unlike an exec it outlives its callers: the
hub attaches clients to it (the fabric stream ``native.terminal.attach``), any number at
once, and when the last one detaches it keeps running for a grace period, so a page reload
finds it again with its recent output (a bounded scrollback ring).

Every buffer is bounded.  Output goes into the ring (``SCROLLBACK_BYTES``) and into each
attached client's backlog; while a backlog is over ``CLIENT_HIGH_WATER`` the PTY is not
read (the shell blocks on its writes, like behind a slow real terminal), and a client that
stays over it for ``CLIENT_STALL_S`` is dropped so one stuck reader cannot freeze the
others.  Input waiting for the shell is capped at ``INPUT_PENDING_MAX``.

The shell gets the PTY as its controlling terminal (job control, ^C, SIGWINCH) through a
tiny exec helper run by the daemon's own interpreter (``-I -S``: nothing of the home is
imported): ``subprocess`` has no way to do ``TIOCSCTTY`` without ``preexec_fn``, which would
take the daemon off the vfork spawn path and is unsafe with threads.

What the daemon exposes (``api.py``): ``native.terminal.create|list|kill|input|resize`` and
the stream ``native.terminal.attach`` (``{"scrollback"}``, then ``{"data"}`` items, then
``{"exit": code}``); bytes travel base64-encoded in the fabric's JSON frames.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import logging
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import time
import weakref
from typing import Any, AsyncIterator

from ..errors import RemoteError
from .context import ProjectContext
from .tracking import ProcessGroup, reap

log = logging.getLogger("projecthub.terminal")

SCROLLBACK_BYTES = 256 * 1024
DEFAULT_MAX_TERMINALS = 8
DEFAULT_GRACE_S = 600.0
MAX_CLIENTS = 8                    # attached at once, per terminal (each may hold a backlog)
CLIENT_HIGH_WATER = 256 * 1024     # an attached client's backlog before the PTY is paused
CLIENT_STALL_S = 10.0              # how long a client may keep it paused before it is dropped
INPUT_FRAME_MAX = 64 * 1024        # one input call (the hub refuses bigger WebSocket frames)
INPUT_PENDING_MAX = 256 * 1024     # input the shell has not read yet
EXIT_DRAIN_MAX = 1024 * 1024       # output still read from the PTY after the shell exited
MAX_DIMENSION = 1000
_READ_SIZE = 64 * 1024
_ITEM_SIZE = 64 * 1024             # raw bytes per stream item
TERMINAL_ID_RE = re.compile(r"^[0-9a-f]{32}$")

# Makes the PTY on fd 0 the controlling terminal of the new session (Popen's
# start_new_session did the setsid), then becomes the shell.
_CTTY_HELPER = ("import fcntl,os,sys,termios\n"
                "fcntl.ioctl(0,termios.TIOCSCTTY,0)\n"
                "os.execvp(sys.argv[1],sys.argv[1:])\n")
SHELL = ["bash", "-l"]


def _missing(terminal_id: Any) -> RemoteError:
    shown = terminal_id if isinstance(terminal_id, str) and len(terminal_id) <= 64 else "?"
    return RemoteError(f"Error: terminal '{shown}' does not exist", status=404)


def _dimension(opts: dict[str, Any], name: str, default: int) -> int:
    value = opts.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DIMENSION:
        raise RemoteError(f"Error: '{name}' must be an integer from 1 to {MAX_DIMENSION}", status=400)
    return value


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class _Client:
    """One attached stream: output not yet taken, and why it was dropped (if it was)."""

    __slots__ = ("pending", "wake", "over_since", "dropped")

    def __init__(self) -> None:
        self.pending = bytearray()
        self.wake = asyncio.Event()
        self.over_since: float | None = None
        self.dropped: str | None = None


class Terminal:
    def __init__(self, manager: "TerminalManager", terminal_id: str, cols: int, rows: int) -> None:
        self.manager = manager
        self.ctx = manager.ctx
        self.loop = asyncio.get_running_loop()
        self.terminal_id = terminal_id
        self.cols, self.rows = cols, rows
        self.created = time.time()
        self.last_active = self.created
        self.ring = bytearray()
        self.clients: set[_Client] = set()
        self.exit_code: int | None = None
        self.pid: int | None = None
        self._group: ProcessGroup | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._master: int | None = None
        self._pidfd: int | None = None
        self._reading = False
        self._input = bytearray()
        self._grace: asyncio.TimerHandle | None = None
        self._stall: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        """Spawn the shell now; raises RemoteError (nothing left behind) on failure."""
        master, slave = os.openpty()   # both close-on-exec: never inherited by other children
        try:
            _set_size(master, self.cols, self.rows)
            group = self._group = self.ctx.tracker.new_group("t" + self.terminal_id[:16])
            env = self.ctx.child_env({"TERM": "xterm-256color", "COLORTERM": "truecolor"})
            env.update(group.env_marker())   # after the overlay: never spoofed
            argv = [sys.executable, "-I", "-S", "-c", _CTTY_HELPER, *SHELL]
            self._proc = group.spawn(lambda: subprocess.Popen(
                argv, stdin=slave, stdout=slave, stderr=slave, cwd=str(self.ctx.home), env=env,
                start_new_session=True, close_fds=True))
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            os.close(master)
            if self._group is not None:
                self._group.close()
                self._group = None
            raise RemoteError(f"Error: could not start a terminal: {exc}")
        finally:
            os.close(slave)   # the shell holds it now; our copy would keep the PTY from EOF
        self._master = master
        self.pid = self._proc.pid
        try:
            # can fail (EMFILE: the project may lower its own daemon's fd limit): then the
            # shell must not live on untracked, without grace timer or count
            self._pidfd = os.pidfd_open(self.pid)
        except OSError as exc:
            self._group.kill_all()
            self._group.close()
            self._group = None
            self._master = None
            os.close(master)
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self._proc.wait(5)
            raise RemoteError(f"Error: could not start a terminal: {exc}")
        os.set_blocking(master, False)
        self.loop.add_reader(self._pidfd, self._on_exit)
        self._resume()
        self._arm_grace()

    # ------------------------------------------------------------------ output
    def _resume(self) -> None:
        if not self._reading and self._master is not None:
            self.loop.add_reader(self._master, self._on_readable)
            self._reading = True

    def _pause(self) -> None:
        if self._reading and self._master is not None:
            self.loop.remove_reader(self._master)
            self._reading = False

    def _on_readable(self) -> None:
        # A PTY hands out at most ~4 KiB per read: take what is there (up to _READ_SIZE) in
        # one callback, so a fast producer costs one wakeup and one stream item per batch.
        assert self._master is not None
        chunks: list[bytes] = []
        size = 0
        while size < _READ_SIZE:
            try:
                data = os.read(self._master, _READ_SIZE - size)
            except BlockingIOError:
                break
            except OSError:   # EIO: every slave end is closed; the exit watcher finishes up
                self._pause()
                break
            if not data:
                self._pause()
                break
            chunks.append(data)
            size += len(data)
        if chunks:
            self._output(b"".join(chunks))

    def _output(self, data: bytes) -> None:
        ring = self.ring
        ring += data
        if len(ring) > SCROLLBACK_BYTES:
            del ring[:len(ring) - SCROLLBACK_BYTES]
        over = False
        for client in self.clients:
            client.pending += data
            client.wake.set()
            if len(client.pending) > CLIENT_HIGH_WATER:
                over = True
                if client.over_since is None:
                    client.over_since = time.monotonic()
        if over and self.exit_code is None:
            self._pause()
            if self._stall is None:
                self._stall = self.loop.call_later(CLIENT_STALL_S, self._drop_stalled)

    def taken(self, client: _Client) -> None:
        """``client`` took output: resume reading once no client is over its mark."""
        if len(client.pending) <= CLIENT_HIGH_WATER:
            client.over_since = None
        if not self._reading and all(c.over_since is None for c in self.clients):
            if self._stall is not None:
                self._stall.cancel()
                self._stall = None
            if self.exit_code is None:
                self._resume()

    def _drop_stalled(self) -> None:
        self._stall = None
        now = time.monotonic()
        for client in list(self.clients):
            if client.over_since is not None and now - client.over_since >= CLIENT_STALL_S - 0.01:
                client.dropped = (f"this client did not keep up with the terminal's output for "
                                  f"{CLIENT_STALL_S:g} s; attach again to continue")
                client.pending.clear()
                client.over_since = None
                client.wake.set()
                self.clients.discard(client)
        if any(c.over_since is not None for c in self.clients):
            self._stall = self.loop.call_later(CLIENT_STALL_S / 2, self._drop_stalled)
        elif self.exit_code is None:
            self._resume()
        if not self.clients:
            self._arm_grace()

    # ------------------------------------------------------------------ input / size
    def write(self, data: bytes) -> None:
        if self._master is None or self.exit_code is not None:
            raise _missing(self.terminal_id)
        self.last_active = time.time()
        if self._input:
            if len(self._input) + len(data) > INPUT_PENDING_MAX:
                raise RemoteError("Error: the terminal is not reading its input; keystrokes dropped",
                                  status=429)
            self._input += data
            return
        try:
            n = os.write(self._master, data)
        except BlockingIOError:
            n = 0
        except OSError:
            return   # the shell is going away: its exit follows
        if n < len(data):
            self._input += data[n:]
            self.loop.add_writer(self._master, self._flush_input)

    def _flush_input(self) -> None:
        assert self._master is not None
        try:
            n = os.write(self._master, self._input)
        except BlockingIOError:
            return
        except OSError:
            n = len(self._input)
        del self._input[:n]
        if not self._input:
            self.loop.remove_writer(self._master)

    def resize(self, cols: int, rows: int) -> None:
        if self._master is None or self.exit_code is not None:
            raise _missing(self.terminal_id)
        _set_size(self._master, cols, rows)   # the kernel sends SIGWINCH to the foreground job
        self.cols, self.rows = cols, rows

    # ------------------------------------------------------------------ clients
    def add_client(self) -> _Client:
        if len(self.clients) >= MAX_CLIENTS:
            raise RemoteError(f"Error: this terminal already has {MAX_CLIENTS} clients attached; "
                              "close one first", status=429, limit="terminal_clients")
        client = _Client()
        self.clients.add(client)
        self.last_active = time.time()
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        return client

    def remove_client(self, client: _Client) -> None:
        self.clients.discard(client)
        client.pending.clear()
        self.last_active = time.time()
        self.taken(client)
        if not self.clients:
            self._arm_grace()

    def _arm_grace(self) -> None:
        if self._grace is None and self.exit_code is None and not self.clients:
            self._grace = self.loop.call_later(self.manager.grace_s, self.kill, "grace period over")

    # ------------------------------------------------------------------ end
    def kill(self, why: str = "killed") -> None:
        """Kill every process of the terminal (its cgroup); the exit watcher finishes up."""
        if self.exit_code is not None:
            return
        log.info("terminal %s: %s", self.terminal_id, why)
        self.manager.forget(self)
        if self._group is not None:
            self._group.kill_all()

    def _on_exit(self) -> None:
        assert self._pidfd is not None and self.pid is not None
        reaped = reap(self.pid, self._proc, self._group)
        if reaped is None:
            return
        code = os.waitstatus_to_exitcode(reaped[0])
        self._finish(128 - code if code < 0 else code)

    def _finish(self, code: int) -> None:
        if self.exit_code is not None:
            return
        if self._group is not None:   # nothing started in the terminal outlives its shell
            self._group.kill_all()
        # what the shell printed last is still in the PTY: read it (bounded), then close
        if self._master is not None:
            drained = 0
            while drained < EXIT_DRAIN_MAX:
                try:
                    data = os.read(self._master, _READ_SIZE)
                except OSError:
                    break
                if not data:
                    break
                drained += len(data)
                self._output(data)
        self.exit_code = code
        self.manager.forget(self)
        for timer in (self._grace, self._stall):
            if timer is not None:
                timer.cancel()
        self._grace = self._stall = None
        if self._group is not None:
            self._group.close()   # kills what is left (a process forked meanwhile) and releases
            self._group = None
        self._close_fds()
        for client in self.clients:
            client.wake.set()

    def _close_fds(self) -> None:
        if self._master is not None:
            self._pause()
            if self._input:
                self.loop.remove_writer(self._master)
                self._input.clear()
            os.close(self._master)
            self._master = None
        if self._pidfd is not None:
            self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def close_now(self) -> None:
        """Daemon stop: kill and release everything now (a shell not reaped yet is left to
        the tracker's orphan reaper, or dies with the sandbox)."""
        if self.exit_code is not None:
            return
        if self._group is not None:
            self._group.kill_all()
        reaped = 0
        if self.pid is not None:
            try:
                reaped, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                reaped = self.pid
        if self._proc is not None:
            self._proc.returncode = -signal.SIGKILL   # keep Popen.__del__ from waiting
        if not reaped and self.pid is not None and hasattr(self.ctx.tracker, "disown"):
            self.ctx.tracker.disown(self.pid)  # type: ignore[attr-defined]
        self._finish(128 + signal.SIGKILL)

    def info(self) -> dict[str, Any]:
        return {"terminal_id": self.terminal_id, "cols": self.cols, "rows": self.rows,
                "created": self.created, "clients": len(self.clients),
                "alive": self.exit_code is None, "pid": self.pid}


class TerminalManager:
    """The daemon's terminals (one manager per ProjectContext)."""

    def __init__(self, ctx: ProjectContext) -> None:
        self.ctx = ctx
        self.terminals: dict[str, Terminal] = {}
        self.max_terminals = int(ctx.settings.get("terminals_max", DEFAULT_MAX_TERMINALS))
        self.grace_s = float(ctx.settings.get("terminal_grace_s", DEFAULT_GRACE_S))

    def get(self, terminal_id: Any) -> Terminal:
        if not isinstance(terminal_id, str) or not TERMINAL_ID_RE.match(terminal_id):
            raise _missing(terminal_id)
        term = self.terminals.get(terminal_id)
        if term is None:
            raise _missing(terminal_id)
        return term

    def forget(self, term: Terminal) -> None:
        if self.terminals.get(term.terminal_id) is term:
            del self.terminals[term.terminal_id]

    def create(self, opts: dict[str, Any]) -> dict[str, Any]:
        cols = _dimension(opts, "cols", 80)
        rows = _dimension(opts, "rows", 24)
        if len(self.terminals) >= self.max_terminals:
            raise RemoteError(f"Error: this project already has {len(self.terminals)} open "
                              f"terminals (the limit is {self.max_terminals}); close one first",
                              status=429, limit="terminals_max")
        term = Terminal(self, os.urandom(16).hex(), cols, rows)
        term.start()
        self.terminals[term.terminal_id] = term
        return term.info()

    def list(self) -> list[dict[str, Any]]:
        return [t.info() for t in self.terminals.values()]

    def busy(self) -> bool:
        return bool(self.terminals)

    def attached(self) -> int:
        return sum(1 for t in self.terminals.values() if t.clients)

    def last_active(self) -> float | None:
        return max((t.last_active for t in self.terminals.values()), default=None)

    def close_all(self) -> None:
        for term in list(self.terminals.values()):
            term.close_now()
        self.terminals.clear()

    async def attach(self, terminal_id: Any) -> AsyncIterator[dict[str, Any]]:
        term = self.get(terminal_id)
        client = term.add_client()   # from here on, every output byte reaches this client
        try:
            yield {"scrollback": base64.b64encode(bytes(term.ring)).decode("ascii"),
                   "cols": term.cols, "rows": term.rows}
            while True:
                if client.pending:
                    chunk = bytes(client.pending[:_ITEM_SIZE])
                    del client.pending[:_ITEM_SIZE]
                    term.taken(client)
                    yield {"data": base64.b64encode(chunk).decode("ascii")}
                    continue
                if client.dropped is not None:
                    raise RemoteError(f"Error: {client.dropped}", status=429, dropped=True)
                if term.exit_code is not None:
                    yield {"exit": term.exit_code}
                    return
                client.wake.clear()
                await client.wake.wait()
        finally:
            term.remove_client(client)


# Keyed by id(ctx) (ProjectContext is an unhashable dataclass); dropped when ctx dies.
_managers: dict[int, TerminalManager] = {}


def manager(ctx: ProjectContext) -> TerminalManager:
    found = _managers.get(id(ctx))
    if found is None:
        found = _managers[id(ctx)] = TerminalManager(ctx)
        weakref.finalize(ctx, _managers.pop, id(ctx), None)
    return found


def existing(ctx: ProjectContext) -> TerminalManager | None:
    """The manager if a terminal was ever made (the daemon's busy checks: no import cost)."""
    return _managers.get(id(ctx))


# -- fabric functions (api.py) ---------------------------------------------------------------

def _decode_input(opts: dict[str, Any]) -> bytes:
    data = opts.get("data")
    if not isinstance(data, str) or len(data) > (INPUT_FRAME_MAX * 4) // 3 + 4:
        raise RemoteError(f"Error: 'data' must be base64 of at most {INPUT_FRAME_MAX} bytes", status=400)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RemoteError("Error: 'data' is not valid base64", status=400)


async def create(ctx: ProjectContext, opts: dict[str, Any]) -> dict[str, Any]:
    return manager(ctx).create(opts)


async def list_terminals(ctx: ProjectContext, opts: dict[str, Any]) -> list[dict[str, Any]]:
    found = existing(ctx)
    return found.list() if found is not None else []


async def kill(ctx: ProjectContext, opts: dict[str, Any]) -> None:
    manager(ctx).get(opts.get("terminal_id")).kill("closed by request")


async def write_input(ctx: ProjectContext, opts: dict[str, Any]) -> None:
    term = manager(ctx).get(opts.get("terminal_id"))
    term.write(_decode_input(opts))


async def resize(ctx: ProjectContext, opts: dict[str, Any]) -> dict[str, int]:
    term = manager(ctx).get(opts.get("terminal_id"))
    term.resize(_dimension(opts, "cols", term.cols), _dimension(opts, "rows", term.rows))
    return {"cols": term.cols, "rows": term.rows}


def attach(ctx: ProjectContext, opts: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    return manager(ctx).attach(opts.get("terminal_id"))


__all__ = ["TerminalManager", "Terminal", "manager", "existing", "create", "list_terminals",
           "kill", "write_input", "resize", "attach"]
