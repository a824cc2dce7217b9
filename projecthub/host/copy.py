"""Copy a path from one project to another on this host (``projects.copyPathBetweenProjects``).

The source daemon packs (``native.archive.pack``: a tar stream, as its uid, in its sandbox)
and the target daemon unpacks (``native.archive.unpack*``: as its uid, in its sandbox,
within its disk limit); this module only hands chunks from one to the other, one at a
time: the host holds at most the fabric's stream window plus one chunk, whatever the size
of the tree (``project/archive.py`` has the rules of the copy itself).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from ..errors import RemoteError

if TYPE_CHECKING:
    from .host import Host

# rsync's options as CoCalc's copy takes them; the target daemon checks their types
UNPACK_OPTIONS = ("overwrite_newer", "delete_missing", "backup", "exclude")


async def copy_between(host: "Host", src_project: str, src_path: str, target_project: str,
                       target_path: str, options: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Copy and return the target's counts (files, directories, bytes, skipped, ...)."""
    pack = host.stream(src_project, "native.archive.pack",
                       [{"path": src_path, "exclude": options.get("exclude")}])
    unpack_id: str | None = None
    try:
        async with asyncio.timeout(timeout_s):
            first = await anext(pack, None)
            if not isinstance(first, dict) or first.get("kind") not in ("dir", "file"):
                raise RemoteError("Error: the source project sent no copy")
            begin = await host.call(target_project, "native.archive.unpackBegin", [{
                "path": target_path, "kind": first["kind"],
                **{k: options[k] for k in UNPACK_OPTIONS if k in options}}])
            unpack_id = begin["id"]
            async for item in pack:
                data = item.get("data") if isinstance(item, dict) else None
                if not isinstance(data, str):
                    raise RemoteError("Error: the source project sent a malformed chunk")
                await host.call(target_project, "native.archive.unpackChunk",
                                [{"id": unpack_id, "data": data}])
            stats = await host.call(target_project, "native.archive.unpackEnd", [{"id": unpack_id}])
            unpack_id = None
            return stats if isinstance(stats, dict) else {}
    except TimeoutError:
        raise RemoteError(f"Error: timeout: the copy took longer than {timeout_s:g} s; what was "
                          "copied so far stays in the target")
    finally:
        with contextlib.suppress(Exception):
            await pack.aclose()
        if unpack_id is not None:   # stop the target's extractor; partial files stay (like rsync)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(host.call(target_project, "native.archive.unpackAbort",
                                                 [{"id": unpack_id}]), 15)
