"""Disk filling (issue 14 item 4): one project filling its home must not take down other
projects or the hub.  ``disk_bytes`` is enforced by a per-project loop-mounted ext4 image
(projecthub/host/sandbox/disk.py); these tests fill it for real through the public API.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx

from projecthub.host.sandbox.bwrap import STATE_INSIDE

from tests.conftest import require
from tests.security.conftest import Proj, new_project, require_sandbox, wait_until
from tests.server import Account, Server

MiB = 2**20


def require_loop() -> None:
    require_sandbox()
    require("loop devices (/dev/loop-control) for disk_bytes images", os.path.exists("/dev/loop-control"))


def _loops_of(project: Proj) -> list[str]:
    """Loop devices whose backing file is this project's image."""
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, timeout=10).stdout
    base = str(project.server.data_dir / "projects" / project.project_id)
    return [line for line in out.splitlines() if base in line]


def _mounted_under(project: Proj) -> list[str]:
    base = str(project.server.data_dir / "projects" / project.project_id) + "/"
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(base)]


def can_grow_online() -> bool:
    """ext4 online resize needs CAP_SYS_RESOURCE (bit 24), which some containers withhold."""
    with open("/proc/self/status") as f:
        cap = next(line for line in f if line.startswith("CapEff:"))
    return bool(int(cap.split()[1], 16) >> 24 & 1)


def _size_kib(project: Proj, path: str = "~") -> int:
    out = project.run(f"df -k --output=size {path} | tail -n 1")
    assert out["exit_code"] == 0, out
    return int(out["stdout"].strip())


def _fill(project: Proj, path: str, mib: int = 200) -> dict:
    return project.run(f"head -c {mib}M /dev/zero > {path}; echo rc=$?; sync; du -k {path} | cut -f1",
                       timeout=60)


def test_a_full_project_gets_enospc_and_nobody_else_notices(fresh_a, proj_b: Proj, server: Server,
                                                           alice: Account) -> None:
    require_loop()
    a = fresh_a(disk_bytes="64M")
    assert a.v3("GET", "/limits").json()["disk_bytes"] == 64 * MiB
    result = _fill(a, "fill")
    assert "No space left on device" in result["stderr"], result
    assert "rc=1" in result["stdout"], result
    written_kib = int(result["stdout"].split()[-1])
    assert 40 * 1024 <= written_kib <= 64 * 1024, result   # ENOSPC at ~the limit, not before
    # the daemon's state dir (job output, writable by the project) is inside the same limit
    more = _fill(a, f"{STATE_INSIDE}/fill", 8)
    assert "rc=0" not in more["stdout"] and "No space left on device" in more["stderr"], more

    # A is full: B still writes, and the hub still creates projects and keys
    out = proj_b.run("head -c 16M /dev/zero > b-fill && du -k b-fill | cut -f1 && rm b-fill")
    assert out["exit_code"] == 0 and int(out["stdout"].split()[0]) >= 16 * 1024, out
    headers = {"Authorization": f"Bearer {alice.api_key}"}
    r = httpx.post(server.url + "/api/v3/projects", json={"title": "while A is full"}, headers=headers,
                   timeout=30)
    assert r.status_code == 201, r.text
    created = httpx.post(server.url + "/api/conat/hub", headers=headers, timeout=30,
                         json={"name": "system.manageApiKeys", "args": [{"action": "create", "name": "k"}]})
    assert created.status_code == 200 and "secret" in created.json()[0], created.text
    # and A itself still runs commands and recovers once it deletes
    assert a.run(f"rm -f fill {STATE_INSIDE}/fill && echo ok")["stdout"] == "ok\n"
    assert a.run("head -c 8M /dev/zero > again && echo ok")["stdout"] == "ok\n"


def test_limit_changes_by_v3_and_cli_apply_and_data_survives_stop_start(fresh_a, server: Server) -> None:
    require_loop()
    a = fresh_a(disk_bytes="64M")
    assert a.run("head -c 20M /dev/urandom > data && md5sum data > data.md5 && echo ok")["stdout"] == "ok\n"
    assert 50 * 1024 <= _size_kib(a) <= 64 * 1024
    assert _loops_of(a), "the running project has no loop device: its image is not mounted"

    # v3: growing applies live (where the host has CAP_SYS_RESOURCE, else at the next
    # start); shrinking below what is stored is refused clearly
    # the owner may only tighten its current limits (review item 5): growing is an admin's call
    assert a.v3("PUT", "/limits", {"disk_bytes": "128M"}).status_code == 403
    admin = server.cli("account", "create", "--name", "Disk Admin", "--admin")
    r = httpx.post(server.url + "/api/conat/hub", headers={"Authorization": f"Bearer {a.key}"},
                   json={"name": "projects.addCollaborator",
                         "args": [{"opts": {"project_id": a.project_id, "account_id": admin["account_id"]}}]},
                   timeout=30)
    assert r.status_code == 200 and "error" not in r.json(), r.text
    r = a.v3("PUT", "/limits", {"disk_bytes": "128M"}, key=admin["api_key"])
    assert r.status_code == 200 and r.json()["disk_bytes"] == 128 * MiB, r.text
    if not can_grow_online():
        a.stop()
    assert 110 * 1024 <= _size_kib(a) <= 128 * 1024
    r = a.v3("PUT", "/limits", {"disk_bytes": "16M"})
    assert r.status_code == 409 and "disk_bytes" in r.json()["error"], r.text
    bad = a.v3("PUT", "/limits", {"disk_bytes": "lots"})
    assert bad.status_code == 400 and "disk_bytes" in bad.json()["error"], bad.text

    # stop: the image is unmounted and its loop device released
    a.stop()
    assert wait_until(lambda: not _loops_of(a), 5), _loops_of(a)
    assert _mounted_under(a) == []

    # CLI (the admin's tool): a smaller limit applies at the next start; data survives
    out = server.cli("project", "limits", "--project", a.project_id, "--set", "disk_bytes=96M")
    assert out["limits"]["disk_bytes"] == 96 * MiB
    assert 80 * 1024 <= _size_kib(a) <= 96 * 1024
    assert a.run("md5sum -c data.md5")["exit_code"] == 0
    refused = subprocess.run([*_cli(), "project", "limits", "--project", a.project_id, "--set",
                              "disk_bytes=16M", "--data-dir", str(server.data_dir)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "disk_bytes" in refused.stdout, refused
    a.stop()
    assert wait_until(lambda: not _loops_of(a), 5)


def test_an_old_plain_home_is_moved_into_the_image_without_loss(server: Server, alice: Account) -> None:
    """A project from before disk limits: plain home/state dirs with files, no image."""
    require_loop()
    p = new_project(server, alice, "old layout", disk_bytes="64M")
    assert p.run("mkdir -p sub && echo kept > sub/f && ln -s sub/f link && echo ok")["stdout"] == "ok\n"
    uid = p.uid()
    p.stop()
    base = server.data_dir / "projects" / p.project_id
    # rebuild the layout the old code left behind: plain dirs owned by the project uid
    (base / "disk.img").unlink()
    home = base / "home"
    (home / "sub").mkdir(parents=True)
    (home / "sub" / "f").write_text("kept\n")
    (home / "link").symlink_to("sub/f")
    (home / "big").write_bytes(os.urandom(3 * MiB))
    for path in (home, home / "sub", home / "sub" / "f", home / "big"):
        os.chown(path, uid, uid)
    os.lchown(home / "link", uid, uid)
    out = p.run("cat link && stat -c %U sub/f && du -k big | cut -f1 && df -k --output=size ~ | tail -n 1")
    assert out["exit_code"] == 0, out
    lines = out["stdout"].split()
    assert lines[0] == "kept" and lines[1] != "root" and int(lines[2]) >= 3 * 1024, out
    assert int(lines[3]) <= 64 * 1024, "the migrated home is not inside the 64 MiB image"
    p.stop()
    assert wait_until(lambda: not _loops_of(p), 5)
    # the plain directory underneath was emptied: the data lives only in the image now
    assert list(home.iterdir()) == []


def test_stop_all_unmounts_every_image(tmp_path: Path) -> None:
    require_loop()
    srv = Server(tmp_path).start()
    try:
        acct = srv.new_account("Disk")
        p = new_project(srv, acct, "stop-all", disk_bytes="32M")
        assert p.run("echo hi > f && echo ok")["stdout"] == "ok\n"
        assert _loops_of(p)
    finally:
        srv.stop()
        srv.cli("stop-all")
    assert not _loops_of(p) and _mounted_under(p) == []


def _cli() -> list[str]:
    from tests.server import PROJECTHUB
    return list(PROJECTHUB)


def test_a_full_data_disk_answers_507_not_500_and_recovers(tmp_path: Path) -> None:
    """Images are sparse, so many projects together can still fill the data disk (or
    something else on the machine can).  The hub must then say so clearly -- 507 with a
    message, never a 500 -- refuse to start projects, and recover once space is freed."""
    require_loop()
    img, data = tmp_path / "data.img", tmp_path / "data"
    data.mkdir()
    subprocess.run(["truncate", "-s", "96M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(img)], check=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(data)], check=True)
    srv = None
    try:
        srv = Server(data, extra_args=["--spare-projects", "0",
                                       "--default-limits", '{"disk_bytes": "16M"}']).start()
        acct = srv.new_account("Full")
        headers = {"Authorization": f"Bearer {acct.api_key}"}
        p = new_project(srv, acct, "before")
        assert p.run("echo ok")["stdout"] == "ok\n"
        p.stop()
        filler = data / "filler"
        with open(filler, "wb") as f:   # the machine's disk fills up (not through a project)
            try:
                while True:
                    f.write(b"\0" * MiB)
                    f.flush()
            except OSError:
                pass
        statuses = []
        for i in range(200):   # SQLite first reuses free pages: go until a write really fails
            r = httpx.post(srv.url + "/api/v3/projects", json={"title": f"t{i}" * 200}, headers=headers,
                           timeout=30)
            statuses.append(r.status_code)
            if r.status_code != 201:
                break
        assert statuses[-1] == 507, (statuses[-5:], r.text)
        assert "insufficient storage" in r.json()["error"], r.text
        # starting a project needs room for its image: refused clearly, not a 500
        start = p.v3("POST", "/start")
        assert start.status_code == 507 and "insufficient storage" in start.json()["error"], start.text
        assert 500 not in statuses
        filler.unlink()
        r = httpx.post(srv.url + "/api/v3/projects", json={"title": "after"}, headers=headers, timeout=30)
        assert r.status_code == 201, r.text
        assert p.run("echo back")["stdout"] == "back\n"
        p.stop()
    finally:
        if srv is not None:
            srv.stop()
            srv.cli("stop-all")
        subprocess.run(["umount", str(data)], check=False)


# --------------------------------------------------- review of issue 14: the shared data disk

@contextlib.contextmanager
def _small_data_disk(tmp_path: Path, size: str = "96M", disk_bytes: str = "48M") -> Iterator[Server]:
    """A server whose data dir is its own small ext4 filesystem (stands in for a data disk
    smaller than the sum of the projects' limits)."""
    img, data = tmp_path / "data.img", tmp_path / "data"
    data.mkdir()
    subprocess.run(["truncate", "-s", size, str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(img)], check=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(data)], check=True)
    srv = None
    try:
        srv = Server(data, extra_args=["--spare-projects", "0",
                                       "--default-limits", f'{{"disk_bytes": "{disk_bytes}"}}']).start()
        yield srv
    finally:
        if srv is not None:
            srv.stop()
            srv.cli("stop-all")
        subprocess.run(["umount", str(data)], check=False)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_running_projects_never_overcommit_the_data_disk_and_deletes_free_it(tmp_path: Path) -> None:
    """Review finding 1: a 96 MiB data disk, two projects of 48 MiB each.  Before, both
    started and the first to fill the disk made the other's synced writes vanish (loop I/O
    errors); and space a project deleted never came back to the data disk."""
    require_loop()
    with _small_data_disk(tmp_path) as srv:
        acct = srv.new_account("Commit")
        a = new_project(srv, acct, "a")
        assert a.run("echo ok")["stdout"] == "ok\n"
        v = new_project(srv, acct, "victim")
        r = v.v3("POST", "/start")
        assert r.status_code == 507, r.text
        err = r.json()["error"]
        assert "insufficient storage" in err and "running projects may still write" in err, err
        assert not (srv.data_dir / "projects" / v.project_id / "disk.img").exists()

        # what A deletes goes back to the data disk (discard), while it runs
        free0 = _free(srv.data_dir)
        out = a.run("head -c 30M /dev/urandom > f && sync && echo ok", timeout=60)
        assert out["stdout"] == "ok\n", out
        assert _free(srv.data_dir) <= free0 - 28 * MiB
        assert a.run("rm f && sync && echo ok")["stdout"] == "ok\n"
        assert wait_until(lambda: _free(srv.data_dir) >= free0 - 2 * MiB, 5), (free0, _free(srv.data_dir))

        # once A stops, the victim starts and keeps what it syncs
        a.stop()
        assert v.run("head -c 20M /dev/urandom > v && md5sum v > v.md5 && sync && echo ok",
                     timeout=60)["stdout"] == "ok\n"
        v.stop()
        assert v.run("md5sum -c v.md5")["exit_code"] == 0
        v.stop()


def test_deleting_a_project_deletes_its_image_and_frees_the_data_disk(tmp_path: Path) -> None:
    """Review finding 1: a deleted project kept its image (and its bytes) forever, so
    create -> fill -> delete -> repeat consumed the disk with no cap.  Now it is released at
    once and purged after the grace period, at once by ``project purge``, and before any
    start the full disk would refuse (tests/integration/test_purge.py)."""
    require_loop()
    with _small_data_disk(tmp_path) as srv:
        acct = srv.new_account("Delete")
        free0 = _free(srv.data_dir)
        p = new_project(srv, acct, "doomed")
        assert p.run("head -c 30M /dev/urandom > f && sync && echo ok", timeout=60)["stdout"] == "ok\n"
        base = srv.data_dir / "projects" / p.project_id
        assert _free(srv.data_dir) <= free0 - 28 * MiB and (base / "disk.img").exists()
        r = httpx.delete(f"{srv.url}/api/v3/projects/{p.project_id}",
                         headers={"Authorization": f"Bearer {acct.api_key}"}, timeout=60)
        assert r.status_code == 204, r.text
        assert base.exists() and _mounted_under(p) == [] and wait_until(lambda: not _loops_of(p), 5)
        assert srv.cli("project", "purge", "--project", p.project_id)["freed_bytes"] >= 30 * MiB
        assert not base.exists()
        assert _free(srv.data_dir) >= free0 - 2 * MiB, (free0, _free(srv.data_dir))


def test_the_image_root_is_not_traversable_and_the_applied_size_is_reported(fresh_a, server: Server) -> None:
    """Review findings 10 (mount point showed the image root's 0755) and 8 (a shrink the
    API accepted could fail at start while GET limits reported it applied)."""
    require_loop()
    a = fresh_a()   # the default 10 GiB: 4 KiB blocks, 8192 inodes per 128 MiB group
    assert a.run("echo ok")["stdout"] == "ok\n"
    mnt = server.data_dir / "projects" / a.project_id / "disk"
    assert mnt.stat().st_mode & 0o777 == 0o700 and mnt.stat().st_uid == 0
    size = a.v3("GET", "/limits").json()["disk_bytes"]
    assert a.info()["status"]["disk_bytes_applied"] == size
    # many inodes pin block groups: the minimum size is far above the bytes used
    out = a.run("mkdir many && cd many && seq 1 20000 | xargs touch && echo ok", timeout=60)
    assert out["stdout"] == "ok\n", str(out)
    # while it runs the minimum cannot be read (stale on-disk counters): accepted, it fails
    # at the next start, which keeps the old size -- and says so in the project's status
    assert a.set_limits(disk_bytes="256M")["disk_bytes"] == 256 * MiB
    a.stop()
    assert a.run("echo ok")["stdout"] == "ok\n"
    assert a.info()["status"]["disk_bytes_applied"] == size
    a.stop()
    # stopped, it is refused up front, naming the minimum
    r = a.v3("PUT", "/limits", {"disk_bytes": "200M"})
    assert r.status_code == 409 and "cannot shrink below" in r.json()["error"], r.text
