"""Project file functions (spec 3; checklist 27), served by the daemon."""

from __future__ import annotations

import pytest


def call(project, name: str, *args):
    return project.call(name, list(args))


def names(listing: list[dict]) -> set[str]:
    return {entry["name"] for entry in listing}


def test_write_read_round_trip(project) -> None:
    assert call(project, "system.writeTextFileToProject", {"path": "a/b/c.txt", "content": "héllo\n"}) is None
    assert call(project, "system.readTextFileFromProject", {"path": "a/b/c.txt"}) == "héllo\n"


def test_listing_relative_to_home(project) -> None:
    call(project, "system.writeTextFileToProject", {"path": "dir/x.txt", "content": "12345"})
    call(project, "system.writeTextFileToProject", {"path": ".hidden", "content": ""})
    top = call(project, "system.listing", {"path": ""})
    assert "dir" in names(top) and ".hidden" not in names(top)
    assert ".hidden" in names(call(project, "system.listing", {"path": "", "hidden": True}))
    entry = next(e for e in top if e["name"] == "dir")
    assert entry["isdir"] is True and entry["size"] == 1 and isinstance(entry["mtime"], float)
    inner = call(project, "system.listing", {"path": "/dir"})  # absolute is joined onto HOME too
    assert inner[0]["name"] == "x.txt" and inner[0]["size"] == 5


def test_rename_move_delete(project) -> None:
    call(project, "system.writeTextFileToProject", {"path": "one.txt", "content": "1"})
    assert call(project, "system.renameFile", {"src": "one.txt", "dest": "two.txt"}) is None
    assert call(project, "system.renameFile", {"src": "two.txt", "dest": "two.txt"}) is None
    assert call(project, "system.moveFiles", {"paths": ["two.txt"], "dest": "sub"}) is None
    assert call(project, "system.readTextFileFromProject", {"path": "sub/two.txt"}) == "1"
    assert call(project, "system.deleteFiles", {"paths": ["sub"]}) is None
    assert "sub" not in names(call(project, "system.listing", {"path": ""}))


def test_realpath(project) -> None:
    call(project, "system.writeTextFileToProject", {"path": "r/f.txt", "content": ""})
    assert call(project, "system.realpath", "r/../r/f.txt") == "r/f.txt"
    assert call(project, "system.realpath", "/") == "/"


def test_missing_file_is_a_clear_error(project) -> None:
    with pytest.raises(RuntimeError, match="ENOENT"):
        call(project, "system.readTextFileFromProject", {"path": "nope.txt"})
    with pytest.raises(RuntimeError, match="'path' must be a string"):
        call(project, "system.readTextFileFromProject", {"path": 5})
