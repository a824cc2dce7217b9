"""The rows behind ``sync.history`` (a mixin of ``Store``): recorded writes of text files.

Patches are made by the hub (``hub/history.py``); here they are appended under a write
transaction together with the file's head (its last recorded text), and the bounds are
kept in UTF-8 bytes: a file with ``max_entries`` patches, or past ``max_file_bytes`` of
them, starts over from one snapshot of its new text, and a project past
``max_project_bytes`` loses the history of the files written longest ago first (the file
just written last, if it alone is over).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime, timezone
from typing import Any, Callable

from sqlalchemy import Connection, delete, func, insert, select, update

from .schema import file_history, file_history_heads


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


class FileHistoryStore:
    """Mixed into ``Store``: needs its ``_read``/``_write`` transactions."""

    def _read(self) -> AbstractContextManager[Connection]: ...    # provided by Store
    def _write(self) -> AbstractContextManager[Connection]: ...   # provided by Store

    def history_head(self, project_id: str, path: str) -> dict[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(select(file_history_heads).where(
                file_history_heads.c.project_id == project_id,
                file_history_heads.c.path == path)).mappings().first()
        return dict(row) if row else None

    def record_history(self, project_id: str, path: str, account_id: str | None, text: str,
                       make_patch: Callable[[str | None], tuple[str, bool]], *,
                       max_entries: int, max_file_bytes: int, max_project_bytes: int) -> int:
        """Append the patch from the file's head to ``text`` and return its seq.
        ``make_patch(previous_text)`` gives ``(patch_json, is_snapshot)``; it is called
        with None when the file starts over (no history yet, or its entries are full), and
        inside the transaction, so two writes of one file never patch from the same head."""
        now = datetime.now(timezone.utc)
        key = (file_history_heads.c.project_id == project_id) & (file_history_heads.c.path == path)
        with self._write() as conn:
            head = conn.execute(select(file_history_heads).where(key)).mappings().first()
            previous: str | None = None
            entries = patch_bytes = 0   # of the patches kept before this one
            if head is not None and head["entries"] < max_entries:
                previous, entries = head["text"], head["entries"]
                patch_bytes = head["bytes"] - _size(head["text"])
            patch, snapshot = make_patch(previous)
            if head is not None and (previous is None or patch_bytes + _size(patch) > max_file_bytes):
                # full: start over from a snapshot of the new text
                conn.execute(delete(file_history).where(
                    file_history.c.project_id == project_id, file_history.c.path == path))
                if previous is not None:
                    patch, snapshot = make_patch(None)
                entries = patch_bytes = 0
            seq = (head["seq"] + 1) if head is not None else 0
            conn.execute(insert(file_history).values(
                project_id=project_id, path=path, seq=seq, time=now, account_id=account_id,
                patch=patch, is_snapshot=snapshot))
            values = {"text": text, "seq": seq, "entries": entries + 1,
                      "bytes": patch_bytes + _size(patch) + _size(text), "updated": now}
            if head is None:
                conn.execute(insert(file_history_heads).values(project_id=project_id, path=path, **values))
            else:
                conn.execute(update(file_history_heads).where(key).values(**values))
            self._trim_project_history(conn, project_id, path, max_project_bytes)
        return seq

    @staticmethod
    def _trim_project_history(conn: Connection, project_id: str, keep_path: str, limit: int) -> None:
        total = conn.execute(select(func.coalesce(func.sum(file_history_heads.c.bytes), 0)).where(
            file_history_heads.c.project_id == project_id)).scalar() or 0
        if total <= limit:
            return
        others = conn.execute(select(file_history_heads.c.path, file_history_heads.c.bytes).where(
            file_history_heads.c.project_id == project_id, file_history_heads.c.path != keep_path)
            .order_by(file_history_heads.c.updated)).all()
        mine = conn.execute(select(file_history_heads.c.path, file_history_heads.c.bytes).where(
            file_history_heads.c.project_id == project_id, file_history_heads.c.path == keep_path)).all()
        oldest = [*others, *mine]   # the file just written goes last, but it goes too if it must
        for path, size in oldest:
            if total <= limit:
                break
            conn.execute(delete(file_history).where(
                file_history.c.project_id == project_id, file_history.c.path == path))
            conn.execute(delete(file_history_heads).where(
                file_history_heads.c.project_id == project_id, file_history_heads.c.path == path))
            total -= size

    def file_history(self, project_id: str, path: str) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(select(file_history).where(
                file_history.c.project_id == project_id, file_history.c.path == path)
                .order_by(file_history.c.seq)).mappings().all()
        return [dict(r) for r in rows]

    def delete_project_history(self, project_id: str) -> None:
        with self._write() as conn:
            conn.execute(delete(file_history).where(file_history.c.project_id == project_id))
            conn.execute(delete(file_history_heads).where(file_history_heads.c.project_id == project_id))
