"""The daemon's state dir is the project's own: nothing planted there may keep the project
from starting (adversarial review item 6).

``/var/lib/projecthub/jobs/<uuid>/job.json`` is read at every daemon start, before it is
ready, and ``/var/lib/projecthub/daemon.log`` is opened for logging then.  One malformed
job.json (a missing ``start``, a list instead of an object, ...) killed the daemon at every
start, and the hub put the daemon's traceback (with host paths) into the API answer; a FIFO
at daemon.log blocked every start for the full 30 s.  Now bad job files are renamed
``job.json.bad`` and skipped, the log is opened without blocking or following links, and a
daemon that does die at start is reported without its stderr.
"""

from __future__ import annotations

import json
import shlex
import time

from tests.security.conftest import Proj, require_sandbox

JOBS = "/var/lib/projecthub/jobs"

# (job id, job.json content): each one crashed JobManager.load() or would block/misdirect it
BAD_JOBS: list[tuple[str, str]] = [
    ("11111111-2222-4333-8444-555555555555", '{"meta": {"x": 1}, "record": {"status": "done"}}'),
    ("11111111-2222-4333-8444-555555555556", '{"meta": [], "record": []}'),
    ("11111111-2222-4333-8444-555555555557", '[1, 2, 3]'),
    ("11111111-2222-4333-8444-555555555558",
     '{"meta": {"start": "yesterday", "group": 7}, "record": {"status": "running"}}'),
    ("11111111-2222-4333-8444-555555555559",
     '{"meta": {"start": 1, "group": "../../x", "native": "yes"}, '
     '"record": {"status": "running", "job_id": "11111111-2222-4333-8444-555555555559", "start": 1}}'),
    ("11111111-2222-4333-8444-55555555555a", "NESTED"),   # 100k-deep brackets, made in the project
    ("11111111-2222-4333-8444-55555555555b", '{"meta": {"start": 1e999}, "record": null}'),
]


def _no_host_detail(text: str) -> None:
    for leak in ("Traceback", 'File "', "/work/", "projecthub/project", ".py"):
        assert leak not in text, text


def _restart(p: Proj) -> float:
    """Stop, then start; the seconds the start took (it must answer 200)."""
    p.stop()
    t0 = time.monotonic()
    r = p.v3("POST", "/start", timeout=60)
    took = time.monotonic() - t0
    _no_host_detail(r.text)
    assert r.status_code == 200, r.text
    return took


def test_malformed_job_files_never_keep_the_project_from_starting(fresh_a) -> None:
    require_sandbox()
    p: Proj = fresh_a()
    # a real finished async job, which must survive the restart
    r = p.v3("POST", "/exec", {"command": "echo kept", "bash": True, "async": True})
    assert r.status_code == 200, r.text
    good = r.json()["job_id"]
    deadline = time.monotonic() + 20
    while p.v3("GET", f"/jobs/{good}").json().get("status") == "running" and time.monotonic() < deadline:
        time.sleep(0.1)

    # a FIFO as job.json too: reading it would block the start
    fifo = "11111111-2222-4333-8444-55555555555c"
    plant = (f"import json, os\njobs = json.loads({json.dumps(json.dumps(BAD_JOBS))})\n"
             "for job_id, text in jobs:\n"
             "    if text == 'NESTED':\n"
             "        text = '[' * 100000 + ']' * 100000\n"
             f"    os.makedirs('{JOBS}/' + job_id, exist_ok=True)\n"
             f"    open('{JOBS}/' + job_id + '/job.json', 'w').write(text)\n"
             f"os.makedirs('{JOBS}/{fifo}', exist_ok=True)\n"
             f"os.mkfifo('{JOBS}/{fifo}/job.json')\n"
             "print('planted')\n")
    out = p.run(f"python3 -c {shlex.quote(plant)}")
    assert out["stdout"] == "planted\n", out

    took = _restart(p)
    assert took < 20, took
    out = p.run("echo alive; ls " + JOBS + "/*/job.json.bad | wc -l")
    assert out["stdout"].split() == ["alive", str(len(BAD_JOBS) + 1)], out   # + the FIFO
    # the good job is still known, the bad ones are not
    r = p.v3("GET", f"/jobs/{good}")
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    assert "kept" in r.json()["stdout"]
    for job_id, _ in BAD_JOBS:
        r = p.v3("GET", f"/jobs/{job_id}")
        assert r.status_code == 404, r.text
        _no_host_detail(r.text)
    # a second restart with the quarantined files still there also works
    _restart(p)
    assert p.run("echo again")["stdout"] == "again\n"


def test_job_file_replaced_after_start_answers_not_found(fresh_a) -> None:
    require_sandbox()
    p: Proj = fresh_a()
    r = p.v3("POST", "/exec", {"command": "echo hi", "bash": True, "async": True})
    assert r.status_code == 200, r.text
    job_id = r.json()["job_id"]
    time.sleep(1.0)
    out = p.run(f"echo '{{\"meta\": 1}}' > {JOBS}/{job_id}/job.json && echo ok")
    assert out["stdout"] == "ok\n", out
    r = p.v3("GET", f"/jobs/{job_id}")
    assert r.status_code in (404, 200), r.text    # never a 5xx or a traceback
    _no_host_detail(r.text)
    assert p.run("echo fine")["stdout"] == "fine\n"


def test_fifo_as_daemon_log_does_not_block_the_start(fresh_a) -> None:
    require_sandbox()
    p: Proj = fresh_a()
    out = p.run("rm -f /var/lib/projecthub/daemon.log && mkfifo /var/lib/projecthub/daemon.log && echo ok")
    assert out["stdout"] == "ok\n", out
    took = _restart(p)
    assert took < 15, f"the start took {took:.1f} s (a FIFO at daemon.log blocked it)"
    assert p.run("echo alive")["stdout"] == "alive\n"
    # and with a symlink to somewhere else of the project's, the link is not followed
    out = p.run("rm -f /var/lib/projecthub/daemon.log && ln -s /home/user/victim.txt "
                "/var/lib/projecthub/daemon.log && echo ok")
    assert out["stdout"] == "ok\n", out
    _restart(p)
    assert p.run("test -e /home/user/victim.txt && echo followed || echo not-followed")["stdout"] \
        == "not-followed\n"
