"""``projects.copyPathBetweenProjects`` through the official client (issue 19 item 3): a tree
or a file from one project to another, rsync's options, stopped projects, refusals, and the
target's disk limit."""

from __future__ import annotations

from typing import Any, Iterator

import cocalc_api
import pytest

from tests.security.conftest import Proj, new_project
from tests.server import Account, Server

TREE = ("mkdir -p src/sub/deeper src/empty && printf 'one\\n' > src/a.txt && "
        "printf 'two\\n' > src/sub/b.txt && head -c 300000 /dev/urandom > src/sub/deeper/blob.bin && "
        "ln -s a.txt src/link-to-a && chmod 750 src/sub/b.txt && touch -d '2020-01-02 03:04:05' src/a.txt")
LISTING = "cd {d} && find . -printf '%y %m %p %l\\n' | sort && find . -type f -exec sha256sum {{}} + | sort -k2"


@pytest.fixture(scope="module")
def owner(server: Server) -> Account:
    return server.new_account("Copier")


@pytest.fixture(scope="module")
def hub(server: Server, owner: Account) -> Iterator[cocalc_api.Hub]:
    client = cocalc_api.Hub(api_key=owner.api_key, host=server.url)
    yield client
    client.client.close()


@pytest.fixture(scope="module")
def pair(server: Server, owner: Account) -> Iterator[tuple[Proj, Proj]]:
    a, b = new_project(server, owner, "copy src"), new_project(server, owner, "copy dst")
    assert a.run(TREE)["exit_code"] == 0
    yield a, b
    a.stop()
    b.stop()


def listing(p: Proj, directory: str) -> str:
    out = p.run(LISTING.format(d=directory))
    assert out["exit_code"] == 0, out
    return out["stdout"]


def test_a_tree_arrives_whole_as_the_targets_own(hub: cocalc_api.Hub, pair: tuple[Proj, Proj]) -> None:
    a, b = pair
    stats = hub.projects.copy_path_between_projects(src_project_id=a.project_id, src_path="src",
                                                    target_project_id=b.project_id, target_path="copied")
    assert stats["files"] == 4 and stats["bytes"] >= 300000, stats
    assert listing(b, "copied") == listing(a, "src")   # names, types, modes, link targets, contents
    # mtimes kept; the files belong to the target project's uid, not the source's
    assert b.run("stat -c %Y copied/a.txt")["stdout"] == a.run("stat -c %Y src/a.txt")["stdout"]
    assert b.run("stat -c %u copied/sub/b.txt")["stdout"].strip() == b.run("id -u")["stdout"].strip()


def test_a_single_file_and_the_defaults(hub: cocalc_api.Hub, pair: tuple[Proj, Proj]) -> None:
    a, b = pair
    hub.projects.copy_path_between_projects(src_project_id=a.project_id, src_path="src/sub/b.txt",
                                            target_project_id=b.project_id, target_path="one/two/b-copy.txt")
    assert b.run("cat one/two/b-copy.txt")["stdout"] == "two\n"
    # target project defaults to the source, target path to the source path
    hub.projects.copy_path_between_projects(src_project_id=a.project_id, src_path="src/a.txt",
                                            target_path="a-again.txt")
    assert a.run("cat a-again.txt")["stdout"] == "one\n"
    hub.projects.copy_path_between_projects(src_project_id=a.project_id, src_path="src/a.txt",
                                            target_project_id=b.project_id)
    assert b.run("cat src/a.txt")["stdout"] == "one\n"


def raw_copy(hub: cocalc_api.Hub, **opts: Any) -> Any:
    """CoCalc's options the official client's method does not name."""
    return hub.call("projects.copyPathBetweenProjects", [opts])


def test_rsync_options(hub: cocalc_api.Hub, pair: tuple[Proj, Proj]) -> None:
    a, b = pair
    base = {"src_project_id": a.project_id, "src_path": "src", "target_project_id": b.project_id,
            "target_path": "opts"}
    raw_copy(hub, **base)
    assert b.run("printf 'newer in target\\n' > opts/a.txt && echo extra > opts/extra.txt && "
                 "touch -d '2020-01-01' opts/sub/b.txt")["exit_code"] == 0
    raw_copy(hub, **base)   # default: a file newer in the target is kept, extras too
    assert b.run("cat opts/a.txt")["stdout"] == "newer in target\n"
    assert b.run("cat opts/sub/b.txt")["stdout"] == "two\n"
    assert b.run("cat opts/extra.txt")["stdout"] == "extra\n"
    stats = raw_copy(hub, **base, overwrite_newer=True, backup=True)
    assert b.run("cat opts/a.txt")["stdout"] == "one\n"
    assert b.run("cat opts/a.txt~")["stdout"] == "newer in target\n", "backup of what was overwritten"
    assert stats["backups"] >= 1, stats
    stats = raw_copy(hub, **base, delete_missing=True, exclude=["*.bin"])
    assert b.run("test -e opts/extra.txt || echo gone")["stdout"] == "gone\n"
    assert b.run("test -e opts/sub/deeper/blob.bin && echo kept")["stdout"] == "kept\n", \
        "an excluded path is neither sent nor deleted (rsync)"
    assert stats["deleted"] >= 1, stats
    raw_copy(hub, **{**base, "target_path": "excl"}, exclude=["deeper"])
    assert b.run("find excl | sort")["stdout"].count("deeper") == 0


def test_copies_between_stopped_projects(hub: cocalc_api.Hub, server: Server, owner: Account) -> None:
    a, b = new_project(server, owner, "stopped src"), new_project(server, owner, "stopped dst")
    assert a.run("echo cold > f.txt")["exit_code"] == 0
    a.stop()
    b.stop()
    hub.projects.copy_path_between_projects(src_project_id=a.project_id, src_path="f.txt",
                                            target_project_id=b.project_id)
    assert b.run("cat f.txt")["stdout"] == "cold\n"
    a.stop()
    b.stop()


def test_refusals(hub: cocalc_api.Hub, server: Server, pair: tuple[Proj, Proj]) -> None:
    a, b = pair
    stranger = server.new_account("Stranger")
    theirs = new_project(server, stranger, "not yours")
    with pytest.raises(RuntimeError, match="collaborator on source project"):
        hub.projects.copy_path_between_projects(src_project_id=theirs.project_id, src_path="x",
                                                target_project_id=b.project_id)
    with pytest.raises(RuntimeError, match="collaborator on target project"):
        hub.projects.copy_path_between_projects(src_project_id=a.project_id, src_path="src",
                                                target_project_id=theirs.project_id)
    with pytest.raises(RuntimeError, match="no such path"):
        hub.projects.copy_path_between_projects(src_project_id=a.project_id, src_path="nope",
                                                target_project_id=b.project_id)
    with pytest.raises(RuntimeError, match="must not contain each other"):
        hub.projects.copy_path_between_projects(src_project_id=a.project_id, src_path="src",
                                                target_path="src/inner")
    with pytest.raises(RuntimeError, match="inside the home"):
        hub.projects.copy_path_between_projects(src_project_id=a.project_id, src_path="../x",
                                                target_project_id=b.project_id)
    for bad in ({"timeout": -1}, {"timeout": "soon"}, {"overwrite_newer": "yes"}, {"exclude": [1]}):
        with pytest.raises(RuntimeError, match="Error: "):
            raw_copy(hub, src_project_id=a.project_id, src_path="src", target_project_id=b.project_id,
                     target_path="bad", **bad)
    assert theirs.run("ls")["stdout"] == "", "nothing reached the stranger's project"
    theirs.stop()


def test_the_targets_disk_limit_ends_the_copy(hub: cocalc_api.Hub, server: Server,
                                              owner: Account) -> None:
    src = new_project(server, owner, "big src")
    small = new_project(server, owner, "small dst", disk_bytes="64M")
    assert src.run("head -c 120M /dev/zero > big.bin", timeout=60)["exit_code"] == 0
    with pytest.raises(RuntimeError, match="No space left on device"):
        hub.projects.copy_path_between_projects(src_project_id=src.project_id, src_path="big.bin",
                                                target_project_id=small.project_id)
    # the target still works and can be cleaned up
    assert small.run("rm -f big.bin && echo ok")["stdout"] == "ok\n"
    src.stop()
    small.stop()
