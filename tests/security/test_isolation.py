"""Project A (Alice) against project B (Bob): files, processes, signals, the server's own
secrets and the host network.  Every attack runs as a real command through the API."""

from __future__ import annotations

import os
import shlex
import socket
import threading
import time

import httpx
import psutil
import pytest

from tests.security.conftest import (CANARY_NAME, CANARY_VALUE, Proj, procs_of_uid, require_sandbox,
                                     wait_until)
from tests.server import Server


def _b_daemon_host_pid(b: Proj) -> int:
    uid = b.uid()
    assert uid is not None
    daemons = [p for p in procs_of_uid(uid, b.project_id) if "projecthub.project.daemon" in " ".join(p.cmdline())]
    assert daemons, "B's daemon is not running as B's uid"
    return daemons[0].pid


def test_a_cannot_read_list_write_or_delete_b_files(server: Server, proj_a: Proj, proj_b: Proj) -> None:
    require_sandbox()
    secret = proj_b.secret  # type: ignore[attr-defined]
    b_home = str(proj_b.home)
    assert (proj_b.home / "secret.txt").read_text().strip() == secret  # the target really exists
    b_pid = _b_daemon_host_pid(proj_b)
    # A plants symlinks to B's home (host path) and to B's daemon's root, like a real attacker.
    out = proj_a.run(f"ln -sfn {shlex.quote(b_home)} link_home && ln -sfn /proc/{b_pid}/root link_root"
                     " && ls -l link_home link_root")
    assert out["exit_code"] == 0, out
    targets = [
        f"{b_home}/secret.txt",
        f"/proc/{b_pid}/root/home/user/secret.txt",
        f"/proc/{b_pid}/cwd/secret.txt",
        "link_home/secret.txt",
        "link_root/home/user/secret.txt",
        f"/home/user/../../{b_home.lstrip('/')}/secret.txt",
        f"../../../../../../{b_home.lstrip('/')}/secret.txt",
        f"{server.data_dir}/projects/{proj_b.project_id}/home/secret.txt",
    ]
    for path in targets:
        q = shlex.quote(path)
        d = shlex.quote(os.path.dirname(path))
        out = proj_a.run(f"cat {q}; ls -la {d}; echo pwned > {q}; touch {d}/pwned-by-a; rm -f {q}; "
                         f"mv {q} {q}.moved; true")
        leaked = out["stdout"] + out["stderr"]
        assert secret not in leaked, f"read B's secret through {path}: {leaked}"
        assert "secret.txt" not in out["stdout"], f"listed B's home through {path}: {out['stdout']}"
    # The file API goes through A's daemon too: same paths, same result.
    for path in targets:
        r = httpx.post(f"{proj_a.server.url}/api/conat/project",
                       json={"name": "system.readTextFileFromProject", "args": [{"path": path}],
                             "project_id": proj_a.project_id},
                       headers={"Authorization": f"Bearer {proj_a.key}"}, timeout=30)
        assert r.status_code in (200, 400), r.text   # an {"error": ...} is the expected outcome
        assert secret not in r.text, f"file API leaked B's secret through {path}"
    # B is untouched.
    assert (proj_b.home / "secret.txt").read_text().strip() == secret
    assert not any(p.name.startswith("pwned") or p.name.endswith(".moved") for p in proj_b.home.iterdir())
    assert secret in proj_b.run("cat secret.txt")["stdout"]


def test_a_cannot_see_or_signal_b_processes(proj_a: Proj, proj_b: Proj) -> None:
    require_sandbox()
    marker = f"{int(time.time() * 1000) % 100000 + 31337}"
    job = proj_b.run(f"exec sleep {marker}", timeout=60, **{"async": True})
    job_id = job.get("job_id") or job.get("id")
    assert job_id, job
    uid = proj_b.uid()
    assert uid is not None
    assert wait_until(lambda: any(f"sleep {marker}" in " ".join(p.cmdline()) for p in procs_of_uid(uid, proj_b.project_id)), 10)
    victim = next(p for p in procs_of_uid(uid, proj_b.project_id) if f"sleep {marker}" in " ".join(p.cmdline()))
    # B's own view of the pid (its pid namespace), for the in-namespace attacks
    b_pid = int(proj_b.run(f"pgrep -f 'sleep {marker}'")["stdout"].split()[0])
    try:
        seen = proj_a.run("ps -eo pid,user,args; ls /proc | grep -c '^[0-9]'")
        assert f"sleep {marker}" not in seen["stdout"], seen["stdout"]
        assert int(seen["stdout"].split()[-1]) < 10, "A sees more processes than its own few"
        a_view = proj_a.run(f"cat /proc/{victim.pid}/cmdline; cat /proc/{b_pid}/cmdline; "
                            f"grep -l 'sleep.{marker}' /proc/[0-9]*/cmdline; true")
        assert f"sleep" + "\0" + marker not in a_view["stdout"] and marker not in a_view["stdout"]
        # kill from a shell, by host pid and by B's namespace pid, every way
        # (B's namespace pid may name one of A's own processes, A's daemon included: that
        # exec may then lose its connection, as with kill -1 below; only B matters here.)
        proj_a.v3("POST", "/exec", {"command": f"kill -9 {victim.pid} {b_pid} -{b_pid}; "
                                               f"pkill -9 -f 'sleep {marker}'; true",
                                    "bash": True, "timeout": 10})
        # kill -1 hits every process A's uid can see: A's own daemon included (same uid),
        # so that exec may lose its connection; B must not notice anything.
        proj_a.v3("POST", "/exec", {"command": "kill -9 -1", "bash": True, "timeout": 10})
        # system.signal through the official client, with both pids
        for pid in (victim.pid, b_pid):
            for args in ({"signal": 9, "pid": pid}, {"signal": 9, "pids": [pid, -pid]}):
                reply = httpx.post(proj_a.server.url + "/api/conat/project", timeout=30,
                                   json={"name": "system.signal", "args": [args],
                                         "project_id": proj_a.project_id},
                                   headers={"Authorization": f"Bearer {proj_a.key}"}).json()
                assert isinstance(reply, dict) and "error" in reply, reply
        time.sleep(0.2)
        assert victim.is_running() and victim.status() != psutil.STATUS_ZOMBIE, "A killed B's process"
        # and A is usable again after `kill -9 -1` (it may only have hit itself)
        assert proj_a.run("echo alive")["stdout"] == "alive\n"
    finally:
        proj_b.v3("DELETE", f"/jobs/{job_id}")


def test_a_sees_no_server_environment_data_dir_or_keys(server: Server, alice, proj_a: Proj,
                                                       proj_b: Proj) -> None:
    require_sandbox()
    assert server.process is not None
    assert psutil.Process(server.process.pid).environ().get(CANARY_NAME) == CANARY_VALUE  # the bait is set
    data = str(server.data_dir)
    key_prefix = alice.api_key[:12]
    out = proj_a.run(
        "env; cat /proc/self/environ /proc/1/environ /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'; "
        f"ls -la {shlex.quote(data)} {shlex.quote(data)}/projects; cat {shlex.quote(data)}/hub.db "
        f"{shlex.quote(data)}/hub.db-wal {shlex.quote(data)}/server.log {shlex.quote(data)}/uids.json; "
        f"cat /proc/{server.process.pid}/environ /proc/{server.process.pid}/cmdline; "
        "ls / /run /var/lib/projecthub /home; cat /etc/shadow; true")
    text = out["stdout"] + out["stderr"]
    assert CANARY_VALUE not in text and CANARY_NAME not in text, "server environment leaked into A"
    assert "SQLite format" not in text, "A read the hub database"
    assert key_prefix not in text, "A saw an API key"
    assert proj_b.project_id not in text, "A learned B's project id from the host"
    env_names = {line.split("=", 1)[0] for line in proj_a.run("env")["stdout"].splitlines() if "=" in line}
    server_only = {k for k in psutil.Process(server.process.pid).environ()} - {
        "PATH", "LANG", "HOME", "PWD", "SHLVL", "_", "TERM", "USER", "LOGNAME", "SHELL"}
    assert not (env_names & server_only), f"server variables visible in A: {env_names & server_only}"
    # A cannot grep the api keys out of anything it can reach either (keys are only stored hashed)
    half = len(key_prefix) // 2  # split, so the script itself does not contain the needle
    grep = proj_a.run(f"k1={key_prefix[:half]}; k2={key_prefix[half:]}; grep -rals \"$k1$k2\" /home /tmp /run /var/lib/projecthub /proc/[0-9]*/environ"
                      " /proc/[0-9]*/cmdline 2>/dev/null; true", timeout=30)
    assert grep["stdout"].strip() == "", grep["stdout"]


def test_no_network_means_no_host_loopback(server: Server, proj_a: Proj) -> None:
    require_sandbox()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    accepted: list[str] = []

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, addr = listener.accept()
                accepted.append(addr[0])
                conn.close()
            except OSError:
                pass
    stop = threading.Event()
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        addrs = ["127.0.0.1"] + [a.address for nic in psutil.net_if_addrs().values() for a in nic
                                 if a.family == socket.AF_INET and a.address != "127.0.0.1"]
        script = "; ".join(f"(timeout 3 bash -c 'echo hi > /dev/tcp/{a}/{port}' && echo CONNECTED {a}) 2>&1"
                           for a in addrs)
        out = proj_a.run(script + "; true")
        assert "CONNECTED" not in out["stdout"], out["stdout"]
        assert not accepted, f"A reached the host listener from {accepted}"
        # Control: the same probe does connect to a listener on the project's own loopback,
        # so the negative result above is the namespace, not a broken probe.  (A project
        # with network on has its own namespace too: tests/security/test_network.py.)
        ok = proj_a.run(f"(python3 -c 'import socket; s = socket.socket(); s.bind((\"127.0.0.1\", {port})); "
                        f"s.listen(); s.settimeout(5); s.accept()' &); sleep 0.5; "
                        f"timeout 3 bash -c 'echo hi > /dev/tcp/127.0.0.1/{port}' && echo CONNECTED")
        assert "CONNECTED" in ok["stdout"], ok
        assert not accepted, f"A reached the host listener from {accepted}"
    finally:
        stop.set()
        t.join(2)
        listener.close()


def test_a_cannot_reach_the_api_port(server: Server, proj_a: Proj) -> None:
    require_sandbox()
    out = proj_a.run(f"timeout 3 bash -c 'echo > /dev/tcp/127.0.0.1/{server.port}' && echo CONNECTED; true")
    assert "CONNECTED" not in out["stdout"]
