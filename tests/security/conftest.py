"""Fixtures for the escape and limits suite: a server with a secret in its environment,
two accounts with one project each, and helpers that look at the host side.

Every test drives a real server through its public HTTP API (the official client or
raw HTTP) and then checks the host with psutil and the cgroup filesystem.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import psutil
import pytest

from tests.conftest import have_bwrap, require
from tests.server import Account, Server

# Distinctive: if this string ever shows up inside a project, the server's environment leaked.
CANARY_NAME = "PROJECTHUB_SECURITY_CANARY"
CANARY_VALUE = "canary-" + secrets.token_hex(16)


def cgroup_v1_mounted(controller: str) -> bool:
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[2] == "cgroup" and controller in line.split()[3].split(",")
                       for line in f)
    except OSError:
        return False


def cgroup_v2_controller(controller: str) -> bool:
    try:
        with open("/sys/fs/cgroup/cgroup.controllers") as f:
            return controller in f.read().split()
    except OSError:
        return False


def require_sandbox() -> None:
    """The layers every escape test relies on: root (per-project uid) and bubblewrap."""
    require("root (per-project uid)", os.geteuid() == 0)
    require("bubblewrap", have_bwrap())


def require_cgroup(controller: str) -> None:
    require(f"cgroup {controller} controller (v1 or v2)",
            cgroup_v1_mounted(controller) or cgroup_v2_controller(controller))


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """This directory's own server, started with a secret in its environment."""
    data_dir = tmp_path_factory.mktemp("sechub")
    old = os.environ.get(CANARY_NAME)
    os.environ[CANARY_NAME] = CANARY_VALUE
    try:
        srv = Server(data_dir).start()
    finally:
        if old is None:
            os.environ.pop(CANARY_NAME, None)
        else:
            os.environ[CANARY_NAME] = old
    yield srv
    srv.stop()
    srv.cli("stop-all")


# ---------------------------------------------------------------------------- projects

@dataclass
class Proj:
    """One project and the key of the account that owns it."""
    server: Server
    owner: Account
    project_id: str

    @property
    def key(self) -> str:
        return self.owner.api_key

    @property
    def client(self):
        import cocalc_api
        return cocalc_api.Project(api_key=self.key, host=self.server.url, project_id=self.project_id)

    def v3(self, method: str, path: str, body: Any = None, key: str | None = None,
           timeout: float = 60) -> httpx.Response:
        return httpx.request(method, f"{self.server.url}/api/v3/projects/{self.project_id}{path}",
                             json=body, headers={"Authorization": f"Bearer {key or self.key}"},
                             timeout=timeout)

    def run(self, command: str, timeout: float = 20, **opts: Any) -> dict[str, Any]:
        """Native exec (bash) with the rich result; fails the test on an HTTP error."""
        body = {"command": command, "bash": True, "timeout": timeout, **opts}
        r = self.v3("POST", "/exec", body, timeout=timeout + 30)
        assert r.status_code == 200, r.text
        return r.json()

    def set_limits(self, **limits: Any) -> dict[str, Any]:
        r = self.v3("PUT", "/limits", limits)
        assert r.status_code == 200, r.text
        return r.json()

    def stop(self) -> None:
        r = self.v3("POST", "/stop")
        assert r.status_code == 200, r.text

    def info(self) -> dict[str, Any]:
        r = self.v3("GET", "")
        assert r.status_code == 200, r.text
        return r.json()

    @property
    def home(self) -> Path:
        return self.server.data_dir / "projects" / self.project_id / "home"

    def uid(self) -> int | None:
        try:
            return json.loads((self.server.data_dir / "uids.json").read_text()).get(self.project_id)
        except (OSError, ValueError):
            return None


def new_project(server: Server, owner: Account, title: str = "sec", **limits: Any) -> Proj:
    body: dict[str, Any] = {"title": title}
    if limits:
        body["limits"] = limits
    r = httpx.post(server.url + "/api/v3/projects", json=body,
                   headers={"Authorization": f"Bearer {owner.api_key}"}, timeout=30)
    assert r.status_code == 201, r.text
    return Proj(server, owner, r.json()["project_id"])


@pytest.fixture(scope="session")
def alice(server: Server) -> Account:
    return server.new_account("Alice")


@pytest.fixture(scope="session")
def bob(server: Server) -> Account:
    return server.new_account("Bob")


@pytest.fixture(scope="session")
def proj_b(server: Server, bob: Account) -> Iterator[Proj]:
    """The victim: Bob's project, with a secret file in its home."""
    p = new_project(server, bob, "victim B")
    out = p.run("echo b-secret-$RANDOM$RANDOM > secret.txt && chmod 644 secret.txt && cat secret.txt")
    assert out["exit_code"] == 0, out
    p.secret = out["stdout"].strip()  # type: ignore[attr-defined]
    yield p
    p.stop()


@pytest.fixture(scope="session")
def proj_a(server: Server, alice: Account) -> Iterator[Proj]:
    """The attacker: Alice's project (default limits, networking off)."""
    p = new_project(server, alice, "attacker A")
    assert p.run("true")["exit_code"] == 0
    yield p
    p.stop()


@pytest.fixture
def fresh_a(server: Server, alice: Account) -> Iterator[Any]:
    """Factory for throw-away attacker projects with their own limits; stopped afterwards."""
    made: list[Proj] = []

    def make(**limits: Any) -> Proj:
        p = new_project(server, alice, "attacker A (limits)", **limits)
        made.append(p)
        return p
    yield make
    for p in made:
        p.stop()


# ------------------------------------------------------------------------- host side

def procs_of_uid(uid: int, project_id: str | None = None) -> list[psutil.Process]:
    """Live processes with ``uid``.  Other servers on this machine (parallel test runs)
    allocate uids from the same range, so with ``project_id`` a process that sits in a
    different project's cgroup is not counted; one in no project group at all is."""
    out = []
    for proc in psutil.process_iter():
        try:
            if proc.uids().real == uid and proc.status() != psutil.STATUS_ZOMBIE:
                if project_id is not None:
                    other = _projecthub_group(proc.pid)
                    if other is not None and other != project_id:
                        continue
                out.append(proc)
        except psutil.Error:
            pass
    return out


def _projecthub_group(pid: int, root_name: str = "projecthub") -> str | None:
    from projecthub.host.sandbox.manager import _cgroup_project  # the server's own reading
    return _cgroup_project(pid, root_name)


def project_cgroup_dirs(project_id: str, root_name: str = "projecthub") -> list[str]:
    dirs = []
    for base in ("/sys/fs/cgroup", *(os.path.join("/sys/fs/cgroup", c) for c in
                                     ("memory", "pids", "cpu", "cpuacct", "freezer"))):
        d = os.path.join(base, root_name, project_id)
        if os.path.isdir(d):
            dirs.append(d)
    return dirs


def cgroup_procs(dirs: list[str]) -> list[int]:
    pids: set[int] = set()
    for top in dirs:
        for root, _subdirs, files in os.walk(top):
            if "cgroup.procs" in files:
                try:
                    with open(os.path.join(root, "cgroup.procs")) as f:
                        pids.update(int(x) for x in f.read().split())
                except OSError:
                    pass
    return sorted(pids)


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def venv_python() -> str:
    """The Python inside projects: the project environment's, first on their PATH (the
    server's own interpreter is not mounted in sandboxes)."""
    return "python3"
