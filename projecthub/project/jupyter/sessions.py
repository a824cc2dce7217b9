"""Named persistent kernels (native API): state kept across calls.

A timed-out cell is interrupted first (CoCalc's SIGINT schedule).  If the kernel comes
back idle, its variables are intact (``state_survived``); only a kernel that stays
busy is restarted.  One cell runs at a time per session; callers queue.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from ...errors import RemoteError, error_text
from ..context import ProjectContext
from .cells import run_cell
from .kernels import Kernel, KernelLauncher
from .outputs import Limits, OutputCollector
from .specs import KernelSpecInfo, SpecCatalog

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_OUTPUT = 1_000_000


@dataclass
class Session:
    session_id: str
    name: str
    spec: KernelSpecInfo
    cwd: str
    env: dict[str, str]
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    kernel: Kernel | None = None
    busy: bool = False
    starting: bool = False
    interrupt_requested: bool = False   # interrupt_session() hit the running cell
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def state(self) -> str:
        if self.starting:
            return "starting"
        if self.kernel is None or not self.kernel.alive:
            return "dead"   # the next execute starts a new kernel
        return "busy" if self.busy else "idle"

    def record(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "name": self.name, "kernel": self.spec.name,
                "pid": self.kernel.pid if self.kernel is not None and self.kernel.alive else None,
                "state": self.state, "created": self.created, "last_used": self.last_used,
                "cwd": self.cwd}


class SessionManager:
    def __init__(self, ctx: ProjectContext, catalog: SpecCatalog, launcher: KernelLauncher,
                 *, idle_timeout_s: float) -> None:
        self.ctx = ctx
        self.catalog = catalog
        self.launcher = launcher
        self.idle_timeout_s = idle_timeout_s
        self._sessions: dict[str, Session] = {}
        self._background: set[asyncio.Task[Any]] = set()

    # --- lifecycle ----------------------------------------------------------------------

    async def create(self, opts: dict[str, Any]) -> dict[str, Any]:
        opts = opts or {}
        spec = self.catalog.get(opts.get("kernel") or "python3")
        session_id = str(uuid.uuid4())
        name = str(opts.get("name") or session_id)
        if any(s.name == name for s in self._sessions.values()):
            raise RemoteError(f'Error: a Jupyter session named "{name}" already exists')
        cwd = os.path.join(str(self.ctx.home), str(opts.get("cwd") or ""))
        if not os.path.isdir(cwd):
            raise RemoteError(f"Error: cwd '{cwd}' is not a directory")
        env = {str(k): str(v) for k, v in (opts.get("env") or {}).items()}
        session = Session(session_id=session_id, name=name, spec=spec, cwd=cwd, env=env)
        self._sessions[session_id] = session
        try:
            async with session.lock:
                await self._boot(session)
        except BaseException:
            self._sessions.pop(session_id, None)
            raise
        return session.record()

    async def _boot(self, session: Session) -> None:
        """(Re)start the session's kernel; caller holds the session lock."""
        if session.kernel is not None:
            session.kernel.close()
        session.kernel = None
        session.starting = True
        try:
            session.kernel = await self.launcher.start(session.spec, cwd=session.cwd,
                                                       env=session.env)
        finally:
            session.starting = False

    def get(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise RemoteError(f"Error: Jupyter session '{session_id}' does not exist.")
        return session

    def list(self) -> list[dict[str, Any]]:
        return [s.record() for s in self._sessions.values()]

    async def delete(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            raise RemoteError(f"Error: Jupyter session '{session_id}' does not exist.")
        if session.kernel is not None:
            await session.kernel.close()

    async def restart(self, session_id: str) -> dict[str, Any]:
        session = self.get(session_id)
        if session.kernel is not None:
            session.kernel.close()   # a running cell ends now (with a kernel-death error)
        async with session.lock:
            if self._sessions.get(session_id) is not session:
                raise RemoteError(f"Error: Jupyter session '{session_id}' does not exist.")
            if session.kernel is None or not session.kernel.alive:
                await self._boot(session)
            session.last_used = time.time()
        return session.record()

    async def interrupt(self, session_id: str) -> dict[str, Any]:
        session = self.get(session_id)
        if session.kernel is not None and session.kernel.alive:
            session.interrupt_requested = session.busy
            session.kernel.interrupt()
        return session.record()

    # --- executing ----------------------------------------------------------------------

    async def execute(self, session_id: str, opts: dict[str, Any],
                      on_item: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        session = self.get(session_id)
        opts = opts or {}
        code = opts.get("code")
        if not isinstance(code, str):
            raise RemoteError("Error: code must be a string")
        timeout_s = float(opts.get("timeout_s") or DEFAULT_TIMEOUT_S)
        max_output = int(opts.get("max_output") or DEFAULT_MAX_OUTPUT)
        collector = OutputCollector(Limits(timeout_ms_per_cell=int(timeout_s * 1000),
                                           max_output_per_cell=max_output, max_output=None),
                                    on_item=on_item, repeat_notice=False)
        async with session.lock:
            if self._sessions.get(session_id) is not session:
                raise RemoteError(f"Error: Jupyter session '{session_id}' does not exist.")
            session.last_used = time.time()
            restarted = False
            if session.kernel is None or not session.kernel.alive:
                await self._boot(session)   # died since the last call: its state is gone
                restarted = True
            kernel = session.kernel
            assert kernel is not None
            session.busy = True
            session.interrupt_requested = False
            try:
                outcome = await run_cell(kernel, code, collector.add_message, timeout_s=timeout_s)
                if outcome.killed:
                    await self._boot(session)
                    restarted = True
            finally:
                session.busy = False
                session.last_used = time.time()
        return {
            "outputs": collector.items,
            "status": "timeout" if outcome.timed_out else outcome.status,
            "execution_count": outcome.execution_count,
            "timed_out": outcome.timed_out,
            "interrupted": outcome.interrupted or session.interrupt_requested,
            "restarted": restarted,
            "state_survived": not restarted,
        }

    def stream(self, session_id: str, opts: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        self.get(session_id)   # unknown session: fail before the stream starts
        return self._stream(session_id, opts)

    async def _stream(self, session_id: str, opts: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        task = asyncio.ensure_future(self.execute(
            session_id, opts, on_item=lambda item: queue.put_nowait({"event": "output", "item": item})))
        # If the consumer leaves early the cell still runs to its end (the session stays
        # consistent); keep the task referenced and its exception retrieved.
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(lambda t: queue.put_nowait(None))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        while True:
            event = await queue.get()
            if event is None:
                break
            yield event
        try:
            yield {"event": "done", "result": task.result()}
        except Exception as exc:   # includes KernelDied / RemoteError
            yield {"event": "error", "error": error_text(exc)}

    # --- upkeep -------------------------------------------------------------------------

    def cull_idle(self) -> None:
        cutoff = time.time() - self.idle_timeout_s
        for session in list(self._sessions.values()):
            if session.last_used < cutoff and not session.lock.locked():
                self._sessions.pop(session.session_id, None)
                if session.kernel is not None:
                    session.kernel.close()

    def kernels(self) -> list[Kernel]:
        return [s.kernel for s in self._sessions.values() if s.kernel is not None]

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(s.kernel.close() for s in sessions if s.kernel is not None),
                             return_exceptions=True)

