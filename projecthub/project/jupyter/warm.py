"""A spare project's Jupyter warm-up: the first stateless call of a new project finds a
warm kernel instead of paying ~1 s (Jupyter's import in the daemon, a kernel launch, the
zygote start).

The host asks a spare's daemon for it (``daemon.warmJupyter``, host/spares.py) after the
spare started.  It imports the Jupyter layer, starts the kernelspec's zygote (the
pre-imported interpreter stateless kernels are forked from) and lets the stateless pool
fork and warm one kernel.  That pool is *held* (``KernelPool.hold``): the pool's idle
shrink, which closes the zygote too, would otherwise take the warm-up away from a spare
that waits longer than the idle window for its project.  The hold ends when the project
is claimed (``daemon.claim``, sent by the host when the new project first starts); from
then on its pool ages like any other, so a claimed project that never uses Jupyter gives
that memory back one idle window after its first call.

Everything here runs inside the spare's own sandbox, as the spare's own uid, started by
its own daemon: the project that claims the spare gets the very same uid, home and cgroup,
so nothing of the warm-up is shared with any other project.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

from ...errors import RemoteError

if TYPE_CHECKING:
    from . import JupyterService

WARM_TIMEOUT_S = 60.0
_POLL_S = 0.02   # waiting for the pool's first warm kernel: a one-off wait of ~0.1-0.5 s


async def warm_stateless(service: "JupyterService", kernel: str, *, keep: Callable[[], bool],
                         timeout_s: float = WARM_TIMEOUT_S) -> dict[str, Any]:
    """Start ``kernel``'s zygote and pool one warm stateless kernel, held while ``keep()``
    (the project is not claimed yet).  What was done, for the host's log."""
    if not keep():
        return {"warmed": False, "reason": "claimed before the warm-up"}
    try:
        spec = service.catalog.get(kernel)
    except RemoteError:
        return {"warmed": False, "reason": f"no kernelspec {kernel!r}"}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    zygotes = service.launcher.zygotes
    zygote = None
    if zygotes is not None:   # None if the spec cannot be forked: the pool launches instead
        zygote = await asyncio.wait_for(zygotes.ready(spec), timeout_s)
    # The pool, once it exists, is what closes the zygote when idle: so it is made (held)
    # even when the project was claimed meanwhile, and then released at once (no await in
    # between: a claim's own release may have come before our hold, never after it).
    service.pool.hold(spec)
    if not keep():
        service.pool.release_holds()   # its idle window starts now
        return {"warmed": False, "reason": "claimed during the warm-up"}
    while not any(k.warmed and k.spec == spec and k.alive for k in service.pool.idle_kernels()):
        if loop.time() > deadline:
            return {"warmed": False, "reason": f"no warm kernel within {timeout_s:.0f} s",
                    "zygote_pid": zygote.pid if zygote else None}
        await asyncio.sleep(_POLL_S)
    return {"warmed": True, "kernel": spec.name, "zygote_pid": zygote.pid if zygote else None}
