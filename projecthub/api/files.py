"""The v3 files API: files in and out of a project, streamed both ways.

    PUT    /api/v3/projects/{id}/files/{path}     raw body → the file (If-Match: an ETag)
    GET    /api/v3/projects/{id}/files/{path}     the bytes (Range, If-None-Match, ETag)
    GET    /api/v3/projects/{id}/files/{dir}?list the directory's entries
    DELETE /api/v3/projects/{id}/files/{path}     (?recursive=true for a directory)
    POST   /api/v3/projects/{id}/files:move       {"from", "to", "overwrite"?}
    GET    /api/v3/projects/{id}/archive/{dir}    the directory as tar.gz
    POST   /api/v3/projects/{id}/archive/{dir}    a tar (or tar.gz) body unpacked into it

The project's daemon opens every file, as the project's uid inside its sandbox, and keeps
confinement, ETags, Range checks and the atomic rename (``project/transfer.py``,
``project/archive.py``).  When the daemon runs on this machine the hub then moves the bytes
itself, through its own duplicate of the file the daemon opened (``host/lent_files.py``
says what it checks first), in ``FD_PIECE`` pieces with at most two in memory; otherwise it
relays them through the daemon in chunks, one at a time each way (upload: 512 KiB per call;
download: the fabric's stream window).  Neither way holds a whole file.  An upload is
bounded by the project's disk limit (413 when it is full) and replaces the file atomically
at its end.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import errno
import io
import mimetypes
import os
import re
import threading
from datetime import datetime, timezone
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..auth.resolve import Identity
from ..host import lent_files
from ..project.transfer import etag as _etag
from ..hub.history import MAX_RECORDED_CHARS, record_write
from ..hub.service import HubService
from . import models as m
from .native import ApiError, _hub, _project, endpoint
from .replies import BoundedJSONResponse as JSONResponse

UPLOAD_CHUNK = 512 * 1024         # raw bytes per daemon call (at most project/transfer.py's CHUNK)
UPLOAD_DEPTH = 4                  # upload calls in flight: the hub holds at most this many chunks
# A download's stream window: the fabric's own 1 MiB.  Every stalled reader holds up to one
# window in the hub (stream windows are not charged to the reply budget), so a larger one
# multiplied by the per-IP connection cap would let one key pin gigabytes.
DOWNLOAD_WINDOW = 2**20
ARCHIVE_CHUNK = 256 * 1024        # project/archive.py's CHUNK
FD_PIECE = 2**20                  # bytes per read/write through a lent file (in a thread)
_FILE_GUARD = {"Content-Security-Policy": "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:",
               "X-Content-Type-Options": "nosniff"}
_RANGE = re.compile(r"^bytes=(\d{0,18})-(\d{0,18})$")   # 18 digits: beyond any file, within int()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _path(request: Request) -> str:
    return request.path_params.get("path", "")


def _info(path: str, meta: dict[str, Any]) -> dict[str, Any]:
    return {"path": path, "size": meta["size"], "etag": meta["etag"], "mtime": _iso(meta["mtime"])}


class _Kept:
    """The first bytes of an upload, while it is small enough for sync.history."""

    def __init__(self) -> None:
        self.data: bytearray | None = bytearray()

    def add(self, chunk: bytes) -> None:
        if self.data is not None:
            if len(self.data) + len(chunk) <= 4 * MAX_RECORDED_CHARS:
                self.data += chunk
            else:
                self.data = None


async def _pieces(source: AsyncIterator[bytes], size: int, kept: _Kept | None = None) -> AsyncIterator[bytes]:
    """The body re-cut into pieces of ``size`` bytes (the last may be shorter)."""
    buffer = bytearray()
    async for chunk in source:
        if kept is not None:
            kept.add(chunk)
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


async def _upload(hub: HubService, project_id: str, key: str, source: AsyncIterator[bytes],
                  kept: _Kept) -> int:
    """Send the body as ``writeChunk`` calls with their offsets, ``UPLOAD_DEPTH`` at a time
    (the daemon writes each at its offset, so their order does not matter); the size."""
    pending: set[asyncio.Task[Any]] = set()
    offset = 0
    try:
        async for piece in _pieces(source, UPLOAD_CHUNK, kept):
            while len(pending) >= UPLOAD_DEPTH:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()   # the first failure ends the upload
            pending.add(asyncio.ensure_future(hub.project_call(project_id, "native.files.writeChunk", [
                {"id": key, "offset": offset, "data": base64.b64encode(piece).decode()}], None)))
            offset += len(piece)
        for task in asyncio.as_completed(list(pending)):
            await task
        pending = set()
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    return offset


async def _first(items: AsyncIterator[Any]) -> Any:
    """A daemon stream's first item (a file's metadata, an archive's kind); the stream is
    closed if it fails, so the daemon's side ends at once."""
    try:
        return await anext(items)
    except BaseException:
        await items.aclose()   # type: ignore[attr-defined]
        raise


async def _decoded(items: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    """The rest of a daemon stream's ``{"data": base64}`` items as bytes (a response body)."""
    try:
        async for item in items:
            yield base64.b64decode(item["data"])
    finally:
        await items.aclose()   # type: ignore[attr-defined]


# ------------------------------------------------------------------ lent files (fast path)

# The hub's own threads for reads and writes through lent files: a bounded pool, apart from
# asyncio's default executor, so many transfers queue here instead of starving other calls.
_IO = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="projecthub-files")


class _Lent:
    """A lent file and the I/O in flight on it.  It is closed when the request is done with
    it *and* no thread still uses it: a cancelled request (the client went away) must not
    close an fd under a running pwrite, whose number the next open could reuse."""

    def __init__(self, f: io.FileIO) -> None:
        self.f = f
        self._lock = threading.Lock()
        self._busy = 0
        self._closing = False

    def run(self, fn: Any, *args: Any) -> "asyncio.Future[Any]":
        with self._lock:
            self._busy += 1
        try:
            work = _IO.submit(fn, self.f.fileno(), *args)
        except BaseException:   # the pool is shut down (the server is stopping)
            self._release(None)
            raise
        work.add_done_callback(self._release)   # in the worker thread, when it really ended
        return asyncio.wrap_future(work)

    def _release(self, _work: object) -> None:
        with self._lock:
            self._busy -= 1
            last = self._closing and self._busy == 0
        if last:
            self.f.close()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            last = self._busy == 0
        if last:
            self.f.close()

    def __enter__(self) -> "_Lent":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lendable(hub: HubService) -> bool:
    """The project's daemons run on this machine (the embedded server): files can be lent."""
    return hasattr(hub.host, "daemon_identity")


def _pwritev_all(fd: int, parts: list[bytes], offset: int) -> None:
    """``parts`` at ``offset``, in one system call when the kernel takes them all."""
    views = [memoryview(part) for part in parts]
    while views:
        n = os.pwritev(fd, views, offset)
        offset += n
        while views and n >= len(views[0]):
            n -= len(views.pop(0))
        if n:
            views[0] = views[0][n:]


def _write_error(exc: OSError, path: str) -> ApiError:
    if exc.errno == errno.ENOSPC:   # like transfer._os_error: the image is the project's limit
        return ApiError(413, f"no space left on the project's disk (its disk_bytes limit) writing '{path}'")
    return ApiError(500, f"writing '{path}' failed: {exc.strerror or exc}")


async def _write_lent(lent: _Lent, source: AsyncIterator[bytes], kept: _Kept, path: str) -> int:
    """The body into the lent file, about ``FD_PIECE`` at a time, each piece written (in a
    thread, the received chunks as they are: no copy on our side) while the next arrives, so
    at most two pieces are in memory.  The size written."""
    offset = 0
    pending: asyncio.Future[Any] | None = None
    parts: list[bytes] = []
    held = 0

    async def flush() -> None:
        nonlocal pending, parts, held, offset
        if pending is not None:
            await pending
        pending = lent.run(_pwritev_all, parts, offset)
        offset += held
        parts, held = [], 0

    with lent:
        try:
            async for chunk in source:
                if not chunk:
                    continue
                kept.add(chunk)
                parts.append(chunk)
                held += len(chunk)
                # the part count stays far below IOV_MAX (1024) whatever size the chunks are
                if held >= FD_PIECE or len(parts) >= 256:
                    await flush()
            if parts:
                await flush()
            if pending is not None:
                await pending
        except OSError as exc:
            raise _write_error(exc, path)
    return offset


async def _read_lent(lent: _Lent, start: int, end: int) -> AsyncIterator[bytes]:
    """Bytes ``start``..``end`` of the lent file, ``FD_PIECE`` at a time (a response body)."""
    with lent:
        position = start
        while position < end:
            data = await lent.run(os.pread, min(FD_PIECE, end - position), position)
            if not data:
                break   # the file shrank meanwhile
            position += len(data)
            yield data


async def _borrow_read(hub: HubService, project_id: str, path: str) -> io.FileIO | None:
    """The file the daemon opened for reading ``path`` (its checks and errors: 404, 403...),
    lent to us; None when it cannot be lent (then relay it)."""
    items = hub.project_stream(project_id, "native.files.read", [{"path": path, "lend_fd": True}],
                               DOWNLOAD_WINDOW)
    try:
        meta = await _first(items)
        # in a thread: the checks read mountinfo, the image's superblock and the uid table
        return await asyncio.to_thread(lent_files.borrow, hub.host, project_id, meta.get("fd"), write=False)
    finally:
        await items.aclose()   # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ files

async def put_file(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    hub, path = _hub(request), _path(request)
    lendable = _lendable(hub)
    begin = await hub.project_call(project_id, "native.files.writeBegin", [
        {"path": path, "if_match": request.headers.get("if-match"), "lend_fd": lendable}], None)
    key = begin["id"]
    kept = _Kept()
    try:
        lent = await asyncio.to_thread(lent_files.borrow, hub.host, project_id, begin.get("fd"),
                                       write=True) if lendable else None
        if lent is not None:
            size = await _write_lent(_Lent(lent), request.stream(), kept, path)
        else:
            size = await _upload(hub, project_id, key, request.stream(), kept)
        out = await hub.project_call(project_id, "native.files.writeEnd", [{"id": key, "size": size}], None)
    except BaseException:
        with contextlib.suppress(Exception):
            await hub.project_call(project_id, "native.files.writeAbort", [{"id": key}], 10)
        raise
    if kept.data is not None:   # a small text: sync.history records it like writeTextFileToProject
        with contextlib.suppress(UnicodeDecodeError):
            await record_write(hub, project_id, identity.account_id,
                               [{"path": path, "content": kept.data.decode("utf-8")}])
    info = _info(path, out)
    return JSONResponse(info, status_code=201 if out.get("created") else 200, headers={"ETag": info["etag"]})


def _byte_range(header: str | None, size: int | None) -> tuple[int, int | None] | None:
    """(offset, length) of a single ``bytes=`` range; None to send the whole file."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None or (not match.group(1) and not match.group(2)):
        return None   # several ranges or another unit: the whole file (RFC 9110 allows it)
    first, last = match.group(1), match.group(2)
    if not first:   # the last N bytes
        if size is None:
            return None
        n = int(last)
        return max(0, size - n), min(n, size)
    start = int(first)
    return start, (int(last) - start + 1 if last else None)


async def get_file(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity, query=m.FilesQuery)
    hub, path = _hub(request), _path(request)
    if request.state.query.list is not None:
        listing = await hub.project_call(project_id, "native.files.list", [{"path": path}], None)
        for entry in listing["entries"]:
            entry["mtime"] = _iso(entry["mtime"])
        return JSONResponse(listing)
    header = request.headers.get("range")
    lent = await _borrow_read(hub, project_id, path) if _lendable(hub) else None
    items: AsyncIterator[Any] | None = None
    size = None
    if lent is not None:
        st = os.fstat(lent.fileno())
        size, meta = st.st_size, {"size": st.st_size, "etag": _etag(st), "mtime": st.st_mtime}
    elif header and header.strip().startswith("bytes=-"):   # a suffix range needs the size first
        size = (await hub.project_call(project_id, "native.files.describe", [{"path": path}], None))["size"]
    try:
        wanted = _byte_range(header, size)
        if wanted is not None and wanted[1] is not None and wanted[1] <= 0:
            raise ApiError(416, "the range is empty")
        if lent is None:
            args: dict[str, Any] = {"path": path}
            if wanted is not None:
                args["offset"] = wanted[0]
                if wanted[1] is not None:
                    args["length"] = wanted[1]
            items = hub.project_stream(project_id, "native.files.read", [args], DOWNLOAD_WINDOW)
            meta = await _first(items)
        headers = {"ETag": meta["etag"], "Accept-Ranges": "bytes", "Last-Modified":
                   datetime.fromtimestamp(meta["mtime"], timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT"),
                   # a project's .html or .svg opened from this URL must not run as the web UI's
                   # origin (the UI at / keeps the key in that origin's storage): no script, an
                   # opaque origin, no sniffing of a type
                   **_FILE_GUARD}
        if request.headers.get("if-none-match") == meta["etag"]:
            return Response(status_code=304, headers=headers)
        status, total, start, end = 200, meta["size"], 0, meta["size"]
        if wanted is not None:
            start = wanted[0]
            if start >= total and total > 0 or (total == 0 and start > 0):
                return JSONResponse({"error": f"the range starts past the end of the file ({total} bytes)"},
                                    status_code=416, headers={"Content-Range": f"bytes */{total}"})
            end = total if wanted[1] is None else min(total, start + wanted[1])
            status = 206
            headers["Content-Range"] = f"bytes {start}-{max(start, end - 1)}/{total}"
        headers["Content-Length"] = str(end - start)
        media = mimetypes.guess_type(path)[0] or "application/octet-stream"
        body = _read_lent(_Lent(lent), start, end) if lent is not None else _decoded(items)  # type: ignore[arg-type]
        response = StreamingResponse(body, status_code=status, headers=headers, media_type=media)
        lent = items = None   # the body owns them now
        return response
    finally:   # an answer without a body (304, 416, an error): nothing stays open
        if lent is not None:
            lent.close()
        if items is not None:
            await items.aclose()   # type: ignore[attr-defined]


async def delete_file(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity, query=m.DeleteFileQuery)
    await _hub(request).project_call(project_id, "native.files.delete", [
        {"path": _path(request), "recursive": request.state.query.recursive}], None)
    return Response(status_code=204)


async def move_file(request: Request, identity: Identity) -> Response:
    from .native import _parsed
    project_id = await _project(request, identity)
    opts = await _parsed(request, m.MoveFileRequest)
    out = await _hub(request).project_call(project_id, "native.files.move", [
        {"from": opts.from_, "to": opts.to, "overwrite": opts.overwrite}], None)
    return JSONResponse(out)


# ---------------------------------------------------------------------------- archives

async def get_archive(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    hub, path = _hub(request), _path(request)
    items = hub.project_stream(project_id, "native.archive.pack", [{"path": path, "gzip": True}])
    first = await _first(items)
    if first.get("kind") != "dir":
        await items.aclose()
        raise ApiError(400, f"'{path}' is a file: download it from …/files/{path}")

    name = (path.rstrip("/").rsplit("/", 1)[-1] or "home") + ".tar.gz"
    return StreamingResponse(_decoded(items), media_type="application/gzip",
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


async def post_archive(request: Request, identity: Identity) -> Response:
    project_id = await _project(request, identity)
    hub, path = _hub(request), _path(request)
    # like `tar -x`: what the archive holds replaces what is there
    begin = await hub.project_call(project_id, "native.archive.unpackBegin",
                                   [{"path": path, "kind": "dir", "overwrite_newer": True}], None)
    key = begin["id"]
    try:
        async for piece in _pieces(request.stream(), ARCHIVE_CHUNK):   # in order: a tar is a stream
            await hub.project_call(project_id, "native.archive.unpackChunk",
                                   [{"id": key, "data": base64.b64encode(piece).decode()}], None)
        stats = await hub.project_call(project_id, "native.archive.unpackEnd", [{"id": key}], None)
    except BaseException:
        with contextlib.suppress(Exception):
            await hub.project_call(project_id, "native.archive.unpackAbort", [{"id": key}], 15)
        raise
    return JSONResponse(stats)


def routes() -> list[Route]:
    from .native import _by_method
    p = "/api/v3/projects/{project_id}"
    table = {
        p + "/files/{path:path}": {"GET": endpoint(get_file), "PUT": endpoint(put_file),
                                   "DELETE": endpoint(delete_file)},
        p + "/files:move": {"POST": endpoint(move_file)},
        p + "/archive/{path:path}": {"GET": endpoint(get_archive), "POST": endpoint(post_archive)},
    }
    return [Route(path, _by_method(handlers), methods=list(handlers)) for path, handlers in table.items()]
