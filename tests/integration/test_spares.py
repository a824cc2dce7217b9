"""Spare projects (host/spares.py): a new project's first call finds its daemon running,
yet unstarted projects keep no daemons, and nothing of a spare outlives the server."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

from typing import Iterator

import cocalc_api
import httpx
import psutil
import pytest

from tests.server import Account, Server


def spare_ids(server: Server) -> list[str]:
    with sqlite3.connect(server.data_dir / "hub.db") as db:
        return [r[0] for r in db.execute("SELECT project_id FROM projects WHERE state = 'spare'")]


def daemon_pid(server: Server, project_id: str) -> int | None:
    """The live daemon recorded for ``project_id`` (host.json), if any."""
    try:
        record = json.loads((server.data_dir / "run" / project_id / "host.json").read_text())
    except (OSError, ValueError):
        return None
    pid = record.get("pid")
    return pid if alive(pid) else None


def alive(pid: int | None) -> bool:
    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_for_ready_spare(server: Server, timeout: float = 30.0) -> tuple[str, int]:
    """A spare that the server's pool holds ready (its log says so once the spare's daemon
    answered its warm-up exec): the next create_project takes it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = server.log()
        for project_id in spare_ids(server):
            pid = daemon_pid(server, project_id)
            if pid is not None and f"spare project {project_id} ready" in log:
                return project_id, pid
        time.sleep(0.1)
    raise AssertionError("no spare project became ready:\n" + server.log()[-3000:])


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def spare_server(tmp_path: Path) -> Iterator[Server]:
    server = Server(tmp_path, extra_args=["--spare-projects", "1"]).start()
    yield server
    if server.process and server.process.poll() is None:
        server.stop()
    server.cli("stop-all")


def clients(server: Server, account: Account, project_id: str):
    return (cocalc_api.Hub(api_key=account.api_key, host=server.url),
            cocalc_api.Project(api_key=account.api_key, host=server.url, project_id=project_id))


def test_new_project_takes_the_prestarted_daemon(spare_server: Server) -> None:
    server = spare_server
    spare_id, spare_pid = wait_for_ready_spare(server)
    account = server.new_account()
    hub = cocalc_api.Hub(api_key=account.api_key, host=server.url)
    project_id = hub.projects.create_project(title="fast")
    assert project_id == spare_id
    # Nobody started it: it reports stopped, and lists like any new project.
    assert hub.projects.state(project_id)["state"] == "stopped"
    assert [p["title"] for p in hub.projects.get(project_id=project_id)] == ["fast"]
    _, project = clients(server, account, project_id)
    out = project.system.exec(command="ls -A ~; id -u")
    *entries, uid = out["stdout"].split()
    # nothing of anybody else: at most IPython's empty profile from the Jupyter warm-up
    assert set(entries) <= {".ipython"}, f"a spare's home must be empty: {entries}"
    assert hub.projects.state(project_id)["state"] == "running"
    assert hub.projects.status(project_id)["project.pid"] == spare_pid   # the very same daemon
    # the next spare is a different project with a different uid
    next_id, _ = wait_for_ready_spare(server)
    assert next_id != project_id
    other = hub.projects.create_project(title="second")
    assert other == next_id
    _, project2 = clients(server, account, other)
    assert project2.system.exec(command="id -u")["stdout"].strip() != uid
    # a spare is nobody's: not even an admin can address it
    spare3, _ = wait_for_ready_spare(server)
    admin = server.cli("account", "create", "--name", "Admin", "--admin")
    r = httpx.post(server.url + "/api/conat/project", timeout=30,
                   headers={"Authorization": f"Bearer {admin['api_key']}"},
                   json={"project_id": spare3, "name": "system.exec", "args": [{"command": "true"}]})
    assert "error" in r.json(), r.text


def test_unstarted_projects_do_not_keep_daemons_and_stop_works(spare_server: Server) -> None:
    server = spare_server
    account = server.new_account()
    hub = cocalc_api.Hub(api_key=account.api_key, host=server.url)
    created = []
    for i in range(5):
        wait_for_ready_spare(server)
        created.append(hub.projects.create_project(title=f"bulk{i}"))
    time.sleep(1.0)
    alive_daemons = [p for p in created if daemon_pid(server, p) is not None]
    assert len(alive_daemons) <= 2, alive_daemons   # at most max_parked (size + 1)
    assert created[-1] in alive_daemons
    for p in created:
        assert hub.projects.state(p)["state"] == "stopped"
    # stopping a parked project stops its daemon; it then starts fresh
    parked_pid = daemon_pid(server, created[-1])
    assert parked_pid is not None
    hub.projects.stop(created[-1])
    assert wait_gone(parked_pid)
    _, project = clients(server, account, created[0])   # an evicted one starts normally
    assert project.system.exec(command="echo ok")["stdout"] == "ok\n"


def new_parked_project(server: Server, title: str):
    """A new project made from a ready spare: (account, hub client, project id, daemon pid)."""
    wait_for_ready_spare(server)
    account = server.new_account()
    hub = cocalc_api.Hub(api_key=account.api_key, host=server.url)
    project_id = hub.projects.create_project(title=title)
    pid = daemon_pid(server, project_id)
    assert pid is not None, "a new project keeps its spare's daemon parked"
    return account, hub, project_id, pid


def test_limits_changed_before_first_start_give_a_fresh_daemon(spare_server: Server) -> None:
    server = spare_server
    account, hub, project_id, parked_pid = new_parked_project(server, "limited")
    pids_max = Path(f"/sys/fs/cgroup/pids/projecthub/{project_id}/pids.max")
    before = int(pids_max.read_text()) if pids_max.exists() else None
    r = httpx.put(f"{server.url}/api/v3/projects/{project_id}/limits", json={"pids": 77},
                  headers={"Authorization": f"Bearer {account.api_key}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert wait_gone(parked_pid)
    _, project = clients(server, account, project_id)
    assert project.system.exec(command="echo fresh")["stdout"] == "fresh\n"
    assert hub.projects.status(project_id)["project.pid"] != parked_pid
    if before is not None:   # cgroup v1 here: the fresh sandbox has the new, lower limit
        assert int(pids_max.read_text()) < before


def test_restart_discards_spares_and_stops_parked_daemons(spare_server: Server) -> None:
    server = spare_server
    account, hub, parked, parked_pid = new_parked_project(server, "parked")
    old_spare, old_spare_pid = wait_for_ready_spare(server)
    server.process.send_signal(signal.SIGKILL)   # no clean shutdown: the restart must clean up
    server.process.wait(10)
    assert alive(parked_pid) and alive(old_spare_pid)
    server.start()
    assert wait_gone(parked_pid) and wait_gone(old_spare_pid)
    assert not (server.data_dir / "projects" / old_spare).exists()
    new_spare, _ = wait_for_ready_spare(server)
    assert new_spare != old_spare and old_spare not in spare_ids(server)
    assert hub.projects.state(parked)["state"] == "stopped"
    _, project = clients(server, account, parked)
    assert project.system.exec(command="echo back")["stdout"] == "back\n"
    # a clean stop removes the spare too; stop-all leaves no spare rows or dirs
    server.stop()
    assert not (server.data_dir / "projects" / new_spare).exists()
    server.cli("stop-all")
    assert spare_ids(server) == []


def test_spares_can_be_disabled(tmp_path: Path) -> None:
    server = Server(tmp_path, extra_args=["--spare-projects", "0"]).start()
    try:
        account = server.new_account()
        hub = cocalc_api.Hub(api_key=account.api_key, host=server.url)
        time.sleep(1.5)
        assert spare_ids(server) == []
        project_id = hub.projects.create_project(title="plain")
        assert daemon_pid(server, project_id) is None
        _, project = clients(server, account, project_id)
        assert project.system.exec(command="echo plain")["stdout"] == "plain\n"
    finally:
        server.stop()
        server.cli("stop-all")


# --- the spare's Jupyter warm-up (host/spares.py, project/jupyter/warm.py) -----------------

def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2:].split()


def start_ticks(pid: int) -> int:
    """The process's start time in clock ticks since boot (proc(5) field 22): the same
    number inside and outside the sandbox's pid namespace, so it names one process."""
    return int(_stat_fields(pid)[19])


def warm_zygote(server: Server, project_id: str) -> psutil.Process | None:
    """The zygote of ``project_id``'s sandbox, if it has forked a (pooled) kernel."""
    sandbox = daemon_pid(server, project_id)
    if sandbox is None:
        return None
    try:
        procs = psutil.Process(sandbox).children(recursive=True)
        for p in procs:
            if any("jupyter/zygote.py" in a for a in p.cmdline()) and \
                    not any("jupyter/zygote.py" in a for a in p.parent().cmdline()) and p.children():
                return p
    except psutil.Error:
        pass
    return None


def wait_for_warm_spare(server: Server, timeout: float = 90.0) -> tuple[str, psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for project_id in spare_ids(server):
            zygote = warm_zygote(server, project_id)
            if zygote is not None:
                time.sleep(0.5)   # the pooled kernel's warm-up cell
                return project_id, zygote
        time.sleep(0.1)
    raise AssertionError("no spare project warmed up Jupyter:\n" + server.log()[-3000:])


# Inside the first stateless kernel: who its parent is (pid namespace of the sandbox), by
# command line and start time, and the uid it runs as.
PARENT_PROBE = ("import os\n"
                "ppid = os.getppid()\n"
                "raw = open(f'/proc/{ppid}/stat').read()\n"
                "cmd = open(f'/proc/{ppid}/cmdline', 'rb').read().replace(b'\\0', b' ').decode()\n"
                "print(raw[raw.rindex(')') + 2:].split()[19], os.getuid(), 'zygote.py' in cmd)")


@pytest.fixture
def short_idle_spare_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    # A Jupyter idle window of 2 s: a warm spare must keep its zygote well past it (held
    # until claimed), and the claimed project must then lose it like any idle project.
    monkeypatch.setenv("PROJECTHUB_JUPYTER_IDLE_S", "2")
    monkeypatch.setenv("PROJECTHUB_SPARE_JUPYTER", "python3")
    server = Server(tmp_path, extra_args=["--spare-projects", "1"]).start()
    yield server
    if server.process and server.process.poll() is None:
        server.stop()
    server.cli("stop-all")


def test_new_projects_first_jupyter_call_uses_the_spares_warm_zygote(short_idle_spare_server: Server) -> None:
    server = short_idle_spare_server
    spare_id, zygote = wait_for_warm_spare(server)
    zygote_ticks = start_ticks(zygote.pid)
    time.sleep(5.0)   # > the idle window and its upkeep period: the warm-up is held, not shrunk
    assert zygote.is_running() and warm_zygote(server, spare_id) == zygote, "a waiting spare lost its zygote"
    account = server.new_account()
    hub, _ = clients(server, account, spare_id)
    uptime_at_create = float(Path("/proc/uptime").read_text().split()[0])
    project_id = hub.projects.create_project(title="jupyter")
    assert project_id == spare_id
    _, project = clients(server, account, project_id)
    out = project.system.jupyter_execute(input=PARENT_PROBE, kernel="python3")
    parent_ticks, kernel_uid, is_zygote = out[0]["text"].split()
    # the very zygote the spare started before the project existed forked this kernel
    assert is_zygote == "True"
    assert int(parent_ticks) == zygote_ticks
    assert zygote_ticks / os.sysconf("SC_CLK_TCK") < uptime_at_create
    # it belongs to the project alone: its own uid; in its home only IPython's empty
    # profile, which the zygote's start made (as a first Jupyter call would)
    listing = project.system.exec(command="id -u; ls -A ~; find ~/.ipython -type f")["stdout"].split()
    assert listing == [kernel_uid, ".ipython", "/home/user/.ipython/profile_default/startup/README"]
    assert zygote.uids().real == int(kernel_uid)
    # claimed: the hold is over, and after the idle window the zygote goes like any other
    deadline = time.monotonic() + 60
    while zygote.is_running() and zygote.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not zygote.is_running() or zygote.status() == psutil.STATUS_ZOMBIE, \
        "the claimed project's zygote outlived its idle window"
    assert warm_zygote(server, project_id) is None


def test_spares_can_skip_the_jupyter_warm_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROJECTHUB_SPARE_JUPYTER", "0")
    server = Server(tmp_path, extra_args=["--spare-projects", "1"]).start()
    try:
        spare_id, _ = wait_for_ready_spare(server)
        time.sleep(3.0)   # a warm-up would have started its zygote by now
        assert warm_zygote(server, spare_id) is None
        sandbox = daemon_pid(server, spare_id)
        assert sandbox is not None
        assert not [p for p in psutil.Process(sandbox).children(recursive=True)
                    if any("zygote.py" in a for a in p.cmdline())]
    finally:
        server.stop()
        server.cli("stop-all")
