"""disk.py: per-project ext4 images -- create, mount, fill, resize, migrate, unmount.

Real images, real loop devices, real ENOSPC (root only; skipped elsewhere, failed under CI).
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from projecthub.host.sandbox import ProjectLimits, disk
from tests.conftest import require

MiB = 2**20


def _loops() -> str:
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True, timeout=10).stdout


@pytest.fixture
def base():
    require("root and loop devices", os.geteuid() == 0 and os.path.exists("/dev/loop-control"))
    require("e2fsprogs", shutil.which("mkfs.ext4") is not None)
    d = Path(tempfile.mkdtemp(prefix="phdisk", dir="/tmp")) / "projects" / "p1"
    d.mkdir(parents=True)
    yield d
    disk.detach(d)
    assert str(d) not in _loops(), "a loop device outlived detach"
    shutil.rmtree(d.parent.parent, ignore_errors=True)


def _fill(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"x" * MiB)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return path.stat().st_size


def test_attach_bounds_home_and_state_and_detach_leaves_nothing(base: Path) -> None:
    disk.attach(base, 32 * MiB)
    assert disk.attached(base) and disk.is_mounted(base / "home") and disk.is_mounted(base / "state")
    assert (base / "disk.img").stat().st_mode & 0o777 == 0o600
    assert (base / "disk.img").stat().st_blocks * 512 < 8 * MiB, "the image is not sparse"
    assert str(base / "disk.img") in _loops()
    home = _fill(base / "home" / "a")
    state = _fill(base / "state" / "b")           # one limit for both
    assert 20 * MiB <= home + state <= 32 * MiB
    disk.attach(base, 32 * MiB)                   # idempotent while mounted
    disk.detach(base)
    assert not disk.attached(base) and not disk.is_mounted(base / "home")
    assert str(base / "disk.img") not in _loops()
    assert list((base / "home").iterdir()) == []  # the plain dir underneath stayed empty
    disk.attach(base, 32 * MiB)                   # data survives detach/attach
    assert (base / "home" / "a").stat().st_size == home


def test_a_plain_home_is_migrated_with_owners_links_and_modes(base: Path) -> None:
    home, state = base / "home", base / "state"
    (home / "sub").mkdir(parents=True)
    state.mkdir()
    (home / "sub" / "f").write_text("kept")
    os.chmod(home / "sub" / "f", 0o640)
    os.chown(home / "sub" / "f", 12345, 12345)
    os.link(home / "sub" / "f", home / "hard")
    (home / "link").symlink_to("/etc/passwd")    # copied as a link, never followed
    (state / "jobs").mkdir()
    (state / "jobs" / "j").write_text("job")
    disk.attach(base, 32 * MiB)
    assert disk.attached(base)
    f = home / "sub" / "f"
    assert f.read_text() == "kept" and f.stat().st_uid == 12345 and f.stat().st_mode & 0o777 == 0o640
    assert os.readlink(home / "link") == "/etc/passwd"
    assert os.stat(home / "hard").st_ino == f.stat().st_ino
    assert (state / "jobs" / "j").read_text() == "job"
    disk.detach(base)
    assert list(home.iterdir()) == [] and list(state.iterdir()) == []   # the data disk is freed
    assert not (base / "disk.img.new").exists()


def test_a_home_bigger_than_its_limit_keeps_its_data(base: Path) -> None:
    (base / "home").mkdir()
    (base / "home" / "big").write_bytes(os.urandom(24 * MiB))
    disk.attach(base, 16 * MiB)
    assert (base / "home" / "big").stat().st_size == 24 * MiB
    assert disk.image_size(base) > 24 * MiB


def test_resize_offline_grows_and_shrinks_but_never_below_the_data(base: Path) -> None:
    disk.attach(base, 64 * MiB)
    (base / "home" / "d").write_bytes(os.urandom(20 * MiB))
    disk.detach(base)
    disk.attach(base, 128 * MiB)
    st = os.statvfs(base / "home")
    assert 110 * MiB <= st.f_blocks * st.f_frsize <= 128 * MiB
    disk.detach(base)
    with pytest.raises(ValueError, match="disk_bytes"):
        disk.check_new_limit(base, 16 * MiB)       # unmounted: read from the superblock
    disk.check_new_limit(base, 48 * MiB)
    disk.attach(base, 48 * MiB)
    st = os.statvfs(base / "home")
    assert 40 * MiB <= st.f_blocks * st.f_frsize <= 48 * MiB and disk.image_size(base) == 48 * MiB
    with pytest.raises(ValueError, match="disk_bytes"):
        disk.check_new_limit(base, 16 * MiB)       # mounted: statvfs
    disk.detach(base)
    disk.attach(base, 16 * MiB)                     # forced below the data: refused, data kept
    assert (base / "home" / "d").stat().st_size == 20 * MiB


def test_no_limit_means_no_image_but_an_existing_image_is_kept(base: Path) -> None:
    disk.attach(base, None)
    assert not disk.attached(base) and not (base / "disk.img").exists()
    disk.attach(base, 32 * MiB)
    (base / "home" / "x").write_text("in the image")
    disk.detach(base)
    disk.attach(base, None)
    assert (base / "home" / "x").read_text() == "in the image"


def test_probe_really_fills_an_image(base: Path) -> None:
    ok, detail = disk.probe(base)
    assert ok, detail
    assert "ext4 image" in detail and str(base) not in _loops()


def test_disk_bytes_limit_parsing() -> None:
    assert ProjectLimits().disk_bytes == 2 * 2**30
    assert ProjectLimits.merged(ProjectLimits(), {"disk_bytes": "2G"}).disk_bytes == 2 * 2**30
    assert ProjectLimits.merged(ProjectLimits(), {"disk_bytes": None}).disk_bytes is None
    for bad in (1024, "lots", True, -1, 2**50):
        with pytest.raises(ValueError, match="^disk_bytes"):
            ProjectLimits.merged(ProjectLimits(), {"disk_bytes": bad})


def test_disk_full_errors_are_recognised() -> None:
    assert disk.disk_full_message(OSError(errno.ENOSPC, "No space left on device"))
    assert disk.disk_full_message(sqlite3.OperationalError("database or disk is full"))
    try:
        try:
            raise OSError(errno.ENOSPC, "x")
        except OSError as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as wrapped:
        assert disk.disk_full_message(wrapped)
    assert disk.disk_full_message(ValueError("bad")) is None


def test_no_project_starts_when_the_data_disk_is_below_its_floor(base: Path) -> None:
    disk.attach(base, 32 * MiB)                   # a small "data disk" for the inner project
    inner = base / "home" / "projects" / "q"
    inner.mkdir(parents=True)
    _fill(base / "home" / "filler")
    with pytest.raises(disk.DiskError, match="insufficient storage"):
        disk.attach(inner, 16 * MiB)
    assert not (inner / "disk.img").exists()
    (base / "home" / "filler").unlink()
    disk.attach(inner, 16 * MiB)
    assert disk.attached(inner)
    disk.detach(inner)


def test_without_root_the_probe_says_disk_limits_are_not_enforced(tmp_path: Path) -> None:
    require("root (to drop to an unprivileged uid) and setpriv",
            os.geteuid() == 0 and shutil.which("setpriv") is not None)
    scratch = Path(tempfile.mkdtemp(prefix="phdisknr", dir="/tmp"))
    os.chown(scratch, 65534, 65534)
    code = ("import sys; from pathlib import Path; from projecthub.host.sandbox import disk; "
            f"ok, detail = disk.probe(Path({str(scratch)!r})); print(ok, detail)")
    try:
        r = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                            sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           cwd=str(Path(__file__).resolve().parents[2]), env={"PATH": os.environ["PATH"]})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("False") and "not root" in r.stdout, r.stdout


# ------------------------------------------------------------------ review of issue 14 (findings 1, 8, 10)

def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def test_deleted_files_give_their_space_back_to_the_data_disk(base: Path) -> None:
    """Mounted with discard: the loop driver punches holes in the backing file."""
    disk.attach(base, 64 * MiB)
    img = base / "disk.img"
    before = _allocated(img)
    (base / "home" / "big").write_bytes(os.urandom(24 * MiB))
    os.sync()
    assert _allocated(img) >= before + 24 * MiB
    (base / "home" / "big").unlink()
    os.sync()
    assert _allocated(img) <= before + 2 * MiB, (before, _allocated(img))


def test_an_image_that_grew_before_discard_is_trimmed_at_its_next_mount(base: Path) -> None:
    disk.attach(base, 64 * MiB)
    img = base / "disk.img"
    before = _allocated(img)
    disk.detach(base)
    # write and delete with the old mount options (no discard): the backing file keeps it
    mnt = base / "disk"
    subprocess.run(["mount", "-o", "loop,nosuid,nodev", str(img), str(mnt)], check=True, timeout=30)
    (mnt / "home" / "old").write_bytes(os.urandom(16 * MiB))
    os.sync()
    (mnt / "home" / "old").unlink()
    os.sync()
    subprocess.run(["umount", str(mnt)], check=True, timeout=30)
    assert _allocated(img) >= before + 16 * MiB
    disk.attach(base, 64 * MiB)
    assert _allocated(img) <= before + 2 * MiB, (before, _allocated(img))


def test_the_image_root_is_root_0700_once_mounted(base: Path) -> None:
    disk.attach(base, 32 * MiB)
    st = (base / "disk").stat()
    assert disk.attached(base) and st.st_mode & 0o777 == 0o700 and st.st_uid == 0


def test_no_image_mounts_when_the_data_disk_cannot_back_every_mounted_limit(base: Path) -> None:
    """Two projects whose limits together exceed the data disk: the second is refused
    before it has an image, and starts once the first has stopped."""
    disk.attach(base, 64 * MiB)                   # a ~60 MiB "data disk" for inner projects
    p1, p2 = base / "home" / "projects" / "p1", base / "home" / "projects" / "p2"
    p1.mkdir(parents=True)
    p2.mkdir()
    disk.attach(p1, 40 * MiB)
    try:
        with pytest.raises(disk.DiskError, match="insufficient storage.*running projects may still write"):
            disk.attach(p2, 40 * MiB)
        assert not (p2 / "disk.img").exists() and not disk.attached(p2)
        assert disk.mounted_images(p1.parent) == [p1 / "disk.img"]
        disk.attach(p2, 8 * MiB)                  # a small one still fits
        disk.detach(p2)
    finally:
        disk.detach(p1)
    disk.attach(p2, 40 * MiB)
    try:
        # the image exists now, but p1's remaining limit is again too much to back
        with pytest.raises(disk.DiskError, match="insufficient storage"):
            disk.attach(p1, 40 * MiB)
        assert not disk.attached(p1)
    finally:
        disk.detach(p2)


def test_purge_removes_a_deleted_projects_image_and_dirs(base: Path) -> None:
    disk.attach(base, 32 * MiB)
    (base / "home" / "f").write_bytes(b"x" * MiB)
    disk.purge(base)
    assert not base.exists() and str(base) not in _loops()
    base.mkdir()   # for the fixture's teardown


def test_a_shrink_below_resize2fs_minimum_is_refused_up_front(base: Path) -> None:
    """Many inodes pin block groups: 16000 empty files use < 1 MiB but resize2fs cannot
    go below ~64 MiB.  check_new_limit used to compare bytes only and accept 48 MiB."""
    disk.attach(base, 128 * MiB)
    for i in range(16000):
        (base / "home" / f"f{i}").touch()
    disk.detach(base)
    assert (disk.used_bytes(base) or 0) < 4 * MiB
    minimum = disk.min_bytes(base / "disk.img")
    assert minimum is not None and minimum > 48 * MiB
    with pytest.raises(ValueError, match=r"disk_bytes: .*cannot shrink below .*resize2fs -P"):
        disk.check_new_limit(base, 48 * MiB)
    disk.check_new_limit(base, minimum + MiB)
    disk.attach(base, minimum + MiB)
    assert disk.image_size(base) == minimum + MiB
