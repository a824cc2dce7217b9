"""The project daemon's exec engine: public surface.

* ``system_exec``   CoCalc's ``system.exec`` (spec section 4), wire-exact.
* ``native_exec``   the same engine with a rich result (exit signal, kill reason, byte
                    totals, cpu, peak rss), ``yield_after``, ``idempotency_key``, ``async``.
* ``system_signal`` CoCalc's ``system.signal``, limited to this project's processes.
* ``job_manager``   the per-project ``JobManager`` (durable async jobs, streaming).

Both exec entry points parse options with ``execution.options``, run one
``execution.runner.Execution`` and shape its ``Outcome`` with ``execution.results``.

Deliberate deviations from CoCalc (documented for API users):

* stdin is ``/dev/null`` (EOF at once) instead of a pipe that is never closed.
* The call never hangs on a background process that keeps stdout open: once the main
  process exited we wait for EOF only until the timeout, then kill the group.
* Nothing of a finished or timed-out exec survives (the whole group is killed at the end)
  unless it was started as an async job.
* On timeout the error carries the partial ``stdout``/``stderr`` and ``killed_by``.
* If the caller's wait budget (``budget_s``) runs out, the exec becomes an async job
  instead of being orphaned, and the error names the job.
* Blocking output is capped in memory at ``ctx.settings["exec_output_limit"]``
  (default 16 MiB characters per stream) even without ``max_output``.
* A multibyte character split across pipe reads is decoded correctly (CoCalc garbles it).
"""

from __future__ import annotations

import asyncio
import errno
import os
import weakref
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from ..errors import RemoteError
from .context import ProjectContext
from .execution.aggregate import Aggregator
from .execution.options import ExecRequest, parse_request
from .execution.results import blocking_result, native_result
from .execution.runner import Execution, Outcome
from .jobs import JOB_ID_RE, Job, JobManager, missing_job, utf8_safe_end
from .tracking_fallback import is_descendant

__all__ = ["system_exec", "native_exec", "system_signal", "job_manager", "use_job_manager",
           "job_record", "job_output", "job_list", "job_kill", "job_events"]

NO_COMPUTE_SERVER = "no connection to compute server -- please start or restart it"


@dataclass
class _ProjectState:
    jobs: JobManager
    aggregator: Aggregator = field(default_factory=Aggregator)


# Keyed by id(ctx) (ProjectContext is an unhashable dataclass); dropped when ctx dies.
_states: dict[int, _ProjectState] = {}


def _state(ctx: ProjectContext) -> _ProjectState:
    state = _states.get(id(ctx))
    if state is None:
        jobs = JobManager(ctx, **_job_limits(ctx))
        jobs.load()
        state = use_job_manager(ctx, jobs)
    return state


def _job_limits(ctx: ProjectContext) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if "jobs_max" in ctx.settings:
        limits["max_jobs"] = int(ctx.settings["jobs_max"])
    if "jobs_ttl_s" in ctx.settings:
        limits["ttl_s"] = float(ctx.settings["jobs_ttl_s"])
    return limits


def use_job_manager(ctx: ProjectContext, jobs: JobManager) -> _ProjectState:
    """Install a (loaded) JobManager for ``ctx``; the daemon calls this at start."""
    state = _ProjectState(jobs)
    key = id(ctx)
    _states[key] = state
    weakref.finalize(ctx, _states.pop, key, None)
    return state


def job_manager(ctx: ProjectContext) -> JobManager:
    """The project's JobManager, created and loaded from ``ctx.state_dir`` on first use."""
    return _state(ctx).jobs


# ---------------------------------------------------------------------- system.exec

async def system_exec(ctx: ProjectContext, opts: dict[str, Any], *,
                      budget_s: float | None = None) -> dict[str, Any]:
    if not isinstance(opts, dict):
        raise RemoteError("error invalid options: expected an object")
    if opts.get("async_get") is not None:
        return await _async_get(ctx, opts, budget_s)
    _check_compute_server(opts)
    if opts.get("aggregate") is not None:
        return await _state(ctx).aggregator.run(opts, lambda: _system_exec(ctx, opts, budget_s))
    return await _system_exec(ctx, opts, budget_s)


async def _system_exec(ctx: ProjectContext, opts: dict[str, Any],
                       budget_s: float | None) -> dict[str, Any]:
    async_mode = bool(opts.get("async_call"))
    req = parse_request(ctx, opts, async_mode=async_mode)
    if async_mode:
        record = job_manager(ctx).start(req, native=False).live_record()
        record.pop("stats", None)
        return record
    ran = await _run(ctx, req, budget_s=budget_s, yield_after=None, native=False, accounting=False)
    if isinstance(ran, Job):
        raise _budget_error(budget_s, ran.job_id)
    return blocking_result(req, ran)


async def _async_get(ctx: ProjectContext, opts: dict[str, Any], budget_s: float | None) -> dict[str, Any]:
    job_id = opts["async_get"]
    jobs = job_manager(ctx)
    stats = bool(opts.get("async_stats"))
    if opts.get("async_await"):
        record = await jobs.wait(job_id, budget_s, stats=stats)
    else:
        record = jobs.get(job_id, stats=stats)
    if record is None:
        raise missing_job(job_id)
    return record


def _check_compute_server(opts: dict[str, Any]) -> None:
    if opts.get("compute_server_id") not in (None, 0):
        raise RemoteError(NO_COMPUTE_SERVER)


def _budget_error(budget_s: float | None, job_id: str) -> RemoteError:
    return RemoteError(
        f"timeout: the call's time budget ran out after {budget_s:g}s; the command keeps "
        f"running as async job {job_id} (poll it with async_get)", job_id=job_id)


async def _run(ctx: ProjectContext, req: ExecRequest, *, budget_s: float | None,
               yield_after: float | None, native: bool, accounting: bool = True) -> Outcome | Job:
    """Run ``req`` and wait for it, at most min(budget_s, yield_after); past that it
    becomes a job (which keeps its own timeout) and the Job is returned.  Without
    ``accounting`` the Outcome has no cpu/memory/OOM figures (unless it becomes a job)."""
    execution = Execution(ctx, req, name="x" + os.urandom(8).hex())
    execution.accounting = accounting
    execution.start()
    limits = [t for t in (budget_s, yield_after) if t is not None]
    try:
        await _wait_at_most(execution.done, min(limits) if limits else None)
    except asyncio.CancelledError:
        execution.kill("cancelled")   # the caller went away: every child is owned
        if execution.finished:
            execution.release()
        raise
    if execution.finished:
        # The rest of this task step (result shaping, the fabric reply) runs before the
        # next loop iteration, so giving the group back overlaps with the reply's way
        # back instead of delaying it; it still happens before a later request is read.
        asyncio.get_running_loop().call_soon(execution.release)
        return execution.done.result()
    execution.accounting = True   # job records and results carry the stats
    return job_manager(ctx).adopt(execution, req, native=native)


async def _wait_at_most(done: asyncio.Future[Any], timeout: float | None) -> None:
    """Wait until ``done`` resolves or ``timeout`` passes, never cancelling ``done``.
    What wait_for(shield(done)) does, with one future and one timer instead of two
    futures, a timer and three callback hops (this is on every exec's path)."""
    if done.done():
        return
    waiter = asyncio.get_running_loop().create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    done.add_done_callback(wake)
    timer = None if timeout is None else asyncio.get_running_loop().call_later(timeout, wake)
    try:
        await waiter
    finally:
        if timer is not None:
            timer.cancel()
        done.remove_done_callback(wake)


# ---------------------------------------------------------------------- native

async def native_exec(ctx: ProjectContext, req: dict[str, Any], *,
                      budget_s: float | None = None) -> dict[str, Any]:
    if not isinstance(req, dict):
        raise RemoteError("error invalid options: expected an object")
    _check_compute_server(req)
    yield_after = req.get("yield_after")
    if yield_after is not None and (isinstance(yield_after, bool) or not isinstance(yield_after, (int, float))
                                    or not yield_after >= 0):
        raise RemoteError(f"error invalid yield_after: expected a non-negative number, got {yield_after!r}")
    key = req.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not key or len(key) > 256):
        raise RemoteError("error invalid idempotency_key: expected a non-empty string of at most 256 characters")
    is_async = bool(req.get("async"))
    jobs = job_manager(ctx)

    if key is not None:
        # Keyed execs are always jobs, so the key -> job mapping is durable.
        fingerprint = req.get("idempotency_fingerprint")
        fingerprint = fingerprint if isinstance(fingerprint, str) else None
        job_id = jobs.find_key(key)
        if job_id is not None and fingerprint is not None and \
                jobs.key_fingerprint(job_id) not in (None, fingerprint):
            raise RemoteError(f"Idempotency-Key '{key}' was already used with a different request "
                              f"body (job {job_id}); use a new key for a new request",
                              job_id=job_id, status=422)
        if job_id is None:
            job_id = jobs.start(parse_request(ctx, req, async_mode=is_async), native=True,
                                idempotency_key=key, fingerprint=fingerprint).job_id
        if not is_async:
            limits = [t for t in (budget_s, yield_after) if t is not None]
            await jobs.wait(job_id, min(limits) if limits else None)
        view = jobs.native_view(job_id)
        if view is None:
            raise missing_job(job_id)
        if not is_async and view.get("status") == "running" and _budget_first(budget_s, yield_after):
            raise _budget_error(budget_s, job_id)
        return view

    parsed = parse_request(ctx, req, async_mode=is_async)
    if is_async:
        return jobs.start(parsed, native=True).final_view()
    ran = await _run(ctx, parsed, budget_s=budget_s, yield_after=yield_after, native=True)
    if isinstance(ran, Job):
        if _budget_first(budget_s, yield_after):
            raise _budget_error(budget_s, ran.job_id)
        return ran.final_view()
    return native_result(ran)


def _budget_first(budget_s: float | None, yield_after: float | None) -> bool:
    return budget_s is not None and (yield_after is None or budget_s < yield_after)


# ---------------------------------------------------------------------- system.signal

async def system_signal(ctx: ProjectContext, opts: dict[str, Any]) -> None:
    """Send ``signal`` to ``pid``/``pids``; only this project's processes (the daemon's
    descendants) may be signalled.  The last failure is raised, like CoCalc."""
    if not isinstance(opts, dict):
        raise RemoteError("error invalid options: expected an object")
    sig = opts.get("signal")
    if isinstance(sig, bool) or not isinstance(sig, int):
        raise RemoteError("Error: kill EINVAL")
    targets: list[Any] = []
    if opts.get("pid") is not None:
        targets.append(opts["pid"])
    if opts.get("pids") is not None:
        if not isinstance(opts["pids"], list):
            raise RemoteError("error invalid pids: expected a list of integers")
        targets.extend(opts["pids"])
    failure: str | None = None
    for pid in targets:
        code = _signal_one(pid, sig)
        if code is not None:
            failure = code
    if failure is not None:
        raise RemoteError(f"Error: kill {failure}")
    return None


def _signal_one(pid: Any, sig: int) -> str | None:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid in (0, -1):
        return "EINVAL"
    target = abs(pid)      # a negative pid names a process group led by that process
    if not os.path.exists(f"/proc/{target}"):
        return "ESRCH"
    if not is_descendant(target, os.getpid()):
        return "EPERM"
    try:
        os.kill(pid, sig)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, "EPERM")
    return None


# ---------------------------------------------------------------------- native jobs API
# Thin option-dict wrappers over JobManager for the daemon's ``native.job*`` functions.

def _job_id(opts: dict[str, Any]) -> str:
    job_id = opts.get("job_id") if isinstance(opts, dict) else None
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise missing_job(job_id)
    return job_id


def _offset(opts: dict[str, Any], key: str, default: int) -> int:
    value = opts.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RemoteError(f"error invalid {key}: expected a non-negative integer")
    return value


async def job_record(ctx: ProjectContext, opts: dict[str, Any], *,
                     budget_s: float | None = None) -> dict[str, Any]:
    """``{job_id, wait?: bool, stats?: bool}`` -> the job's native view (rich result once
    finished for native jobs, the 4.11 record otherwise).  ``wait`` blocks until the job
    ends or ``budget_s`` runs out (then the running record comes back)."""
    job_id = _job_id(opts)
    jobs = job_manager(ctx)
    if opts.get("wait"):
        await jobs.wait(job_id, budget_s)
    view = jobs.native_view(job_id)
    if view is None:
        raise missing_job(job_id)
    if not opts.get("stats"):
        view.pop("stats", None)
    return view


async def job_output(ctx: ProjectContext, opts: dict[str, Any]) -> dict[str, Any]:
    """``{job_id, stream, offset, length}`` -> ``{data, offset, end, total, encoding}``.
    ``data`` is UTF-8 text of bytes [offset, end): the range is shortened so it never
    ends inside a character, so ``end`` (not len(data)) is where to continue."""
    job_id = _job_id(opts)
    stream = opts.get("stream", "stdout")
    offset = _offset(opts, "offset", 0)
    jobs = job_manager(ctx)
    raw = await jobs.read_output(job_id, stream, offset, _offset(opts, "length", 1 << 20))
    total = jobs.output_total(job_id, stream)
    cut = len(raw) if offset + len(raw) >= total and jobs.finished(job_id) else utf8_safe_end(raw)
    return {"data": raw[:cut].decode("utf-8", errors="replace"), "offset": offset,
            "end": offset + cut, "total": total, "encoding": "utf-8"}


async def job_list(ctx: ProjectContext, opts: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return job_manager(ctx).list()


async def job_kill(ctx: ProjectContext, opts: dict[str, Any]) -> dict[str, Any]:
    """Kill a running job's process tree; returns ``{job_id, killed: bool}`` (False when
    it had already finished)."""
    job_id = _job_id(opts)
    jobs = job_manager(ctx)
    if jobs.get(job_id, stats=False) is None:
        raise missing_job(job_id)
    return {"job_id": job_id, "killed": jobs.kill(job_id)}


def job_events(ctx: ProjectContext, opts: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """``{job_id, offset_stdout?, offset_stderr?}`` -> JobManager.events()."""
    job_id = opts.get("job_id") if isinstance(opts, dict) else None
    return job_manager(ctx).events(
        job_id if isinstance(job_id, str) else "",
        _offset(opts, "offset_stdout", 0), _offset(opts, "offset_stderr", 0))
