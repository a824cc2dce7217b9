"""The host's end of a daemon channel: where its socket lives and who may answer on it.

A project's daemon runs as the project's uid, and everything that uid can write is hostile
input (an adversarial review replaced a daemon socket with a symlink to another project's
socket and had the hub adopt the victim's daemon).  So the channel is built so that the
project never gets to choose what the hub talks to:

* the host, not the daemon, creates and binds the socket, in ``<data_dir>/run/<project>/``:
  a directory of the server's uid, mode 0700, never mounted into any sandbox.  The daemon
  receives the bound socket as an inherited fd and only calls ``listen()`` on it, so its
  credentials (uid, pid) become the socket's peer credentials;
* the host reaches the socket without following any symlink: the directory is opened with
  ``O_NOFOLLOW`` and checked (ours, no group/other write), the socket file is checked with
  ``lstat`` (a socket, not a symlink) and connected through ``/proc/self/fd/N/<name>``;
* on every connect the peer is verified with ``SO_PEERCRED``: the project's uid, a process
  descended from the sandbox the host started, and (on adopt) the daemon pid recorded at
  start; the caller then checks the project id the daemon reports.  A mismatch is refused
  and logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import psutil

from ..errors import RemoteError

log = logging.getLogger("projecthub.fabric.peer")

SOCKET_NAME = "daemon.sock"


class PeerMismatch(RemoteError):
    """The process answering on a daemon socket is not the daemon we expect."""


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


@dataclass(frozen=True)
class PeerExpectation:
    project_id: str
    uid: int                       # the project's uid as the host sees it
    sandbox_pid: int | None = None  # the daemon must descend from this process
    daemon_pid: int | None = None   # ...and be exactly this one, when known (adopt)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its parent) as directories of ours, mode 0700."""
    for d in (path.parent, path):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, 0o700)
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise PeerMismatch(f"Error: {d} is not a directory of the server's own")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(d, 0o700)
    return path


def bind_daemon_socket(directory: Path) -> socket.socket:
    """A Unix socket bound (not listening) at ``directory/daemon.sock``, for the daemon to
    inherit.  ``directory`` is made private first; a stale socket there is replaced."""
    private_dir(directory)
    dir_fd = _open_private_dir(directory)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SOCKET_NAME, dir_fd=dir_fd)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}")
            os.chmod(SOCKET_NAME, 0o600, dir_fd=dir_fd)  # just made, in a private dir
        except BaseException:
            sock.close()
            raise
        return sock
    finally:
        os.close(dir_fd)


def connect_socket(directory: Path, timeout_s: float = 2.0) -> socket.socket:
    """A connected (blocking-mode) socket to ``directory/daemon.sock``, reached without
    following symlinks.  Blocks at most ``timeout_s`` (a daemon whose backlog is full)."""
    dir_fd = _open_private_dir(directory)
    try:
        st = os.stat(SOCKET_NAME, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISSOCK(st.st_mode):
            raise PeerMismatch(f"Error: {directory / SOCKET_NAME} is not a socket")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout_s)
            sock.connect(f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}")
        except BaseException:
            sock.close()
            raise
        return sock
    finally:
        os.close(dir_fd)


def peer_of(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


def verify_peer(sock: socket.socket, expect: PeerExpectation) -> Peer:
    """``sock``'s peer, if it is the daemon ``expect`` describes; else PeerMismatch (logged)."""
    peer = peer_of(sock)
    problem = _mismatch(peer, expect)
    if problem:
        log.error("refusing the daemon socket of project %s: %s (peer pid %s uid %s)",
                  expect.project_id, problem, peer.pid, peer.uid)
        raise PeerMismatch(f"Error: the daemon of project {expect.project_id} failed verification: {problem}")
    return peer


def verify_project_id(info: object, expect: PeerExpectation) -> None:
    reported = info.get("project_id") if isinstance(info, dict) else None
    if reported != expect.project_id:
        log.error("refusing the daemon socket of project %s: the daemon reports project %r",
                  expect.project_id, reported)
        raise PeerMismatch(f"Error: the daemon of project {expect.project_id} reports another project")


def _mismatch(peer: Peer, expect: PeerExpectation) -> str | None:
    if peer.pid <= 0:
        return "no peer credentials"
    if peer.uid != expect.uid:
        return f"uid {peer.uid} is not the project's uid {expect.uid}"
    if expect.daemon_pid is not None and peer.pid != expect.daemon_pid:
        return f"pid {peer.pid} is not the daemon's pid {expect.daemon_pid}"
    if expect.sandbox_pid is not None and not _descends_from(peer.pid, expect.sandbox_pid):
        return f"pid {peer.pid} is not inside the sandbox the host started (pid {expect.sandbox_pid})"
    return None


def _descends_from(pid: int, ancestor: int) -> bool:
    try:
        return pid == ancestor or any(p.pid == ancestor for p in psutil.Process(pid).parents())
    except psutil.Error:
        return False


def _open_private_dir(directory: Path) -> int:
    """An fd of ``directory`` that is ours and not writable by anyone else; never a symlink."""
    try:
        fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise PeerMismatch(f"Error: cannot open the daemon socket directory {directory}: {exc.strerror}") from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        os.close(fd)
        raise PeerMismatch(f"Error: the daemon socket directory {directory} is not private to the server")
    return fd
