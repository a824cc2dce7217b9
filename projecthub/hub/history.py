"""``sync.history``: the edit history of a text file, as CoCalc answers it.

projecthub has no collaborative editor, so the history holds what was written through the
API: every successful ``system.writeTextFileToProject`` of a text up to
``MAX_RECORDED_CHARS`` records a patch (diff-match-patch, in CoCalc's compressed form: a
JSON string of ``[[diffs, start1, start2, length1, length2], ...]``) from the file's last
recorded text, with the time and the account that wrote it.  The first recorded write is a
snapshot (a patch from the empty text).  A file never written that way answers with one
snapshot of its current text; a file changed by other means since its last recorded write
(exec, a kernel) ends with one more patch, with no account, up to its current text.

Bounds (store/history.py keeps them): ``MAX_ENTRIES`` patches and ``MAX_FILE_BYTES`` of
them per file (then it starts over from a snapshot), ``MAX_PROJECT_BYTES`` of patches and
texts per project, counted in UTF-8 bytes (then the files written longest ago lose their
history first, the file just written last of all).  A file over ``MAX_RECORDED_CHARS`` now
gets no final patch up to its current text.  The rows go with the project when it is
purged.
"""

from __future__ import annotations

import json
import posixpath
from typing import TYPE_CHECKING, Any

from ..errors import RemoteError

if TYPE_CHECKING:
    from .service import HubService

WRITE_FUNCTION = "system.writeTextFileToProject"
MAX_RECORDED_CHARS = 256 * 1024
MAX_ENTRIES = 100
MAX_PROJECT_BYTES = 16 * 2**20
MAX_FILE_BYTES = 4 * 2**20      # of patches (UTF-8) per file: past it the file starts over

_dmp: Any = None


def _differ() -> Any:
    global _dmp
    if _dmp is None:
        from diff_match_patch import diff_match_patch
        _dmp = diff_match_patch()
    return _dmp


def make_patch(previous: str | None, text: str) -> tuple[str, bool]:
    """The compressed patch from ``previous`` (None: a snapshot from "") to ``text``.

    The diff is one changed region between the common prefix and suffix, found in linear
    time: diff-match-patch's own diff is quadratic on periodic text whatever its timeout
    (256 Ki characters of "abab..." took 34 s), and it would run on the hub's store thread.
    An append or one edited region comes out as small as the full diff; several scattered
    edits make a larger, still exact, patch."""
    dmp = _differ()
    old = previous or ""
    prefix = dmp.diff_commonPrefix(old, text)
    suffix = dmp.diff_commonSuffix(old[prefix:], text[prefix:])
    diffs = []
    if prefix:
        diffs.append((0, text[:prefix]))
    if len(old) - prefix - suffix > 0:
        diffs.append((-1, old[prefix:len(old) - suffix]))
    if len(text) - prefix - suffix > 0:
        diffs.append((1, text[prefix:len(text) - suffix]))
    if suffix:
        diffs.append((0, text[len(text) - suffix:]))
    patches = dmp.patch_make(old, diffs)
    compressed = [[[[op, chunk] for op, chunk in p.diffs], p.start1, p.start2, p.length1, p.length2]
                  for p in patches]
    return json.dumps(compressed, separators=(",", ":"), ensure_ascii=False), previous is None


def normalize(path: Any) -> str:
    """One key per file whichever way a path is spelled (``a//b``, ``./a/b``)."""
    if not isinstance(path, str) or not path or "\x00" in path or len(path) > 4096:
        raise RemoteError("Error: 'path' must be a non-empty path")
    norm = posixpath.normpath(path)
    return norm[2:] if norm.startswith("./") else norm


async def record_write(hub: "HubService", project_id: str, account_id: str | None, args: list[Any]) -> None:
    """Called after a successful write through the API; never fails the write.  Text with a
    NUL character is not recorded, on either backend: PostgreSQL's text columns cannot hold
    it, and recording it there made the (done) write answer an error."""
    opts = args[0] if args and isinstance(args[0], dict) else {}
    path, content = opts.get("path"), opts.get("content")
    if not isinstance(content, str) or len(content) > MAX_RECORDED_CHARS or "\x00" in content:
        return
    try:
        key = normalize(path)
    except RemoteError:
        return
    await hub.db.record_history(project_id, key, account_id, content,
                                lambda previous: make_patch(previous, content),
                                max_entries=MAX_ENTRIES, max_file_bytes=MAX_FILE_BYTES,
                                max_project_bytes=MAX_PROJECT_BYTES)


def _entry(seq: int, time_ms: int, parent: int | None, patch: str, user_id: int,
           snapshot: bool, account_id: str | None) -> dict[str, Any]:
    return {"seq": seq, "time": time_ms, "account_id": account_id,
            "mesg": {"time": time_ms, "wall": time_ms, "patch": patch, "user_id": user_id,
                     "is_snapshot": snapshot, "parents": [] if parent is None else [parent],
                     "version": seq + 1}}


async def history(hub: "HubService", project_id: str, path: Any, budget: float | None) -> list[dict[str, Any]]:
    key = normalize(path)
    rows = await hub.db.file_history(project_id, key)
    try:
        current: str | None = await hub.project_call(
            project_id, "system.readTextFileFromProject", [{"path": key}], budget)
    except RemoteError:
        current = None   # gone, not text, or too big to read: the recorded history only
    users: list[str | None] = []

    def user(account_id: str | None) -> int:
        if account_id not in users:
            users.append(account_id)
        return users.index(account_id)

    out: list[dict[str, Any]] = []
    last_ms: int | None = None
    for row in rows:
        ms = int(row["time"].timestamp() * 1000)
        ms = ms if last_ms is None or ms > last_ms else last_ms + 1   # logical times stay unique
        out.append(_entry(len(out), ms, last_ms, row["patch"], user(row["account_id"]),
                          bool(row["is_snapshot"]), row["account_id"]))
        last_ms = ms
    head = await hub.db.history_head(project_id, key) if rows else None
    recorded = head["text"] if head is not None else None
    if current is not None and len(current) > MAX_RECORDED_CHARS:
        current = None   # too big to patch here: the history of its API writes only
    if current is not None and (not rows or current != recorded):
        # never written through the API (a snapshot), or changed since by other means
        import time
        ms = int(time.time() * 1000)
        ms = ms if last_ms is None or ms > last_ms else last_ms + 1
        patch, snapshot = make_patch(recorded if rows else None, current)
        out.append(_entry(len(out), ms, last_ms, patch, user(None), snapshot, None))
    return out
