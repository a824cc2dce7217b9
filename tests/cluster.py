"""Many hubs and many hosts on one machine, for the scale-out scenario tests: a real
nats-server (tests/nats.py), a real PostgreSQL database (tests/pg.py), ``projecthub hub``
processes sharing that database, and ``projecthub host`` processes with their own data
dirs, started through the commands users run.

``cluster`` (function scope) starts two hubs and two hosts (h1, h2).  Tests kill and
restart pieces with ``kill_hub`` / ``start_hub`` / ``kill_host`` / ``start_host``; the fixture
stops whatever runs at the end, and every host's daemons with ``stop-all`` on its data dir.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from projecthub.fabric.nats_config import HUB_USER, host_user
from tests.nats import NatsServer, nats_server  # noqa: F401  (the fixture, for modules importing this one)
from tests.server import PROJECTHUB, TEST_ENV, Account, Server, free_port, stop_process

HOST_NAMES = ("h1", "h2")
# The hubs' default project limits: hosts must apply these (the hubs' policy), not their own.
HUB_DEFAULT_TMP_BYTES = 96 * 2**20
HUB_DEFAULT_LIMITS = json.dumps({"tmp_bytes": HUB_DEFAULT_TMP_BYTES})


def wait_for(predicate: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    """Poll ``predicate`` every 50 ms until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class HostProcess:
    name: str
    data_dir: Path
    uid_base: int
    process: subprocess.Popen[str] | None = None

    def log(self) -> str:
        try:
            return (self.data_dir.parent / f"{self.name}.log").read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Cluster:
    nats: NatsServer
    database_url: str
    root: Path
    hubs: list[Server] = field(default_factory=list)
    hosts: dict[str, HostProcess] = field(default_factory=dict)

    # -- hubs -------------------------------------------------------------------------------
    def start_hub(self, port: int | None = None) -> Server:
        """A new ``projecthub hub`` on the shared database and NATS (``port``: restart one
        on the port a killed hub had)."""
        data_dir = self.root / f"hub{len(self.hubs)}"
        data_dir.mkdir(parents=True, exist_ok=True)
        hub = Server(data_dir, command="hub", extra_args=[
            "--database-url", self.database_url, "--nats", self.nats.url,
            "--nats-creds", str(self.nats.creds_file(HUB_USER)), "--default-limits", HUB_DEFAULT_LIMITS])
        if port is not None:
            hub.port = port
        self.hubs.append(hub.start())
        return hub

    def kill_hub(self, hub: Server, sig: int = signal.SIGKILL) -> None:
        assert hub.process is not None
        hub.process.send_signal(sig)
        hub.process.wait(15)
        hub.process = None

    # -- hosts ------------------------------------------------------------------------------
    def start_host(self, name: str) -> HostProcess:
        """Start (or restart, same data dir) host ``name``; returns once a hub lists it up."""
        host = self.hosts.get(name)
        if host is None:
            index = len(self.hosts)
            host = HostProcess(name, self.root / name, uid_base=300000 + (free_port() % 500) * 2000 + index * 1000)
            self.hosts[name] = host
        assert host.process is None or host.process.poll() is not None, f"host {name} runs already"
        log = open(self.root / f"{name}.log", "a")
        host.process = subprocess.Popen(
            [*PROJECTHUB, "host", "--nats", self.nats.url, "--host-id", name,
             "--data-dir", str(host.data_dir), "--uid-range", f"{host.uid_base}-{host.uid_base + 999}",
             "--nats-creds", str(self.nats.creds_file(host_user(name)))],
            stdout=log, stderr=log, text=True, env={**TEST_ENV, **os.environ})
        log.close()
        wait_for(lambda: self._host_up(name), 60, f"host {name} to be listed up")
        return host

    def _host_up(self, name: str) -> bool:
        host = self.hosts[name]
        if host.process is not None and host.process.poll() is not None:
            raise AssertionError(f"host {name} exited early:\n{host.log()[-3000:]}")
        for row in self.host_list():
            if row.get("name") == name and row.get("state") == "up":
                return True
        return False

    def kill_host(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill the host process only: its daemons live on (as when a host restarts)."""
        host = self.hosts[name]
        assert host.process is not None
        host.process.send_signal(sig)
        host.process.wait(15)
        host.process = None

    # -- admin commands on the shared database ---------------------------------------------
    def cli(self, *args: str, check: bool = True) -> dict[str, Any]:
        out = subprocess.run([*PROJECTHUB, *args, "--database-url", self.database_url],
                             capture_output=True, text=True, timeout=60, env={**TEST_ENV, **os.environ})
        if check:
            assert out.returncode == 0, out.stderr + out.stdout
        return json.loads(out.stdout) if out.stdout.strip() else {"stderr": out.stderr}

    def host_list(self) -> list[dict[str, Any]]:
        out = subprocess.run([*PROJECTHUB, "host", "list", "--database-url", self.database_url,
                              "--nats", self.nats.url, "--nats-creds", str(self.nats.creds_file(HUB_USER))],
                             capture_output=True, text=True, timeout=60, env={**TEST_ENV, **os.environ})
        assert out.returncode == 0, out.stderr + out.stdout
        return list(json.loads(out.stdout)["hosts"])

    def new_account(self, name: str = "Cluster User") -> Account:
        out = self.cli("account", "create", "--name", name)
        return Account(out["account_id"], out["api_key"])

    # -- the end ------------------------------------------------------------------------------
    def stop(self) -> None:
        for hub in self.hubs:
            if hub.process is not None:
                stop_process(hub.process)
                hub.process = None
        for host in self.hosts.values():
            if host.process is not None:
                stop_process(host.process)
                host.process = None
            if host.data_dir.exists():
                subprocess.run([*PROJECTHUB, "stop-all", "--data-dir", str(host.data_dir)],
                               capture_output=True, text=True, timeout=120, env={**TEST_ENV, **os.environ})


def attempt(fn: Callable[[], Any]) -> Any:
    """``fn()``, or None if it raises: for ``wait_for`` on calls that fail until ready."""
    try:
        return fn()
    except Exception:
        return None


def _two_hubs_two_hosts(made: Cluster) -> Iterator[Cluster]:
    try:
        made.start_hub()
        made.start_hub()
        for name in HOST_NAMES:
            made.start_host(name)
        yield made
    finally:
        made.stop()


def http(hub: Server, method: str, path: str, key: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, hub.url + path, headers={"Authorization": f"Bearer {key}"},
                         timeout=kwargs.pop("timeout", 60), **kwargs)


@pytest.fixture
def cluster(nats_server: NatsServer, pg_url: str, tmp_path: Path) -> Iterator[Cluster]:
    """Two hubs on one PostgreSQL database and one nats-server, and two hosts, h1 and h2."""
    yield from _two_hubs_two_hosts(Cluster(nats_server, pg_url, tmp_path))


@pytest.fixture(scope="module")
def module_cluster(nats_server: NatsServer, pg_server: Any,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """``cluster`` once for a whole module (tests that do not kill or restart pieces): its
    own fresh database, dropped at the end."""
    url = pg_server.new_database()
    try:
        yield from _two_hubs_two_hosts(Cluster(nats_server, url, tmp_path_factory.mktemp("cluster")))
    finally:
        pg_server.drop_database(url)
