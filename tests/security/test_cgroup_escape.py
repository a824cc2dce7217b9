"""Issue 14, item 3: a process must not outlive the exec or job that started it by moving
itself between cgroups (nor by setsid, double fork or renaming itself).

Each attack runs as project user code through the public API of a real server, in a
throw-away project: a child tries to move itself out of its exec's group (into the
project's group through ``cgroup.procs`` and ``tasks``, into a live sibling job's group,
into a group it made itself), then setsid-double-forks a ``sleep`` carrying a marker and
renamed with ``exec -a``.  The exec then times out (blocking) or its async job is killed
or times out.  The check is from the host: no process of the project's uid is left but
those that were there before the attack (the daemon and its helpers), and none carries
the marker.  Also: the project cannot write any cgroup control file (its limits, its
exec group's sub-limits, the freezer).
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

import httpx
import psutil
import pytest

from tests.security.conftest import (Proj, project_cgroup_dirs, require_cgroup, require_sandbox,
                                     wait_until)

pytestmark = pytest.mark.timeout(240)

# Shell helpers run inside the project.  ``own DIRS``: this process's cgroup directories
# as the sandbox sees them (v1: one per controller; v2: the unified one).
_HELPERS = r'''
own() {  # $1: pid
  while IFS=: read -r _ ctrls path; do
    case "$ctrls" in name=*) continue;; esac
    if [ -z "$ctrls" ]; then d="/sys/fs/cgroup$path"; else d="/sys/fs/cgroup/${ctrls%%,*}$path"; fi
    [ -d "$d" ] && echo "$d"
  done < /proc/$1/cgroup
}
try_write() {  # $1: file, $2: value
  if (echo "$2" > "$1") 2>/dev/null; then echo "WROTE $1" >&2; else echo "denied $1" >&2; fi
}
'''

_ESCAPE = {
    # into the project's own group (the daemon's), both ways v1 offers
    "procs": 'for d in $(own $BASHPID); do try_write "$(dirname "$d")/cgroup.procs" $BASHPID; done',
    "tasks": 'for d in $(own $BASHPID); do try_write "$(dirname "$d")/tasks" $BASHPID; done',
    # into a group it creates next to its own
    "mkdir": ('for d in $(own $BASHPID); do n="$(dirname "$d")/evil-$TOKEN"; '
              'mkdir "$n" 2>/dev/null && echo "MKDIR $n" >&2; try_write "$n/cgroup.procs" $BASHPID; done'),
    # into the group of a sibling job that keeps running
    "sibling": ('sib=$(pgrep -f "sleep 4321.$TOKEN" | head -1); '
                'for d in $(own "$sib"); do try_write "$d/cgroup.procs" $BASHPID; done'),
}


def _attack(mode: str, token: str) -> str:
    """Bash for the exec under attack: the escapee, then a long sleep the timeout ends."""
    return (f"TOKEN={token}\n{_HELPERS}\n"
            f"( {_ESCAPE[mode]}\n"
            # setsid + double fork + a new name: only the cgroup can still find it
            f"  setsid -f bash -c 'exec -a kworker/0:1 sleep 1234.{token}' ) &\n"
            "wait\nsleep 60\n")


def _uid_procs(uid: int) -> dict[int, str]:
    out = {}
    for proc in psutil.process_iter(["uids", "cmdline", "status"]):
        try:
            if proc.info["uids"].real == uid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                out[proc.pid] = " ".join(proc.info["cmdline"] or [])
        except (psutil.Error, TypeError):
            pass
    return out


def _marked(token: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(f"1234.{token}" in a for a in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def _conat_exec(p: Proj, opts: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(p.server.url + "/api/conat/project",
                   json={"name": "system.exec", "args": [opts], "project_id": p.project_id},
                   headers={"Authorization": f"Bearer {p.key}"}, timeout=90)
    assert r.status_code == 200, r.text
    return r.json()


def _ready(p: Proj) -> tuple[int, dict[int, str]]:
    """The project's uid and its processes at rest (daemon and helpers)."""
    assert p.run("true")["exit_code"] == 0
    uid = p.uid()
    assert uid is not None
    time.sleep(0.5)
    return uid, _uid_procs(uid)


def _assert_nothing_survives(uid: int, before: dict[int, str], token: str, detail: str) -> None:
    def clean() -> bool:
        return not _marked(token) and set(_uid_procs(uid)) <= set(before)
    ok = wait_until(clean, timeout=5.0)
    left = {pid: cmd for pid, cmd in _uid_procs(uid).items() if pid not in before}
    for proc in _marked(token):   # never leave the escapee behind for the next test
        proc.kill()
    assert ok, f"processes outlived their exec: {left}\n{detail}"


def _start_sibling(p: Proj, token: str) -> str:
    sib = _conat_exec(p, {"command": f"exec sleep 4321.{token}", "bash": True, "async_call": True,
                          "timeout": 120})
    assert sib.get("job_id"), sib
    return sib["job_id"]


@pytest.mark.parametrize("mode", sorted(_ESCAPE))
def test_blocking_exec_timeout_kills_a_cgroup_migrant(fresh_a, mode: str) -> None:
    require_sandbox()
    require_cgroup("pids")
    a = fresh_a()
    uid, before = _ready(a)
    token = str(secrets.randbelow(10**9))
    sibling = _start_sibling(a, token) if mode == "sibling" else None
    if sibling:
        assert wait_until(lambda: any(f"4321.{token}" in c for c in _uid_procs(uid).values()))
        before = _uid_procs(uid)   # the sibling job may live on: it is not the attacker's exec
    out = a.run(_attack(mode, token), timeout=3)
    assert out["killed_by"] == "timeout", out
    try:
        _assert_nothing_survives(uid, before, token, out["stderr"])
    finally:
        if sibling:
            a.v3("DELETE", f"/jobs/{sibling}")
    assert "WROTE" not in out["stderr"] and "MKDIR" not in out["stderr"], out["stderr"]


@pytest.mark.parametrize("end", ["kill", "timeout"])
def test_async_job_end_kills_a_cgroup_migrant(fresh_a, end: str) -> None:
    require_sandbox()
    require_cgroup("pids")
    a = fresh_a()
    uid, before = _ready(a)
    token = str(secrets.randbelow(10**9))
    job = _conat_exec(a, {"command": _attack("procs", token), "bash": True, "async_call": True,
                          "timeout": 3 if end == "timeout" else 60})
    assert job.get("job_id"), job
    assert wait_until(lambda: bool(_marked(token)), timeout=10), "the escapee never started"
    if end == "kill":
        r = a.v3("DELETE", f"/jobs/{job['job_id']}")
        assert r.status_code == 200, r.text
    final = _conat_exec(a, {"async_get": job["job_id"], "async_await": True})
    assert final["status"] in ("error", "killed"), final
    _assert_nothing_survives(uid, before, token, str(final))


def test_project_cannot_write_any_cgroup_control_file(fresh_a) -> None:
    """Raising its own limits (project group or its exec's group), freezing or killing
    groups: every cgroup file is the host's, the project can only read."""
    require_sandbox()
    require_cgroup("pids")
    a = fresh_a(memory_bytes=256 * 2**20, pids=64)
    script = _HELPERS + r'''
for d in $(own $$); do
  for f in memory.limit_in_bytes memory.memsw.limit_in_bytes memory.max memory.high pids.max \
           cpu.max cpu.cfs_quota_us freezer.state cgroup.freeze cgroup.kill cgroup.subtree_control \
           notify_on_release; do
    [ -e "$d/$f" ] && try_write "$d/$f" max
    [ -e "$(dirname "$d")/$f" ] && try_write "$(dirname "$d")/$f" max
  done
  [ -e "$d/memory.limit_in_bytes" ] && try_write "$d/memory.limit_in_bytes" 8G
  [ -e "$(dirname "$d")/memory.limit_in_bytes" ] && try_write "$(dirname "$d")/memory.limit_in_bytes" 8G
  [ -e "$(dirname "$d")/pids.max" ] && try_write "$(dirname "$d")/pids.max" 100000
  [ -e "$d/pids.max" ] && try_write "$d/pids.max" 100000
done
echo checked
'''
    out = a.run(script, timeout=20)
    assert out["stdout"] == "checked\n", out
    assert "denied" in out["stderr"], out["stderr"]          # it did find the files
    assert "WROTE" not in out["stderr"], out["stderr"]
    limits = a.v3("GET", "/limits").json()
    assert limits["pids"] == 64 and limits["memory_bytes"] == 256 * 2**20


def test_no_cgroup_file_or_dir_of_a_project_is_the_projects(fresh_a) -> None:
    """Host side: nothing under a running project's cgroup directories is owned by or
    writable for its uid (no delegation: the daemon writes through descriptors the host
    opened, see projecthub/host/sandbox/cgroups.py)."""
    require_sandbox()
    require_cgroup("pids")
    a = fresh_a()
    uid, _ = _ready(a)
    dirs = project_cgroup_dirs(a.project_id)
    assert dirs
    bad = []
    for top in dirs:
        for root, _subdirs, files in os.walk(top):
            for path in (root, *(os.path.join(root, f) for f in files)):
                st = os.stat(path)
                if st.st_uid == uid or st.st_gid == uid or st.st_mode & 0o002:
                    bad.append(path)
    assert not bad, bad[:20]
