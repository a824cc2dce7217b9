"""A real nats-server on a free loopback port, configured by ``projecthub nats-config``'s code
(one user per host and one for hubs), for the fabric's integration tests.

``nats_server`` is a session fixture: import it into a test module.  Under CI=true a missing
``nats-server`` binary fails the tests (``.ci/run`` installs Debian's); locally they skip."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from projecthub.fabric.nats_config import HUB_USER, creds_path, host_user, write_config
from projecthub.fabric.nats_wire import Credentials, load_credentials
from tests.conftest import require
from tests.server import free_port, stop_process

HOSTS = ["h1", "h2"]
# Small, so tests cross the chunking path with modest payloads.
MAX_PAYLOAD = 64 * 1024


@dataclass
class NatsServer:
    directory: Path
    port: int
    process: "subprocess.Popen[bytes] | None" = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def creds_file(self, user: str) -> Path:
        return creds_path(self.directory, user)

    def creds(self, user: str) -> Credentials:
        return load_credentials(self.creds_file(user))

    def hub_creds(self) -> Credentials:
        return self.creds(HUB_USER)

    def host_creds(self, host: str) -> Credentials:
        return self.creds(host_user(host))

    def start(self) -> "NatsServer":
        paths = write_config(self.directory, HOSTS, listen=f"127.0.0.1:{self.port}",
                             max_payload=MAX_PAYLOAD)
        log = open(self.directory / "nats-server.log", "ab")
        self.process = subprocess.Popen(["nats-server", "-c", str(paths["config"])],
                                        stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("nats-server exited: "
                                   + (self.directory / "nats-server.log").read_text()[-2000:])
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("nats-server did not start listening within 10 s")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    require("nats-server binary (Debian package nats-server)", shutil.which("nats-server") is not None)
    server = NatsServer(tmp_path_factory.mktemp("nats"), free_port()).start()
    yield server
    server.stop()
