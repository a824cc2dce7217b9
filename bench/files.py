"""Files in and out of a project (issue 18 item 1): upload and download of one file through
the v3 files API (httpx, streamed both ways) against a local ``cp`` of the same file on the
same data disk, in rounds that take turns, so the machine's drift hits all three alike.

The target: upload and download of 100 MB each reach >= 50 % of ``cp``'s MB/s (httpx, a
Python client like ours).  ``curl`` does the same two transfers in the same rounds when it is
installed: the server's side without a Python client's own cost on this 2-core machine;
``projecthub.client``'s ``files.upload``/``files.download`` (what our users call).  And
the same httpx transfers against the bare uvicorn + Starlette app of ``floor_http.py`` (the
file on the data disk): what the HTTP stack and the client cost before projecthub does anything.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import time
from typing import Any, Callable

import httpx

import floors
from common import Server, log
from projecthub.client import Client
from scenarios import Ctx, attempt

MB = 10**6


def scenario_files(ctx: Ctx) -> dict[str, Any]:
    size_mb = ctx.q(20, 100)
    rounds = ctx.q(2, 5)
    res: dict[str, Any] = {"params": {"size_mb": size_mb, "rounds": rounds}}

    def run() -> dict[str, Any]:
        # the second --default-limits wins: room for the file and its replacement during an upload
        server = Server(extra_args=["--default-limits", '{"disk_bytes": "1G"}']).start()
        out: dict[str, Any] = {}
        try:
            headers = {"Authorization": f"Bearer {server.api_key}"}
            with contextlib.ExitStack() as stack, \
                    httpx.Client(base_url=server.url, headers=headers, timeout=600) as http:
                r = http.post("/api/v3/projects", json={"title": "files bench"})
                r.raise_for_status()
                pid = r.json()["project_id"]
                src = server.data_dir / "bench-src.bin"
                with open(src, "wb") as f:
                    for _ in range(size_mb):
                        f.write(os.urandom(MB))
                url = f"/api/v3/projects/{pid}/files/bench.bin"

                def cp() -> None:
                    subprocess.run(["cp", str(src), str(server.data_dir / "bench-cp.bin")], check=True)

                def upload() -> None:
                    with open(src, "rb") as f:
                        r = http.put(url, content=f)
                    if r.status_code not in (200, 201) or r.json()["size"] != size_mb * MB:
                        raise RuntimeError(f"upload failed: {r.status_code} {r.text[:200]}")

                def download() -> None:
                    got = 0
                    with http.stream("GET", url) as r, open(server.data_dir / "bench-down.bin", "wb") as f:
                        for chunk in r.iter_bytes(1 << 20):
                            f.write(chunk)
                            got += len(chunk)
                    if got != size_mb * MB:
                        raise RuntimeError(f"download returned {got} bytes")

                def curl(*args: str, out: str = "/dev/null") -> str:
                    done = subprocess.run(["curl", "-sS", "--fail-with-body", "-o", out, "-w", "%{size_upload} %{size_download}",
                                           "-H", f"Authorization: Bearer {server.api_key}", *args],
                                          capture_output=True, text=True, timeout=600)
                    if done.returncode != 0:
                        raise RuntimeError(f"curl failed: {done.stderr[-300:]} {done.stdout[-300:]}")
                    return done.stdout

                def upload_curl() -> None:
                    sent = curl("-T", str(src), server.url + url).split()[0]
                    if int(float(sent)) != size_mb * MB:
                        raise RuntimeError(f"curl uploaded {sent} bytes")

                def download_curl() -> None:
                    got = curl(server.url + url, out=str(server.data_dir / "bench-down.bin")).split()[1]
                    if int(float(got)) != size_mb * MB:
                        raise RuntimeError(f"curl downloaded {got} bytes")

                timings: dict[str, list[float]] = {"cp": [], "upload": [], "download": []}
                steps: list[tuple[str, Callable[[], None]]] = [("cp", cp), ("upload", upload), ("download", download)]
                floor = floors.FloorHTTP().__enter__()
                floor_url = f"http://127.0.0.1:{floor.port}/file"
                floor_path = str(server.data_dir / "bench-floor.bin")
                floor_http = stack.enter_context(httpx.Client(timeout=600))   # keep-alive, like ``http``

                def floor_upload() -> None:
                    with open(src, "rb") as f:
                        r = floor_http.put(floor_url, params={"path": floor_path}, content=f)
                    if r.status_code != 200 or r.json()["size"] != size_mb * MB:
                        raise RuntimeError(f"floor upload failed: {r.status_code} {r.text[:200]}")

                def floor_download() -> None:
                    got = 0
                    with floor_http.stream("GET", floor_url, params={"path": floor_path}) as r, \
                            open(server.data_dir / "bench-down.bin", "wb") as f:
                        for chunk in r.iter_bytes(1 << 20):
                            f.write(chunk)
                            got += len(chunk)
                    if got != size_mb * MB:
                        raise RuntimeError(f"floor download returned {got} bytes")

                client = stack.enter_context(Client(server.url, server.api_key))

                def client_upload() -> None:
                    if client.files.upload(pid, src, "bench.bin").size != size_mb * MB:
                        raise RuntimeError("Client.files.upload: wrong size")

                def client_download() -> None:
                    if client.files.download(pid, "bench.bin", server.data_dir / "bench-down.bin").size != size_mb * MB:
                        raise RuntimeError("Client.files.download: wrong size")

                timings.update(client_upload=[], client_download=[], floor_upload=[], floor_download=[])
                steps += [("client_upload", client_upload), ("client_download", client_download)]
                steps += [("floor_upload", floor_upload), ("floor_download", floor_download)]
                if shutil.which("curl"):
                    timings.update(upload_curl=[], download_curl=[])
                    steps += [("upload_curl", upload_curl), ("download_curl", download_curl)]
                upload()   # warm: the project started, the page cache holds the source
                for _ in range(rounds):
                    for name, fn in steps:
                        t0 = time.perf_counter()
                        fn()
                        timings[name].append(time.perf_counter() - t0)
                for name, values in timings.items():
                    med = statistics.median(values)
                    out[name] = {"median_s": round(med, 4), "mb_per_s": round(size_mb / med, 1),
                                 "runs_s": [round(v, 4) for v in values]}
                log("  files: " + ", ".join(f"{name} {row['mb_per_s']} MB/s" for name, row in out.items()))
        finally:
            with contextlib.suppress(NameError):
                floor.__exit__()
            server.stop()
        return out

    attempt(res, "projecthub", run)
    return res


SCENARIOS: dict[str, Callable[[Ctx], dict[str, Any]]] = {"files": scenario_files}
