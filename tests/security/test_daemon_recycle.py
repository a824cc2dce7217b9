"""The daemon's re-exec in place (project/recycle.py) must not open a window for the
project: between execve and ``make_undumpable`` the daemon is dumpable, so a process of
the project's uid that is alive then could ptrace it and take its cgroup descriptors.
The daemon therefore re-executes only when its sandbox holds no other process (and no
job runs, no session is open).

The attack: a process of the project that tries PTRACE_ATTACH on the daemon in a tight
loop (here an async job, the way a project keeps a process alive past its call: a
synchronous exec's leftovers are killed with its group).  While it lives the daemon must
not re-execute; once it is gone, the daemon does, and nothing was ever attached.
``alone_in_sandbox`` itself is tested in a real pid namespace in
tests/unit/test_recycle.py.
"""

from __future__ import annotations

import time

from tests.integration.test_idle_stop import (JUPYTER_IDLE_S, daemon_process, idle_server,  # noqa: F401
                                              maps_zmq, owner, stateless, wait_for)
from tests.security.conftest import new_project
from tests.server import Account, Server

ATTACKER = r'''
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH = 16
target = int(sys.argv[1])
deadline = time.time() + 120
while time.time() < deadline and not os.path.exists("stop-attacker"):
    if libc.ptrace(PTRACE_ATTACH, target, None, None) == 0:
        open("attached", "w").write("yes")
        break
    time.sleep(0.001)
'''


def test_a_lingering_project_process_keeps_the_daemon_from_re_executing(
        idle_server: Server, owner: Account) -> None:  # noqa: F811
    p = new_project(idle_server, owner, "recycle-attack")
    idle_server.cli("project", "limits", "--project", p.project_id, "--set", "idle_timeout_s=0")
    assert stateless(p, "2 + 2")[0]["data"]["text/plain"] == "4"
    daemon = daemon_process(p)
    found = p.run("for d in /proc/[0-9]*; do grep -l 'projecthub.project.daemon' $d/cmdline "
                  "2>/dev/null; done | head -1 | cut -d/ -f3")
    target = found["stdout"].strip()
    assert target.isdigit(), found
    p.run(f"cat > attacker.py <<'PY'\n{ATTACKER}\nPY")
    r = p.v3("POST", "/exec", {"command": f"python3 attacker.py {target}", "bash": True,
                               "async": True, "timeout": 120})
    assert r.status_code == 200 and r.json()["status"] == "running", r.text
    job_id = r.json()["job_id"]
    time.sleep(1)
    assert "attacker.py" in p.run("ps -eo args")["stdout"], "the attacker runs"

    # far past the Jupyter idle window: the daemon stays as it is, unattached
    assert not wait_for(lambda: not maps_zmq(daemon), JUPYTER_IDLE_S + 8, step=0.5)
    assert p.run("cat attached 2>/dev/null || echo no")["stdout"].strip() == "no"

    # the attacker gone, the daemon re-executes, and nothing was ever attached
    assert p.v3("DELETE", f"/jobs/{job_id}").status_code == 200
    assert wait_for(lambda: not maps_zmq(daemon), JUPYTER_IDLE_S + 20, step=0.5)
    assert daemon_process(p).pid == daemon.pid
    assert p.run("cat attached 2>/dev/null || echo no")["stdout"].strip() == "no"
    p.stop()
