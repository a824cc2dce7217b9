"""The project daemon's function table: CoCalc names (public) and native names (host only).

The hub forwards ``/api/conat/project`` calls only when the name is in ``PUBLIC_FUNCTIONS``
(anything else is ``Error: unknown function``), so the ``native.*`` and ``daemon.*``
names are reachable only through the hub's own native endpoints.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

from .. import BUILD_VERSION
from ..errors import RemoteError
from .args import options as _opts
from . import files

if TYPE_CHECKING:
    from .daemon import ProjectDaemon

Function = Callable[["ProjectDaemon", list[Any], "float | None"], Awaitable[Any]]


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _ping(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
    return {"now": _now_ms()}


async def _test(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
    project_id = args[0].get("project_id", "") if args and isinstance(args[0], dict) else ""
    return {"project_id": project_id or "", "server_time": _now_ms()}


async def _version(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
    return BUILD_VERSION


async def _exec(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
    from .exec import system_exec
    return await system_exec(d.ctx, _opts(args), budget_s=budget)


async def _signal(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
    from .exec import system_signal
    return await system_signal(d.ctx, _opts(args))


async def _jupyter_execute(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
    return await (await d.jupyter()).jupyter_execute(_opts(args))


async def _list_kernels(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
    if d.jupyter_started is None:
        return []  # no kernel was ever started: don't pay the jupyter import for an empty list
    return await (await d.jupyter()).list_kernels()


async def _stop_kernel(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
    if d.jupyter_started is None:
        return {"success": False}
    return await (await d.jupyter()).stop_kernel(_opts(args))


def _files(fn: Callable[[Any, list[Any]], Awaitable[Any]]) -> Function:
    async def call(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
        return await fn(d.ctx, args)
    return call


PUBLIC_FUNCTIONS: dict[str, Function] = {
    "system.ping": _ping,
    "system.test": _test,
    "system.version": _version,
    "system.exec": _exec,
    "system.signal": _signal,
    "system.jupyterExecute": _jupyter_execute,
    "system.listJupyterKernels": _list_kernels,
    "system.stopJupyterKernel": _stop_kernel,
    "system.listing": _files(files.listing),
    "system.readTextFileFromProject": _files(files.read_text_file),
    "system.writeTextFileToProject": _files(files.write_text_file),
    "system.deleteFiles": _files(files.delete_files),
    "system.moveFiles": _files(files.move_files),
    "system.renameFile": _files(files.rename_file),
    "system.realpath": _files(files.realpath),
    "system.canonicalPaths": _files(files.canonical_paths),
}


# --- native (host-only) functions -------------------------------------------------------

async def _info(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
    return d.info()


async def _shutdown(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
    d.request_shutdown()
    return None


async def _warm_jupyter(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
    """A spare project's Jupyter warm-up (jupyter/warm.py), held until ``daemon.claim``."""
    from .jupyter.warm import warm_stateless
    kernel = _opts(args).get("kernel", "python3")
    if not isinstance(kernel, str):
        raise RemoteError("Error: 'kernel' must be a string")
    return await warm_stateless(await d.jupyter(), kernel, keep=lambda: not d.claimed)


async def _claim(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
    """The spare is a user's project now: a warm-up's held pool ages like any other."""
    d.claimed = True
    if d.jupyter_started is not None:
        (await d.jupyter()).pool.release_holds()
    return None


async def _native_exec(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
    from .exec import native_exec
    return await native_exec(d.ctx, _opts(args), budget_s=budget)


async def _job_get(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
    from .exec import job_record
    return await job_record(d.ctx, _opts(args), budget_s=budget)


async def _job_output(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
    from .exec import job_output
    return await job_output(d.ctx, _opts(args))


async def _job_list(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
    from .exec import job_list
    return await job_list(d.ctx, _opts(args))


async def _job_kill(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
    from .exec import job_kill
    return await job_kill(d.ctx, _opts(args))


async def _kernel_specs(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
    return await (await d.jupyter()).kernel_specs()


def _session(method: str, with_opts: bool = True) -> Function:
    async def call(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
        opts = _opts(args)
        if d.jupyter_started is None and method != "create_session":
            # no session can exist yet: answer without paying the jupyter import
            if method == "list_sessions":
                return []
            raise RemoteError(f"Error: Jupyter session '{opts.get('session_id')}' does not exist.")
        service = await d.jupyter()
        fn = getattr(service, method)
        if method in ("create_session", "list_sessions"):
            return await (fn(opts) if with_opts else fn())
        session_id = opts.get("session_id")
        if not isinstance(session_id, str):
            raise RemoteError("Error: 'session_id' must be a string")
        return await (fn(session_id, opts) if with_opts else fn(session_id))
    return call


def _archive(name: str) -> Function:
    """archive.py is imported on first use (tarfile and its threads: most projects never copy)."""
    async def call(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
        from . import archive
        return await getattr(archive, name)(d.ctx, args)
    return call


def _terminal(name: str) -> Function:
    """terminal.py is imported on first use (most projects never open one)."""
    async def call(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
        from . import terminal
        return await getattr(terminal, name)(d.ctx, _opts(args))
    return call


def _transfer(name: str) -> Function:
    async def call(d: "ProjectDaemon", args: list[Any], budget: float | None) -> Any:
        from . import transfer
        return await getattr(transfer, name)(d.ctx, args)
    return call


NATIVE_FUNCTIONS: dict[str, Function] = {
    "daemon.info": _info,
    "daemon.shutdown": _shutdown,
    "daemon.warmJupyter": _warm_jupyter,
    "daemon.claim": _claim,
    "native.exec": _native_exec,
    "native.job": _job_get,
    "native.jobOutput": _job_output,
    "native.jobs": _job_list,
    "native.jobKill": _job_kill,
    "native.kernelSpecs": _kernel_specs,
    "native.session.create": _session("create_session"),
    "native.session.list": _session("list_sessions", with_opts=False),
    "native.session.get": _session("get_session", with_opts=False),
    "native.session.execute": _session("execute_in_session"),
    "native.session.interrupt": _session("interrupt_session", with_opts=False),
    "native.session.restart": _session("restart_session", with_opts=False),
    "native.session.delete": _session("delete_session", with_opts=False),
    # copies between projects (archive.py): the host feeds the target, chunk by chunk
    "native.archive.unpackBegin": _archive("unpack_begin"),
    "native.archive.unpackChunk": _archive("unpack_chunk"),
    "native.archive.unpackEnd": _archive("unpack_end"),
    "native.archive.unpackAbort": _archive("unpack_abort"),
    # the v3 files API (transfer.py)
    "native.files.describe": _transfer("describe"),
    "native.files.list": _transfer("listing"),
    "native.files.writeBegin": _transfer("write_begin"),
    "native.files.writeChunk": _transfer("write_chunk"),
    "native.files.writeEnd": _transfer("write_end"),
    "native.files.writeAbort": _transfer("write_abort"),
    "native.files.delete": _transfer("delete"),
    "native.files.move": _transfer("move"),
    # terminals (terminal.py): bash -l on a PTY, attached with the native.terminal.attach stream
    "native.terminal.create": _terminal("create"),
    "native.terminal.list": _terminal("list_terminals"),
    "native.terminal.kill": _terminal("kill"),
    "native.terminal.input": _terminal("write_input"),
    "native.terminal.resize": _terminal("resize"),
}


# --- streams ------------------------------------------------------------------------------

def job_events(d: "ProjectDaemon", args: list[Any]) -> AsyncIterator[Any]:
    from .exec import job_events as events
    return events(d.ctx, _opts(args))


def session_stream(d: "ProjectDaemon", args: list[Any]) -> AsyncIterator[Any]:
    async def gen() -> AsyncIterator[Any]:
        opts = _opts(args)
        service = await d.jupyter()
        async for event in service.stream_in_session(opts.get("session_id"), opts):
            yield event
    return gen()


def archive_pack(d: "ProjectDaemon", args: list[Any]) -> AsyncIterator[Any]:
    from . import archive
    return archive.pack(d.ctx, args)


def files_read(d: "ProjectDaemon", args: list[Any]) -> AsyncIterator[Any]:
    from . import transfer
    return transfer.read(d.ctx, args)


def terminal_attach(d: "ProjectDaemon", args: list[Any]) -> AsyncIterator[Any]:
    from . import terminal
    return terminal.attach(d.ctx, _opts(args))


STREAMS: dict[str, Callable[["ProjectDaemon", list[Any]], AsyncIterator[Any]]] = {
    "native.jobEvents": job_events,
    "native.session.stream": session_stream,
    "native.archive.pack": archive_pack,
    "native.files.read": files_read,
    "native.terminal.attach": terminal_attach,
}


def lookup(name: str) -> Function | None:
    return PUBLIC_FUNCTIONS.get(name) or NATIVE_FUNCTIONS.get(name)

