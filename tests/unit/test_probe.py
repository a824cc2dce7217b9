"""probe(): every layer is checked for real, and missing ones are reported loudly."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest

from projecthub.host.sandbox import CapabilityReport, Layer, probe
from tests.unit.test_sandbox_support import IS_ROOT, bwrap_works, cgroups_work, require, unique_names

EXPECTED = {"bwrap", "uid-per-project", "mount-namespace", "pid-namespace", "ipc-namespace",
            "uts-namespace", "net-namespace", "no-new-privs", "capability-drop", "tmp-size-limit",
            "cgroup-memory", "cgroup-pids", "cgroup-cpu", "cgroup-kill"}


@pytest.fixture
def data_dir():
    d = tempfile.mkdtemp(prefix="phprobe", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _probe(data_dir, **kw) -> CapabilityReport:
    root_name, uid_range = unique_names()
    rep = probe(data_dir, cgroup_root_name=root_name, uid_range=uid_range, **kw)
    for point in ("memory", "pids", "cpu", "cpuacct", "freezer"):  # the probe leaves no group behind
        assert not os.path.exists(f"/sys/fs/cgroup/{point}/{root_name}/probe-{os.getpid()}")
        if os.path.isdir(f"/sys/fs/cgroup/{point}/{root_name}"):
            os.rmdir(f"/sys/fs/cgroup/{point}/{root_name}")
    return rep


def test_report_names_every_layer(data_dir):
    rep = _probe(data_dir)
    names = {layer.name for layer in rep.layers}
    assert EXPECTED <= names
    assert all(isinstance(layer, Layer) and isinstance(layer.detail, str) and layer.detail
               for layer in rep.layers)
    j = rep.to_json()
    json.dumps(j)
    assert j["all_enforced"] == rep.all_enforced and set(j["missing"]) == set(rep.missing())
    assert rep.mode in ("bwrap", "bwrap-rootless", "none")


def test_everything_enforced_as_root_with_bwrap_and_cgroups(data_dir):
    require("uid per project (server must run as root)", IS_ROOT)
    require("bubblewrap (bwrap installed and working)", bwrap_works())
    require("cgroups (memory+pids writable)", cgroups_work())
    rep = _probe(data_dir)
    assert rep.all_enforced, rep.to_text()
    assert rep.mode == "bwrap" and rep.cgroup_version in ("v1", "v2")
    assert "WARNING" not in rep.to_text()


def test_mode_none_is_loud(data_dir):
    rep = _probe(data_dir, mode="none")
    assert rep.mode == "none" and not rep.all_enforced
    text = rep.to_text()
    assert "WARNING" in text and "NO SANDBOX" in text
    for ns in ("mount-namespace", "pid-namespace", "net-namespace"):
        assert not rep.enforced(ns)
    if IS_ROOT:  # the uid drop still happens without bwrap
        assert rep.enforced("uid-per-project"), text


def test_bad_mode_is_rejected(data_dir):
    with pytest.raises(ValueError, match="^mode:"):
        probe(data_dir, mode="docker")
