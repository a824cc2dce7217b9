"""The host: owns this machine's project daemons.  It never runs user code itself.

It starts one daemon per running project inside that project's sandbox, keeps one fabric
connection to each, adopts daemons that survived a hub restart, and stops them leaving
nothing behind.  Daemons are started in their own session, so they outlive the hub process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import psutil

from ..errors import RemoteError
from ..fabric import peer
from ..fabric.local import DaemonRestarting, FabricClient
from ..fabric.messages import STREAM_WINDOW
from ..hub.db import AsyncStore
from ..observability.audit import audit_event, current_exception_text as _start_error
from ..store.store import SPARE_STATE
from .environment import ProjectEnvironment
from .purge import purge_project_files
from .sandbox import PreparedProject, ProjectLimits, Sandbox
from .spares import SparePool

log = logging.getLogger("projecthub.host")

_START_TIMEOUT_S = 30.0
_ADOPT_TIMEOUT_S = 5.0
# A call refused by a daemon restarting in place is sent again this often at most (the
# restarted daemon refuses nothing; more would mean a daemon that keeps saying ``bye``).
_RESTART_RETRIES = 3
_KEPT_RESTARTING = "Error: the project daemon kept restarting; try again"
_ADOPT_CONCURRENCY = 8

# How a daemon starts: ``python -I -c DAEMON_BOOT PATH_ENTRY options...``.  ``-I`` keeps the
# cwd, PYTHON* variables and the user site off ``sys.path`` (a planted ``~/zmq.py`` must
# never run inside the daemon); PATH_ENTRY ("" when projecthub is installed in the
# interpreter's prefix) is a source checkout of projecthub, read-only in the sandbox.
DAEMON_BOOT = ("import sys; p = sys.argv.pop(1); p and sys.path.insert(0, p); "
               "from projecthub.project.daemon import main; main()")


@dataclass
class DaemonHandle:
    project_id: str
    client: FabricClient
    host_pid: int            # pid of the sandbox's outermost process, as the host sees it
    instance_id: str         # random id the daemon picked at start: survives hub restarts
    started: float
    process: subprocess.Popen[bytes] | None = None  # only when this hub process started it
    daemon_pid: int | None = None  # the daemon itself (SO_PEERCRED), as the host sees it


class Host:
    def __init__(self, data_dir: Path, sandbox: Sandbox, db: AsyncStore, *,
                 jupyter_pool_size: int = 1, spare_projects: int = 1,
                 jupyter_idle_s: float | None = None,
                 terminal_grace_s: float | None = None) -> None:
        self.data_dir = data_dir
        self.sandbox = sandbox
        self.db = db
        self.jupyter_pool_size = jupyter_pool_size
        # the daemon's stateless pool and zygote shrink to zero after this long without a
        # stateless call (None: the daemon's default, jupyter/__init__.py)
        self.jupyter_idle_s = jupyter_idle_s
        # a terminal without clients is killed after this long (None: project/terminal.py's)
        self.terminal_grace_s = terminal_grace_s
        self._handles: dict[str, DaemonHandle] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._lost_tasks: set[asyncio.Task[None]] = set()
        self.spares = SparePool(db, data_dir, self._spawn, self._stop_unowned, size=spare_projects)

    # -- lifecycle of the host itself ---------------------------------------------------
    async def start(self) -> None:
        """Adopt daemons that survived a restart; kill processes of no known project."""
        projects = await self.db.list_all_projects()
        spare_ids = [p["project_id"] for p in projects if p.get("state") == SPARE_STATE]
        known = {p["project_id"] for p in projects if not p.get("deleted")} - set(spare_ids)
        # Concurrently, a few at a time: one project whose daemon does not answer must not
        # hold up the others (nor the server's start) for its whole timeout.
        limit = asyncio.Semaphore(_ADOPT_CONCURRENCY)

        async def resume(project: dict[str, Any]) -> None:
            project_id = project["project_id"]
            async with limit:
                if project.get("state") in ("running", "starting"):
                    if await self._adopt(project_id) is None:
                        await self._set_state(project_id, "stopped",
                                              "its daemon was gone when the server started")
                elif _alive((_read_json(self._run_dir(project_id) / "host.json") or {}).get("pid")):
                    # A stopped project whose daemon is alive was parked by the previous
                    # server (see spares.py): nobody started it, so it must not keep running.
                    await self._stop_unowned(project_id, None)
        await asyncio.gather(*(resume(p) for p in projects
                               if not p.get("deleted") and p["project_id"] not in spare_ids))
        with contextlib.suppress(Exception):
            killed = await asyncio.to_thread(self.sandbox.kill_strays, known)
            if killed:
                log.warning("killed %d stray processes of unknown projects", len(killed))
        # Spares last: a spare started before the stray sweep is in no list of known
        # projects, and the sweep would kill it under its new project.
        await self.spares.start(spare_ids)

    async def close(self) -> None:
        """Drop connections; the daemons of running projects keep running for the next hub
        process to adopt (spare and parked ones are stopped: nobody is using them)."""
        await self.spares.close()
        running = self.running_project_ids()
        if running:   # by design, but an operator stopping the server should know
            shown = ", ".join(running[:50]) + (f" and {len(running) - 50} more" if len(running) > 50 else "")
            log.warning("%d project(s) keep running after the server stops (the next server adopts "
                        "them): %s; stop them all with `projecthub stop-all --data-dir %s`",
                        len(running), shown, self.data_dir)
        else:
            log.info("no project keeps running after the server stops")
        for handle in list(self._handles.values()):
            await handle.client.close()
        self._handles.clear()

    # -- per-project ----------------------------------------------------------------------
    def _lock(self, project_id: str) -> asyncio.Lock:
        return self._locks.setdefault(project_id, asyncio.Lock())

    def daemon_identity(self, project_id: str) -> tuple[int, int] | None:
        """(pid as the host sees it, uid) of the project's connected daemon, or None: what
        ``lent_files.borrow`` takes an open file from."""
        handle = self._handles.get(project_id)
        if handle is None or handle.daemon_pid is None or handle.client.closed:
            return None
        try:
            return handle.daemon_pid, self._expected_uid(project_id)
        except RemoteError:
            return None

    def is_running(self, project_id: str) -> bool:
        handle = self._handles.get(project_id)
        # a daemon restarting in place (project/recycle.py) still runs its sandbox
        return handle is not None and (not handle.client.closed or handle.client.restarting)

    def running_project_ids(self) -> list[str]:
        return sorted(p for p, h in self._handles.items() if not h.client.closed)

    async def activity(self, project_id: str) -> dict[str, Any] | None:
        """What keeps the running project busy besides API calls (``daemon.activity``:
        running jobs, open sessions, when they were last active); None when it is not
        running.  Never starts the project."""
        handle = self._handles.get(project_id)
        if handle is None or handle.client.closed:
            return None
        try:
            return await asyncio.wait_for(handle.client.call("daemon.activity", [], 5.0), 5.0)
        except DaemonRestarting:
            return None   # it restarts in place because it is idle; asked again next pass

    async def ensure_running(self, project_id: str) -> DaemonHandle:
        handle = self._handles.get(project_id)
        if handle is not None and not handle.client.closed:
            return handle
        async with self._lock(project_id):
            handle = self._handles.get(project_id)
            if handle is not None and not handle.client.closed:
                return handle
            if handle is not None:
                self._handles.pop(project_id, None)
                self._reap(handle)
            handle = self.spares.unpark(project_id)
            if handle is not None:   # a new project's pre-started daemon: just promote it
                self._handles[project_id] = handle
                await self._set_state(project_id, "running")
                return handle
            handle = await self._adopt(project_id)
            if handle is None:
                handle = await self._launch(project_id)
            return handle

    async def call(self, project_id: str, name: str, args: list[Any],
                   budget: float | None = None) -> Any:
        for _ in range(_RESTART_RETRIES):
            handle = await self.ensure_running(project_id)
            try:
                return await handle.client.call(name, args, budget)
            except DaemonRestarting:
                continue   # refused unstarted by a daemon restarting in place: send it again
        raise RemoteError(_KEPT_RESTARTING)

    async def stream(self, project_id: str, name: str, args: list[Any],
                     window: int | None = None) -> AsyncIterator[Any]:
        for _ in range(_RESTART_RETRIES):
            handle = await self.ensure_running(project_id)
            started = False
            try:
                async for item in handle.client.stream(name, args, window or STREAM_WINDOW):
                    started = True
                    yield item
                return
            except DaemonRestarting:
                if started:
                    raise
        raise RemoteError(_KEPT_RESTARTING)

    async def stop(self, project_id: str, reason: str = "stopped by request") -> None:
        async with self._lock(project_id):
            handle = self._handles.pop(project_id, None) or self.spares.unpark(project_id)
            await self._stop_daemon(project_id, handle)
            await self._set_state(project_id, "stopped", reason)

    async def purge(self, project_id: str) -> int:
        """Remove a deleted project's files, cgroups and run dir; the bytes freed."""
        async with self._lock(project_id):
            if self.is_running(project_id):   # deleted projects are stopped; never purge under one
                raise RemoteError(f"Error: project {project_id} is running; stop it before purging")
            return await asyncio.to_thread(purge_project_files, self.sandbox, self.data_dir, project_id)

    async def _stop_unowned(self, project_id: str, handle: DaemonHandle | None) -> None:
        """Stop a spare's or a parked project's daemon, unless the project is running by now."""
        async with self._lock(project_id):
            if self.is_running(project_id):
                if handle is not None and handle is not self._handles.get(project_id):
                    await handle.client.close()
                return
            await self._stop_daemon(project_id, handle)

    async def _stop_daemon(self, project_id: str, handle: DaemonHandle | None) -> None:
        if handle is None:
            handle = await self._adopt(project_id, register=False)
        if handle is not None:
            handle.client.on_lost = None   # this stop cleans up itself
            with contextlib.suppress(Exception):
                await asyncio.wait_for(handle.client.call("daemon.shutdown", [], 5.0), 5.0)
            await handle.client.close()
            await asyncio.to_thread(_wait_gone, handle.host_pid, 5.0)
            self._reap(handle)
        # Whatever is left (kernels, jobs, escaped children) dies with the sandbox.
        await asyncio.to_thread(self.sandbox.stop_project, project_id)
        with contextlib.suppress(FileNotFoundError):
            (self._run_dir(project_id) / "host.json").unlink()

    async def status(self, project_id: str) -> dict[str, Any]:
        handle = self._handles.get(project_id)
        if handle is None or not self.is_running(project_id):
            return {}
        info: dict[str, Any] = {"project.pid": handle.host_pid, "start_ts": int(handle.started * 1000),
                                "instance_id": handle.instance_id}
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(handle.host_pid)
            procs = [proc, *proc.children(recursive=True)]
            rss = sum(_rss(p) for p in procs)
            info["memory"] = {"rss": rss // 1024}  # KiB, like CoCalc's status
            info["processes"] = len(procs)
            # CPU seconds (user + system) of the live processes: a client derives CPU use from
            # two samples (the web UI's usage chart); exited children no longer count
            info["cpu_s"] = round(sum(_cpu_seconds(p) for p in procs), 3)
        return info

    async def update_limits(self, project_id: str, limits: ProjectLimits) -> None:
        if self.is_running(project_id):
            await asyncio.to_thread(self.sandbox.update_limits, project_id, limits)
        elif self.spares.is_parked(project_id):
            # Some limits are fixed when the sandbox starts (network, /tmp size): a parked
            # daemon started with the old ones, so the first start launches a fresh one.
            handle = self.spares.unpark(project_id)
            await self._stop_unowned(project_id, handle)

    # -- internals --------------------------------------------------------------------------
    def _run_dir(self, project_id: str) -> Path:
        return self.data_dir / "run" / project_id

    def _expected_uid(self, project_id: str) -> int:
        if os.geteuid() != 0:
            return os.getuid()   # rootless: the daemon's uid maps back to ours
        uid = self.sandbox.uids.lookup().get(project_id)
        if uid is None:
            raise peer.PeerMismatch(f"Error: project {project_id} has no uid on this host")
        return uid

    async def _connect(self, project_id: str, expect: peer.PeerExpectation,
                       timeout_s: float) -> tuple[FabricClient, dict[str, Any], peer.Peer]:
        """Connect to the project's daemon socket and verify who answers (fabric/peer.py)."""
        sock = await asyncio.wait_for(
            asyncio.to_thread(peer.connect_socket, self._run_dir(project_id), timeout_s), timeout_s + 1)
        try:
            who = peer.verify_peer(sock, expect)
        except BaseException:
            sock.close()
            raise
        client = await FabricClient.from_socket(sock)
        try:
            info = await asyncio.wait_for(client.call("daemon.info", [], timeout_s), timeout_s)
            peer.verify_project_id(info, expect)
        except BaseException:
            await client.close()
            raise
        return client, info, who

    async def _adopt(self, project_id: str, register: bool = True) -> DaemonHandle | None:
        record = _read_json(self._run_dir(project_id) / "host.json")
        if not record or not _alive(record.get("pid")):
            return None
        try:
            daemon_pid = record.get("daemon_pid")
            expect = peer.PeerExpectation(
                project_id, self._expected_uid(project_id), sandbox_pid=int(record["pid"]),
                daemon_pid=daemon_pid if isinstance(daemon_pid, int) else None)
            if expect.daemon_pid is not None:
                _resume(expect.daemon_pid)   # its project may have SIGSTOPped it (same uid)
            client, info, who = await self._connect(project_id, expect, _ADOPT_TIMEOUT_S)
        except (peer.PeerMismatch, OSError, asyncio.TimeoutError, RemoteError, KeyError,
                ValueError, TypeError) as exc:
            # The sandbox is alive but has no daemon we can trust and talk to (another
            # process answers, or none, or it is stopped): never adopt it, and never leave
            # it running unowned and uncounted either.  Stop all of it; the next call
            # starts a fresh daemon.
            log.warning("cannot adopt the daemon of %s (%s); stopping its sandbox", project_id,
                        exc.__class__.__name__)
            await asyncio.to_thread(self.sandbox.stop_project, project_id)
            with contextlib.suppress(FileNotFoundError):
                (self._run_dir(project_id) / "host.json").unlink()
            return None
        handle = DaemonHandle(project_id, client, int(record["pid"]), info["instance_id"],
                              float(record.get("started", time.time())), daemon_pid=who.pid)
        self._watch(handle)
        if register:
            self._handles[project_id] = handle
            await self._set_state(project_id, "running")
        log.info("adopted daemon of %s (pid %s)", project_id, handle.host_pid)
        return handle

    async def _launch(self, project_id: str) -> DaemonHandle:
        project = await self.db.get_project(project_id)
        if project is None or project.get("deleted"):
            raise RemoteError(f"Error: project {project_id} does not exist")
        await self._set_state(project_id, "starting")
        try:
            handle = await self._spawn(project)
            self._handles[project_id] = handle
            await self._set_state(project_id, "running")
            return handle
        except RemoteError:
            await self._failed_start(project_id)
            raise
        except Exception as exc:  # sandbox/OS failures reach callers as a clear error
            log.exception("could not start project %s", project_id)
            await self._failed_start(project_id)
            raise RemoteError(f"Error: project {project_id} could not start: {exc}") from exc
        except BaseException:
            await asyncio.shield(self._failed_start(project_id))
            raise

    async def _failed_start(self, project_id: str) -> None:
        """Nothing of a failed start stays behind: processes, cgroups, the mounted image."""
        audit_event("sandbox_start_failure", project_id=project_id, error=_start_error())
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.sandbox.stop_project, project_id)
        await self._set_state(project_id, "stopped", "it failed to start")

    async def _spawn(self, project: dict[str, Any]) -> DaemonHandle:
        """Start ``project``'s daemon in its sandbox; the caller registers the handle."""
        project_id = project["project_id"]
        uid = None
        if os.geteuid() == 0:  # as root every project gets its own uid (rootless: the server's)
            lo, hi = self.sandbox.config.uid_range
            uid = await self.db.allocate_uid(project_id, lo, hi)
        limits = ProjectLimits.merged(self.sandbox.config.defaults,
                                      (project.get("settings") or {}).get("limits", {}))
        prepared: PreparedProject = await asyncio.to_thread(self.sandbox.prepare, project_id, uid, limits)
        settings: dict[str, Any] = {"jupyter": {"pool_size": self.jupyter_pool_size},
                                    "limits": limits.to_json()}
        if self.jupyter_idle_s is not None:
            settings["jupyter"]["pool_idle_timeout_s"] = self.jupyter_idle_s
        if self.terminal_grace_s is not None:
            settings["terminal_grace_s"] = self.terminal_grace_s
        run_dir = self._run_dir(project_id)
        listen = peer.bind_daemon_socket(run_dir)   # private to the server; see fabric/peer.py
        environment = self.sandbox.config.environment
        inner = [environment.python, "-I", "-c", DAEMON_BOOT, self.sandbox.daemon_path_entry(),
                 "--project-id", project_id, "--home", prepared.home_inside,
                 "--listen-fd", str(listen.fileno()), "--state-dir", prepared.state_inside,
                 "--tmp-dir", prepared.tmp_inside, "--settings", json.dumps(settings)]
        env = {"PATH": project_path(environment, prepared.home_inside),
               "LANG": os.environ.get("LANG", "C.UTF-8"),
               "PYTHONDONTWRITEBYTECODE": "1"}
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        launch_fds: tuple[int, ...] = ()
        try:
            # root-opened cgroup files the daemon writes (sandbox/cgroups.py): ours to close
            launch_fds = tuple(await asyncio.to_thread(self.sandbox.open_cgroup_fds, prepared))
            inner += ["--ready-fd", str(ready_w)]
            argv, popen_kwargs = self.sandbox.daemon_command(prepared, inner, env)
            launch_fds += tuple(popen_kwargs.get("pass_fds", ()))   # bwrap's: ours to close
            popen_kwargs["pass_fds"] = (*launch_fds, ready_w, listen.fileno())
            log_path = run_dir / "daemon.out"
            with open(log_path, "ab") as out:
                popen_kwargs.setdefault("start_new_session", True)
                process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                           env=popen_kwargs.pop("env", env), **popen_kwargs)
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
            listen.close()   # the daemon holds the only listening copy
            for fd in launch_fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        started = time.time()
        _write_json(run_dir / "host.json", {"pid": process.pid, "started": started})
        try:
            await self._wait_for_ready(ready_r, process)
        finally:
            os.close(ready_r)
        expect = peer.PeerExpectation(project_id, self._expected_uid(project_id), sandbox_pid=process.pid)
        try:
            client, info, who = await self._connect_new(process, expect, log_path)
        except BaseException:
            with contextlib.suppress(Exception):
                process.kill()
            raise
        # The daemon's pid as the host sees it: an adopt after a restart must meet it again.
        _write_json(run_dir / "host.json", {"pid": process.pid, "daemon_pid": who.pid,
                                             "started": started})
        handle = DaemonHandle(project_id, client, process.pid, info["instance_id"], started, process,
                              daemon_pid=who.pid)
        self._watch(handle)
        log.info("started daemon of %s (pid %s) in %.0f ms", project_id, process.pid,
                 (time.time() - started) * 1000)
        return handle

    def _watch(self, handle: DaemonHandle) -> None:
        """When a daemon dies (its project can SIGKILL it: same uid), what it started must not
        live on in its exec groups until the next start: stop the project's sandbox at once."""
        def lost() -> None:
            task = asyncio.get_running_loop().create_task(self._after_daemon_lost(handle))
            self._lost_tasks.add(task)
            task.add_done_callback(self._lost_tasks.discard)
        handle.client.on_lost = lost

    async def _after_daemon_lost(self, handle: DaemonHandle) -> None:
        project_id = handle.project_id
        if handle.client.restarting:
            await self._readopt(handle)
            return
        if await asyncio.to_thread(_wait_gone_or_alive, handle.daemon_pid, 1.0):
            return   # the connection dropped but the daemon lives: the next call re-adopts it
        async with self._lock(project_id):
            current = self._handles.get(project_id)
            if current is not None and current is not handle:
                return   # a new daemon runs already
            registered = current is handle
            if registered:
                self._handles.pop(project_id, None)
            elif self.spares.is_parked(project_id) or self.is_running(project_id):
                return
            log.warning("the daemon of %s died; stopping everything it left in its sandbox", project_id)
            self._reap(handle)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.sandbox.stop_project, project_id)
            with contextlib.suppress(FileNotFoundError):
                (self._run_dir(project_id) / "host.json").unlink()
            if registered:
                await self._set_state(project_id, "stopped", "its daemon exited")

    async def _readopt(self, handle: DaemonHandle) -> None:
        """The daemon said ``bye`` and re-executes in place (project/recycle.py): connect to
        the new interpreter now, so status and the idle stop see the project running at
        once rather than at its next call.  If it does not answer, ``_adopt`` stops the
        sandbox, as for any daemon it cannot trust."""
        project_id = handle.project_id
        async with self._lock(project_id):
            if self._handles.get(project_id) is not handle:
                return   # a call re-adopted it already, or the project was stopped
            self._reap(handle)   # registered until the new one is: status stays "running"
            if await self._adopt(project_id) is None:
                self._handles.pop(project_id, None)
                await self._set_state(project_id, "stopped", "its daemon exited")

    async def _wait_for_ready(self, fd: int, process: subprocess.Popen[bytes]) -> None:
        """Until the daemon writes its ready byte or the pipe closes (it died, or the fd did
        not reach it): either way ``_wait_for_socket`` then connects or reports why not."""
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def on_readable() -> None:
            if not ready.done():
                ready.set_result(None)
        loop.add_reader(fd, on_readable)
        try:
            await asyncio.wait_for(ready, _START_TIMEOUT_S)
        except asyncio.TimeoutError:
            process.kill()
            raise RemoteError(f"timeout: project daemon did not start within {_START_TIMEOUT_S:.0f} s") from None
        finally:
            loop.remove_reader(fd)

    async def _connect_new(self, process: subprocess.Popen[bytes], expect: peer.PeerExpectation,
                           log_path: Path) -> tuple[FabricClient, dict[str, Any], peer.Peer]:
        deadline = time.monotonic() + _START_TIMEOUT_S
        delay = 0.002
        while True:
            if process.poll() is not None:
                # its stderr (a traceback with host paths, text the project controls) goes to
                # the server's log only, never into an API answer
                log.warning("project %s: daemon exited with code %s while starting: %s",
                            expect.project_id, process.returncode, _tail(log_path))
                raise RemoteError("Error: project daemon failed to start (see the server log)")
            with contextlib.suppress(OSError):
                return await self._connect(expect.project_id, expect, 5.0)
            if time.monotonic() > deadline:
                process.kill()
                raise RemoteError(f"timeout: project daemon did not start within {_START_TIMEOUT_S:.0f} s")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.05)

    def _reap(self, handle: DaemonHandle) -> None:
        if handle.process is not None:
            with contextlib.suppress(Exception):
                handle.process.poll()

    async def _set_state(self, project_id: str, state: str, reason: str | None = None) -> None:
        """``reason`` says why (shown with a stopped project's state); a new state clears it."""
        from datetime import datetime, timezone
        await self.db.update_project(project_id, state=state, state_time=datetime.now(timezone.utc),
                                     state_reason=reason)


_SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def project_path(environment: ProjectEnvironment, home: str) -> str:
    """PATH inside projects: the user's own scripts (``pip install --user``), the project
    environment (python3, pip, jupyter), then the system directories.  Not the server's own
    PATH: its entries leak host layout and mostly do not exist in the sandbox (each miss is
    a failed execve)."""
    root = environment.rootfs or ""
    system = [d for d in _SYSTEM_PATH if os.path.isdir(root + d)]
    return ":".join(dict.fromkeys([f"{home}/.local/bin", *environment.bin_dirs, *system]))


def _resume(pid: int) -> None:
    """SIGCONT ``pid`` if it is stopped (root may signal any process)."""
    with contextlib.suppress(psutil.Error, OSError):
        if psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
            os.kill(pid, signal.SIGCONT)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone_or_alive(pid: int | None, timeout: float) -> bool:
    """True if ``pid`` is still alive after ``timeout`` (False at once when it is gone)."""
    if pid is None:
        return False
    try:
        proc = psutil.Process(pid)
        proc.wait(timeout)
        return False
    except psutil.TimeoutExpired:
        return _alive(pid)
    except psutil.Error:
        return False


def _wait_gone(pid: int, timeout: float) -> None:
    with contextlib.suppress(psutil.Error):
        psutil.Process(pid).wait(timeout)


def _rss(proc: psutil.Process) -> int:
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return 0


def _cpu_seconds(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
        return times.user + times.system
    except psutil.Error:
        return 0.0


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return ""
