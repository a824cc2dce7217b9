"""Tar streams out of and into a project, run by its daemon (as its uid, in its sandbox).

What moves a tree between projects (``projects.copyPathBetweenProjects``) without the hub
holding it: the source daemon packs a path into a tar stream (``native.archive.pack``,
chunks of ``CHUNK`` bytes, base64 in the fabric's JSON frames), the host hands each chunk
to the target daemon (``native.archive.unpackChunk``, one call per chunk: the reply is the
flow control), which extracts as it goes.  Both ends run as their own project's uid inside
their own sandbox, so the source can only pack what its project may read and the target
only writes where its project may write, within its disk limit (ENOSPC ends the copy with
an error).

Extraction uses tarfile's ``data`` filter: no absolute names, no ``..``, no device files,
no links that leave the target, no set-uid bits.  Members it refuses are skipped and
counted, never fatal.  The options are rsync's, as CoCalc's copy has them:

* ``overwrite_newer`` (default false): a file that is newer in the target than in the
  source is kept, unless this is true;
* ``backup``: a file about to be overwritten is first renamed to ``name~``;
* ``delete_missing``: after a directory copy, whatever the target directory holds that
  the source did not is deleted;
* ``exclude``: glob patterns (matched against the relative path and the file name) that
  the source leaves out.

A directory is copied as its contents into the target directory (rsync's ``src/ dst/``);
a file is copied to the target path.

``scope: "jobs"`` (``project move``: a project's job records go with it) packs or unpacks
the state dir's ``jobs/`` (project/jobs.py) instead of a path in the home, whole (``path``
empty).  Nothing new is trusted: that directory is the project's own writable state
(its code can plant anything there, and jobs.py reads it as untrusted input), the daemon
runs as the same uid in the same sandbox, and the same member rules apply.  It must be a
real directory inside the state dir: a symlink planted in its place is never followed (the
source packs nothing, the target removes the link and makes the directory).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import os
import shutil
import stat
import tarfile
import threading
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, AsyncIterator

from ..errors import RemoteError
from .args import options as _opts
from .context import ProjectContext
from .transfer import relative, resolve

CHUNK = 256 * 1024           # raw bytes per stream item / unpack call
MAX_UNPACKS = 4              # concurrent unpacks per project
UNPACK_IDLE_S = 120.0        # an unpack with no chunk for this long is aborted
MAX_EXCLUDES = 100


def _inside_home(ctx: ProjectContext, rel: str) -> Path:
    """``rel`` under the home, its directories not leading out through a symlink (the final
    component may be a link: ``pack`` refuses it, the extractor replaces it)."""
    parent, _, name = rel.rpartition("/")
    return resolve(ctx, parent) / name if name else resolve(ctx, "")


def _jobs_scope(opts: dict[str, Any], rel: str) -> bool:
    """True for ``scope: "jobs"`` (see the module docstring), False for the home."""
    scope = opts.get("scope", "home")
    if scope in (None, "home"):
        return False
    if scope != "jobs":
        raise RemoteError("Error: 'scope' must be 'home' or 'jobs'")
    if rel:
        raise RemoteError("Error: job records are copied whole: 'path' must be empty with scope 'jobs'")
    return True


def _jobs_dir(ctx: ProjectContext, *, make: bool) -> Path | None:
    """The state dir's ``jobs/`` if it is a real directory there (None if not, on the source).
    ``make`` (the target): whatever the project left in its place goes (a symlink is
    unlinked, not followed) and a directory is made."""
    path = Path(ctx.state_dir) / "jobs"
    try:
        st: os.stat_result | None = path.lstat()
    except OSError:   # missing (or unreadable: then mkdir says why)
        st = None
    if (st is None or not stat.S_ISDIR(st.st_mode)) and not make:
        return None
    try:
        if st is not None and not stat.S_ISDIR(st.st_mode):
            _remove(path)   # not a directory: unlink never follows a link
            st = None
        if st is None:
            path.mkdir(mode=0o700, parents=True)
    except OSError as exc:
        raise RemoteError(f"Error: cannot make the job records' directory: {exc.strerror or exc}")
    # the state dir is the host's bind mount (the project cannot replace it); its jobs/ is
    # now a real directory, not a link: checked once more by its real path
    if os.path.realpath(path) != os.path.join(os.path.realpath(ctx.state_dir), "jobs"):
        raise RemoteError("Error: the project's job records are not a directory in its state dir")
    return path


def _make_jobs_dir(ctx: ProjectContext) -> Path:
    path = _jobs_dir(ctx, make=True)
    if path is None:   # never: make=True makes it or raises
        raise RemoteError("Error: the project's job records are not a directory in its state dir")
    return path


def _excludes(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if (not isinstance(value, list) or len(value) > MAX_EXCLUDES
            or not all(isinstance(v, str) and 0 < len(v) <= 1024 for v in value)):
        raise RemoteError(f"Error: 'exclude' must be a list of at most {MAX_EXCLUDES} glob patterns")
    return value


def _flag(opts: dict[str, Any], name: str) -> bool:
    value = opts.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RemoteError(f"Error: '{name}' must be true or false")
    return value


# ----------------------------------------------------------------------------------- pack

class _PipeWriter:
    """The write end of a pipe as a file object for tarfile (``w|``: sequential writes)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> int:
        _write_all(self.fd, data)
        return len(data)


def _pack_into(fd: int, source: Path | None, excludes: list[str], errors: list[str],
               gzip: bool = False) -> None:
    """``source`` None: an empty archive (no job records to send)."""
    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        rel = info.name[2:] if info.name.startswith("./") else info.name
        if rel and any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(os.path.basename(rel), p) for p in excludes):
            return None
        if not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
            return None   # devices, FIFOs, sockets are not copied
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info
    try:
        with tarfile.open(fileobj=_PipeWriter(fd), mode="w|gz" if gzip else "w|",
                          format=tarfile.PAX_FORMAT) as tar:
            if source is not None:
                tar.add(str(source), arcname=".", recursive=True, filter=keep)
    except BrokenPipeError:
        pass   # the reader went away (cancelled copy)
    except OSError as exc:
        errors.append(f"Error: {exc.strerror or exc}: {exc.filename or source}")
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


async def pack(ctx: ProjectContext, args: list[Any]) -> AsyncIterator[Any]:
    """``{path, exclude?, gzip?, scope?}`` → ``{"kind": "dir"|"file"}``, then ``{"data": base64}``
    items."""
    opts = _opts(args)
    rel = relative(opts.get("path", "") if opts.get("scope") == "jobs" else opts.get("path"),
                   allow_home=True)
    excludes = _excludes(opts.get("exclude"))
    source: Path | None
    if _jobs_scope(opts, rel):
        source = _jobs_dir(ctx, make=False)
        yield {"kind": "dir"}
    else:
        source = _inside_home(ctx, rel)
        try:
            st = source.lstat()
        except OSError:
            raise RemoteError(f"Error: no such path '{opts.get('path')}' in the source project")
        if stat.S_ISLNK(st.st_mode):
            raise RemoteError(f"Error: '{opts.get('path')}' is a symbolic link; copy what it points to")
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise RemoteError(f"Error: '{opts.get('path')}' is neither a file nor a directory")
        yield {"kind": "dir" if stat.S_ISDIR(st.st_mode) else "file"}
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    errors: list[str] = []
    gzip = opts.get("gzip", False) is True
    worker = threading.Thread(target=_pack_into, args=(write_fd, source, excludes, errors, gzip),
                              name="archive-pack", daemon=True)
    worker.start()
    try:
        while True:
            data = await asyncio.to_thread(_read_chunk, read_fd)
            if not data:
                break
            yield {"data": base64.b64encode(data).decode("ascii")}
        await asyncio.to_thread(worker.join)
        if errors:
            raise RemoteError(errors[0])
    finally:
        os.close(read_fd)   # a writer still running gets EPIPE and stops


def _read_chunk(fd: int) -> bytes:
    """Up to CHUNK bytes (fewer only at the end of the stream)."""
    parts: list[bytes] = []
    size = 0
    while size < CHUNK:
        part = os.read(fd, CHUNK - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


# --------------------------------------------------------------------------------- unpack

class _Unpack:
    """One extraction: chunks written into a pipe, a thread reading the tar from it."""

    def __init__(self, target: Path, kind: str, opts: dict[str, Any]) -> None:
        self.target = target
        self.kind = kind
        self.overwrite_newer = _flag(opts, "overwrite_newer")
        self.backup = _flag(opts, "backup")
        self.delete_missing = _flag(opts, "delete_missing")
        # rsync keeps what it excluded on the receiving side, also with --delete
        self.excludes = _excludes(opts.get("exclude"))
        self.stats = {"files": 0, "directories": 0, "bytes": 0, "skipped_newer": 0,
                      "skipped_unsafe": 0, "backups": 0, "deleted": 0}
        self.error: str | None = None
        self.touched = time.monotonic()
        self.lock = asyncio.Lock()    # one chunk at a time, in order
        read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        self.reader = os.fdopen(read_fd, "rb")
        self.seen: set[str] = set()
        self.thread = threading.Thread(target=self._run, name="archive-unpack", daemon=True)
        self.thread.start()

    # the thread ------------------------------------------------------------------------
    def _destination(self, name: str) -> tuple[Path, str]:
        rel = name[2:] if name.startswith("./") else name
        rel = rel.rstrip("/")
        if self.kind == "file":
            return self.target, ""
        return (self.target / rel if rel and rel != "." else self.target), rel

    def _run(self) -> None:
        try:
            if self.kind == "dir":
                self.target.mkdir(parents=True, exist_ok=True)
            else:
                self.target.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(fileobj=self.reader, mode="r|*") as tar:   # plain or compressed
                for member in tar:
                    self._member(tar, member)
            if self.kind == "dir" and self.delete_missing:
                self._delete_missing()
        except Exception as exc:   # any failure ends the copy with its text
            self.error = (f"Error: {exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror
                          else f"Error: {type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(OSError):
                self.reader.close()

    def _unsafe(self, member: tarfile.TarInfo, rel: str) -> bool:
        """Stricter than the data filter, whose escapes this Python may predate (the 2025
        tarfile fixes): no absolute names, no ``..`` anywhere, links only relative without
        ``..``, hard links only to members already extracted, regular files/dirs/links only."""
        parts = PurePosixPath(member.name).parts
        if member.name.startswith("/") or ".." in parts:
            return True
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            return True
        if member.issym() and (member.linkname.startswith("/") or ".." in PurePosixPath(member.linkname).parts):
            return True
        if member.islnk():
            target = member.linkname[2:] if member.linkname.startswith("./") else member.linkname
            if target not in self.seen or ".." in PurePosixPath(target).parts:
                return True
        return False

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        dest, rel = self._destination(member.name)
        if self.kind == "file":
            if not member.isreg():
                self.stats["skipped_unsafe"] += 1
                return
        elif self._unsafe(member, rel):
            self.stats["skipped_unsafe"] += 1
            return
        if self.delete_missing or member.isreg():   # delete_missing's list; hard links' targets
            self.seen.add(rel)
        if member.isdir():
            try:   # a directory member passes the data filter too
                tarfile.data_filter(member, str(self.target))
            except tarfile.FilterError:
                self.stats["skipped_unsafe"] += 1
                return
            if not dest.is_dir() or dest.is_symlink():
                if dest.is_symlink() or dest.exists():
                    self._set_aside(dest)
                dest.mkdir(parents=True, exist_ok=True)
            if rel:   # its mode, as rsync -a (the data filter drops directories' modes;
                # group/other write and high bits stay off, owner rwx on: members follow it)
                fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    os.fchmod(fd, (member.mode & 0o755) | 0o700)
                finally:
                    os.close(fd)
            self.stats["directories"] += 1
            return
        try:
            safe = tarfile.data_filter(member, str(dest.parent if self.kind == "file" else self.target))
        except tarfile.FilterError:
            self.stats["skipped_unsafe"] += 1
            return
        if dest.is_dir() and not dest.is_symlink():
            self._set_aside(dest)
        elif dest.exists() or dest.is_symlink():
            if not self.overwrite_newer and _mtime(dest) > member.mtime:
                self.stats["skipped_newer"] += 1
                return
            self._set_aside(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self.kind == "file":   # the one member is named "."; it goes to the target path
            tar.extract(safe.replace(name=dest.name, deep=False), path=str(dest.parent),
                        set_attrs=True, filter="fully_trusted")
        else:   # names relative to the target, as checked by the data filter (hard links too)
            tar.extract(safe, path=str(self.target), set_attrs=True, filter="fully_trusted")
        self.stats["files"] += 1
        self.stats["bytes"] += member.size if member.isreg() else 0

    def _set_aside(self, dest: Path) -> None:
        """Make room for a new entry: renamed to ``name~`` with ``backup``, else removed."""
        if self.backup:
            backup = dest.with_name(dest.name + "~")
            _remove(backup)
            os.rename(dest, backup)
            self.stats["backups"] += 1
        else:
            _remove(dest)

    def _delete_missing(self) -> None:
        for root, dirs, files in os.walk(self.target, topdown=True):
            base = os.path.relpath(root, self.target)
            base = "" if base == "." else base
            for name in list(dirs) + files:
                rel = f"{base}/{name}" if base else name
                if rel not in self.seen and not any(
                        fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in self.excludes):
                    _remove(Path(root) / name)
                    self.stats["deleted"] += 1
                    if name in dirs:
                        dirs.remove(name)

    # the loop side ---------------------------------------------------------------------
    async def feed(self, data: bytes) -> None:
        async with self.lock:
            self.touched = time.monotonic()
            try:
                await asyncio.to_thread(_write_all, self.write_fd, data)
            except BrokenPipeError:
                pass   # the extractor stopped: its error is reported below
            if self.error:
                raise RemoteError(self.error)

    async def finish(self) -> dict[str, Any]:
        async with self.lock:
            self.close_input()
            await asyncio.to_thread(self.thread.join)
            if self.error:
                raise RemoteError(self.error)
            return dict(self.stats)

    def close_input(self) -> None:
        if self.write_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.write_fd)
            self.write_fd = -1


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


_unpacks: dict[str, _Unpack] = {}


def _expire_idle() -> None:
    now = time.monotonic()
    for key, job in list(_unpacks.items()):
        if now - job.touched > UNPACK_IDLE_S:
            job.close_input()
            _unpacks.pop(key, None)


async def unpack_begin(ctx: ProjectContext, args: list[Any]) -> dict[str, Any]:
    """``{path, kind, overwrite_newer?, backup?, delete_missing?, scope?}`` → ``{"id"}``."""
    if not hasattr(tarfile, "data_filter"):
        raise RemoteError("Error: this project's Python has no tarfile filters (3.11.4+ needed)")
    opts = _opts(args)
    rel = relative(opts.get("path", "") if opts.get("scope") == "jobs" else opts.get("path"),
                   allow_home=True)
    kind = opts.get("kind")
    if kind not in ("dir", "file"):
        raise RemoteError("Error: 'kind' must be 'dir' or 'file'")
    jobs = _jobs_scope(opts, rel)
    if jobs and kind != "dir":
        raise RemoteError("Error: job records are copied as a directory: 'kind' must be 'dir'")
    if kind == "file" and not rel:
        raise RemoteError("Error: the target of a file copy must be a file path, not the home")
    _expire_idle()
    if len(_unpacks) >= MAX_UNPACKS:
        raise RemoteError(f"Error: at most {MAX_UNPACKS} copies into a project at a time")
    if jobs:
        target = _make_jobs_dir(ctx)
    else:   # a directory target is written into: it must not lead out even as its last component
        target = resolve(ctx, rel) if kind == "dir" else _inside_home(ctx, rel)
    job = _Unpack(target, kind, opts)
    key = uuid.uuid4().hex
    _unpacks[key] = job
    return {"id": key}


def _job(opts: dict[str, Any]) -> _Unpack:
    job = _unpacks.get(opts.get("id")) if isinstance(opts.get("id"), str) else None
    if job is None:
        raise RemoteError("Error: no such copy in progress (it ended or timed out)")
    return job


async def unpack_chunk(ctx: ProjectContext, args: list[Any]) -> None:
    opts = _opts(args)
    job = _job(opts)
    data = opts.get("data")
    if not isinstance(data, str) or len(data) > 2 * CHUNK:
        raise RemoteError("Error: 'data' must be base64 text of at most one chunk")
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raise RemoteError("Error: 'data' is not valid base64")
    try:
        await job.feed(raw)
    except RemoteError:
        _unpacks.pop(opts["id"], None)
        raise


async def unpack_end(ctx: ProjectContext, args: list[Any]) -> dict[str, Any]:
    opts = _opts(args)
    job = _job(opts)
    try:
        return await job.finish()
    finally:
        _unpacks.pop(opts["id"], None)


async def unpack_abort(ctx: ProjectContext, args: list[Any]) -> None:
    opts = _opts(args)
    job = _unpacks.pop(opts.get("id"), None) if isinstance(opts.get("id"), str) else None
    if job is not None:
        job.close_input()
        await asyncio.to_thread(job.thread.join, 10.0)
