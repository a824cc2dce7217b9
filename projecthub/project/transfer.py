"""Files in and out of a project for the v3 files API (``api/files.py``), run by its daemon.

Every path is relative to the home and must stay in it: no ``..``, and a path whose real
location (symlinks followed) is outside the home is refused, so a link planted in the home
cannot make an upload or a download reach ``/etc`` or ``/tmp``.  (The daemon runs as the
project's uid in its sandbox: this is about clear answers, not isolation, which the sandbox
already gives.)

Downloads are streams (``native.files.read``): one ``{"size", "etag", "mtime"}`` item, then
``{"data": base64}`` chunks of at most ``CHUNK`` bytes from the requested range.  Uploads
are calls (``native.files.writeBegin`` / ``writeChunk`` / ``writeEnd``): the bytes go to a
temporary file beside the target, which replaces the target atomically at the end, so a
reader never sees half a file and a failed upload (or a full disk: ENOSPC) leaves the old
file as it was.  An ETag (inode, mtime, size) lets a client refuse to overwrite a file that
changed since it read it (``If-Match``).

With ``lend_fd`` (a hub on this machine: ``host/lent_files.py``), ``read`` yields the
meta item with the number of the fd it opened and holds that fd open until the hub closes
the stream (at most ``LEND_S``), and ``writeBegin`` answers the temporary file's fd number:
the hub moves the bytes through its own duplicate of the open file, and everything else
(confinement, ETags, Range checks, the rename at ``writeEnd``) stays here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import stat
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, AsyncIterator

from ..errors import RemoteError
from .args import options as _opts
from .context import ProjectContext

CHUNK = 1024 * 1024          # raw bytes at most per download item / upload call
READ_CHUNK = 256 * 1024     # raw bytes per download item (the host's 1 MiB window holds three)
MAX_UPLOADS = 8              # concurrent uploads per project
UPLOAD_IDLE_S = 120.0        # an upload with no chunk for this long is dropped
MAX_LIST_ENTRIES = 10_000
LEND_S = 30.0                # a lent read fd is held open at most this long for the hub to take it


def _error(message: str, status: int) -> RemoteError:
    return RemoteError(f"Error: {message}", status=status)


def relative(value: Any, *, allow_home: bool = False) -> str:
    if not isinstance(value, str) or "\x00" in value or len(value) > 4096:
        raise _error("the path must be text without NUL bytes, at most 4096 characters", 400)
    parts = [p for p in PurePosixPath(value.lstrip("/")).parts if p not in ("", ".")]
    if ".." in parts:
        raise _error("the path must stay inside the home (no '..')", 400)
    if not parts and not allow_home:
        raise _error("the path must name a file under the home", 400)
    return "/".join(parts)


def resolve(ctx: ProjectContext, rel: str) -> Path:
    """``rel`` under the home; refused when links take it (or its directory) outside."""
    home = os.path.realpath(ctx.home)
    target = ctx.home / rel if rel else ctx.home
    try:
        real = os.path.realpath(target)
    except OSError:   # a link into something the project may not even resolve (/proc/1/root)
        raise _error(f"'{rel}' leads outside the home (a symbolic link points out)", 403)
    if real != home and not real.startswith(home + os.sep):
        raise _error(f"'{rel}' leads outside the home (a symbolic link points out)", 403)
    return target


def etag(st: os.stat_result) -> str:
    return f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'


def _describe(st: os.stat_result) -> dict[str, Any]:
    return {"size": st.st_size, "etag": etag(st), "mtime": st.st_mtime}


def _kind(mode: int) -> str:
    return "dir" if stat.S_ISDIR(mode) else "symlink" if stat.S_ISLNK(mode) else \
        "file" if stat.S_ISREG(mode) else "other"


# ------------------------------------------------------------------------------- reading

def _open_regular(path: Path) -> tuple[int, os.stat_result]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _error(f"no such file '{path}'", 404)
    except IsADirectoryError:
        raise _error(f"'{path}' is a directory (list it with ?list)", 400)
    except PermissionError:
        raise _error(f"permission denied: '{path}'", 403)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):   # a FIFO would block, a device never ends
        os.close(fd)
        raise _error(f"'{path}' is not a regular file", 400)
    os.set_blocking(fd, True)
    return fd, st


async def read(ctx: ProjectContext, args: list[Any]) -> AsyncIterator[Any]:
    """``{path, offset?, length?, if_none_match?}`` → meta item, then data items."""
    opts = _opts(args)
    path = resolve(ctx, relative(opts.get("path")))
    offset, length = opts.get("offset", 0), opts.get("length")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise _error("'offset' must be a non-negative integer", 400)
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 0):
        raise _error("'length' must be a non-negative integer", 400)
    fd, st = await asyncio.to_thread(_open_regular, path)
    try:
        if opts.get("lend_fd") is True:   # the hub takes its own duplicate, then closes the stream
            yield {**_describe(st), "fd": fd}
            await asyncio.sleep(LEND_S)
            return
        yield _describe(st)
        end = st.st_size if length is None else min(st.st_size, offset + length)
        position = offset
        while position < end:
            data = await asyncio.to_thread(os.pread, fd, min(READ_CHUNK, end - position), position)
            if not data:
                break   # the file shrank meanwhile
            position += len(data)
            yield {"data": base64.b64encode(data).decode("ascii")}
    finally:
        os.close(fd)


async def describe(ctx: ProjectContext, args: list[Any]) -> dict[str, Any]:
    path = resolve(ctx, relative(_opts(args).get("path"), allow_home=True))
    try:
        st = await asyncio.to_thread(os.stat, path)
    except FileNotFoundError:
        raise _error(f"no such file or directory '{path}'", 404)
    return {**_describe(st), "type": _kind(st.st_mode)}


def _list(path: Path) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    truncated = False
    try:
        with os.scandir(path) as it:
            for entry in it:
                if len(entries) >= MAX_LIST_ENTRIES:
                    truncated = True
                    break
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                entries.append({"name": entry.name, "type": _kind(st.st_mode),
                                "size": st.st_size, "mtime": st.st_mtime})
    except FileNotFoundError:
        raise _error(f"no such directory '{path}'", 404)
    except NotADirectoryError:
        raise _error(f"'{path}' is not a directory", 400)
    except PermissionError:
        raise _error(f"permission denied: '{path}'", 403)
    entries.sort(key=lambda e: e["name"])
    return {"entries": entries, "truncated": truncated}


async def listing(ctx: ProjectContext, args: list[Any]) -> dict[str, Any]:
    rel = relative(_opts(args).get("path", ""), allow_home=True)
    out = await asyncio.to_thread(_list, resolve(ctx, rel))
    return {"path": rel, **out}


# ------------------------------------------------------------------------------- writing

class _Upload:
    def __init__(self, target: Path, temp: Path, fd: int, if_match: str | None, existed: bool) -> None:
        self.target, self.temp, self.fd = target, temp, fd
        self.if_match, self.existed = if_match, existed
        self.size = 0
        self.touched = time.monotonic()
        self.lent = False   # the hub writes through its duplicate of ``fd``: no writeChunk calls
        self.lock = asyncio.Lock()

    def discard(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(OSError):
            self.temp.unlink()


_uploads: dict[str, _Upload] = {}


def _expire() -> None:
    now = time.monotonic()
    for key, upload in list(_uploads.items()):
        if upload.lent:   # its writes are the hub's: the file's mtime says when it last moved
            with contextlib.suppress(OSError):
                upload.touched = max(upload.touched, now - max(0.0, time.time() - os.fstat(upload.fd).st_mtime))
        if now - upload.touched > UPLOAD_IDLE_S:
            _uploads.pop(key, None)
            upload.discard()


def _os_error(exc: OSError, path: Path) -> RemoteError:
    if exc.errno == 28:   # ENOSPC: the project's disk image is full
        return _error(f"no space left on the project's disk (its disk_bytes limit) writing '{path}'", 413)
    if isinstance(exc, PermissionError):
        return _error(f"permission denied: '{path}'", 403)
    if isinstance(exc, (IsADirectoryError, NotADirectoryError)):
        return _error(f"{exc.strerror}: '{path}'", 409)
    return _error(f"{exc.strerror or exc}: '{path}'", 400)


def _begin(target: Path, if_match: str | None) -> _Upload:
    try:
        current = os.stat(target)
    except FileNotFoundError:
        current = None
    if current is not None and stat.S_ISDIR(current.st_mode):
        raise _error(f"'{target}' is a directory", 409)
    if if_match is not None and if_match != "*" and (current is None or etag(current) != if_match):
        raise _error(f"'{target}' changed (its ETag is not {if_match})", 412)
    if if_match == "*" and current is None:
        raise _error(f"'{target}' does not exist (If-Match: *)", 412)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.upload-{uuid.uuid4().hex[:12]}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     (current.st_mode & 0o7777) if current is not None else 0o644)
    except OSError as exc:
        raise _os_error(exc, target)
    return _Upload(target, temp, fd, if_match, current is not None)


async def write_begin(ctx: ProjectContext, args: list[Any]) -> dict[str, Any]:
    """``{path, if_match?}`` → ``{"id"}``; the target is replaced only at ``writeEnd``."""
    opts = _opts(args)
    target = resolve(ctx, relative(opts.get("path")))
    if_match = opts.get("if_match")
    if if_match is not None and not isinstance(if_match, str):
        raise _error("'if_match' must be an ETag", 400)
    _expire()
    if len(_uploads) >= MAX_UPLOADS:
        raise _error(f"at most {MAX_UPLOADS} uploads into a project at a time", 429)
    upload = await asyncio.to_thread(_begin, target, if_match)
    key = uuid.uuid4().hex
    _uploads[key] = upload
    if opts.get("lend_fd") is True:
        upload.lent = True
        return {"id": key, "fd": upload.fd}
    return {"id": key}


def _upload(opts: dict[str, Any]) -> tuple[str, _Upload]:
    key = opts.get("id")
    upload = _uploads.get(key) if isinstance(key, str) else None
    if upload is None:
        raise _error("no such upload in progress (it ended or timed out)", 404)
    return key, upload   # type: ignore[return-value]


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


async def write_chunk(ctx: ProjectContext, args: list[Any]) -> None:
    """``{id, offset, data}``: chunks carry their offset, so the host may send several at
    once (they may arrive in any order) and the file is still exact."""
    opts = _opts(args)
    key, upload = _upload(opts)
    data, offset = opts.get("data"), opts.get("offset")
    if not isinstance(data, str) or len(data) > 2 * CHUNK:
        raise _error("'data' must be base64 text of at most one chunk", 400)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise _error("'offset' must be a non-negative integer", 400)
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raise _error("'data' is not valid base64", 400)
    upload.touched = time.monotonic()
    try:
        await asyncio.to_thread(_write_at, upload.fd, raw, offset)
    except OSError as exc:
        if _uploads.pop(key, None) is not None:
            upload.discard()
        raise _os_error(exc, upload.target)
    upload.size = max(upload.size, offset + len(raw))


def _finish(upload: _Upload, size: int | None) -> dict[str, Any]:
    if upload.lent:
        upload.size = os.fstat(upload.fd).st_size
    if size is not None and size != upload.size:
        raise _error(f"the upload ended at {upload.size} bytes, not {size}", 400)
    os.close(upload.fd)
    upload.fd = -1
    if upload.if_match not in (None, "*"):   # it may have changed while the bytes came
        try:
            current = os.stat(upload.target)
        except FileNotFoundError:
            current = None
        if current is None or etag(current) != upload.if_match:
            raise _error(f"'{upload.target}' changed during the upload", 412)
    os.replace(upload.temp, upload.target)
    return _describe(os.stat(upload.target))


async def write_end(ctx: ProjectContext, args: list[Any]) -> dict[str, Any]:
    opts = _opts(args)
    key, upload = _upload(opts)
    size = opts.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise _error("'size' must be a non-negative integer", 400)
    async with upload.lock:
        _uploads.pop(key, None)
        try:
            out = await asyncio.to_thread(_finish, upload, size)
        except OSError as exc:
            upload.discard()
            raise _os_error(exc, upload.target)
        except RemoteError:
            upload.discard()
            raise
    return {**out, "created": not upload.existed}


async def write_abort(ctx: ProjectContext, args: list[Any]) -> None:
    opts = _opts(args)
    key = opts.get("id")
    upload = _uploads.pop(key, None) if isinstance(key, str) else None
    if upload is not None:
        async with upload.lock:
            upload.discard()


# ------------------------------------------------------------------------ delete, move

def _delete(path: Path, recursive: bool) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise _error(f"no such file or directory '{path}'", 404)
    try:
        if stat.S_ISDIR(st.st_mode):
            if recursive:
                shutil.rmtree(path)
            else:
                try:
                    os.rmdir(path)
                except OSError as exc:
                    if exc.errno == 39:   # ENOTEMPTY
                        raise _error(f"directory '{path}' is not empty (add ?recursive=true)", 409)
                    raise
        else:
            os.unlink(path)
    except OSError as exc:
        raise _os_error(exc, path)


async def delete(ctx: ProjectContext, args: list[Any]) -> None:
    opts = _opts(args)
    rel = relative(opts.get("path"))
    # the link itself may be deleted even when it points out: only its directory must be in
    parent = resolve(ctx, str(PurePosixPath(rel).parent) if "/" in rel else "")
    recursive = opts.get("recursive", False)
    if not isinstance(recursive, bool):
        raise _error("'recursive' must be true or false", 400)
    await asyncio.to_thread(_delete, parent / PurePosixPath(rel).name, recursive)


def _move(source: Path, target: Path, overwrite: bool) -> None:
    if not os.path.lexists(source):
        raise _error(f"no such file or directory '{source}'", 404)
    if os.path.lexists(target) and not overwrite:
        raise _error(f"'{target}' exists (add \"overwrite\": true)", 409)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(source, target)
    except OSError as exc:
        raise _os_error(exc, target)


async def move(ctx: ProjectContext, args: list[Any]) -> dict[str, Any]:
    opts = _opts(args)
    src_rel, dst_rel = relative(opts.get("from")), relative(opts.get("to"))
    overwrite = opts.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise _error("'overwrite' must be true or false", 400)
    src_parent = resolve(ctx, str(PurePosixPath(src_rel).parent) if "/" in src_rel else "")
    dst = resolve(ctx, dst_rel)
    await asyncio.to_thread(_move, src_parent / PurePosixPath(src_rel).name, dst, overwrite)
    return {"path": dst_rel}
