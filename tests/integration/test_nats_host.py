"""``projecthub host`` over a real nats-server: a hub (``NatsFabric``) runs commands in a
project on a host process that never opens the database; the host id cannot be served
twice; an unreachable NATS is one line and a non-zero exit."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from projecthub.fabric.nats_client import NatsFabric
from projecthub.fabric.nats_config import host_user
from projecthub.fabric.nats_wire import connect
from projecthub.host.ledger import LEDGER_NAME
from tests.nats import NatsServer, nats_server  # noqa: F401
from tests.server import PROJECTHUB, TEST_ENV, stop_process


def start_host(nats: NatsServer, host_id: str, data_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*PROJECTHUB, "host", "--nats", nats.url, "--host-id", host_id, "--data-dir", str(data_dir),
         "--nats-creds", str(nats.creds_file(host_user(host_id)))],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**TEST_ENV, **os.environ})


def stop_host(proc: subprocess.Popen[str], data_dir: Path) -> dict[str, Any]:
    """Stop the host, then its daemons (they outlive it by design) with `projecthub stop-all`
    on its data dir, which has no store."""
    stop_process(proc)
    if not data_dir.exists():
        return {"stopped": []}
    out = subprocess.run([*PROJECTHUB, "stop-all", "--data-dir", str(data_dir)], capture_output=True,
                         text=True, timeout=60, env={**TEST_ENV, **os.environ})
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads(out.stdout)


@pytest.fixture
def host_h1(nats_server: NatsServer, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    data_dir = tmp_path / "h1"
    proc = start_host(nats_server, "h1", data_dir)
    yield proc, data_dir
    stop_host(proc, data_dir)


async def _hub(nats: NatsServer) -> NatsFabric:
    return await NatsFabric(await connect(nats.url, name="hub", creds=nats.hub_creds())).start()


async def _wait_live(hub: NatsFabric, host: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host in hub.live_hosts():
            return hub.live_hosts()[host]
        await asyncio.sleep(0.1)
    raise AssertionError(f"host {host} never heartbeat")


def test_exec_on_a_host_over_nats(nats_server: NatsServer, host_h1: Any) -> None:
    proc, data_dir = host_h1
    project_id = str(uuid.uuid4())

    async def main() -> None:
        hub = await _hub(nats_server)
        try:
            await _wait_live(hub, "h1")
            opts = {"command": "echo", "args": ["hi", "from", "h1"]}
            result = await hub.call("h1", "project.call",
                                    [project_id, {"limits": {}}, "system.exec", [opts]], 30, 60)
            assert result["stdout"] == "hi from h1\n" and result["exit_code"] == 0
            info = await _wait_live(hub, "h1")
            for _ in range(30):   # the next heartbeat lists it
                if project_id in hub.live_hosts()["h1"].get("running", []):
                    break
                await asyncio.sleep(0.1)
            info = hub.live_hosts()["h1"]
            assert project_id in info["running"] and info["projects"] == 1
            assert info["capacity"]["cpus"] >= 1
            await hub.call("h1", "project.stop", [project_id, "test"], None, 30)
            assert await hub.call("h1", "host.running", [], None, 5) == []
            await hub.call("h1", "project.start", [project_id, {"limits": {}}], None, 60)
        finally:
            await hub.close()
            await hub.nc.close()
    asyncio.run(asyncio.wait_for(main(), 120))
    assert not (data_dir / "hub.db").exists() and not list(data_dir.glob("*.db"))   # no store opened
    assert proc.poll() is None
    daemon = json.loads((data_dir / "run" / project_id / "host.json").read_text())["pid"]
    assert stop_host(proc, data_dir) == {"stopped": [project_id]}   # the daemon outlived the host
    assert _gone(daemon)
    assert json.loads((data_dir / LEDGER_NAME).read_text())[project_id]["state"] == "stopped"


def test_a_live_host_id_is_refused(nats_server: NatsServer, host_h1: Any, tmp_path: Path) -> None:
    async def wait() -> None:
        hub = await _hub(nats_server)
        try:
            await _wait_live(hub, "h1")
        finally:
            await hub.close()
            await hub.nc.close()
    asyncio.run(wait())
    second = start_host(nats_server, "h1", tmp_path / "h1-again")
    try:
        _, err = second.communicate(timeout=30)
    finally:
        stop_host(second, tmp_path / "h1-again")
    assert second.returncode == 1
    assert err.strip().splitlines() == [
        line for line in err.strip().splitlines() if "already live elsewhere" in line] and err.strip()
    assert host_h1[0].poll() is None   # the first one keeps serving


def test_unreachable_nats_is_one_line_and_a_nonzero_exit(tmp_path: Path) -> None:
    out = subprocess.run([*PROJECTHUB, "host", "--nats", "nats://127.0.0.1:1", "--host-id", "h9",
                          "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=30,
                         env={**TEST_ENV, **os.environ})
    assert out.returncode == 1
    assert out.stderr.strip() == ("projecthub: error: cannot connect to NATS at nats://127.0.0.1:1: "
                                  "nats: no servers available for connection"), out.stderr


def _gone(pid: int, timeout: float = 5.0) -> bool:
    """Exited (a zombie waiting for its new parent to reap it counts as gone)."""
    import psutil
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False
