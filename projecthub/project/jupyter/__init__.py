"""Jupyter kernels for one project: stateless execute (CoCalc), persistent sessions (native).

``JupyterService`` is what the project daemon holds; everything it starts runs in the
project's sandbox, each kernel in its own ProcessGroup, and ``close()`` leaves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator

from ...errors import RemoteError
from ..context import ProjectContext
from .kernels import STATELESS_RLIMITS, KernelLauncher
from .pool import KernelPool
from .sessions import SessionManager
from .specs import SpecCatalog
from .stateless import jupyter_execute

__all__ = ["JupyterService"]


class JupyterService:
    def __init__(self, ctx: ProjectContext, *, pool_size: int = 1, pool_idle_timeout_s: float = 180,
                 session_idle_timeout_s: float = 3600) -> None:
        # pool_idle_timeout_s: the stateless pool and its zygotes shrink to zero after this
        # long without a stateless call (the host may set it: $PROJECTHUB_JUPYTER_IDLE_S)
        self.ctx = ctx
        settings = ctx.settings or {}
        self.catalog = SpecCatalog()
        self.launcher = KernelLauncher(
            ctx, start_timeout_s=float(settings.get("jupyter_start_timeout_s", 60)),
            max_concurrent_starts=int(settings.get("jupyter_max_concurrent_starts", 4)),
            zygote=bool(settings.get("jupyter_zygote", True)))
        self.pool = KernelPool(self.launcher, size=pool_size, timeout_s=pool_idle_timeout_s,
                               rlimits=settings.get("jupyter_stateless_rlimits", STATELESS_RLIMITS))
        self.sessions = SessionManager(ctx, self.catalog, self.launcher,
                                       idle_timeout_s=session_idle_timeout_s)
        # Upkeep often enough to honour the shortest idle timeout, at most every 30 s.
        self._upkeep_every_s = min(30.0, max(0.05, min(pool_idle_timeout_s, session_idle_timeout_s) / 4))
        self._upkeep: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        """Start background upkeep.  No kernel boots until a kernelspec is first used."""
        if self._upkeep is None and not self._closed:
            self.pool.start()
            self._upkeep = asyncio.create_task(self._upkeep_loop(), name="jupyter-upkeep")

    async def close(self) -> None:
        """Kill every kernel this service started and remove their files."""
        self._closed = True
        if self._upkeep is not None:
            self._upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._upkeep
        await self.pool.close()
        await self.sessions.close()
        await self.launcher.close()

    async def _upkeep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._upkeep_every_s)
            try:
                self.pool.housekeeping()
                self.sessions.cull_idle()
            except Exception:
                pass  # upkeep must never die; the next pass retries

    async def _ready(self) -> None:
        if self._closed:
            raise RemoteError("Error: the Jupyter service is shut down")
        if self._upkeep is None:
            await self.start()

    # --- CoCalc surface -----------------------------------------------------------------

    async def jupyter_execute(self, opts: dict[str, Any]) -> list[dict[str, Any]]:
        await self._ready()
        return await jupyter_execute(self.ctx, self.catalog, self.pool, opts)

    async def list_kernels(self) -> list[dict[str, Any]]:
        return [k.describe() for k in self.launcher.list_alive()]

    async def stop_kernel(self, opts: dict[str, Any]) -> dict[str, bool]:
        try:
            pid = int((opts or {}).get("pid"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return {"success": False}
        kernel = self.launcher.get(pid)
        if kernel is None:
            return {"success": False}
        await kernel.close()
        return {"success": not kernel.alive}

    async def kernel_specs(self) -> list[dict[str, Any]]:
        return self.catalog.api_list()

    # --- native sessions ----------------------------------------------------------------

    async def create_session(self, opts: dict[str, Any]) -> dict[str, Any]:
        await self._ready()
        return await self.sessions.create(opts)

    async def list_sessions(self) -> list[dict[str, Any]]:
        return self.sessions.list()

    async def get_session(self, session_id: str) -> dict[str, Any]:
        return self.sessions.get(session_id).record()

    async def execute_in_session(self, session_id: str, opts: dict[str, Any]) -> dict[str, Any]:
        await self._ready()
        return await self.sessions.execute(session_id, opts)

    def stream_in_session(self, session_id: str, opts: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        if self._closed:
            raise RemoteError("Error: the Jupyter service is shut down")
        return self.sessions.stream(session_id, opts)

    async def interrupt_session(self, session_id: str) -> dict[str, Any]:
        return await self.sessions.interrupt(session_id)

    async def restart_session(self, session_id: str) -> dict[str, Any]:
        await self._ready()
        return await self.sessions.restart(session_id)

    async def delete_session(self, session_id: str) -> None:
        await self.sessions.delete(session_id)
