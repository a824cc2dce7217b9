"""Per-project disk limits: one sparse ext4 image per project, loop-mounted by the host.

Why an image: the data filesystem here (ext4 on /) has no project quotas, and uid
quotas would need the filesystem remounted; an image is a real kernel limit that
works on any backing filesystem.  A project that fills its image gets ENOSPC from
its own filesystem.

The images are sparse, so two more rules keep them from hurting each other and the hub:
- space a project frees comes back to the data disk: images are mounted with
  ``discard`` (the loop driver punches holes in the backing file) and trimmed once at
  every mount (images that grew before this existed);
- no overcommit between running projects: an image is mounted only if the data
  filesystem can back the rest of every mounted image's limit, plus this one's, and
  keep a reserve (``check_commitment``, under a lock shared by every hub and CLI on the
  data dir).  So a running project's write can fail on the data disk only if something
  outside projecthub fills it.

Layout of ``projects/<id>/`` (``base``):

    disk.img              the sparse image (root 0600); its apparent size is the limit
    disk/                 mount point of the image; its root is made root 0700 after mounting
        home/ state/      the project's writable directories, inside the image
    home state            bind mounts of disk/home and disk/state

The bind mounts keep every path the rest of the host uses unchanged (HOME, the
daemon's state dir with its job outputs), and put both -- everything the project can
write outside its memory-charged /tmp -- inside the limit.  The daemon's socket is not
in the image: the host keeps it outside every sandbox, on a filesystem the project
cannot fill.

Lifecycle: ``attach`` when the project starts (creates the image on first use,
copying an existing plain home/state into it -- nothing is lost -- and applies a
changed limit: shrink offline, never below what is in use), ``grow`` while it runs
(online resize2fs), ``detach`` when it stops (no loop device is left behind), ``purge``
when the project is deleted (its image and directories are removed: no undelete).

Everything here runs as root on the host; nothing in ``base`` except the inside of
the image is writable by the project, and the image is never mounted with suid or
device files.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import re
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("projecthub.host.disk")

IMAGE_NAME = "disk.img"
MOUNT_NAME = "disk"
BOUND_DIRS = ("home", "state")   # bind-mounted from the image into base/<name>, and
                                 # migrated into it from plain dirs on first use

_MNT_DETACH = 2
_MS_BIND = 4096
_MS_REC = 16384
_CMD_TIMEOUT_S = 120.0
# ext4 metadata on a small image (1 KiB blocks, inode tables): what a migration adds on top
# of the bytes it copies so they surely fit.
_MIGRATION_SLACK = 16 * 2**20

# A project does not start when the data filesystem has less than this free: the images
# are sparse (overcommitted), and the hub's store shares that filesystem.
_HOST_FLOOR_MAX = 2**30
_HOST_FLOOR_FRACTION = 0.02
# Serialises check-and-mount across threads and processes (hub, CLI) on one data dir.
_LOCK_NAME = ".disk.lock"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class DiskError(RuntimeError):
    """A disk-limit operation failed; the message says what and why, for the user."""


# ------------------------------------------------------------------------------ queries

def image_path(base: Path) -> Path:
    return base / IMAGE_NAME


def mount_point(base: Path) -> Path:
    return base / MOUNT_NAME


def is_mounted(path: Path) -> bool:
    """``path`` (resolved) is a mount point in this mount namespace."""
    return os.path.realpath(path) in _mount_points()


def _mount_points() -> set[str]:
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return set()
    return {_unescape(line.split()[4]) for line in lines if len(line.split()) > 4}


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def attached(base: Path) -> bool:
    return is_mounted(mount_point(base))


def image_size(base: Path) -> int | None:
    try:
        return image_path(base).stat().st_size
    except FileNotFoundError:
        return None


def _superblock(img: Path | str) -> dict[str, str]:
    """dumpe2fs -h as a dict; empty when it cannot be read (no e2fsprogs, not ext4)."""
    try:
        r = _run(["dumpe2fs", "-h", str(img)], check=False)
    except DiskError:
        return {}
    fields: dict[str, str] = {}
    for line in r.stdout.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            fields[k.strip()] = v.strip()
    return fields


def fs_bytes(img: Path | str) -> int | None:
    """The size of the filesystem in ``img`` (may differ from the file's after a failed grow)."""
    sb = _superblock(img)
    try:
        return int(sb["Block count"]) * int(sb["Block size"])
    except (KeyError, ValueError):
        return None


def used_bytes(base: Path) -> int | None:
    """Bytes in use inside the project's image (mounted: statvfs; else its superblock)."""
    if attached(base):
        st = os.statvfs(mount_point(base))
        return (st.f_blocks - st.f_bfree) * st.f_frsize
    img = image_path(base)
    if not img.exists():
        return None
    fields = _superblock(img)
    try:
        bs = int(fields["Block size"])
        # like df: static metadata (inode tables, bitmaps) is not "used" by the project
        overhead = int(fields.get("Overhead clusters", "0"))
        return (int(fields["Block count"]) - int(fields["Free blocks"]) - overhead) * bs
    except (KeyError, ValueError):
        return None


def _free_and_floor(base: Path) -> tuple[int, int]:
    st = os.statvfs(base)
    return st.f_bavail * st.f_frsize, min(_HOST_FLOOR_MAX, int(st.f_blocks * st.f_frsize * _HOST_FLOOR_FRACTION))


def unbacked_bytes(img: Path) -> int:
    """How much more of the data disk ``img`` may still take: its size (the limit) minus
    what the backing file already holds."""
    try:
        st = img.stat()
    except FileNotFoundError:
        return 0
    return max(0, st.st_size - st.st_blocks * 512)


def mounted_images(projects: Path) -> list[Path]:
    """The images of ``projects/*`` that are mounted now (their projects are running)."""
    root = os.path.realpath(projects)
    out = []
    for mp in _mount_points():
        parent, name = os.path.split(mp)
        if name == MOUNT_NAME and os.path.dirname(parent) == root:
            out.append(Path(parent) / IMAGE_NAME)
    return out


def check_commitment(base: Path, extra: int) -> None:
    """DiskError unless the data filesystem can back ``extra`` more bytes for ``base`` on top
    of what every other mounted image may still write, and keep its reserve.  Call with
    ``_commit_lock`` held."""
    free, floor = _free_and_floor(base)
    own = os.path.realpath(image_path(base))
    others = sum(unbacked_bytes(img) for img in mounted_images(base.parent) if str(img) != own)
    if others + extra > free - floor:
        raise DiskError(f"insufficient storage: the server's data disk has {_fmt(free)} free; running "
                        f"projects may still write {_fmt(others)} into their images, this project "
                        f"{_fmt(extra)} more, and {_fmt(floor)} stay reserved; stop a project or "
                        f"lower disk_bytes")


@contextlib.contextmanager
def _commit_lock(base: Path) -> Iterator[None]:
    """flock on ``projects/.disk.lock``: one check-and-mount at a time per data dir."""
    fd = os.open(base.parent / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def check_host_space(base: Path) -> None:
    """DiskError when the data filesystem is below its floor: starting (and so growing) one
    more sparse image could then fill the disk the hub's store lives on."""
    free, floor = _free_and_floor(base)
    if free < floor:
        raise DiskError(f"insufficient storage: the server's data disk has {_fmt(free)} free, below "
                        f"its floor of {_fmt(floor)}; projects cannot start until space is freed")


def check_new_limit(base: Path, size: int | None) -> None:
    """Refuse a limit below what the project already stores (a shrink could not apply).

    Bytes in use are not enough: resize2fs cannot shrink below the block groups that hold
    inodes and directories (a project that spreads many directories pins a filesystem of
    GiBs with MiBs of data), so an unmounted image is also checked against ``resize2fs -P``.
    Mounted, that estimate reads stale on-disk counters and is not used: such a shrink
    may still fail at the next start, which then keeps the old size and logs it."""
    if size is None:
        return
    used = used_bytes(base)
    if used is not None and used + _MIGRATION_SLACK // 4 > size:
        raise ValueError(f"disk_bytes: the project already uses {_fmt(used)} of disk; "
                         f"delete files first or choose more than {_fmt(used + _MIGRATION_SLACK // 4)}")
    current = image_size(base)
    if current is not None and size < current and not attached(base):
        minimum = min_bytes(image_path(base))
        if minimum is not None and size < minimum:
            raise ValueError(f"disk_bytes: the project's filesystem cannot shrink below {_fmt(minimum)} "
                             f"({minimum} bytes, resize2fs -P); choose at least that")


def min_bytes(img: Path) -> int | None:
    """``resize2fs -P``: the smallest size the unmounted filesystem in ``img`` can shrink to."""
    sb = _superblock(img)
    try:
        r = _run(["resize2fs", "-P", str(img)], check=False)
        m = re.search(r"minimum size of the filesystem: (\d+)", r.stdout)
        return int(m.group(1)) * int(sb["Block size"]) if m else None
    except (DiskError, KeyError, ValueError):
        return None


# ------------------------------------------------------------------------------ lifecycle

def attach(base: Path, size: int | None) -> None:
    """Mount ``base``'s image (creating or resizing it first) and bind its dirs into place.

    ``size`` None lifts the limit: a project without an image keeps plain directories,
    one with an image keeps it at its current size (its data is in there).
    Raises DiskError when the image cannot be made or mounted: the project must not
    start on the plain directories underneath, where its files are not.
    """
    img, mnt = image_path(base), mount_point(base)
    if attached(base):
        if size is not None:
            grow(base, size)
        _bind_all(base)
        return
    check_host_space(base)
    if not img.exists() and size is None:
        return
    with _commit_lock(base):
        if not img.exists():
            check_commitment(base, size)   # before mkfs: a refused start makes no image
            _create(base, size)
        elif size is not None and (image_size(base) != size or fs_bytes(img) != size):
            _resize_offline(img, size)
        # the image as it now is (a refused shrink keeps its old size) must be backed
        check_commitment(base, unbacked_bytes(img))
        mnt.mkdir(mode=0o700, exist_ok=True)
        os.chmod(mnt, 0o700)
        _mount_image(img, mnt)
    try:
        os.chmod(mnt, 0o700)   # the image's root, now: not traversable by projects
        # returns what an image made before ``discard`` kept of deleted files (ms when none)
        _run(["fstrim", str(mnt)], check=False)
        for name in BOUND_DIRS:
            (mnt / name).mkdir(mode=0o700, exist_ok=True)
        _bind_all(base)
    except BaseException:
        detach(base)
        raise


def detach(base: Path) -> None:
    """Unmount the bind mounts and the image; the loop device goes with the last unmount.

    Processes of the project are dead by now (``stop_project`` kills first); a busy
    mount (say a host-side fd still open in the home) is detached lazily and freed when closed.
    """
    for path in [base / name for name in BOUND_DIRS] + [mount_point(base)]:
        for _ in range(8):   # a bind may have been stacked twice by a crash: peel them all
            if not is_mounted(path):
                break
            _umount(path)


def grow(base: Path, size: int) -> bool:
    """Grow a mounted image online; False if that is not possible here (the new size is
    then applied at the next start, like any shrink).  Online resize needs
    CAP_SYS_RESOURCE, which some containers withhold even from root."""
    current = image_size(base)
    if current is None or size <= current:
        return size == current
    dev = _loop_device(image_path(base))
    if dev is None or not can_grow_online():
        return False
    with _commit_lock(base):
        try:
            check_commitment(base, unbacked_bytes(image_path(base)) + size - current)
        except DiskError as e:
            log.warning("not growing %s now: %s", dev, e)   # the next start checks again
            return False
        return _grow_locked(base, dev, size)


def _grow_locked(base: Path, dev: str, size: int) -> bool:
    with open(image_path(base), "r+b") as f:
        os.ftruncate(f.fileno(), size)
    r = _run(["losetup", "-c", dev], check=False)
    if r.returncode == 0:
        r = _run(["resize2fs", dev], check=False)
    if r.returncode != 0:
        log.warning("online grow of %s failed, applied at next start: %s", dev, r.stderr.strip()[-300:])
        return False
    return True


def can_grow_online() -> bool:
    """CAP_SYS_RESOURCE (bit 24) in our effective set: ext4's online resize requires it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> 24 & 1)
    except (OSError, ValueError):
        pass
    return False


def remove(base: Path) -> None:
    """Detach and delete the image (a spare's or a purged project's)."""
    detach(base)
    for p in (image_path(base), image_path(base).with_suffix(".new")):
        p.unlink(missing_ok=True)


def purge(base: Path) -> None:
    """A deleted project's files: the image and ``base`` itself go (there is no undelete).
    The project must be stopped; nothing is removed while anything is still mounted in it."""
    remove(base)
    if attached(base) or any(is_mounted(base / name) for name in BOUND_DIRS):
        raise DiskError(f"cannot delete {base}: still mounted")
    shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------------ internals

def _create(base: Path, size: int) -> None:
    """A fresh image; existing plain home/state contents are copied into it first."""
    img = image_path(base)
    new = img.with_suffix(".new")
    new.unlink(missing_ok=True)
    plain = [base / d for d in BOUND_DIRS if (base / d).is_dir() and not is_mounted(base / d)]
    needed = sum(_tree_bytes(d) for d in plain)
    if needed:
        # Data is never dropped: an old home bigger than its limit gets an image just big
        # enough, and the project can delete but not grow until it is under the limit.
        size = max(size, int(needed * 1.1) + _MIGRATION_SLACK)
    with open(new, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        os.ftruncate(f.fileno(), size)   # sparse: costs only what the project writes
    # -m 0: no root reserve inside (the project is the only user); no journal: a
    # crash costs an fsck at the next start, not a slower write path and 4+ MiB each.
    _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
          "-E", "lazy_itable_init=1,nodiscard", "-L", "projecthub", str(new)])
    if any(_nonempty(d) for d in plain):
        mnt = mount_point(base)
        mnt.mkdir(mode=0o700, exist_ok=True)
        _mount_image(new, mnt)
        try:
            for d in plain:
                target = mnt / d.name
                target.mkdir(mode=0o700, exist_ok=True)
                # cp -a: owners, modes, times, xattrs, symlinks (not followed), hard links
                _run(["cp", "-a", "--no-dereference", "--", f"{d}/.", f"{target}/"])
        finally:
            detach(base)
        with open(new, "rb") as f:
            os.fsync(f.fileno())
    os.replace(new, img)   # the image exists only once complete: a crash before leaves the old dirs
    for d in plain:   # the copies are in the image now: free the data disk
        _empty(d)


def _resize_offline(img: Path, size: int) -> None:
    """Apply a changed limit to an unmounted image.  Shrinking below the data is refused
    by resize2fs; then the image keeps its size (the API refuses such limits up front)."""
    _run(["e2fsck", "-f", "-p", str(img)], check=False)   # resize2fs insists on a fresh check
    if size > img.stat().st_size:
        with open(img, "r+b") as f:
            os.ftruncate(f.fileno(), size)
    r = _run(["resize2fs", str(img), f"{size // 1024}K"], check=False)   # K = 1 KiB units
    if r.returncode != 0:
        # e.g. more data than the new size: keep the filesystem as it is (the API refuses
        # such limits up front; this is a limit set while the project was writing)
        log.warning("cannot resize %s to %d bytes: %s", img, size, r.stderr.strip()[-300:])
        return
    with open(img, "r+b") as f:
        os.ftruncate(f.fileno(), size)


# discard: a file the project deletes frees its blocks in the backing file too (the loop
# driver punches holes), so the data disk gets the space back -- measured: 100 MiB written
# then deleted leaves the image's allocation where it was before (stat -c %b);
# nosuid/nodev: a file the project made cannot become setuid or a device on the host;
# noatime: reads do not write; noinit_itable: no kernel thread zeroing the inode tables
# that mkfs left uninitialised (lazy_itable_init) -- ~160 MiB of writes per 10 GiB image,
# needless with checksummed group descriptors.
_MOUNT_OPTIONS = "loop,nosuid,nodev,noatime,noinit_itable,discard"


def _mount_image(img: Path, mnt: Path) -> None:
    # No journal: after a host crash the image may be unclean.  -p repairs what is safe to
    # repair and is a no-op on a clean filesystem (a few ms).
    _run(["e2fsck", "-p", str(img)], check=False)
    r = _run(["mount", "-t", "ext4", "-o", _MOUNT_OPTIONS, str(img), str(mnt)], check=False)
    if r.returncode != 0:
        _run(["e2fsck", "-f", "-p", str(img)], check=False)   # an unclean image: repair once
        r = _run(["mount", "-t", "ext4", "-o", _MOUNT_OPTIONS, str(img), str(mnt)], check=False)
    if r.returncode != 0:
        raise DiskError(f"cannot mount the project's disk image: {r.stderr.strip()[-300:]}")


def _bind_all(base: Path) -> None:
    mnt = mount_point(base)
    for name in BOUND_DIRS:
        src, dst = mnt / name, base / name
        if is_mounted(dst):
            continue
        if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
            dst.unlink()   # base is root's: this is not the project's doing, but be safe
        dst.mkdir(mode=0o700, exist_ok=True)
        if _libc.mount(str(src).encode(), str(dst).encode(), None, _MS_BIND, None) != 0:
            e = ctypes.get_errno()
            raise DiskError(f"cannot bind {src} to {dst}: {os.strerror(e)}")


def _umount(path: Path) -> None:
    p = str(path).encode()
    if _libc.umount2(p, 0) == 0:
        return
    e = ctypes.get_errno()
    if e in (errno.EINVAL, errno.ENOENT):   # not a mount point (any more)
        return
    if e == errno.EBUSY and _libc.umount2(p, _MNT_DETACH) == 0:
        log.warning("%s was busy: detached lazily", path)
        return
    raise DiskError(f"cannot unmount {path}: {os.strerror(ctypes.get_errno() or e)}")


def _loop_device(img: Path) -> str | None:
    r = _run(["losetup", "-j", str(img), "-O", "NAME", "-n"], check=False)
    names = r.stdout.split()
    return names[0] if names else None


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def _nonempty(d: Path) -> bool:
    try:
        return any(os.scandir(d))
    except OSError:
        return False


def _empty(d: Path) -> None:
    if not d.is_dir() or is_mounted(d):
        return
    for entry in os.scandir(d):
        path = os.path.join(d, entry.name)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _run(argv: list[str], *, check: bool = True, ok_codes: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=_CMD_TIMEOUT_S,
                           stdin=subprocess.DEVNULL, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"})
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DiskError(f"{argv[0]}: {e}") from e
    if check and r.returncode not in ok_codes:
        raise DiskError(f"{argv[0]} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-300:]}")
    return r


def _fmt(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


# ------------------------------------------------------------------------------ probe

def probe(scratch: Path) -> tuple[bool, str]:
    """Really make, mount, fill and unmount a tiny image: (works, what enforces limits)."""
    if os.geteuid() != 0:
        return False, "not root: cannot loop-mount per-project images; homes have no disk limit"
    missing = [t for t in ("mkfs.ext4", "resize2fs", "e2fsck", "dumpe2fs", "losetup", "mount")
               if shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]
    if missing:
        return False, f"missing {', '.join(missing)} (apt-get install e2fsprogs util-linux mount)"
    if not os.path.exists("/dev/loop-control"):
        return False, "no /dev/loop-control: loop devices unavailable, homes have no disk limit"
    base = scratch / f"disk-probe-{os.getpid()}"   # per process: a server and a CLI may probe at once
    if base.exists():
        detach(base)
        shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    t0 = time.monotonic()
    try:
        attach(base, 8 * 2**20)
        try:
            # ext4 reserves blocks at write() (delayed allocation): ENOSPC comes here, no fsync
            fd = os.open(base / "home" / "fill", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while True:
                    os.write(fd, b"x" * 2**20)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
            finally:
                os.close(fd)
            written = os.path.getsize(base / "home" / "fill")
        finally:
            detach(base)
        if attached(base) or written > 8 * 2**20:
            return False, f"image not enforced (wrote {written} bytes into an 8 MiB image)"
        return True, (f"per-project sparse ext4 image, loop-mounted at the home (ENOSPC at the "
                      f"limit; probe {1000 * (time.monotonic() - t0):.0f} ms)")
    except (DiskError, OSError) as e:
        with contextlib.suppress(OSError):
            detach(base)
        return False, f"loop-mounted image does not work here: {e}"
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------------ errors

def disk_full_message(exc: BaseException) -> str | None:
    """A user-facing message if ``exc`` (or its cause) is a write that found no space --
    SQLite's "database or disk is full" or ENOSPC/EDQUOT -- else None.  The API answers
    these with 507 instead of a 500: nothing is wrong with the request or the server."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return "insufficient storage: the server's disk is full; try again later"
        text = str(exc).lower()
        if "database or disk is full" in text or "no space left on device" in text:
            return "insufficient storage: the server's disk is full; try again later"
        exc = exc.__cause__ or exc.__context__   # type: ignore[assignment]
        seen += 1
    return None
