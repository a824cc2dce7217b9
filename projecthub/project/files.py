"""CoCalc's project file functions (spec section 3), run inside the project daemon.

There is deliberately no path sandbox here: like CoCalc, the project user may touch any
path its uid can reach.  Isolation between projects is the sandbox's job (mount namespace,
uid), not string checks on paths.

Reads are bounded: ``readTextFileFromProject`` reads regular files only (a device such as
``/dev/zero``, a FIFO or a socket is refused before it is opened, and again by ``fstat`` on
the open descriptor), refuses files over ``ctx.settings["read_file_limit"]`` (default
8 MiB) and never reads more than limit + 1 bytes, so a file that grows or lies about its
size (``/proc``) cannot make the daemon hold more.  The limit also counts what the reply
costs as JSON, like exec output (execution/capture.py): a control byte becomes ``\u0001``
(6 bytes) and an invalid byte U+FFFD (3 bytes), so a file whose JSON text would exceed the
limit is refused with the same EFBIG error (8 MiB of control bytes were a 48 MiB reply).
Large reads run one at a time: a decoded str can be 4x its bytes, and the reply's JSON
another copy.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from ..errors import RemoteError
from .args import options as _opts
from .context import ProjectContext


def _require_str(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise RemoteError(f"Error: '{field}' must be a string")
    if "\x00" in value:
        raise RemoteError(f"Error: '{field}' must not contain NUL bytes")
    return value


def _under_home(ctx: ProjectContext, path: str) -> Path:
    """CoCalc joins listing paths onto HOME even when they are absolute."""
    return ctx.home / path.lstrip("/")


def _resolve(ctx: ProjectContext, path: str) -> Path:
    """Relative paths are under HOME (the daemon's cwd); absolute paths are used as-is."""
    return Path(path) if path.startswith("/") else ctx.home / path


def _entry(directory: Path, name: str) -> dict[str, Any]:
    full = directory / name
    entry: dict[str, Any] = {"name": name}
    try:
        st = full.lstat()
        if full.is_symlink():
            entry["issymlink"] = True
            entry["link_target"] = os.readlink(full)
            try:
                st = full.stat()
            except OSError:
                pass  # a dangling link is still listed, with its own metadata
        entry["mtime"] = st.st_mtime
        if os.path.isdir(full):
            entry["isdir"] = True
            try:
                entry["size"] = len(os.listdir(full))
            except OSError:
                entry["size"] = 0
        else:
            entry["size"] = st.st_size
    except OSError as exc:
        entry["error"] = str(exc)
    return entry


def _listing(ctx: ProjectContext, path: str, hidden: bool) -> list[dict[str, Any]]:
    directory = _under_home(ctx, path)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        raise RemoteError(f"Error: ENOENT: no such file or directory, scandir '{directory}'")
    except NotADirectoryError:
        raise RemoteError(f"Error: ENOTDIR: not a directory, scandir '{directory}'")
    except PermissionError:
        raise RemoteError(f"Error: EACCES: permission denied, scandir '{directory}'")
    return [_entry(directory, n) for n in names if hidden or not n.startswith(".")]


async def listing(ctx: ProjectContext, args: list[Any]) -> list[dict[str, Any]]:
    opts = _opts(args)
    path = _require_str(opts.get("path", ""), "path")
    return await asyncio.to_thread(_listing, ctx, path, bool(opts.get("hidden", False)))


DEFAULT_READ_LIMIT = 8 * 2**20
_READ_CHUNK = 1 << 20
# Bytes JSON escapes: '"', '\' and \b \t \n \f \r become two bytes, other control
# characters \u00XX (six).
_SHORT_ESCAPED = b'"\\\b\t\n\f\r'
_LONG_ESCAPED = bytes(c for c in range(0x20) if c not in _SHORT_ESCAPED)
_big_reads: asyncio.Semaphore | None = None


def _check_kind(mode: int, target: Path) -> None:
    if stat.S_ISDIR(mode):
        raise RemoteError(f"Error: EISDIR: illegal operation on a directory, read '{target}'")
    if not stat.S_ISREG(mode):
        raise RemoteError(f"Error: EINVAL: not a regular file (devices, FIFOs and sockets cannot be "
                          f"read as text), read '{target}'")


def _too_big(target: Path, size: int | str, limit: int) -> RemoteError:
    return RemoteError(f"Error: EFBIG: file too large to read ({size} bytes; readTextFileFromProject "
                       f"reads at most {limit} bytes; use exec or a job for more), read '{target}'")


def _json_size(text: str) -> int:
    """Bytes of ``text`` as a JSON string body (UTF-8, escapes counted, quotes not)."""
    encoded = text.encode("utf-8")
    short = len(encoded) - len(encoded.translate(None, _SHORT_ESCAPED))
    long = len(encoded) - len(encoded.translate(None, _LONG_ESCAPED))
    return len(encoded) + short + 5 * long


def _read_text(target: Path, limit: int) -> str:
    try:
        _check_kind(os.stat(target).st_mode, target)   # before open: opening a device can act
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise RemoteError(f"Error: ENOENT: no such file or directory, open '{target}'")
    except PermissionError:
        raise RemoteError(f"Error: EACCES: permission denied, open '{target}'")
    except OSError as exc:
        raise RemoteError(f"Error: {exc.strerror or exc}, open '{target}'")
    try:
        st = os.fstat(fd)            # what was opened, whatever the path points at by now
        _check_kind(st.st_mode, target)
        if st.st_size > limit:
            raise _too_big(target, st.st_size, limit)
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            data = os.read(fd, min(left, _READ_CHUNK))
            if not data:
                break
            chunks.append(data)
            left -= len(data)
        if left <= 0:
            raise _too_big(target, f"more than {limit}", limit)
    except OSError as exc:
        raise RemoteError(f"Error: {exc.strerror or exc}, read '{target}'")
    finally:
        os.close(fd)
    data = b"".join(chunks)
    del chunks
    # as before (Path.read_text): universal newlines
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    del data
    size = _json_size(text)
    if size > limit:   # the reply, not the file, is what the hub and the client hold
        raise RemoteError(f"Error: EFBIG: file too large to read ({size} bytes as JSON text, with control "
                          f"characters escaped; readTextFileFromProject reads at most {limit} bytes; use "
                          f"exec or a job for more), read '{target}'")
    return text


async def read_text_file(ctx: ProjectContext, args: list[Any]) -> str:
    global _big_reads
    path = _require_str(_opts(args).get("path"), "path")
    limit = int(ctx.settings.get("read_file_limit", DEFAULT_READ_LIMIT))
    if _big_reads is None:
        _big_reads = asyncio.Semaphore(1)
    async with _big_reads:
        return await asyncio.to_thread(_read_text, _resolve(ctx, path), limit)


def _write_text(target: Path, content: str) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    except PermissionError:
        raise RemoteError(f"Error: EACCES: permission denied, open '{target}'")
    except IsADirectoryError:
        raise RemoteError(f"Error: EISDIR: illegal operation on a directory, open '{target}'")
    except OSError as exc:
        raise RemoteError(f"Error: {exc.strerror or exc}, open '{target}'")


async def write_text_file(ctx: ProjectContext, args: list[Any]) -> None:
    opts = _opts(args)
    path = _require_str(opts.get("path"), "path")
    content = _require_str(opts.get("content"), "content")
    await asyncio.to_thread(_write_text, _resolve(ctx, path), content)


def _remove(target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)


def _paths(opts: dict[str, Any]) -> list[str]:
    paths = opts.get("paths")
    if not isinstance(paths, list):
        raise RemoteError("Error: 'paths' must be a list of strings")
    return [_require_str(p, "paths") for p in paths]


async def delete_files(ctx: ProjectContext, args: list[Any]) -> None:
    targets = [_resolve(ctx, p) for p in _paths(_opts(args))]

    def work() -> None:
        for target in targets:
            try:
                _remove(target)
            except FileNotFoundError:
                continue
            except PermissionError:
                raise RemoteError(f"Error: EACCES: permission denied, unlink '{target}'")

    await asyncio.to_thread(work)


async def move_files(ctx: ProjectContext, args: list[Any]) -> None:
    opts = _opts(args)
    sources = [_resolve(ctx, p) for p in _paths(opts)]
    dest = _resolve(ctx, _require_str(opts.get("dest"), "dest"))

    def work() -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for source in sources:
            try:
                shutil.move(str(source), str(dest / source.name))
            except FileNotFoundError:
                raise RemoteError(f"Error: ENOENT: no such file or directory, rename '{source}'")

    await asyncio.to_thread(work)


async def rename_file(ctx: ProjectContext, args: list[Any]) -> None:
    opts = _opts(args)
    src = _require_str(opts.get("src"), "src")
    dest = _require_str(opts.get("dest"), "dest")
    if src == dest:
        return
    source, target = _resolve(ctx, src), _resolve(ctx, dest)

    def work() -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        except FileNotFoundError:
            raise RemoteError(f"Error: ENOENT: no such file or directory, rename '{source}' -> '{target}'")

    await asyncio.to_thread(work)


def _realpath(ctx: ProjectContext, path: str) -> str:
    resolved = os.path.realpath(_resolve(ctx, path))
    home = os.path.realpath(ctx.home)
    if resolved == home:
        return ""
    if resolved.startswith(home + os.sep):
        return resolved[len(home) + 1:]
    return path


async def realpath(ctx: ProjectContext, args: list[Any]) -> str:
    path = args[0] if args else ""
    if isinstance(path, dict):  # tolerate the dict form the official client would send
        path = path.get("path", "")
    return _realpath(ctx, _require_str(path, "path"))


async def canonical_paths(ctx: ProjectContext, args: list[Any]) -> list[str]:
    paths = args[0] if args else []
    if isinstance(paths, dict):
        paths = paths.get("paths", [])
    if not isinstance(paths, list):
        raise RemoteError("Error: 'paths' must be a list of strings")
    return [_realpath(ctx, _require_str(p, "paths")) for p in paths]
