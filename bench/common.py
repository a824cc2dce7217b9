"""Shared helpers for the benchmarks: statistics, a raw keep-alive HTTP client,
servers started and always cleaned up, and memory of process trees.

Everything binds to 127.0.0.1 only.  Every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = os.path.normpath(os.path.abspath(sys.executable))
PROJECTHUB = [PY, "-m", "projecthub.cli"]
TMP_ROOT = Path(os.environ.get("PROJECTHUB_BENCH_TMP", tempfile.gettempdir()))

ONE_MB_CMD = "head -c 1000000 /dev/zero | tr '\\0' x"


def log(*parts: Any) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ statistics

def pct(sorted_ms: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_ms:
        return float("nan")
    k = max(0, min(len(sorted_ms) - 1, math.ceil(p * len(sorted_ms)) - 1))
    return sorted_ms[k]


def summarize(samples_s: list[float], wall_s: float | None = None, **extra: Any) -> dict[str, Any]:
    """p50/p99/min/max in ms, and calls/s when the wall time of the whole batch is given."""
    ms = sorted(x * 1000.0 for x in samples_s)
    out: dict[str, Any] = {"n": len(ms)}
    if ms:
        out.update(p50_ms=round(statistics.median(ms), 4), p99_ms=round(pct(ms, 0.99), 4),
                   min_ms=round(ms[0], 4), max_ms=round(ms[-1], 4),
                   mean_ms=round(statistics.fmean(ms), 4))
    if wall_s:
        out["wall_s"] = round(wall_s, 4)
        out["per_s"] = round(len(ms) / wall_s, 2)
    out.update(extra)
    out["samples_ms"] = [float(f"{x:.4g}") for x in ms]   # sorted; kept for CDFs and merging
    return out


def merge(parts: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """One summary from several interleaved rounds (their samples and wall times added)."""
    parts = [p for p in parts if isinstance(p, dict) and p.get("samples_ms")]
    samples = [x / 1000.0 for p in parts for x in p["samples_ms"]]
    wall = sum(p.get("wall_s") or 0 for p in parts) or None
    for key in sorted({k for p in parts for k in p if k.startswith("cpu_ms_per_call")}):
        weighted = [(p[key], p["n"]) for p in parts if key in p]
        extra[key] = round(sum(v * n for v, n in weighted) / max(1, sum(n for _, n in weighted)), 4)
    return summarize(samples, wall, rounds=len(parts), **extra)


def ratio(a: dict | None, b: dict | None, key: str = "p50_ms") -> float | None:
    try:
        x, y = a[key], b[key]  # type: ignore[index]
        return round(x / y, 3) if y else None
    except (KeyError, TypeError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_sync(n: int, call: Callable[[], Any], max_s: float) -> list[float]:
    """Up to n sequential calls, stopping early once max_s is spent."""
    out: list[float] = []
    end = time.monotonic() + max_s
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
        if time.monotonic() > end:
            break
    return out


async def timed_concurrent(n: int, c: int, call: Callable[[int], Awaitable[Any]],
                           max_s: float) -> tuple[list[float], float]:
    """n calls from c concurrent workers (worker index passed to call); returns
    per-call latencies and the wall time of the whole batch."""
    lat: list[float] = []
    end = time.monotonic() + max_s
    counter = iter(range(n))

    async def worker(w: int) -> None:
        for _ in counter:
            if time.monotonic() > end:
                return
            t0 = time.perf_counter()
            await call(w)
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker(w) for w in range(c))), max_s + 60)
    return lat, time.perf_counter() - t0


# ------------------------------------------------------------------------------ raw HTTP client

class RawHTTP:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: one connection, one
    request at a time.  Cheaper per request than httpx, so with 64 in flight on 2 cores
    the client takes less CPU from the server being measured."""

    def __init__(self, port: int, auth: str | None = None) -> None:
        self.port = port
        self.auth = auth
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        data = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n")
        if self.auth:
            head += f"Authorization: Bearer {self.auth}\r\n"
        raw = (head + "\r\n").encode() + data
        for attempt in (0, 1):
            if self.writer is None:
                await self._connect()
            try:
                assert self.writer is not None and self.reader is not None
                self.writer.write(raw)
                status_line = await self.reader.readuntil(b"\r\n")
                break
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt:
                    raise
        status = int(status_line.split()[1])
        length, chunked, close = 0, False, False
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "connection" and "close" in value.lower():
                close = True
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            payload = b"".join(parts)
        else:
            payload = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, (json.loads(payload) if payload else None)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except Exception:
                pass
        self.reader = self.writer = None


# ------------------------------------------------------------------------------ process cleanup

_CLEANUPS: list[Callable[[], None]] = []


def on_cleanup(fn: Callable[[], None]) -> Callable[[], None]:
    _CLEANUPS.append(fn)
    return fn


def run_cleanups() -> None:
    while _CLEANUPS:
        fn = _CLEANUPS.pop()
        try:
            fn()
        except Exception as exc:  # cleanup must go on
            log("cleanup error:", repr(exc))


def stop_process(proc: subprocess.Popen, group: bool = False, timeout: float = 15.0) -> None:
    """SIGTERM (the process group when group=True), wait, then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
        proc.wait(timeout)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait(5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def make_tmp_dir(prefix: str) -> Path:
    TMP_ROOT.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=TMP_ROOT))
    os.chmod(d, 0o711)
    on_cleanup(lambda: shutil.rmtree(d, ignore_errors=True))
    return d


# ------------------------------------------------------------------------------ projecthub server

PROJECT_ENV = Path(os.environ.get("PROJECTHUB_PROJECT_ENV") or ROOT / ".cache" / "project-env")


def ensure_project_env() -> None:
    from projecthub.host import environment
    if environment.current_generation(PROJECT_ENV) is None:
        environment.build(PROJECT_ENV, progress=lambda line: print(line, file=sys.stderr, flush=True))


def cli(data_dir: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run([*PROJECTHUB, *args, "--data-dir", str(data_dir)], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"projecthub {' '.join(args)} failed: {out.stderr}{out.stdout}")
    return json.loads(out.stdout)


@dataclass
class Server:
    """``projecthub serve`` on a free loopback port with a temp data dir."""
    sandbox: str = "auto"
    data_dir: Path = field(default_factory=lambda: make_tmp_dir("phbench-"))
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    api_key: str = ""
    account_id: str = ""
    env: dict[str, str] = field(default_factory=dict)          # on top of ours, e.g. PROJECTHUB_JUPYTER_IDLE_S
    extra_args: list[str] = field(default_factory=list)        # more `serve` options
    command: str = "serve"   # or "hub" (projects on `projecthub host` over NATS: nats_exec.py)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "Server":
        ensure_project_env()
        logf = open(self.data_dir / "server.log", "ab")
        # 256 MiB project images: a hub never overcommits its data disk, and the scale
        # scenario runs 200 projects at once (the default 2 GiB would need 400 GiB free).
        # One project environment for every bench server (built once, like the tests'):
        # a fresh data dir would otherwise build its own on first serve (~1 min).
        args = [*PROJECTHUB, self.command, "--port", str(self.port), "--data-dir", str(self.data_dir),
                "--default-limits", '{"disk_bytes": "256M"}', "--project-env", str(PROJECT_ENV)]
        if self.sandbox != "auto":
            args += ["--sandbox", self.sandbox]
        args += self.extra_args
        self.process = subprocess.Popen(args, stdout=logf, stderr=logf, cwd=ROOT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        on_cleanup(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError(f"server did not come up:\n{self.log_tail()}")
        acct = cli(self.data_dir, "account", "create", "--name", "bench", "--admin")
        self.api_key, self.account_id = acct["api_key"], acct["account_id"]
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None
        try:
            cli(self.data_dir, "stop-all")
        except Exception as exc:
            log("stop-all failed:", exc)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return (self.data_dir / "server.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # -- API helpers (httpx, sync) ----------------------------------------------------
    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.api_key}"},
                            timeout=timeout)

    def conat_project(self, http: httpx.Client, project_id: str, name: str, args: list[Any],
                      timeout_ms: int | None = None) -> Any:
        body: dict[str, Any] = {"project_id": project_id, "name": name, "args": args}
        if timeout_ms:
            body["timeout"] = timeout_ms
        r = http.post("/api/conat/project", json=body)
        r.raise_for_status()
        out = r.json()
        if isinstance(out, dict) and "error" in out:
            raise RuntimeError(out["error"])
        return out

    def create_project(self, http: httpx.Client, title: str = "bench", start: bool = False) -> str:
        r = http.post("/api/v3/projects", json={"title": title, "start": start})
        r.raise_for_status()
        return r.json()["project_id"]

    def set_limits(self, http: httpx.Client, project_id: str, limits: dict[str, Any]) -> dict:
        r = http.put(f"/api/v3/projects/{project_id}/limits", json=limits)
        r.raise_for_status()
        return r.json()


# ------------------------------------------------------------------------------ memory

def _mem(proc: psutil.Process) -> tuple[int, int]:
    try:
        full = proc.memory_full_info()
        return full.rss, getattr(full, "pss", full.rss)
    except (psutil.Error, OSError):
        return 0, 0


def _cmd(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except (psutil.Error, OSError):
        return ""


def classify(cmd: str) -> str:
    argv0 = os.path.basename(cmd.split(" ", 1)[0])
    if argv0 == "bwrap":
        return "bwrap"
    if "ipykernel" in cmd:
        return "kernel"
    if "projecthub.project.daemon" in cmd:
        return "daemon"
    if "jupyter/zygote.py" in cmd:
        return "zygote"
    return "other"


def kind_of(proc: psutil.Process) -> str:
    """``classify`` with one more step: a kernel forked by a zygote keeps the zygote's
    command line, so a "zygote" whose parent is a zygote is a (stateless) kernel."""
    kind = classify(_cmd(proc))
    if kind == "zygote":
        try:
            parent = proc.parent()
        except psutil.Error:
            parent = None
        if parent is not None and classify(_cmd(parent)) == "zygote":
            return "kernel"
    return kind


def tree_memory(server_pid: int) -> dict[str, Any]:
    """RSS/PSS (MiB) of the server and of every descendant, by kind (daemon, kernel,
    bwrap, other), with the per-process lists of daemons and kernels."""
    mib = 2**20
    try:
        server = psutil.Process(server_pid)
        kids = server.children(recursive=True)
    except psutil.Error:
        return {}
    rss, pss = _mem(server)
    out: dict[str, Any] = {"server_rss_mib": round(rss / mib, 2), "server_pss_mib": round(pss / mib, 2)}
    kinds: dict[str, list[tuple[int, int]]] = {}
    for p in kids:
        r, s = _mem(p)
        kinds.setdefault(kind_of(p), []).append((r, s))
    for kind, vals in kinds.items():
        out[f"{kind}_count"] = len(vals)
        out[f"{kind}_rss_mib"] = round(sum(v[0] for v in vals) / mib, 2)
        out[f"{kind}_pss_mib"] = round(sum(v[1] for v in vals) / mib, 2)
        out[f"{kind}_rss_each_mib"] = sorted(round(v[0] / mib, 2) for v in vals)
        out[f"{kind}_pss_each_mib"] = sorted(round(v[1] / mib, 2) for v in vals)
    out["total_rss_mib"] = round((rss + sum(v[0] for vs in kinds.values() for v in vs)) / mib, 2)
    out["total_pss_mib"] = round((pss + sum(v[1] for vs in kinds.values() for v in vs)) / mib, 2)
    return out


def project_memory(sandbox_pid: int) -> dict[str, Any]:
    """RSS/PSS (MiB) of one project: its sandbox's outermost process (``project.pid`` of
    the project's status) and everything under it, by kind (bwrap, daemon, zygote,
    kernel, other), with the process count."""
    mib = 2**20
    try:
        top = psutil.Process(sandbox_pid)
        procs = [top, *top.children(recursive=True)]
    except psutil.Error:
        return {}
    out: dict[str, Any] = {"processes": 0, "rss_mib": 0.0, "pss_mib": 0.0}
    for p in procs:
        r, s = _mem(p)
        if not r:
            continue   # gone meanwhile
        kind = kind_of(p)
        out["processes"] += 1
        out["rss_mib"] += r / mib
        out["pss_mib"] += s / mib
        out[f"{kind}_count"] = out.get(f"{kind}_count", 0) + 1
        out[f"{kind}_rss_mib"] = out.get(f"{kind}_rss_mib", 0.0) + r / mib
        out[f"{kind}_pss_mib"] = out.get(f"{kind}_pss_mib", 0.0) + s / mib
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}


def versions() -> dict[str, str]:
    from importlib import metadata
    out = {"python": sys.version.split()[0]}
    for pkg in ("projecthub", "cocalc-api", "httpx", "uvicorn", "starlette", "httptools", "jupyter_client",
                "ipykernel", "pyzmq", "tornado", "jupyter_kernel_gateway", "jupyter_server", "websockets",
                "psutil", "matplotlib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "-"
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "projecthub"], capture_output=True,
                               text=True, cwd=ROOT, timeout=10).stdout.strip()
        out["projecthub_git"] = head + (f" + {len(dirty.splitlines())} uncommitted file(s) in projecthub/"
                                        if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        out["bwrap"] = subprocess.run(["bwrap", "--version"], capture_output=True, text=True,
                                      timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out["bwrap"] = "-"
    return out


def kdamond_cpu_s() -> float | None:
    """CPU seconds used so far by DAMON's kernel threads (``kdamond.N``), or None when
    there are none.  This VM's kernel runs DAMON with a pageout scheme on physical memory:
    it samples page access bits every few ms and took up to a third of a core at moments
    (top, 2026-11-22), so a run records what it cost while the run measured."""
    total, found = 0.0, False
    for proc in psutil.process_iter(["name", "cpu_times"]):
        if (proc.info["name"] or "").startswith("kdamond") and proc.info["cpu_times"] is not None:
            total += proc.info["cpu_times"].user + proc.info["cpu_times"].system
            found = True
    return round(total, 2) if found else None


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": os.uname().release,
            "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
