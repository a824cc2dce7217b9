"""Durable async exec jobs.

Each job lives in ``<state_dir>/jobs/<job_id>/``:

* ``job.json``  the record (spec 4.11 fields), the native result once finished, and the
  metadata needed to rebuild it (options, idempotency key, group name).  Rewritten
  atomically (tmp + rename) at start, at each stats sample and at the end.  While the job
  runs it carries no output: output lives in the two files below and is rebuilt from them.
* ``stdout`` / ``stderr``  the full raw output, append-only (bounded by
  ``ctx.settings["job_output_spill_limit"]``, default 1 GiB per stream).

Only running jobs are held in memory; finished ones are an index entry plus files, so
10 000 retained jobs cost a few MB, not 10 000 x 1 MiB of output.

Waiting is event driven: every change (output, stats sample, end) "pulses" the job, which
wakes ``events()`` iterators and ``wait()`` callers; nothing polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from ..errors import RemoteError
from .context import ProjectContext
from .execution.options import ExecRequest
from .execution.results import async_final_fields, native_result
from .execution.runner import Execution

JOB_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
STATS_KEEP = 100
EVENT_CHUNK = 1 << 16
# One jobOutput page at most: callers page on with "end".  Bounded so one call costs the
# daemon and the hub a few MiB (a decoded str can be 4x its bytes), whatever was asked.
OUTPUT_PAGE_MAX = 4 << 20
RESTART_NOTE = ("\n[projecthub] the project daemon stopped while this job was running; "
                "its processes were stopped and its exit status is unknown\n")
# The jobs dir is the project's own writable state: code in the project can plant anything
# there (a FIFO, a symlink, a huge or malformed job.json, a million dirs).  The daemon reads
# it at start, before it signals ready, so every read is bounded and nothing in it may raise.
LOAD_MAX = 1000              # newest job dirs read at start (older ones stay on disk, unknown)
SCAN_MAX = 100_000           # directory entries looked at, at most, to find them
JOB_FILE_MAX = 64 << 20      # a job.json bigger than this is not read
LOAD_BYTES_MAX = 256 << 20   # nor more than this in all at start (a start must stay quick)
BAD_SUFFIX = ".bad"          # job.json that does not validate is renamed job.json.bad
_GROUP_RE = re.compile(r"^(x[0-9a-f]{16}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")
_STATUSES = frozenset({"running", "completed", "error", "killed"})
# Finished jobs whose final record could not be written (the project's disk is full) stay in
# memory, answered from there and written again at each look, up to this many; beyond it the
# oldest goes, and its job.json (last written while it ran) is read as "record lost" below.
UNSAVED_MAX = 64
UNSAVED_NOTE = ("\n[projecthub] this job finished, but its final record could not be saved "
                "(the project's disk is full?); its exit status is unknown\n")
_MAX_MS = 2**53              # a JSON-safe integer: start times are epoch milliseconds


def missing_job(job_id: object) -> RemoteError:
    return RemoteError(f"Error: Async operation '{job_id}' does not exist.")


def utf8_safe_end(data: bytes) -> int:
    """Length of the longest prefix of ``data`` that does not end inside a character."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        b = data[n - back]
        if b & 0xC0 != 0x80:             # a lead byte (or ASCII): is its sequence complete?
            need = 1 if b < 0x80 else 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4 if b >> 3 == 0b11110 else 1
            return n if back >= need else n - back
    return n


def _atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    try:   # whatever the project left there (a FIFO would block the open below for good)
        os.unlink(tmp)
    except OSError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"))
    os.replace(tmp, path)


def _open_regular(path: Path) -> int:
    """A read descriptor for ``path`` if it is a regular file: never follows a final symlink
    and never blocks (a FIFO or device the project planted raises OSError instead)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path}: not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


class _TooLarge(OSError):
    pass


def _read_bounded(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file; OSError when it is not one, _TooLarge when
    it is larger."""
    fd = _open_regular(path)
    try:
        if os.fstat(fd).st_size > limit:
            raise _TooLarge(f"{path}: larger than {limit} bytes")
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
        raise _TooLarge(f"{path}: larger than {limit} bytes")
    finally:
        os.close(fd)


def _ended_in_error(path: Path, data: dict[str, Any], note: str) -> dict[str, Any]:
    """The record of a job whose end was never recorded (its daemon died, or its final record
    could not be saved): an error, with the head of its output files and ``note``."""
    limit = data["meta"].get("max_output") or (1 << 20)
    return {**data["record"], "status": "error", "exit_code": 1,
            "stdout": _read_head(path / "stdout", limit),
            "stderr": _read_head(path / "stderr", limit) + note}


def _read_head(path: Path, chars: int) -> str:
    """First ``chars`` characters of an output file (reads at most 4 bytes per char)."""
    try:
        fd = _open_regular(path)
    except OSError:
        return ""
    try:
        data = os.read(fd, min(max(chars, 0) * 4, OUTPUT_PAGE_MAX))   # max_output may be huge
    except OSError:
        return ""
    finally:
        os.close(fd)
    return data.decode("utf-8", errors="replace")[:chars]


def _is_int(value: Any, lo: int = 0, hi: int = _MAX_MS) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _is_time(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and 0 <= value < _MAX_MS)


def valid_job(job_id: str, data: Any) -> bool:
    """True if ``data`` (a parsed job.json) has every field the manager relies on, with the
    right type.  The file is project-writable, so anything else is possible."""
    if not isinstance(data, dict):
        return False
    meta, record, result = data.get("meta"), data.get("record"), data.get("result")
    if not isinstance(meta, dict) or not isinstance(record, dict):
        return False
    if result is not None and not isinstance(result, dict):
        return False
    key = meta.get("idempotency_key")
    max_output = meta.get("max_output")
    finished_at = meta.get("finished_at")
    return (meta.get("job_id", job_id) == job_id and _is_int(meta.get("start"))
            and isinstance(meta.get("group", job_id), str) and bool(_GROUP_RE.match(meta.get("group", job_id)))
            and isinstance(meta.get("native", False), bool)
            and (key is None or (isinstance(key, str) and len(key) <= 4096))
            and (max_output is None or _is_int(max_output, 0, 2**62))
            and (finished_at is None or _is_time(finished_at))
            and record.get("job_id") == job_id and _is_int(record.get("start"))
            and record.get("status") in _STATUSES
            and all(isinstance(record.get(k, ""), str) for k in ("stdout", "stderr"))
            and isinstance(record.get("stats", []), list))


def view(record: dict[str, Any], result: dict[str, Any] | None) -> dict[str, Any]:
    if result is None:
        return record
    return {**result, "type": "async", "job_id": record["job_id"], "status": record["status"],
            "start": record["start"], "pid": record.get("pid"),
            "elapsed_s": record.get("elapsed_s"), "stats": record.get("stats", [])}


@dataclass
class _Entry:
    """What the manager remembers about every retained job."""
    start_ms: int
    finished_at: float | None
    last_used: float
    key: str | None
    status: str = "running"
    native: bool = False


class Job:
    def __init__(self, job_id: str, path: Path, meta: dict[str, Any],
                 execution: Execution, req: ExecRequest) -> None:
        self.job_id = job_id
        self.path = path
        self.meta = meta
        self.execution = execution
        self.req = req
        self.record: dict[str, Any] = {
            "type": "async", "stdout": "", "stderr": "", "exit_code": 0,
            "start": meta["start"], "job_id": job_id, "status": "running", "stats": [],
        }
        if execution.pid is not None:
            self.record["pid"] = execution.pid
        self.result: dict[str, Any] | None = None
        self.finished = asyncio.Event()
        self._pulse = asyncio.Event()
        self._fds: list[int] = []
        self._last_sample: tuple[float, float] | None = None
        self.samples = 0          # stats samples taken so far (the list keeps the newest 100)

    def pulse(self) -> None:
        """Wake everyone waiting for a change of this job."""
        self._pulse.set()
        self._pulse = asyncio.Event()

    def changed(self) -> asyncio.Event:
        return self._pulse

    def live_record(self) -> dict[str, Any]:
        rec = dict(self.record)
        if not self.finished.is_set():
            rec["stdout"] = self.execution.stdout.text()[: self.req.max_output]
            rec["stderr"] = self.execution.stderr.text()[: self.req.max_output]
        rec["stats"] = list(self.record["stats"])
        return rec

    def final_view(self) -> dict[str, Any]:
        """What a caller gets for a job: native jobs show their rich result once done."""
        return view(self.live_record(), self.result if self.meta["native"] else None)

    def output_size(self, stream: str) -> int:
        cap = self.execution.stdout if stream == "stdout" else self.execution.stderr
        return cap.spilled_bytes

    def to_disk(self) -> dict[str, Any]:
        rec = dict(self.record)
        if not self.finished.is_set():
            rec.pop("stdout", None)   # rebuilt from the output files on load
            rec.pop("stderr", None)
        return {"meta": self.meta, "record": rec, "result": self.result}


class JobManager:
    def __init__(self, ctx: ProjectContext, max_jobs: int = 10_000, ttl_s: float = 7 * 86400) -> None:
        self.ctx = ctx
        self.root = Path(ctx.state_dir) / "jobs"
        self.max_jobs = max_jobs
        self.ttl_s = ttl_s
        self._running: dict[str, Job] = {}
        self._unsaved: dict[str, Job] = {}   # finished, final record not on disk yet
        self._index: dict[str, _Entry] = {}
        self._keys: dict[str, str] = {}
        self._last_age_prune = 0.0

    # ------------------------------------------------------------------ start / adopt
    def find_key(self, key: str) -> str | None:
        job_id = self._keys.get(key)
        return job_id if job_id in self._index else None

    def key_fingerprint(self, job_id: str) -> str | None:
        """The request fingerprint stored with a keyed job (None: none was given)."""
        job = self._in_memory(job_id)
        data = job.to_disk() if job is not None else self._disk(job_id)
        value = data["meta"].get("fingerprint") if data is not None else None
        return value if isinstance(value, str) else None

    def start(self, req: ExecRequest, *, native: bool, idempotency_key: str | None = None,
              fingerprint: str | None = None) -> Job:
        """Spawn ``req`` as a new job (synchronously: the record exists on return).
        ``fingerprint`` (with a key) identifies the request, so a reuse of the key for a
        different request can be refused (``native_exec``)."""
        job_id = str(uuid.uuid4())
        execution = Execution(self.ctx, req, name=job_id)
        return self._register(job_id, execution, req, native, idempotency_key, fresh=True,
                              fingerprint=fingerprint)

    def adopt(self, execution: Execution, req: ExecRequest, *, native: bool,
              idempotency_key: str | None = None) -> Job:
        """Turn an already running execution into a job (budget ran out, yield_after)."""
        return self._register(str(uuid.uuid4()), execution, req, native, idempotency_key, fresh=False)

    def _register(self, job_id: str, execution: Execution, req: ExecRequest, native: bool,
                  key: str | None, *, fresh: bool, fingerprint: str | None = None) -> Job:
        self._prune()
        path = self.root / job_id
        path.mkdir(parents=True, mode=0o700)
        # An adopted execution started before the job existed: date the job from its spawn.
        start_ms = int((time.time() - (time.monotonic() - execution.started_at)) * 1000)
        meta = {
            "job_id": job_id, "group": execution.name, "native": native, "start": start_ms,
            "idempotency_key": key, "max_output": req.max_output, "finished_at": None,
        }
        if key is not None and fingerprint is not None:
            meta["fingerprint"] = fingerprint
        fds = [os.open(path / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
               for name in ("stdout", "stderr")]
        execution.stdout.start_spill(fds[0])
        execution.stderr.start_spill(fds[1])
        if fresh:
            execution.start()
        job = Job(job_id, path, meta, execution, req)
        job._fds = fds
        execution.on_change = job.pulse
        self._running[job_id] = job
        self._index[job_id] = _Entry(start_ms, None, time.time(), key, native=native)
        if key is not None:
            self._keys[key] = job_id
        execution.done.add_done_callback(lambda _f: self._on_done(job))
        self._save(job)   # a full disk must not orphan the job: it runs and is answered from memory
        asyncio.get_running_loop().call_later(1.0, self._sample, job)
        return job

    # ------------------------------------------------------------------ lifecycle
    def _sample(self, job: Job) -> None:
        if job.finished.is_set() or job.execution.group is None or job.execution.finished:
            return
        now = time.monotonic()
        usage = job.execution.group.usage()
        cpu = usage.cpu_user_s + usage.cpu_sys_s
        prev_t, prev_cpu = job._last_sample or (job.execution.started_at, 0.0)
        pct = 100.0 * (cpu - prev_cpu) / max(now - prev_t, 1e-6)
        job._last_sample = (now, cpu)
        stats = job.record["stats"]
        stats.append({"timestamp": int(time.time() * 1000), "mem_rss": round(usage.rss_bytes / 2**20, 3),
                      "cpu_pct": round(pct, 1), "cpu_secs": round(cpu, 3)})
        del stats[:-STATS_KEEP]
        job.samples += 1
        self._save(job)
        job.pulse()
        elapsed = now - job.execution.started_at
        cap = float(self.ctx.settings.get("job_stats_interval_max_s", 60))
        interval = min(cap, max(1.0, math.floor(elapsed / 6)))
        asyncio.get_running_loop().call_later(interval, self._sample, job)

    def _on_done(self, job: Job) -> None:
        outcome = job.execution.done.result()
        for fd in job._fds:
            os.close(fd)
        job._fds = []
        job.record.update(async_final_fields(job.req, outcome, native=job.meta["native"]))
        job.record["elapsed_s"] = round(outcome.wall_s, 3)
        job.result = native_result(outcome)
        job.meta["finished_at"] = time.time()
        entry = self._index.get(job.job_id)
        if entry is not None:
            entry.finished_at = job.meta["finished_at"]
            entry.status = job.record["status"]
        job.finished.set()
        if not self._save(job) and job.job_id in self._index:
            # Still answered from memory (and saved at a later look, once there is room):
            # the job.json on disk says "running" and would say so for good.
            self._unsaved[job.job_id] = job
            while len(self._unsaved) > UNSAVED_MAX:
                del self._unsaved[next(iter(self._unsaved))]
        self._running.pop(job.job_id, None)
        job.pulse()

    @staticmethod
    def _save(job: Job) -> bool:
        """Write the job's record; False when it could not be (disk full, dir pruned)."""
        try:
            _atomic_write_json(job.path / "job.json", job.to_disk())
            return True
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(job.path / "job.tmp")   # a partial temp file holds blocks
            return False

    def _in_memory(self, job_id: object) -> Job | None:
        """A running job, or a finished one whose record is not on disk yet (tried again now)."""
        if not isinstance(job_id, str):
            return None
        job = self._running.get(job_id)
        if job is None and (job := self._unsaved.get(job_id)) is not None and self._save(job):
            del self._unsaved[job_id]
        return job

    def load(self) -> None:
        """Read the retained jobs (the newest ``LOAD_MAX``).  Jobs that were running in a
        previous daemon process are finished as "error" with a note.

        We do not re-adopt their processes even if some survived: their stdout/stderr
        pipes led to the dead daemon (so their output is lost or they died of SIGPIPE),
        and a process that is not our child cannot be waited for, so its exit status is
        unknowable.  Survivors found by their marker are killed instead, so nothing runs
        unaccounted.

        Never raises: the jobs dir is project-writable and this runs before the daemon is
        ready, so one bad file must not keep the project from starting.  A job.json that
        does not validate is renamed ``job.json.bad`` and its job is not known."""
        try:
            paths = self._newest_job_dirs(min(self.max_jobs, LOAD_MAX))
        except OSError:
            return
        orphaned: list[tuple[str, Path, dict[str, Any]]] = []
        budget = LOAD_BYTES_MAX
        for path in paths:
            try:
                data, size = self._load_one(path, min(JOB_FILE_MAX, budget))
            except Exception:   # a bug here must not brick the project either
                data, size = None, 0
            budget -= size
            if data is None:
                continue
            meta, record = data["meta"], data["record"]
            if record["status"] == "running":
                orphaned.append((path.name, path, data))
            key = meta.get("idempotency_key")
            self._index[path.name] = _Entry(meta["start"], meta.get("finished_at") or time.time(),
                                            time.time(), key, "error" if record["status"] == "running"
                                            else record["status"], meta.get("native", False))
            if key is not None:
                self._keys[key] = path.name
        if orphaned:
            try:
                self._kill_survivors([data["meta"].get("group", job_id) for job_id, _, data in orphaned])
            except Exception:
                pass
        for job_id, path, data in orphaned:
            meta = data["meta"]
            now = time.time()
            data["record"] = {**_ended_in_error(path, data, RESTART_NOTE),
                              "elapsed_s": round(max(0.0, now - meta["start"] / 1000), 3)}
            meta["finished_at"] = now
            data["result"] = None
            try:
                _atomic_write_json(path / "job.json", data)
            except (OSError, ValueError):
                pass   # the index (and the answer) say "error" anyway
        try:
            self._prune(force=True)
        except Exception:
            pass

    def _newest_job_dirs(self, limit: int) -> list[Path]:
        """Up to ``limit`` job dirs (real directories named like a job id), newest first,
        looking at no more than ``SCAN_MAX`` entries of the jobs dir."""
        found: list[tuple[float, str]] = []
        with os.scandir(self.root) as it:
            for n, entry in enumerate(it):
                if n >= SCAN_MAX:
                    break
                if not JOB_ID_RE.match(entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    found.append((st.st_mtime, entry.name))
        found.sort(reverse=True)
        return [self.root / name for _, name in found[:limit]]

    def _load_one(self, path: Path, limit: int) -> tuple[dict[str, Any] | None, int]:
        """(the validated job.json of ``path`` or None, bytes read).  None: the dir is
        removed if it never got a job.json; a job.json larger than ``limit`` is left alone
        (unknown, maybe legitimate); anything else that does not validate is quarantined
        as job.json.bad."""
        file = path / "job.json"
        if os.path.lexists(str(file) + BAD_SUFFIX):
            return None, 0   # quarantined at an earlier start: leave it for a human
        try:
            raw = _read_bounded(file, limit)
        except FileNotFoundError:
            shutil.rmtree(path, ignore_errors=True)   # died while being created
            return None, 0
        except _TooLarge:
            return None, 0
        except OSError:
            raw = None
        data: Any = None
        if raw is not None:
            try:
                data = json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError):
                data = None
        size = 0 if raw is None else len(raw)
        if raw is not None and valid_job(path.name, data):
            return data, size
        try:
            os.replace(file, str(file) + BAD_SUFFIX)
        except OSError:
            pass
        return None, size

    def _kill_survivors(self, groups: list[str]) -> None:
        tracker = self.ctx.tracker
        find = getattr(tracker, "find_marked", None)
        if find is None:
            return
        for pids in find(groups).values():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    async def shutdown(self) -> None:
        """Daemon stop: kill running jobs and write their final records."""
        jobs = list(self._running.values())
        for job in jobs:
            job.execution.kill("cancelled")
        for job in jobs:
            await job.finished.wait()

    def kill(self, job_id: str) -> bool:
        """Kill a running job's whole process tree (status becomes "killed").
        False when the job is unknown or already finished."""
        job = self._running.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            return False
        job.execution.kill("killed")
        return True

    def activity(self) -> tuple[int, float | None]:
        """Running jobs, and when the last retained one finished (epoch seconds): the hub's
        idle stop counts running jobs as activity, up to their own timeouts."""
        finished = (e.finished_at for e in self._index.values() if e.finished_at is not None)
        return len(self._running), max(finished, default=None)

    def list(self) -> list[dict[str, Any]]:
        """Every retained job, newest first (index data only: no disk reads)."""
        return [{"job_id": job_id, "status": e.status, "start": e.start_ms, "native": e.native,
                 **({"pid": self._running[job_id].execution.pid} if job_id in self._running else {})}
                for job_id, e in sorted(self._index.items(), key=lambda kv: -kv[1].start_ms)]

    # ------------------------------------------------------------------ retention
    def _prune(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._last_age_prune > 60:
            self._last_age_prune = now
            for job_id, e in list(self._index.items()):
                if e.finished_at is not None and now - max(e.finished_at, e.last_used) > self.ttl_s:
                    self._delete(job_id)
        excess = len(self._index) - self.max_jobs + 1
        if excess > 0:
            # Evict a batch (1 % of the limit) so a full store does not sort on every start.
            excess = max(excess, self.max_jobs // 100)
            done = sorted((e.start_ms, j) for j, e in self._index.items() if e.finished_at is not None)
            for _, job_id in done[:excess]:
                self._delete(job_id)

    def _delete(self, job_id: str) -> None:
        self._unsaved.pop(job_id, None)
        entry = self._index.pop(job_id, None)
        if entry is not None and entry.key is not None and self._keys.get(entry.key) == job_id:
            del self._keys[entry.key]
        shutil.rmtree(self.root / job_id, ignore_errors=True)

    # ------------------------------------------------------------------ queries
    def job(self, job_id: str) -> Job | None:
        return self._running.get(job_id)

    def _disk(self, job_id: str) -> dict[str, Any] | None:
        if not isinstance(job_id, str) or job_id not in self._index:
            return None
        try:   # read again after load: the project may have replaced it since
            data = json.loads(_read_bounded(self.root / job_id / "job.json", JOB_FILE_MAX).decode("utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        if not valid_job(job_id, data):
            return None
        if data["record"]["status"] == "running" and job_id not in self._running:
            # Finished, but its final record was never written and is no longer in memory.
            data["record"] = _ended_in_error(self.root / job_id, data, UNSAVED_NOTE)
        return data

    def _touch(self, job_id: str) -> None:
        entry = self._index.get(job_id)
        if entry is not None:
            entry.last_used = time.time()

    def get(self, job_id: str, *, stats: bool = True) -> dict[str, Any] | None:
        """The spec 4.11 record (``stats`` dropped unless asked), or None if unknown."""
        job = self._in_memory(job_id)
        if job is not None:
            rec = job.live_record()
        else:
            data = self._disk(job_id)
            if data is None:
                return None
            rec = data["record"]
        self._touch(job_id)
        if not stats:
            rec.pop("stats", None)
        return rec

    def native_view(self, job_id: str) -> dict[str, Any] | None:
        """Finished: the native result + job_id/status.  Running: the record so far."""
        job = self._in_memory(job_id)
        if job is not None:
            return job.final_view() if job.finished.is_set() else job.live_record()
        data = self._disk(job_id)
        if data is None:
            return None
        self._touch(job_id)
        return view(data["record"], data.get("result") if data["meta"].get("native") else None)

    async def wait(self, job_id: str, budget_s: float | None = None, *, stats: bool = True) -> dict[str, Any] | None:
        """Block until the job is finished or ``budget_s`` ran out (then: the running record)."""
        job = self._running.get(job_id) if isinstance(job_id, str) else None
        if job is not None:
            try:
                await asyncio.wait_for(job.finished.wait(), budget_s)
            except asyncio.TimeoutError:
                pass
        return self.get(job_id, stats=stats)

    def finished(self, job_id: str) -> bool:
        return job_id in self._index and job_id not in self._running

    def output_total(self, job_id: str, stream: str) -> int:
        """Bytes of ``stream`` stored so far."""
        job = self._running.get(job_id)
        if job is not None:
            return job.output_size(stream)
        try:
            return (self.root / job_id / stream).stat().st_size
        except OSError:
            return 0

    async def read_output(self, job_id: str, stream: str, offset: int, length: int) -> bytes:
        if stream not in ("stdout", "stderr"):
            raise RemoteError(f"error invalid stream {stream!r}: expected 'stdout' or 'stderr'")
        if job_id not in self._index or not JOB_ID_RE.match(job_id):
            raise missing_job(job_id)
        if offset < 0 or length < 0:
            raise RemoteError("error invalid range: offset and length must not be negative")
        self._touch(job_id)
        try:   # never a FIFO or symlink the project planted (it would block the daemon)
            fd = _open_regular(self.root / job_id / stream)
        except OSError:
            return b""
        try:
            return os.pread(fd, min(length, OUTPUT_PAGE_MAX), offset)
        finally:
            os.close(fd)

    async def events(self, job_id: str, offset_stdout: int = 0,
                     offset_stderr: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Output chunks from the given byte offsets, stats samples, then one ``done``."""
        if not isinstance(job_id, str) or job_id not in self._index:
            yield {"event": "error", "error": missing_job(job_id).message}
            return
        offsets = {"stdout": max(0, offset_stdout), "stderr": max(0, offset_stderr)}
        job = self._in_memory(job_id)
        stats_seen = job.samples if job is not None else 0
        files = {}
        for s in offsets:   # regular files only: a planted FIFO would block the daemon
            try:
                files[s] = open(_open_regular(self.root / job_id / s), "rb")
            except OSError:
                pass
        try:
            while True:
                woke = job.changed() if job is not None else None
                finished = job is None or job.finished.is_set()
                progressed = False
                for stream, f in files.items():
                    size = job.output_size(stream) if job is not None else os.fstat(f.fileno()).st_size
                    while offsets[stream] < size:
                        data = os.pread(f.fileno(), min(EVENT_CHUNK, size - offsets[stream]), offsets[stream])
                        if not data:
                            break
                        cut = len(data) if (finished and offsets[stream] + len(data) >= size) else utf8_safe_end(data)
                        if cut == 0:
                            break   # an incomplete character: wait for its remaining bytes
                        yield {"event": stream, "offset": offsets[stream], "end": offsets[stream] + cut,
                               "data": data[:cut].decode("utf-8", errors="replace")}
                        offsets[stream] += cut
                        progressed = True
                if job is not None:
                    fresh = min(job.samples - stats_seen, len(job.record["stats"]))
                    for sample in job.record["stats"][len(job.record["stats"]) - fresh:]:
                        yield {"event": "stats", **sample}
                    stats_seen = job.samples
                if finished and not progressed:
                    if job is not None:
                        record = job.final_view()
                    else:
                        record = self.native_view(job_id)
                    yield {"event": "done", "record": record}
                    return
                if not progressed and woke is not None:
                    await woke.wait()
        finally:
            for f in files.values():
                f.close()
