"""``projects.copyPathBetweenProjects`` read as a hostile project user would (issue 19 item 3).

* Links that leave the copied tree (absolute, or climbing out with ``..``) never arrive: the
  target daemon extracts with tarfile's ``data`` filter and skips what it refuses.
* The copied path itself may not be a symlink to elsewhere, nor climb out of the home.
* Only collaborators of both projects may copy, in either direction.
* The daemon calls that move the bytes are host-only: a project's key cannot drive them.
"""

from __future__ import annotations

import cocalc_api
import httpx
import pytest

from tests.security.conftest import Proj, new_project
from tests.server import Account, Server


def copy(server: Server, key: str, **opts: object) -> object:
    hub = cocalc_api.Hub(api_key=key, host=server.url)
    try:
        return hub.call("projects.copyPathBetweenProjects", [opts])
    finally:
        hub.client.close()


def test_links_out_of_the_tree_are_skipped(server: Server, alice: Account) -> None:
    a, b = new_project(server, alice, "links src"), new_project(server, alice, "links dst")
    out = a.run("mkdir -p t/in && echo ok > t/in/f && ln -s /etc/passwd t/abs && ln -s ../../.. t/up && "
                "ln -s in/f t/fine && ln -s /proc/1/root t/in/root")
    assert out["exit_code"] == 0, out
    stats = copy(server, alice.api_key, src_project_id=a.project_id, src_path="t",
                 target_project_id=b.project_id, target_path="t")
    assert isinstance(stats, dict) and stats["skipped_unsafe"] == 3, stats
    listing = b.run("cd t && find . | sort")["stdout"].split()
    assert listing == [".", "./fine", "./in", "./in/f"], listing
    assert b.run("cat t/fine")["stdout"] == "ok\n"
    a.stop()
    b.stop()


def test_the_copied_path_must_be_in_the_home_and_not_a_link(server: Server, alice: Account) -> None:
    a, b = new_project(server, alice, "path src"), new_project(server, alice, "path dst")
    assert a.run("ln -s /etc etc-link && echo data > f")["exit_code"] == 0
    for path, message in (("etc-link", "symbolic link"), ("../../etc", "inside the home"),
                          ("/etc/passwd", "no such path")):
        with pytest.raises(RuntimeError, match=message):
            copy(server, alice.api_key, src_project_id=a.project_id, src_path=path,
                 target_project_id=b.project_id, target_path="x")
    for target in ("../../x", "a/../../x"):
        with pytest.raises(RuntimeError, match="inside the home"):
            copy(server, alice.api_key, src_project_id=a.project_id, src_path="f",
                 target_project_id=b.project_id, target_path=target)
    assert b.run("ls -A")["stdout"] == "", "nothing was written anywhere"
    a.stop()
    b.stop()


def test_no_copy_from_or_into_a_project_of_someone_else(server: Server, alice: Account,
                                                         proj_a: Proj, proj_b: Proj) -> None:
    secret = proj_b.secret  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="collaborator on source project"):
        copy(server, alice.api_key, src_project_id=proj_b.project_id, src_path="secret.txt",
             target_project_id=proj_a.project_id, target_path="stolen.txt")
    assert proj_a.run("cat stolen.txt 2>/dev/null || echo none")["stdout"] == "none\n"
    assert proj_a.run("echo planted > plant.txt")["exit_code"] == 0
    with pytest.raises(RuntimeError, match="collaborator on target project"):
        copy(server, alice.api_key, src_project_id=proj_a.project_id, src_path="plant.txt",
             target_project_id=proj_b.project_id, target_path="secret.txt")
    assert proj_b.run("cat secret.txt")["stdout"].strip() == secret
    assert proj_b.run("ls plant.txt 2>/dev/null || echo none")["stdout"] == "none\n"


def test_the_byte_moving_calls_are_host_only(server: Server, alice: Account, proj_a: Proj) -> None:
    for name in ("native.archive.unpackBegin", "native.archive.unpackChunk", "native.archive.pack"):
        r = httpx.post(server.url + "/api/conat/project", timeout=30,
                       headers={"Authorization": f"Bearer {alice.api_key}"},
                       json={"project_id": proj_a.project_id, "name": name,
                             "args": [{"path": "x", "kind": "dir"}]})
        assert r.status_code == 200 and "unknown function" in r.json().get("error", ""), r.text
