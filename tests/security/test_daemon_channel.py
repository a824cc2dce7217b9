"""The hub's channel to a project daemon, and the daemon itself, attacked by its own project.

* A project replaces its daemon socket with a symlink to another project's socket and waits
  for a hub restart: the hub must adopt its own project's daemon or none (the review's
  critical finding: the attacker's calls ran as the victim).
* Files planted in the home (``zmq.py``, ``json.py``, ``asyncio/``, ``sitecustomize.py``,
  ``usercustomize.py``, a ``.pth``) must never run inside the daemon or the Jupyter zygote.
* The daemon cannot be ptraced by its project; the sandbox cannot make user namespaces; the
  data dir's path does not show inside; the data dir and the store are private.

Each test drives a real server through its HTTP API; root and bubblewrap are required.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.security.conftest import Proj, new_project, require_sandbox
from tests.server import Account, Server


@pytest.fixture(scope="module")
def chan_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require_sandbox()
    srv = Server(tmp_path_factory.mktemp("chanhub"), extra_args=["--spare-projects", "0"]).start()
    yield srv
    if srv.process is not None and srv.process.poll() is None:
        srv.stop()
    srv.cli("stop-all")


def restart(server: Server) -> None:
    server.stop()
    server.start()


def ensure_up(server: Server) -> None:
    if server.process is None or server.process.poll() is not None:
        server.start()


def whoami(p: Proj) -> dict:
    out = p.run("echo $(id -u) $(cat ~/marker 2>/dev/null || echo none)")
    assert out["exit_code"] == 0, out
    uid, marker = out["stdout"].split()
    return {"uid": int(uid), "marker": marker}


def signal_own_daemon(signal_option: str) -> str:
    """A shell line, run inside a project, that sends its own daemon ``kill SIGNAL_OPTION``
    (the pattern matches the daemon's command line, old layout or new, not this shell's)."""
    return ("for d in /proc/[0-9]*; do "
            "if tr '\\0' ' ' < $d/cmdline 2>/dev/null | grep -qE 'projecthub.project.daemon (import|--project-id)'; "
            f"then kill {signal_option} ${{d#/proc/}}; fi; done")


def host_processes_with(marker: str) -> list[int]:
    """Live host processes whose command line contains ``marker``."""
    import psutil
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(proc.info["cmdline"] or []) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except psutil.Error:
            pass
    return found


# --------------------------------------------------------------- 1. the socket swap

def test_symlinked_socket_never_reaches_another_project(chan_server: Server) -> None:
    server = chan_server
    attacker = new_project(server, server.new_account("Mallory"), "attacker")
    victim = new_project(server, server.new_account("Victor"), "victim")
    attacker.run("echo attacker > ~/marker")
    victim.run("echo victim > ~/marker")
    victim_uid = whoami(victim)["uid"]
    attacker_uid = whoami(attacker)["uid"]
    assert attacker_uid != victim_uid

    # Every place the attacker could think the hub looks for its socket: where it used to
    # live inside the sandbox, and the host paths of the victim's socket (old and new).
    # (An attacker learns the host layout from mountinfo or the hub's source.)
    victim_sockets = [server.data_dir / "projects" / victim.project_id / "run" / "daemon.sock",
                      server.data_dir / "run" / victim.project_id / "daemon.sock"]
    target = next(str(s) for s in victim_sockets if s.exists())
    plant = " ; ".join(
        f"mkdir -p {d} 2>/dev/null; ln -sfn {target} {d}/daemon.sock 2>/dev/null"
        for d in ("/run/projecthub", "/var/lib/projecthub", "$HOME"))
    attacker.run(plant)
    # ...and, as root would find it if the hub's own directory were reachable, nothing the
    # attacker can write is the hub's directory:
    assert not (server.data_dir / "run" / attacker.project_id / "daemon.sock").is_symlink()

    try:
        restart(server)   # the hub now re-adopts daemons from what it finds on disk
    finally:
        ensure_up(server)
    me = whoami(attacker)
    assert me == {"uid": attacker_uid, "marker": "attacker"}, me
    # the attacker stopping "its" project never stops the victim
    attacker.stop()
    assert whoami(victim) == {"uid": victim_uid, "marker": "victim"}


def test_hub_refuses_a_tampered_socket_and_logs_it(chan_server: Server) -> None:
    """Defence in depth: even if the hub's private directory were tampered with (here by
    root, the only one who can), the hub never follows a symlink there, checks the peer's
    SO_PEERCRED against the project's uid and sandbox, and logs the refusal."""
    server = chan_server
    one = new_project(server, server.new_account("One"), "one")
    two = new_project(server, server.new_account("Two"), "two")
    one.run("echo one > ~/marker")
    two.run("echo two > ~/marker")
    one_uid = whoami(one)["uid"]
    run_one = server.data_dir / "run" / one.project_id
    sock_one = run_one / "daemon.sock"
    fake = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # 1) one's socket replaced by a symlink to two's socket
        server.stop()
        assert sock_one.exists(), "the host keeps the daemon socket in <data>/run/<project>/"
        sock_one.unlink()
        os.symlink(server.data_dir / "run" / two.project_id / "daemon.sock", sock_one)
        server.start()
        assert whoami(one) == {"uid": one_uid, "marker": "one"}
        assert whoami(two)["marker"] == "two"

        # 2) a socket that answers as the wrong uid (root's fake daemon) is refused too
        server.stop()
        sock_one.unlink()
        fake.bind(str(sock_one))
        fake.listen(8)
        server.start()
        assert whoami(one) == {"uid": one_uid, "marker": "one"}
        assert "refusing the daemon socket of project " + one.project_id in server.log()
    finally:
        fake.close()
        ensure_up(server)


def test_daemon_socket_lives_outside_every_sandbox(chan_server: Server) -> None:
    server = chan_server
    p = new_project(server, server.new_account("Sock"), "sock")
    out = p.run("ls -la /run/projecthub 2>&1; find / -xdev -type s 2>/dev/null | head -5; "
                "ls /proc/*/fd -l 2>/dev/null | grep -c socket || true")
    assert "daemon.sock" not in out["stdout"], out["stdout"]
    run_dir = server.data_dir / "run" / p.project_id
    st = os.stat(run_dir)
    assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700
    assert stat.S_ISSOCK(os.lstat(run_dir / "daemon.sock").st_mode)


# --------------------------------------------------------------- 2. planted modules

PLANT = r'''
import os, sys
def _mark(name):
    try:
        me = open("/proc/self/cmdline", "rb").read().replace(b"\0", b" ").decode()
        parent = open("/proc/%d/cmdline" % os.getppid(), "rb").read().replace(b"\0", b" ").decode()
        os.makedirs("/home/user/.pwned", exist_ok=True)
        with open("/home/user/.pwned/%s-%d" % (name, os.getpid()), "w") as f:
            f.write(me + "\n" + parent)
    except Exception:
        pass
_mark(NAME)
if REAL:   # hand over to the real module so whatever imported us keeps working
    _here = os.path.dirname(os.path.abspath(__file__))
    if __file__.endswith("__init__.py"):
        _here = os.path.dirname(_here)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _here]
    del sys.modules[NAME]
    import importlib
    sys.modules[NAME] = importlib.import_module(NAME)
'''


def _plant_code(name: str, real: bool) -> str:
    return f"NAME = {name!r}\nREAL = {real!r}\n" + PLANT


def test_planted_modules_never_run_in_the_daemon_or_zygote(chan_server: Server) -> None:
    server = chan_server
    p = new_project(server, server.new_account("Planter"), "planter")
    py = p.run("python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'")["stdout"].strip()
    files = {
        "zmq.py": _plant_code("zmq", True),
        "json.py": _plant_code("json", True),
        "signal.py": _plant_code("signal", True),
        "selectors.py": _plant_code("selectors", True),
        "asyncio/__init__.py": _plant_code("asyncio", True),
        "sitecustomize.py": _plant_code("sitecustomize", False),
        "usercustomize.py": _plant_code("usercustomize", False),
        f".local/lib/python{py}/site-packages/evil.pth": "import os; exec(open('/home/user/pth_payload.py').read())",
        "pth_payload.py": _plant_code("pth", False),
    }
    for rel, text in files.items():
        r = p.v3("POST", "/exec", {"command": "mkdir -p \"$(dirname \"$F\")\" && cat > \"$F\"",
                                   "bash": True, "env": {"F": f"/home/user/{rel}"}, "timeout": 20})
        assert r.status_code == 200, r.text
        r = httpx.post(f"{server.url}/api/conat/project", json={
            "name": "system.writeTextFileToProject", "args": [{"path": rel, "content": text}],
            "project_id": p.project_id}, headers={"Authorization": f"Bearer {p.key}"}, timeout=30)
        assert r.status_code == 200 and "error" not in (r.json() or {}), r.text
    # A fresh daemon (it starts with the planted files in place), then Jupyter: the daemon's
    # lazy zmq import, the zygote's start-up imports, a forked and a launched kernel.
    p.stop()
    assert p.run("echo hi")["stdout"] == "hi\n"
    client = p.client
    out = client.system.jupyter_execute(input="print(6*7)", kernel="python3")
    assert "42" in json.dumps(out), out
    r = p.v3("POST", "/sessions", {"kernel": "python3"})
    assert r.status_code in (200, 201), r.text
    sid = r.json()["session_id"] if "session_id" in r.json() else r.json()["id"]
    r = p.v3("POST", f"/sessions/{sid}/execute", {"code": "1+1", "timeout_s": 60})
    assert r.status_code == 200, r.text
    p.v3("DELETE", f"/sessions/{sid}")

    marks = p.run("for f in ~/.pwned/*; do [ -e \"$f\" ] && { echo \"== $f\"; cat \"$f\"; echo; }; done; true")
    offenders = []
    for block in marks["stdout"].split("== ")[1:]:
        lines = block.splitlines() + ["", "", ""]
        name, me, parent = lines[0], lines[1], lines[2]
        in_daemon = "projecthub.project.daemon" in me
        in_zygote = "zygote" in me and "projecthub.project.daemon" in parent
        if in_daemon or in_zygote:
            offenders.append(f"{name}: {me[:200]}")
    assert not offenders, "planted files ran inside projecthub's own processes:\n" + "\n".join(offenders)


def test_forked_kernel_still_imports_from_its_working_directory(chan_server: Server) -> None:
    server = chan_server
    p = new_project(server, server.new_account("Jupyter user"), "kernel cwd")
    p.run("mkdir -p ~/work && echo 'VALUE = 1234' > ~/work/mymodule.py")
    # a stateless kernel runs in the directory it is given ("path")
    out = p.client.system.jupyter_execute(input="import mymodule; print(mymodule.VALUE)",
                                          kernel="python3", path="work")
    assert "1234" in json.dumps(out), out
    # a session kernel from its cwd
    r = p.v3("POST", "/sessions", {"kernel": "python3", "cwd": "work"})
    assert r.status_code in (200, 201), r.text
    sid = r.json()["session_id"] if "session_id" in r.json() else r.json()["id"]
    try:
        r = p.v3("POST", f"/sessions/{sid}/execute",
                 {"code": "import mymodule; print(mymodule.VALUE)", "timeout_s": 60})
        assert r.status_code == 200 and "1234" in r.text, r.text
    finally:
        p.v3("DELETE", f"/sessions/{sid}")


# --------------------------------------------------------------- 12. smaller holes

def test_no_nested_user_namespaces(chan_server: Server) -> None:
    p = new_project(chan_server, chan_server.new_account("Userns"), "userns")
    out = p.run("unshare -Ur id -u; echo rc=$?; unshare -U true; echo rc=$?; "
                "python3 -c 'import os; os.unshare(os.CLONE_NEWUSER)'; echo rc=$?")
    assert out["stdout"].count("rc=0") == 0, out
    # ordinary process creation (threads, vfork, posix_spawn) is unaffected
    ok = p.run("python3 -c 'import threading, subprocess; t = threading.Thread(target=print); t.start(); "
               "t.join(); print(subprocess.run([\"echo\", \"spawned\"], capture_output=True).stdout)'")
    assert ok["exit_code"] == 0 and "spawned" in ok["stdout"], ok


def test_host_paths_do_not_leak_into_the_sandbox(chan_server: Server) -> None:
    server = chan_server
    p = new_project(server, server.new_account("Leak"), "leak")
    out = p.run("tr '\\0' ' ' < /proc/1/cmdline; echo; cat /proc/self/mountinfo; "
                "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done 2>/dev/null")
    data_dir = str(server.data_dir.resolve())
    assert data_dir not in out["stdout"], [l for l in out["stdout"].splitlines() if data_dir in l]


def test_daemon_cannot_be_ptraced_by_its_project(chan_server: Server) -> None:
    p = new_project(chan_server, chan_server.new_account("Tracer"), "tracer")
    code = r'''
import ctypes, os, json
libc = ctypes.CDLL(None, use_errno=True)
out = {}
for pid in [d for d in os.listdir("/proc") if d.isdigit()]:
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        continue
    if b"projecthub.project.daemon" in cmd and int(pid) != os.getpid():
        r = libc.ptrace(0x4206, int(pid), None, None)   # PTRACE_SEIZE
        out["seize"] = (r, ctypes.get_errno())
        try:
            open(f"/proc/{pid}/environ", "rb").read()
            out["environ"] = "readable"
        except OSError as e:
            out["environ"] = e.errno
        if r == 0:
            libc.ptrace(0x11, int(pid), None, None)        # PTRACE_DETACH
print(json.dumps(out))
'''
    out = p.run('python3 -c "$CODE"', env={"CODE": code})
    assert out["exit_code"] == 0, out
    facts = json.loads(out["stdout"])
    assert "seize" in facts, "the daemon is not visible inside its sandbox?"
    assert facts["seize"][0] == -1 and facts["seize"][1] == 1, facts   # EPERM
    assert facts["environ"] != "readable", facts
    assert p.run("echo alive")["stdout"] == "alive\n"


def test_data_dir_and_store_are_private(chan_server: Server) -> None:
    data_dir = chan_server.data_dir
    assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
    for name in ("hub.db", "hub.db-wal", "hub.db-shm"):
        path = data_dir / name
        if path.exists():
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, (name, oct(os.stat(path).st_mode))
    assert (data_dir / "hub.db").exists()


def test_killing_its_own_daemon_leaves_nothing_running(chan_server: Server) -> None:
    """User code shares the daemon's uid, so it can SIGKILL it; what it started must then
    die with the daemon, not live on in its exec groups until the project's next start."""
    from tests.security.conftest import wait_until
    p = new_project(chan_server, chan_server.new_account("Suicide"), "kill own daemon")
    marker = "4242.4321"
    kill_daemon = signal_own_daemon("-9")
    r = p.v3("POST", "/exec", {"command": f"setsid -f bash -c 'exec -a sleeper sleep {marker}'; "
                                          f"sleep 0.5; {kill_daemon}; sleep 30",
                               "bash": True, "timeout": 60}, timeout=90)
    assert r.status_code >= 400 or r.json().get("exit_code") != 0, r.text   # its daemon is gone

    def survivors() -> list[int]:
        return host_processes_with(marker)
    assert wait_until(lambda: not survivors(), timeout=10), f"still running: {survivors()}"
    assert p.run("echo back")["stdout"] == "back\n"   # the next call starts a fresh daemon


def test_ipython_config_runs_in_kernels_not_in_the_zygote(chan_server: Server) -> None:
    """~/.ipython config files are Python the project wrote: the zygote that forks every
    stateless kernel must not run them; each kernel does, as a launched kernel would."""
    p = new_project(chan_server, chan_server.new_account("Config"), "ipython config")
    config = _plant_code("ipython_kernel_config", False) + "\nc.InteractiveShell.colors = 'nocolor'\n"
    r = httpx.post(f"{chan_server.url}/api/conat/project", json={
        "name": "system.writeTextFileToProject",
        "args": [{"path": ".ipython/profile_default/ipython_kernel_config.py", "content": config}],
        "project_id": p.project_id}, headers={"Authorization": f"Bearer {p.key}"}, timeout=30)
    assert r.status_code == 200, r.text
    for _ in range(2):
        out = p.client.system.jupyter_execute(input="print(6*7)", kernel="python3")
        assert "42" in json.dumps(out), out
    marks = p.run("for f in ~/.pwned/*; do [ -e \"$f\" ] && { echo \"== $f\"; cat \"$f\"; echo; }; done; true")
    blocks = marks["stdout"].split("== ")[1:]
    assert blocks, "the kernels never loaded the user's IPython config"
    for block in blocks:
        lines = block.splitlines() + ["", "", ""]
        me, parent = lines[1], lines[2]
        assert not ("zygote" in me and "projecthub.project.daemon" in parent), \
            f"the zygote ran the user's IPython config: {me[:200]}"


def test_a_stopped_daemon_is_never_left_running_unowned(chan_server: Server) -> None:
    """SIGSTOP its own daemon, then wait for a hub restart: the hub must either take the
    daemon back (running, counted, answering) or stop the whole sandbox, never mark the
    project stopped while its processes run on."""
    server = chan_server
    p = new_project(server, server.new_account("Freezer"), "sigstop")
    marker = "3000.4242"
    stop_daemon = signal_own_daemon("-STOP")
    r = p.v3("POST", "/exec", {"command": f"sleep 1; {stop_daemon}; exec -a survivor sleep {marker}",
                               "bash": True, "async": True, "timeout": 3000})
    assert r.status_code == 200, r.text
    time.sleep(2.5)
    try:
        restart(server)
    finally:
        ensure_up(server)
    state = p.info().get("state")
    state = state.get("state") if isinstance(state, dict) else state

    def survivors() -> list[int]:
        return host_processes_with(marker)
    if state == "stopped":
        assert not survivors(), "the project is 'stopped' but its processes run on"
    else:
        assert state == "running", state
        t0 = time.monotonic()
        assert p.run("echo alive", timeout=10)["stdout"] == "alive\n"
        assert time.monotonic() - t0 < 5
