"""``system.jupyterExecute``: one fresh kernel per call, killed afterwards (spec 6.1)."""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from ...errors import RemoteError
from ..context import ProjectContext
from .cells import run_cell
from .outputs import Limits, OutputCollector
from .pool import KernelPool
from .specs import SpecCatalog

_q = json.dumps   # a double-quoted string literal valid in most languages


def _python(p: str) -> str:
    # __import__ so the user namespace does not gain an `os` it did not import.
    return f"try:\n    __import__('os').chdir({p!r})\nexcept Exception:\n    pass"


def _single_quoted(p: str) -> str:
    return "'" + p.replace("'", "''") + "'"


# How each language changes directory; failures are swallowed (the kernel stays put).
# None means "no statement needed" (SPARQL has no working directory).
_CHDIR: dict[str, Callable[[str], str] | None] = {
    "python": _python,
    "sage": _python,
    "r": lambda p: f"try(setwd({_q(p)}), silent=TRUE)",
    "julia": lambda p: f"try cd({_q(p)}) catch end",
    "octave": lambda p: f"try\n  cd({_single_quoted(p)})\ncatch\nend",
    "matlab": lambda p: f"try\n  cd({_single_quoted(p)})\ncatch\nend",
    "javascript": lambda p: f"try {{ process.chdir({_q(p)}) }} catch (e) {{}}",
    "bash": lambda p: f"cd {_sh(p)} 2>/dev/null || true",
    "sh": lambda p: f"cd {_sh(p)} 2>/dev/null || true",
    "prolog": lambda p: f"catch(working_directory(_, {_single_quoted(p)}), _, true).",
    "c": lambda p: f"chdir({_q(p)});",
    "c++": lambda p: f"chdir({_q(p)});",
    "sparql": None,
}


def _sh(p: str) -> str:
    return "'" + p.replace("'", "'\\''") + "'"


def chdir_code(language: str, path: str) -> str | None:
    """The statement changing into ``path``; '' if none is needed; None if unsupported."""
    lang = language.lower()
    if lang not in _CHDIR:
        return None
    make = _CHDIR[lang]
    return "" if make is None else make(path)


def _discard(_msg: dict[str, Any]) -> None:
    pass


async def jupyter_execute(ctx: ProjectContext, catalog: SpecCatalog, pool: KernelPool,
                          opts: dict[str, Any]) -> list[dict[str, Any]]:
    if not isinstance(opts, dict):
        raise RemoteError("Error: options must be an object")
    spec = catalog.get(opts.get("kernel"))  # type: ignore[arg-type]
    code = opts.get("input")
    if not isinstance(code, str):
        raise RemoteError("Error: input must be specified")
    limits = Limits.from_opts(opts.get("limits"))
    pool_opts = opts.get("pool") or {}
    kernel = await pool.acquire(spec, size=pool_opts.get("size"),
                                timeout_s=pool_opts.get("timeout_s"))
    try:
        cell_timeout_s = limits.timeout_ms_per_cell / 1000
        collector = OutputCollector(limits)
        path = opts.get("path")
        if path is not None:
            # Without `path` the kernel already sits in its own fresh temp dir.
            target = os.path.join(str(ctx.home), str(path))  # "" -> HOME; absolute wins
            code_cd = chdir_code(spec.language, target)
            if code_cd is None:
                collector.add_item({"name": "stderr", "text": "Error: unable to change directory: "
                                    f"chdir for language {spec.language} is not implemented."})
            elif code_cd:
                await run_cell(kernel, code_cd, _discard, timeout_s=cell_timeout_s,
                               silent=True, store_history=False)
        history = opts.get("history") or []
        if isinstance(history, str):
            history = [history]
        if history:
            ran = await run_cell(kernel, "\n".join(str(h) for h in history), _discard,
                                 timeout_s=cell_timeout_s)
            if ran.killed:
                return collector.items
        outcome = await run_cell(kernel, code, collector.add_message, timeout_s=cell_timeout_s)
        if outcome.reply is not None and outcome.status == "ok":
            collector.add_message(outcome.reply)  # CoCalc examines the ok reply too
        return collector.items
    finally:
        pool.release(kernel)  # SIGKILL on the next loop turn, after our reply is sent

