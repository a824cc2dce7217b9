"""The project daemon: one process per running project, the only place user code starts.

It runs inside the project's sandbox as the project's uid, listens on a Unix socket and
serves the project API over the fabric.  It is started detached from the hub (own session),
so a hub restart reconnects to it instead of killing running jobs and kernels.

    python -m projecthub.project.daemon --project-id ID --home H --socket S \
        --state-dir D --tmp-dir T [--settings JSON] [--ready-fd N]

``--ready-fd``: an inherited pipe end; the daemon writes one byte to it and closes it
once its socket listens (the host waits on it instead of polling for the socket).
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
import json
import logging
import os
import signal
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, AsyncIterator, NoReturn

from ..errors import RemoteError
from ..fabric.local import serve
from . import api
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
    def __init__(self, ctx: ProjectContext, socket_path: Path, ready_fd: int = -1) -> None:
        self.ctx = ctx
        self.socket_path = socket_path
        self.ready_fd = ready_fd
        self.instance_id = uuid.uuid4().hex
        self.started = time.time()
        self.jupyter_started: float | None = None
        self._jupyter: "JupyterService | None" = None
        self._jupyter_lock = asyncio.Lock()
        self._stop = asyncio.Event()

    # -- fabric handler ----------------------------------------------------------------
    async def call(self, name: str, args: list[Any], budget: float | None) -> Any:
        if name == "ping":
            return "pong"
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

    def request_shutdown(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        from .exec import job_manager
        jobs = job_manager(self.ctx)  # load now: jobs a dead daemon left running are marked at once
        server = await serve(self.socket_path, self)
        log.info("daemon for %s listening on %s", self.ctx.project_id, self.socket_path)
        if self.ready_fd >= 0:  # the host waits on this pipe instead of polling for the socket
            try:
                os.write(self.ready_fd, b"R")
                os.close(self.ready_fd)
            except OSError:
                pass
            self.ready_fd = -1
        try:
            await self._stop.wait()
        finally:
            server.close()
            if self._jupyter is not None:
                await self._jupyter.close()
            await jobs.shutdown()
            try:
                self.socket_path.unlink()
            except FileNotFoundError:
                pass
            log.info("daemon for %s stopped", self.ctx.project_id)


_OPTIONS = {"--project-id": None, "--home": None, "--socket": None, "--state-dir": None,
            "--tmp-dir": "/tmp", "--settings": "{}", "--ready-fd": "-1"}   # None: required


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
    try:
        ready_fd = int(values["--ready-fd"])
    except ValueError:
        _usage("argument --ready-fd: invalid int value")
    return SimpleNamespace(project_id=values["--project-id"], home=values["--home"],
                           socket=values["--socket"], state_dir=values["--state-dir"],
                           tmp_dir=values["--tmp-dir"], settings=values["--settings"], ready_fd=ready_fd)


def _usage(message: str) -> NoReturn:
    sys.stderr.write("usage: projecthub-daemon --project-id ID --home H --socket S --state-dir D "
                     "[--tmp-dir T] [--settings JSON] [--ready-fd N]\n"
                     f"projecthub-daemon: error: {message}\n")
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    opts = _parse(sys.argv[1:] if argv is None else argv)
    if opts.ready_fd >= 0:
        try:
            os.set_inheritable(opts.ready_fd, False)   # never into user processes
        except OSError:
            opts.ready_fd = -1
    state_dir = Path(opts.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=state_dir / "daemon.log", level=logging.INFO,
        format='{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":%(message)r}')
    home = Path(opts.home)
    os.chdir(home)  # CoCalc resolves relative file paths against the daemon's cwd = HOME
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
    asyncio.run(ProjectDaemon(ctx, Path(opts.socket), opts.ready_fd).run())


if __name__ == "__main__":
    main()
