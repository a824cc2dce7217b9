"""The project daemon: one process per running project, the only place user code starts.

It runs inside the project's sandbox as the project's uid, listens on a Unix socket and
serves the project API over the fabric.  It is started detached from the hub (own session),
so a hub restart reconnects to it instead of killing running jobs and kernels.

    python -I -c DAEMON_BOOT PATH_ENTRY --project-id ID --home H (--listen-fd N | --socket S) \
        --state-dir D --tmp-dir T [--settings JSON] [--ready-fd N]

``--listen-fd``: a Unix socket the host bound where the project cannot reach it (see
``fabric/peer.py``); the daemon only listens on it.  ``--socket``: a path to bind itself
(tests, tools).  ``--ready-fd``: an inherited pipe end; the daemon writes one byte to it and
closes it once its socket listens (the host waits on it instead of polling for the socket).

Everything in the project's home is hostile to the daemon: it is started with ``python -I``
(no script dir, cwd, ``PYTHON*`` variables or user site on ``sys.path``; see
``host.DAEMON_BOOT``),
works from ``/``, never from the home, and makes itself non-dumpable so project code of
the same uid cannot ptrace it, read its memory or take its file descriptors.
"""

from __future__ import annotations

import sys

if "asyncio" not in sys.modules and "ssl" not in sys.modules:
    # asyncio imports ssl only for TLS transports, and a daemon never opens one (its one
    # socket is a Unix socket).  Hiding ssl while asyncio loads saves ~5 MiB of resident
    # memory per running project and ~15 ms of its start.  The real module stays
    # importable afterwards for libraries that want it (jupyter_client -> tornado).
    sys.modules["ssl"] = None  # type: ignore[assignment]
    import asyncio
    del sys.modules["ssl"]

import asyncio  # noqa: E402  (already loaded above when this is the daemon's entry point)
import contextlib
import json
import logging
import os
import signal
import socket
import stat
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, AsyncIterator, NoReturn, TextIO

from ..errors import RemoteError
from ..fabric.local import say_goodbye, serve
from . import api, recycle
from .context import ProjectContext
from .tracking import ProcessTracker

if TYPE_CHECKING:
    from .jupyter import JupyterService

log = logging.getLogger("projecthub.daemon")


def choose_tracker() -> ProcessTracker:
    """cgroups when the host delegated some to us, else the subreaper + marker fallback."""
    try:
        from ..host.sandbox import tracker_for_daemon
        tracker = tracker_for_daemon()
        if tracker is not None:
            return tracker
    except ImportError:
        pass
    from .tracking_fallback import MarkerTracker, become_subreaper
    become_subreaper()
    return MarkerTracker()


class ProjectDaemon:
    def __init__(self, ctx: ProjectContext, listen: "Path | socket.socket", ready_fd: int = -1, *,
                 opts: SimpleNamespace | None = None) -> None:
        self.ctx = ctx
        self.listen = listen
        self.ready_fd = ready_fd
        # ``opts``: how main() started us (a re-exec in place keeps the identity it carries)
        self.opts = opts
        self.instance_id = (opts.instance_id if opts is not None and opts.instance_id
                            else uuid.uuid4().hex)
        self.started = opts.started if opts is not None and opts.started else time.time()
        self.jupyter_started: float | None = None
        self.jupyter_used = 0.0   # monotonic time of the last Jupyter call
        self.claimed = False   # a spare's project was claimed (``daemon.claim``): warm-ups hold nothing
        self._jupyter: "JupyterService | None" = None
        self._jupyter_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._connections: set[Any] = set()
        self._server: asyncio.AbstractServer | None = None

    # -- fabric handler ----------------------------------------------------------------
    async def call(self, name: str, args: list[Any], budget: float | None) -> Any:
        if name == "ping":
            return "pong"
        if name == "daemon.activity":
            return await self.activity()
        function = api.lookup(name)
        if function is None:
            raise RemoteError(f"Error: unknown function '{name}'")
        return await function(self, args, budget)

    def stream(self, name: str, args: list[Any]) -> AsyncIterator[Any]:
        factory = api.STREAMS.get(name)
        if factory is None:
            raise RemoteError(f"Error: unknown stream '{name}'")
        return factory(self, args)

    # -- services ----------------------------------------------------------------------
    async def jupyter(self) -> "JupyterService":
        """Jupyter is imported on first use: it costs ~0.3 s and most projects never need it."""
        self.jupyter_used = time.monotonic()
        async with self._jupyter_lock:
            if self._jupyter is None:
                from .jupyter import JupyterService
                settings = self.ctx.settings.get("jupyter", {})
                service = JupyterService(self.ctx, **settings)
                await service.start()
                self._jupyter = service
                self.jupyter_started = time.time()
            return self._jupyter

    def info(self) -> dict[str, Any]:
        return {
            "project_id": self.ctx.project_id,
            "instance_id": self.instance_id,
            "pid": os.getpid(),
            "uid": os.getuid(),
            "started": self.started,
            "home": str(self.ctx.home),
            "tracker": getattr(self.ctx.tracker, "kind", "unknown"),
        }

    async def activity(self) -> dict[str, Any]:
        """What the hub's idle stop counts besides API calls: running async jobs and open
        Jupyter sessions (each ends by its own limit), and when they were last active."""
        from .exec import job_manager
        running, last_job = job_manager(self.ctx).activity()
        sessions = await self._jupyter.list_sessions() if self._jupyter is not None else []
        terminals = _terminals(self.ctx)   # attached terminals are activity (terminal.py)
        times = [t for t in (last_job, *(s.get("last_used") for s in sessions),
                             terminals.last_active() if terminals else None)
                 if isinstance(t, (int, float))]
        return {"jobs": running, "sessions": len(sessions), "last_active": max(times, default=None),
                "terminals": terminals.attached() if terminals else 0}

    def request_shutdown(self) -> None:
        self._stop.set()

    # -- re-exec in place once Jupyter is idle (project/recycle.py) ----------------------
    def _recycle_window_s(self) -> float | None:
        """How long Jupyter must go unused before the daemon drops it from its memory: the
        stateless pool's idle window (its kernels and zygote are gone by then)."""
        window = (self.ctx.settings.get("jupyter") or {}).get("pool_idle_timeout_s", 180)
        return float(window) if isinstance(window, (int, float)) and window > 0 else None

    async def _recycle_ready(self) -> bool:
        window = self._recycle_window_s()
        if (self._jupyter is None or window is None or self.opts is None
                or not isinstance(self.listen, socket.socket)
                or not getattr(self.ctx.tracker, "kind", "").startswith("cgroup")
                or time.monotonic() - self.jupyter_used < window
                or any(c.tasks for c in self._connections)):
            return False
        from .exec import job_manager
        if job_manager(self.ctx).activity()[0]:
            return False
        terminals = _terminals(self.ctx)
        if terminals is not None and terminals.busy():   # a re-exec would lose its PTY
            return False
        # an upload or an extraction between two chunks (files API, copies): not idle
        for module, table in (("projecthub.project.transfer", "_uploads"), ("projecthub.project.archive", "_unpacks")):
            if getattr(sys.modules.get(module), table, None):
                return False
        if await self._jupyter.list_sessions():
            return False
        return recycle.alone_in_sandbox()

    async def _recycle_when_idle(self) -> None:
        window = self._recycle_window_s()
        if window is None:
            return
        every = min(30.0, max(1.0, window / 4))
        while True:
            await asyncio.sleep(every)
            try:
                if await self._recycle_ready():
                    await self._recycle()
            except Exception:
                log.exception("re-exec in place failed; the daemon stops")
                self._stop.set()   # the hub sees it go and stops the sandbox: nothing half-done
                return

    async def _recycle(self) -> None:
        assert self.opts is not None and isinstance(self.listen, socket.socket)
        from ..host.sandbox.tracker import ENV_VAR, spec_for_exec
        log.info("Jupyter idle for %.0f s: re-executing in place to release its memory",
                 time.monotonic() - self.jupyter_used)
        listen_fd = recycle.inheritable_listener(self.listen)
        if self._server is not None:
            self._server.close()   # new connections wait in the backlog for the new interpreter
        if not await say_goodbye(self._connections, 5.0):
            log.warning("a client did not acknowledge the restart in 5 s; restarting anyway")
        if self._jupyter is not None:
            await self._jupyter.close()
            self._jupyter = None
        env = dict(os.environ)
        spec = spec_for_exec()
        if spec is not None:
            env[ENV_VAR] = spec
        argv = recycle.exec_argv(sys.orig_argv, self.opts.option_count, self.opts, listen_fd,
                                 self.instance_id, self.started)
        for handler in logging.getLogger().handlers:
            handler.flush()
        recycle.exec_in_place(argv, env)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        from .exec import job_manager
        jobs = job_manager(self.ctx)  # load now: jobs a dead daemon left running are marked at once
        server = self._server = await serve(self.listen, self, connections=self._connections)
        log.info("daemon for %s listening%s", self.ctx.project_id,
                 " (restarted in place)" if self.opts is not None and self.opts.instance_id else "")
        if self.ready_fd >= 0:  # the host waits on this pipe instead of polling for the socket
            try:
                os.write(self.ready_fd, b"R")
                os.close(self.ready_fd)
            except OSError:
                pass
            self.ready_fd = -1
        watcher = asyncio.create_task(self._recycle_when_idle(), name="recycle-watch")
        try:
            await self._stop.wait()
        finally:
            watcher.cancel()
            server.close()
            terminals = _terminals(self.ctx)
            if terminals is not None:   # terminals end with the project
                terminals.close_all()
            if self._jupyter is not None:
                await self._jupyter.close()
            await jobs.shutdown()
            if isinstance(self.listen, Path):
                with contextlib.suppress(FileNotFoundError):
                    self.listen.unlink()
            log.info("daemon for %s stopped", self.ctx.project_id)


def _terminals(ctx: ProjectContext) -> Any:
    """The project's TerminalManager, if a terminal was ever opened (no import otherwise)."""
    module = sys.modules.get("projecthub.project.terminal")
    return module.existing(ctx) if module is not None else None


_OPTIONS = {"--project-id": None, "--home": None, "--socket": "", "--listen-fd": "-1",
            "--state-dir": None, "--tmp-dir": "/tmp", "--settings": "{}",
            "--ready-fd": "-1", recycle.INSTANCE_OPTION: "", recycle.STARTED_OPTION: "0"}
# None: required.  The last two are set only by a re-exec in place (project/recycle.py).



def _parse(argv: list[str]) -> SimpleNamespace:
    """``--name value`` / ``--name=value`` options (argparse costs ~10 ms of every start)."""
    values = dict(_OPTIONS)
    it = iter(argv)
    for arg in it:
        name, eq, value = arg.partition("=")
        if name not in values:
            _usage(f"unrecognized argument: {arg}")
        if not eq:
            value = next(it, None)
            if value is None:
                _usage(f"argument {name}: expected one argument")
        values[name] = value
    missing = [k for k, v in values.items() if v is None]
    if missing:
        _usage(f"the following arguments are required: {', '.join(missing)}")
    fds = {}
    for name in ("--ready-fd", "--listen-fd"):
        try:
            fds[name] = int(values[name])
        except ValueError:
            _usage(f"argument {name}: invalid int value")
    if (fds["--listen-fd"] < 0) == (not values["--socket"]):
        _usage("exactly one of --listen-fd and --socket is required")
    try:
        started = float(values[recycle.STARTED_OPTION])
    except ValueError:
        _usage(f"argument {recycle.STARTED_OPTION}: invalid float value")
    return SimpleNamespace(project_id=values["--project-id"], home=values["--home"],
                           socket=values["--socket"], listen_fd=fds["--listen-fd"],
                           state_dir=values["--state-dir"], tmp_dir=values["--tmp-dir"],
                           settings=values["--settings"], ready_fd=fds["--ready-fd"],
                           instance_id=values[recycle.INSTANCE_OPTION], started=started,
                           option_count=len(argv))


def _usage(message: str) -> NoReturn:
    sys.stderr.write("usage: projecthub-daemon --project-id ID --home H (--listen-fd N | --socket S) --state-dir D "
                     "[--tmp-dir T] [--settings JSON] [--ready-fd N]\n"
                     f"projecthub-daemon: error: {message}\n")
    sys.exit(2)


def make_undumpable() -> None:
    """No ptrace, /proc/<pid>/mem or pidfd_getfd for project code of our own uid (a ptrace
    stop could freeze the daemon; its fds include the host's channel).  Files under
    /proc/self that the daemon writes later must be opened before this (see tracker.py)."""
    import ctypes
    PR_SET_DUMPABLE = 4
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_DUMPABLE, 0) failed: errno %d", ctypes.get_errno())


def _open_log(path: Path) -> TextIO | None:
    """The daemon's log file, or None (then the caller logs to stderr).  The state dir is
    project-writable, so the path may be a planted symlink or FIFO: never follow a final
    symlink, never block in open (a FIFO without a reader fails at once, with one it is
    refused below), append to regular files only."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC, 0o644)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        os.set_blocking(fd, True)
        return open(fd, "a", encoding="utf-8", errors="backslashreplace")
    except OSError:
        os.close(fd)
        return None


def main(argv: list[str] | None = None) -> None:
    opts = _parse(sys.argv[1:] if argv is None else argv)
    os.umask(0o022)   # files a project makes are its own; never the server's umask
    listen: Path | socket.socket = Path(opts.socket)
    if opts.listen_fd >= 0:
        listen = socket.socket(fileno=opts.listen_fd)
        listen.set_inheritable(False)   # never into user processes
    if opts.ready_fd >= 0:
        try:
            os.set_inheritable(opts.ready_fd, False)   # never into user processes
        except OSError:
            opts.ready_fd = -1
    state_dir = Path(opts.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        stream=_open_log(state_dir / "daemon.log") or sys.stderr, level=logging.INFO,
        format='{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":%(message)r}')
    home = Path(opts.home)
    # Never work from the home: relative paths are resolved against ctx.home explicitly,
    # and every child gets its cwd explicitly.
    os.chdir("/")
    settings = json.loads(opts.settings)
    ctx = ProjectContext(
        project_id=opts.project_id, home=home, state_dir=state_dir, tmp_dir=Path(opts.tmp_dir),
        tracker=choose_tracker(), base_env=ProjectContext.default_base_env(opts.project_id, home),
        settings=settings)
    # asyncio on 3.11 defaults to one waiter thread per child; a pidfd watcher is faster
    # and spawns stay on the vfork path (never uvloop: it forks the whole address space).
    if hasattr(asyncio, "PidfdChildWatcher"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(asyncio.PidfdChildWatcher())
    make_undumpable()
    asyncio.run(ProjectDaemon(ctx, listen, opts.ready_fd, opts=opts).run())


if __name__ == "__main__":
    main()
