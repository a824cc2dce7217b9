"""Start a real projecthub server on a free loopback port, for integration tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PROJECTHUB = [sys.executable, "-m", "projecthub.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Test servers pin 512 MiB images (the server's default is 2 GiB): a hub starts a project only if
# the data disk can back every running image's limit (disk.py), and a session server runs
# dozens of projects at once (tests that need more disk set their own limits).  A test's own --default-limits (or the caller's env) still wins.
#
# Every test server shares one managed project environment (host/environment.py), built once
# per checkout by ensure_project_env() (tests/conftest.py calls it at session start; ~1 min
# the first time, then cached in .cache/project-env) instead of one per data dir.
PROJECT_ENV = Path(__file__).resolve().parent.parent / ".cache" / "project-env"
#
# Spares skip their Jupyter warm-up (~1-1.5 s of CPU per created project, which the suite's
# hundreds of creates cannot afford on 2 cores); tests/integration/test_spares.py turns it on.
TEST_ENV = {"PROJECTHUB_DEFAULT_LIMITS": '{"disk_bytes": "512M"}', "PROJECTHUB_PROJECT_ENV": str(PROJECT_ENV),
            "PROJECTHUB_SPARE_JUPYTER": "0"}


def ensure_project_env() -> Path:
    """Build the shared project environment if it is missing (locked: concurrent callers wait)."""
    from projecthub.host import environment
    if environment.current_generation(PROJECT_ENV) is None:
        environment.build(PROJECT_ENV, progress=lambda line: print(line, flush=True))
    return PROJECT_ENV


def stop_process(proc: "subprocess.Popen[Any]", timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout`` seconds; reaped either way."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def cli(data_dir: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run([*PROJECTHUB, *args, "--data-dir", str(data_dir)], capture_output=True,
                         text=True, timeout=60, env={**TEST_ENV, **os.environ})
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads(out.stdout)


@dataclass
class Account:
    account_id: str
    api_key: str


@dataclass
class Server:
    data_dir: Path
    port: int = field(default_factory=free_port)
    extra_args: list[str] = field(default_factory=list)
    command: str = "serve"   # or "hub" (hosts on NATS: tests/integration/test_nats_hub.py)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "Server":
        log = open(self.data_dir / "server.log", "ab")
        env = {**TEST_ENV, **os.environ, "PYTHONUNBUFFERED": "1"}
        # every test server gets its own uid block, so concurrent servers never share a uid
        base = 200000 + (self.port % 2000) * 1000
        self.process = subprocess.Popen(
            [*PROJECTHUB, self.command, "--port", str(self.port), "--data-dir", str(self.data_dir),
             "--uid-range", f"{base}-{base + 999}", *self.extra_args], stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not come up:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise AssertionError("server did not shut down within 15 s of " + signal.Signals(sig).name)

    def log(self) -> str:
        try:
            return (self.data_dir / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    def cli(self, *args: str) -> dict[str, Any]:
        return cli(self.data_dir, *args)

    def new_account(self, name: str = "Test User") -> Account:
        out = self.cli("account", "create", "--name", name)
        return Account(out["account_id"], out["api_key"])

    def post(self, path: str, body: Any = None, key: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.post(self.url + path, json=body, headers=headers, timeout=kwargs.pop("timeout", 60),
                          **kwargs)
