"""project/recycle.py: the guard and the command line of the daemon's re-exec in place."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from projecthub.project import daemon, recycle
from tests.conftest import require

PROBE = [sys.executable, "-c", "from projecthub.project.recycle import alone_in_sandbox as a; print(a())"]


def in_pid_namespace(shell: str) -> str:
    require("root (unshare --pid)", os.geteuid() == 0)
    require("unshare", shutil.which("unshare") is not None)
    out = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", shell],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_alone_when_the_namespace_holds_only_init_and_us() -> None:
    probe = " ".join(f"'{a}'" for a in PROBE)
    assert in_pid_namespace(probe) == "True"            # sh (pid 1) waits for us
    assert in_pid_namespace(f"exec {probe}") == "True"  # we are pid 1


def test_not_alone_with_any_other_process() -> None:
    probe = " ".join(f"'{a}'" for a in PROBE)
    assert in_pid_namespace(f"sleep 30 & {probe}; kill $!") == "False"
    assert in_pid_namespace(f"sleep 30 & exec {probe}") == "False"


def test_never_alone_outside_a_pid_namespace() -> None:
    assert recycle.alone_in_sandbox() is False


def test_exec_argv_keeps_the_boot_and_options_and_carries_the_identity() -> None:
    options = ["--project-id", "p1", "--home", "/home/user", "--listen-fd", "7",
               "--state-dir", "/s", "--tmp-dir=/t", "--settings", '{"a": 1}', "--ready-fd", "9"]
    orig = ["/env/bin/python", "-I", "-c", "BOOT", "/opt/lib", *options]
    opts = daemon._parse(options)
    argv = recycle.exec_argv(orig, opts.option_count, opts, 4100, "abc123", 1234.5)
    assert argv[:5] == orig[:5]
    again = daemon._parse(argv[5:])
    assert (again.project_id, again.home, again.state_dir, again.tmp_dir, again.settings) == \
        ("p1", "/home/user", "/s", "/t", '{"a": 1}')
    assert again.listen_fd == 4100 and again.ready_fd == -1, "the ready pipe was used once"
    assert again.instance_id == "abc123" and again.started == 1234.5


def test_started_must_be_a_number() -> None:
    with pytest.raises(SystemExit) as info:
        daemon._parse(["--project-id", "p", "--home", "h", "--socket", "s", "--state-dir", "d",
                       "--started", "soon"])
    assert info.value.code == 2
