"""Floors measured in the same run as projecthub: direct spawns (with and without an
equivalent project sandbox), a trivial endpoint on the same HTTP stack, Jupyter
through jupyter_client, and Jupyter Kernel Gateway over its websocket."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import httpx

from common import (BENCH, PY, ROOT, RawHTTP, free_port, log, make_tmp_dir, on_cleanup, stop_process,
                    summarize, timed_concurrent, timed_sync)

SPAWNER_SRC = (BENCH / "spawner.py").read_text()


def _spawner_results(raw: str) -> list[dict[str, Any]]:
    data = json.loads(raw)
    out = []
    for r in data["results"]:
        if "samples_s" in r:
            n = max(1, len(r["samples_s"]))
            extra = {}
            if "cpu_self_s" in r:
                extra = {"cpu_ms_per_call_spawner": round(r["cpu_self_s"] * 1000 / n, 4),
                         "cpu_ms_per_call_children": round(r["cpu_children_s"] * 1000 / n, 4)}
            out.append(summarize(r["samples_s"], r["wall_s"], **extra))
        else:
            out.append(r)
    return out


# ------------------------------------------------------------------------------ spawn floors

def direct_spawn(cases: list[dict[str, Any]], timeout: float = 600) -> list[dict[str, Any]]:
    """The cases run by a fresh stdlib asyncio process (no sandbox)."""
    out = subprocess.run([PY, str(BENCH / "spawner.py"), json.dumps(cases)], capture_output=True,
                         text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return _spawner_results(out.stdout)


def _close(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def sandboxed_spawn(cases: list[dict[str, Any]], timeout: float = 600) -> list[dict[str, Any]]:
    """The same spawner, started like a project daemon: projecthub's own Sandbox builds
    the bwrap + cgroup + setpriv uid drop command (root) and the spawner runs in it."""
    sys.path.insert(0, str(ROOT))
    from projecthub.host.sandbox import ProjectLimits, Sandbox, SandboxConfig

    data_dir = make_tmp_dir("phbench-sbx-")
    sandbox = Sandbox(SandboxConfig(data_dir=data_dir, mode="auto"))
    project_id = str(uuid.uuid4())
    prepared = sandbox.prepare(project_id, None, ProjectLimits())
    on_cleanup(lambda: sandbox.stop_project(project_id))
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": prepared.home_inside, "LANG": "C.UTF-8"}
    argv, kwargs = sandbox.daemon_command(prepared, [PY, "-c", SPAWNER_SRC, json.dumps(cases)], env)
    kwargs.pop("start_new_session", None)
    try:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
        finally:
            _close(kwargs.get("pass_fds", ()))   # bwrap's options and data: read once per start
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        res = _spawner_results(out.stdout)
        uid = json.loads(out.stdout)["uid"]
        for r in res:
            r["sandbox"] = sandbox.report.mode
            r["uid"] = uid
        return res
    finally:
        sandbox.stop_project(project_id)


def sandboxed_python_start(n: int) -> dict[str, Any]:
    """Cold-start floor: bwrap + cgroup + setpriv + a Python that exits (``-c pass``) or
    imports the daemon module, started like a project daemon; and plain ``python -c pass``."""
    sys.path.insert(0, str(ROOT))
    from projecthub.host.sandbox import ProjectLimits, Sandbox, SandboxConfig

    data_dir = make_tmp_dir("phbench-sbx-")
    sandbox = Sandbox(SandboxConfig(data_dir=data_dir, mode="auto"))
    project_id = str(uuid.uuid4())
    prepared = sandbox.prepare(project_id, None, ProjectLimits())
    on_cleanup(lambda: sandbox.stop_project(project_id))
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": prepared.home_inside, "LANG": "C.UTF-8"}
    out: dict[str, Any] = {"sandbox": sandbox.report.mode}
    try:
        for name, code in (("python_pass", "pass"), ("python_import_daemon", "import projecthub.project.daemon")):
            samples = []
            for _ in range(n + 1):
                # a fresh command per start: bwrap reads its options and data fds to the end
                argv, kwargs = sandbox.daemon_command(prepared, [PY, "-c", code], env)
                kwargs.pop("start_new_session", None)
                t0 = time.perf_counter()
                try:
                    r = subprocess.run(argv, capture_output=True, timeout=60, **kwargs)
                finally:
                    _close(kwargs.get("pass_fds", ()))
                samples.append(time.perf_counter() - t0)
                if r.returncode:
                    raise RuntimeError(r.stderr.decode()[-2000:])
            out["sandboxed_" + name] = summarize(samples[1:])
        samples = []
        for _ in range(n + 1):
            t0 = time.perf_counter()
            subprocess.run([PY, "-c", "pass"], timeout=60, check=True)
            samples.append(time.perf_counter() - t0)
        out["plain_python_pass"] = summarize(samples[1:])
    finally:
        sandbox.stop_project(project_id)
    return out


# ------------------------------------------------------------------------------ HTTP floor

class FloorHTTP:
    """uvicorn + starlette on the asyncio loop with httptools (like ``projecthub serve``):
    /echo answers a JSON POST, /spawn spawns a command with asyncio and answers."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "FloorHTTP":
        self.proc = subprocess.Popen(
            [PY, "-m", "uvicorn", "--app-dir", str(BENCH), "floor_http:app", "--host", "127.0.0.1",
             "--port", str(self.port), "--loop", "asyncio", "--http", "httptools", "--no-access-log",
             "--log-level", "warning"], cwd=BENCH)
        on_cleanup(lambda: self.proc and stop_process(self.proc))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.post(f"http://127.0.0.1:{self.port}/echo", json={}, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("floor HTTP server did not start")

    def __exit__(self, *exc: Any) -> None:
        if self.proc:
            stop_process(self.proc)

    def measure_httpx(self, path: str, body: Any, n: int, max_s: float) -> dict[str, Any]:
        """c=1 through httpx configured and called the way ``cocalc_api.Project.call`` does
        (basic auth, JSON content type, ``post(json=...)``, ``raise_for_status``, ``json()``):
        what the official client's HTTP stack costs on a server that does nothing more."""
        url = f"http://127.0.0.1:{self.port}{path}"
        with httpx.Client(auth=("sk-floor", ""), headers={"Content-Type": "application/json"},
                          timeout=120.0) as client:
            def call() -> None:
                resp = client.post(url, json=body)
                resp.raise_for_status()
                resp.json()
            for _ in range(5):
                call()
            lat = timed_sync(n, call, max_s)
        return summarize(lat, sum(lat), c=1)

    async def measure(self, path: str, body: Any, n: int, c: int, max_s: float) -> dict[str, Any]:
        clients = [RawHTTP(self.port) for _ in range(c)]
        try:
            for cl in clients:
                await cl.post(path, body)

            async def call(w: int) -> None:
                status, _ = await clients[w].post(path, body)
                assert status == 200

            lat, wall = await timed_concurrent(n, c, call, max_s)
            return summarize(lat, wall, c=c)
        finally:
            for cl in clients:
                await cl.close()


# ------------------------------------------------------------------------------ Jupyter floors

async def _execute(kc: Any, code: str = "1+1", timeout: float = 30) -> None:
    reply = await kc.execute_interactive(code, output_hook=lambda msg: None, timeout=timeout)
    assert reply["content"]["status"] == "ok", reply


async def jupyter_floor(n_seq: int, n_conc: int, c: int, max_s: float, n_paced: int = 0,
                        pause_s: float = 2.5) -> dict[str, Any]:
    """Execute ``1+1`` on warm kernels with stock jupyter_client (AsyncKernelManager +
    execute_interactive, which waits for the reply and the idle status): sequential on one
    kernel, then ``n_paced`` calls each after an untimed ``pause_s`` pause (what an idle
    machine adds to any round trip: the paced stateless row's like-for-like floor), then c
    clients each on its own warm kernel.  Also kernel memory when idle."""
    from jupyter_client.manager import AsyncKernelManager
    import psutil

    kms: list[Any] = []
    kcs: list[Any] = []
    out: dict[str, Any] = {}
    try:
        for _ in range(max(1, c)):
            km = AsyncKernelManager(kernel_name="python3")
            await km.start_kernel(stderr=subprocess.DEVNULL)
            kms.append(km)
        for km in kms:
            kc = km.client()
            kc.start_channels()
            await kc.wait_for_ready(timeout=120)
            kcs.append(kc)
        for _ in range(20):
            await _execute(kcs[0])
        lat, wall = await timed_concurrent(n_seq, 1, lambda w: _execute(kcs[0]), max_s)
        out["seq"] = summarize(lat, wall, c=1)
        out["seq_no_execute_sleep"] = await _no_sleep_floor(n_seq, max_s)
        if n_paced:
            paced = []
            for _ in range(n_paced):
                await asyncio.sleep(pause_s)
                t0 = time.perf_counter()
                await _execute(kcs[0])
                paced.append(time.perf_counter() - t0)
            out["seq_paced"] = summarize(paced, pause_s=pause_s)
        if c > 1:
            for kc in kcs[1:]:
                for _ in range(5):
                    await _execute(kc)
            lat, wall = await timed_concurrent(n_conc, c, lambda w: _execute(kcs[w]), max_s)
            out["conc"] = summarize(lat, wall, c=c, kernels=c)
        try:
            pid = kms[-1].provisioner.process.pid
            full = psutil.Process(pid).memory_full_info()
            out["idle_kernel_rss_mib"] = round(full.rss / 2**20, 2)
            out["idle_kernel_pss_mib"] = round(full.pss / 2**20, 2)
        except Exception as exc:
            out["idle_kernel_mem_error"] = repr(exc)
    finally:
        for kc in kcs:
            kc.stop_channels()
        for km in kms:
            try:
                await km.shutdown_kernel(now=True)
            except Exception:
                pass
    return out


async def _no_sleep_floor(n: int, max_s: float) -> dict[str, Any]:
    """The sequential floor on a kernel started like projecthub's: without ipykernel's
    0.5 ms sleep before each reply (``--IPythonKernel._execute_sleep=0``).  Shown for
    reference only; the targets keep the stock kernel as their floor."""
    from jupyter_client.manager import AsyncKernelManager

    km = AsyncKernelManager(kernel_name="python3")
    await km.start_kernel(stderr=subprocess.DEVNULL, extra_arguments=["--IPythonKernel._execute_sleep=0"])
    kc = km.client()
    try:
        kc.start_channels()
        await kc.wait_for_ready(timeout=120)
        for _ in range(20):
            await _execute(kc)
        lat, wall = await timed_concurrent(n, 1, lambda w: _execute(kc), max_s)
        return summarize(lat, wall, c=1)
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


class WarmKernelFloor:
    """The warm-kernel floor kept at hand while projecthub is measured, so floor calls can
    bracket (or alternate with) projecthub's: this shared 2-core VM drifts by tens of
    percent over minutes, and a floor measured minutes earlier would carry that drift
    into the ratio.  Stock jupyter_client on a kernel it launched, driven from a thread
    with its own event loop; ``measure`` blocks the caller."""

    def __init__(self) -> None:
        import threading
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="floor-kernel", daemon=True)
        self._km: Any = None
        self._kc: Any = None

    def __enter__(self) -> "WarmKernelFloor":
        self._thread.start()
        self._run(self._start())
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._run(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _run(self, coro: Any, timeout: float = 180) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self) -> None:
        from jupyter_client.manager import AsyncKernelManager
        self._km = AsyncKernelManager(kernel_name="python3")
        await self._km.start_kernel(stderr=subprocess.DEVNULL)
        self._kc = self._km.client()
        self._kc.start_channels()
        await self._kc.wait_for_ready(timeout=120)
        for _ in range(50):
            await _execute(self._kc)

    async def _stop(self) -> None:
        if self._kc is not None:
            self._kc.stop_channels()
        if self._km is not None:
            try:
                await self._km.shutdown_kernel(now=True)
            except Exception:
                pass

    async def _timed(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await _execute(self._kc)
            out.append(time.perf_counter() - t0)
        return out

    def measure(self, n: int) -> list[float]:
        """``n`` sequential ``1+1`` round trips (seconds each)."""
        return self._run(self._timed(n))


async def kernel_per_call(n: int, max_s: float) -> dict[str, Any]:
    """The naive stateless execute: start a kernel, wait for it, run 1+1, kill it."""
    from jupyter_client.manager import AsyncKernelManager

    async def once(_: int) -> None:
        km = AsyncKernelManager(kernel_name="python3")
        await km.start_kernel(stderr=subprocess.DEVNULL)
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=120)
            await _execute(kc)
        finally:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)

    lat, wall = await timed_concurrent(n, 1, once, max_s)
    return summarize(lat, wall)


# ------------------------------------------------------------------------------ Kernel Gateway

def _msg(msg_type: str, content: dict[str, Any], session: str) -> dict[str, Any]:
    return {"header": {"msg_id": uuid.uuid4().hex, "username": "bench", "session": session,
                       "msg_type": msg_type, "version": "5.3",
                       "date": datetime.now(timezone.utc).isoformat()},
            "parent_header": {}, "metadata": {}, "content": content, "channel": "shell", "buffers": []}


async def _ws_execute(ws: Any, session: str, code: str = "1+1", timeout: float = 30) -> None:
    """Send execute_request over the kernel websocket and wait for its execute_reply and
    the idle status (what jupyter_client's execute_interactive waits for)."""
    msg = _msg("execute_request", {"code": code, "silent": False, "store_history": True,
                                   "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
               session)
    msg_id = msg["header"]["msg_id"]
    await ws.send(json.dumps(msg))
    got_reply = got_idle = False

    async def recv() -> None:
        nonlocal got_reply, got_idle
        while not (got_reply and got_idle):
            m = json.loads(await ws.recv())
            if m.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            t = m.get("msg_type") or m["header"]["msg_type"]
            if t == "execute_reply":
                got_reply = True
            elif t == "status" and m["content"].get("execution_state") == "idle":
                got_idle = True

    await asyncio.wait_for(recv(), timeout)


class KernelGateway:
    def __init__(self) -> None:
        self.port = free_port()
        self.token = uuid.uuid4().hex
        self.proc: subprocess.Popen | None = None
        self.start_s = 0.0
        self.kernels: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "KernelGateway":
        exe = shutil.which("jupyter", path=os.path.dirname(PY)) or "jupyter"
        tmp = make_tmp_dir("phbench-kg-")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [exe, "kernelgateway", "--KernelGatewayApp.ip=127.0.0.1", f"--KernelGatewayApp.port={self.port}",
             f"--KernelGatewayApp.auth_token={self.token}"],
            stdout=open(tmp / "kg.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp)
        on_cleanup(lambda: self.proc and stop_process(self.proc, group=True))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("kernel gateway exited: " + (tmp / "kg.log").read_text()[-2000:])
            try:
                if httpx.get(self.url + "/api", headers=self.headers, timeout=1).status_code == 200:
                    self.start_s = time.perf_counter() - t0
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("kernel gateway did not start")

    def __exit__(self, *exc: Any) -> None:
        for kid in self.kernels:
            try:
                httpx.delete(f"{self.url}/api/kernels/{kid}", headers=self.headers, timeout=10)
            except httpx.HTTPError:
                pass
        if self.proc:
            stop_process(self.proc, group=True)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    async def measure(self, n_starts: int, n_exec: int, max_s: float) -> dict[str, Any]:
        import websockets

        out: dict[str, Any] = {"server_start_ms": round(self.start_s * 1000, 1)}
        starts: list[float] = []
        session = uuid.uuid4().hex
        async with httpx.AsyncClient(headers=self.headers, timeout=60) as http:
            ws_url = f"ws://127.0.0.1:{self.port}/api/kernels/{{}}/channels"
            end = time.monotonic() + max_s
            for i in range(n_starts):
                t0 = time.perf_counter()
                r = await http.post(self.url + "/api/kernels", json={"name": "python3"})
                r.raise_for_status()
                kid = r.json()["id"]
                self.kernels.append(kid)
                async with websockets.connect(ws_url.format(kid), additional_headers=self.headers,
                                              max_size=None) as ws:
                    await _ws_execute(ws, session, timeout=60)
                    starts.append(time.perf_counter() - t0)
                    last = i == n_starts - 1 or time.monotonic() > end
                    if last:
                        for _ in range(10):
                            await _ws_execute(ws, session)
                        lat, wall = await timed_concurrent(n_exec, 1, lambda w: _ws_execute(ws, session), max_s)
                        out["ws_execute"] = summarize(lat, wall)
                await http.delete(f"{self.url}/api/kernels/{kid}")
                self.kernels.remove(kid)
                if last:
                    break
        out["kernel_start"] = summarize(starts)
        return out
