"""The files API's fast path: the hub moves a file's bytes through the very open file the
project's daemon made, instead of relaying them through the daemon in chunks.

Why: relayed, every byte crosses a Python process twice more, base64 in JSON frames
(about 100 MB/s for a 100 MB file, 7 % of a local ``cp``).  Lent, the hub reads or writes
the file itself, in large pieces (``api/files.py``).

How: the daemon keeps every part of a transfer that needs the project's view of its files:
path confinement (symlinks out refused), If-Match and ETags, Range, the temporary file
and its atomic rename, the upload cap.  It answers with the number of the fd it opened
(``lend_fd``); the host duplicates that open file straight out of the daemon's fd table
with ``pidfd_getfd(2)``.  A duplicate is the same open file description: its access mode
is the one the daemon (the project's uid) got from ``open``, so the hub gains no access
the project lacks, and the path is never looked up again, so nothing the project does to
its directories after the daemon's check can swap the file.

The daemon runs as the project's uid, so it is as hostile as the project: the fd number
it names is a claim.  So the duplicate itself is checked, and refused unless it is
- a regular file (a FIFO or a device could block the hub or never end),
- on the project's own mounted disk image (``st_dev`` of its mount point) and owned by
  the project's uid: a write is bounded by that image, and no file of the host (nor one
  of the server's, whatever fd number the daemon names) is reachable this way,
- opened for what the hub does with it (reading; or writing, without ``O_APPEND``),
- on an image without root-reserved blocks: the hub is root, and ext4 lets root
  (CAP_SYS_RESOURCE) allocate the reserve, which would widen the project's
  ``disk_bytes``.  Images are made with ``-m 0``; one tuned otherwise is not lent.
When anything is refused or unavailable (a rootless server, a project without a disk
image, a host on another machine) ``borrow`` returns None and the caller relays the
bytes through the daemon as before.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import io
import logging
import os
import stat
import struct
from pathlib import Path
from typing import Any

from .sandbox import disk

log = logging.getLogger("projecthub.host.lent_files")

_SYS_PIDFD_GETFD = 438   # the same number on every architecture (Linux 5.6+)
_libc = ctypes.CDLL(None, use_errno=True)

# the ext4 superblock (1024 bytes at offset 1024): where the reserved block count lives
_SB_OFFSET, _SB_SIZE = 1024, 1024
_MAGIC = 0xEF53
_INCOMPAT_64BIT = 0x80


def _pidfd_getfd(pid: int, remote_fd: int) -> int:
    pidfd = os.pidfd_open(pid)
    try:
        fd = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, remote_fd, 0)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return int(fd)
    finally:
        os.close(pidfd)


def reserved_blocks(image: Path) -> int | None:
    """The root-reserved block count in ``image``'s ext4 superblock (None: not readable)."""
    try:
        fd = os.open(image, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        sb = os.pread(fd, _SB_SIZE, _SB_OFFSET)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(sb) < _SB_SIZE or struct.unpack_from("<H", sb, 0x38)[0] != _MAGIC:
        return None
    count = struct.unpack_from("<I", sb, 0x08)[0]
    if struct.unpack_from("<I", sb, 0x60)[0] & _INCOMPAT_64BIT:
        count |= struct.unpack_from("<I", sb, 0x154)[0] << 32
    return int(count)


def check(fd: int, *, uid: int, device: int, write: bool) -> str | None:
    """Why ``fd`` must not be used (None: it may), by the rules in the module's docstring."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_dev != device:
        return "not on the project's disk image"
    if st.st_uid != uid:
        return f"owned by uid {st.st_uid}, not the project's"
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if flags & getattr(os, "O_PATH", 0):
        return "an O_PATH descriptor"
    if flags & getattr(os, "O_DIRECT", 0):
        return "an O_DIRECT descriptor"   # unaligned pieces would fail with EINVAL (a 500)
    mode = flags & os.O_ACCMODE
    if write and (mode not in (os.O_WRONLY, os.O_RDWR) or flags & os.O_APPEND):
        return "not open for writing at an offset"
    if not write and mode not in (os.O_RDONLY, os.O_RDWR):
        return "not open for reading"
    return None


def borrow(host: Any, project_id: str, remote_fd: Any, *, write: bool) -> io.FileIO | None:
    """The daemon's open file ``remote_fd`` as a file object of ours (closed when dropped),
    or None when it cannot or must not be used: then relay through the daemon."""
    identity = getattr(host, "daemon_identity", None)
    ident = identity(project_id) if identity is not None else None
    if ident is None or isinstance(remote_fd, bool) or not isinstance(remote_fd, int) or remote_fd < 0:
        return None
    pid, uid = ident
    base = host.sandbox.project_dir(project_id)
    if not disk.attached(base) or reserved_blocks(disk.image_path(base)) != 0:
        return None   # no image (no limit a root writer would keep to), or one with a root reserve
    try:
        device = os.stat(disk.mount_point(base)).st_dev
        fd = _pidfd_getfd(pid, remote_fd)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ESRCH, errno.EBADF, errno.ENOSYS):
            log.warning("cannot take fd %s of project %s's daemon: %s", remote_fd, project_id, exc)
        return None
    try:
        problem = check(fd, uid=uid, device=device, write=write)
    except OSError as exc:
        problem = str(exc)
    if problem is not None:
        os.close(fd)
        log.warning("refused fd %s lent by project %s's daemon: %s", remote_fd, project_id, problem)
        return None
    return io.FileIO(fd, "w" if write else "r", closefd=True)   # no open(): nothing truncated
