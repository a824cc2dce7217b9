"""sync.history cannot be made to stall the hub or grow its store without bound (review of
issue 19 item 4).

* Periodic text made diff-match-patch's diff quadratic (256 Ki characters of "abab..."
  against "baba...": 34 s on the hub's single store thread, every store call waiting).
  Patches are now one changed region found in linear time.
* Control characters become ``\\uXXXX`` in JSON, so 100 alternating writes of 256 Ki of them
  stored ~300 MB for one file; sizes are now UTF-8 bytes with a per-file cap, and the
  per-project cap applies to the file being written too.
"""

from __future__ import annotations

import sqlite3
import time

import cocalc_api

from projecthub.hub import history as history_module
from tests.security.conftest import new_project
from tests.server import Account, Server


def write(p_client: cocalc_api.Project, path: str, content: str) -> None:
    assert p_client.call("system.writeTextFileToProject", [{"path": path, "content": content}]) is None


def stored_bytes(server: Server, project_id: str) -> int:
    with sqlite3.connect(server.data_dir / "hub.db") as db:
        patches = db.execute("SELECT coalesce(sum(length(CAST(patch AS BLOB))), 0) FROM file_history "
                             "WHERE project_id = ?", (project_id,)).fetchone()[0]
        texts = db.execute("SELECT coalesce(sum(length(CAST(text AS BLOB))), 0) FROM file_history_heads "
                           "WHERE project_id = ?", (project_id,)).fetchone()[0]
    return patches + texts


def test_periodic_text_does_not_stall_the_hub(server: Server, alice: Account) -> None:
    p = new_project(server, alice, "periodic")
    half = history_module.MAX_RECORDED_CHARS // 2 - 1   # room for the append below
    a, b = "ab" * half, "ba" * half
    started = time.monotonic()
    for text in (a, b, a, b):
        write(p.client, "f.txt", text)
    p.run("printf ab >> f.txt")   # and a history call diffing against a changed file
    hub = cocalc_api.Hub(api_key=alice.api_key, host=server.url)
    entries = hub.sync.history(project_id=p.project_id, path="f.txt")
    # 34 s per write before; generous for a loaded 2-core machine, never the old cost
    assert time.monotonic() - started < 30
    assert len(entries) == 5
    hub.client.close()
    p.stop()


def test_escaped_control_characters_cannot_fill_the_store(server: Server, alice: Account) -> None:
    p = new_project(server, alice, "escapes")
    n = history_module.MAX_RECORDED_CHARS
    for i in range(12):
        write(p.client, "ctl.txt", ("\x01" if i % 2 else "\x02") * n)
    limit = history_module.MAX_FILE_BYTES + 8 * n   # the patches' cap plus one snapshot and the text
    assert stored_bytes(server, p.project_id) <= limit
    assert stored_bytes(server, p.project_id) <= history_module.MAX_PROJECT_BYTES
    p.stop()
