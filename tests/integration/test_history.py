"""``sync.history`` through the official client (issue 19 item 4): writes made with
``writeTextFileToProject`` are recorded as diff-match-patch patches with time and account;
a file never written that way answers with a snapshot of its text; a file changed by
other means ends with a patch up to its current text."""

from __future__ import annotations

import json
from typing import Any

import cocalc_api
import pytest
from diff_match_patch import diff_match_patch, patch_obj

from projecthub.hub import history as history_module
from tests.server import Server


def write(project: cocalc_api.Project, path: str, content: str) -> None:
    """writeTextFileToProject as CoCalc's clients call it (cocalc-api has no method for it)."""
    assert project.call("system.writeTextFileToProject", [{"path": path, "content": content}]) is None


def replay(entries: list[dict[str, Any]]) -> list[str]:
    """Each version of the file, by applying the compressed patches in order."""
    dmp = diff_match_patch()
    text, versions = "", []
    for entry in entries:
        patches = []
        for diffs, start1, start2, length1, length2 in json.loads(entry["mesg"]["patch"]):
            p = patch_obj()
            p.diffs = [(op, chunk) for op, chunk in diffs]
            p.start1, p.start2, p.length1, p.length2 = start1, start2, length1, length2
            patches.append(p)
        text, applied = dmp.patch_apply(patches, text)
        assert all(applied), entry
        versions.append(text)
    return versions


def test_writes_through_the_api_are_the_history(hub: cocalc_api.Hub, project: cocalc_api.Project,
                                                project_id: str, account: Any) -> None:
    texts = ["line one\n", "line one\nline two\n", "line ONE\nline two\n\u00e9t\u00e9 \U0001f600\n"]
    for text in texts:
        write(project, "notes/a.txt", text)
    entries = hub.sync.history(project_id=project_id, path="notes/a.txt")
    assert replay(entries) == texts
    assert [e["seq"] for e in entries] == [0, 1, 2]
    assert entries[0]["mesg"]["is_snapshot"] and not entries[1]["mesg"]["is_snapshot"]
    times = [e["time"] for e in entries]
    assert times == sorted(times) and len(set(times)) == 3, "logical times are unique and ordered"
    assert entries[1]["mesg"]["parents"] == [entries[0]["time"]]
    assert {e["account_id"] for e in entries} == {account.account_id}
    assert {e["mesg"]["user_id"] for e in entries} == {0}
    # the same file however its path is spelled
    assert replay(hub.sync.history(project_id=project_id, path="./notes//a.txt")) == texts


def test_a_change_by_other_means_ends_the_history(hub: cocalc_api.Hub, project: cocalc_api.Project,
                                                  project_id: str) -> None:
    write(project, "b.txt", "from the api\n")
    project.system.exec(command="echo from exec >> b.txt")
    entries = hub.sync.history(project_id=project_id, path="b.txt")
    assert replay(entries) == ["from the api\n", "from the api\nfrom exec\n"]
    assert entries[-1]["account_id"] is None and entries[-1]["mesg"]["user_id"] == 1


def test_a_file_never_written_through_the_api_is_one_snapshot(hub: cocalc_api.Hub,
                                                              project: cocalc_api.Project,
                                                              project_id: str) -> None:
    project.system.exec(command="printf 'made by exec\\n' > c.txt")
    entries = hub.sync.history(project_id=project_id, path="c.txt")
    assert len(entries) == 1 and entries[0]["mesg"]["is_snapshot"]
    assert replay(entries) == ["made by exec\n"]
    assert hub.sync.history(project_id=project_id, path="no/such/file.txt") == []


def test_bounds_and_refusals(server: Server, hub: cocalc_api.Hub, project: cocalc_api.Project,
                             project_id: str) -> None:
    for i in range(history_module.MAX_ENTRIES + 3):
        write(project, "many.txt", f"version {i}\n")
    entries = hub.sync.history(project_id=project_id, path="many.txt")
    assert len(entries) <= history_module.MAX_ENTRIES
    assert entries[0]["mesg"]["is_snapshot"], "a full history starts over from a snapshot"
    assert replay(entries)[-1] == f"version {history_module.MAX_ENTRIES + 2}\n"
    # a text too big to record: no history (and no patch of it is made on the fly)
    big = "x" * (history_module.MAX_RECORDED_CHARS + 1)
    write(project, "big.txt", big)
    assert hub.sync.history(project_id=project_id, path="big.txt") == []

    stranger = server.new_account("History stranger")
    other = cocalc_api.Hub(api_key=stranger.api_key, host=server.url)
    with pytest.raises(RuntimeError, match="collaborator"):
        other.sync.history(project_id=project_id, path="many.txt")
    for bad in ("", None, "a\x00b"):
        with pytest.raises(RuntimeError, match="path"):
            hub.call("sync.history", [{"project_id": project_id, "path": bad}])
    other.client.close()
