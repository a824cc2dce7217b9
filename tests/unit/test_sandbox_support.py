"""Shared helpers for the sandbox/cgroup/probe tests (no tests in here).

Every test uses its own cgroup root name and uid range, so parallel test runs
and a real server on the same machine never see each other's groups.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from projecthub.host.sandbox import ProjectLimits, Sandbox, SandboxConfig
from projecthub.host.sandbox.cgroups import discover_mounts, make_driver, remove_tree

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
IS_ROOT = os.geteuid() == 0


def require(layer: str, available: bool) -> None:
    """Skip naming the missing layer; under CI=true a missing layer is a failure."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"isolation layer missing under CI=true: {layer}")
    pytest.skip(f"isolation layer missing: {layer}")


def bwrap_works() -> bool:
    if shutil.which("bwrap") is None:
        return False
    argv = ["bwrap", "--ro-bind", "/", "/", "--unshare-pid", "--proc", "/proc", "--dev", "/dev"]
    if not IS_ROOT:
        argv.append("--unshare-user")
    return subprocess.run(argv + ["true"], capture_output=True).returncode == 0


def cgroups_work() -> bool:
    return make_driver("projecthub-check") is not None


def unique_names() -> tuple[str, tuple[int, int]]:
    n = os.getpid() % 500
    return f"phtest-{os.getpid()}", (310000 + n * 100, 310000 + n * 100 + 99)


class SandboxEnv:
    """A Sandbox on a short temp data dir (the socket path must fit in 108 bytes)."""

    def __init__(self, mode: str = "auto"):
        self.data_dir = Path(tempfile.mkdtemp(prefix="ph", dir="/tmp"))
        os.chmod(self.data_dir, 0o711)
        root_name, uid_range = unique_names()
        self.root_name = root_name
        self.sandbox = Sandbox(SandboxConfig(data_dir=self.data_dir, mode=mode, uid_range=uid_range,
                                             cgroup_root_name=root_name))
        self.procs: list[subprocess.Popen] = []

    def prepare(self, project_id: str, **limits) -> "object":
        return self.sandbox.prepare(project_id, None, ProjectLimits(**limits))

    def start(self, prepared, argv: list[str], env: dict[str, str] | None = None,
              **popen) -> subprocess.Popen:
        env = env if env is not None else {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": prepared.home_inside}
        fds = self.sandbox.open_cgroup_fds(prepared)   # as the host does (host.py _spawn)
        try:
            full, kwargs = self.sandbox.daemon_command(prepared, argv, env)
            kwargs.update(popen)
            kwargs["pass_fds"] = (*kwargs.get("pass_fds", ()), *fds)
            p = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
        finally:
            for fd in fds:
                os.close(fd)
        self.procs.append(p)
        return p

    def run(self, prepared, argv: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        p = self.start(prepared, argv, **kw)
        out, err = p.communicate(timeout=timeout)
        return subprocess.CompletedProcess(argv, p.returncode, out, err)

    def py(self, prepared, code: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return self.run(prepared, [sys.executable, "-c", code], timeout=timeout, **kw)

    def close(self) -> None:
        sb = self.sandbox
        for pid in list(sb.running_projects()):
            sb.stop_project(pid)
        sb.kill_strays(set())
        for base in (self.data_dir / "projects").glob("[!.]*"):   # not .disk.lock
            sb.stop_project(base.name)   # also prepared-only ones: unmounts their disk image
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        mounts = discover_mounts()
        for point in list(mounts.v1.values()) + ([mounts.v2] if mounts.v2 else []):
            d = os.path.join(point, self.root_name)
            if os.path.isdir(d):
                remove_tree(d)
        shutil.rmtree(self.data_dir, ignore_errors=True)
