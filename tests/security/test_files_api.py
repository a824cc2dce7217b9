"""The v3 files API read as a hostile user would (issue 18 item 1).

* Paths stay in the home: ``..`` (also percent-encoded) is 400; a symlink planted in the
  home that points out (``/etc``, ``/proc/1/root``, another project's run dir) is 403 for
  reads, writes, listings, moves and archives alike; a link *inside* the home works.
* Another account's project is 403 for every operation, with nothing read or written.
* The daemon calls behind it are host-only.
"""

from __future__ import annotations

import httpx
import pytest

from tests.security.conftest import Proj


def api(p: Proj, method: str, path: str, key: str | None = None, **kw: object) -> httpx.Response:
    return httpx.request(method, f"{p.server.url}/api/v3/projects/{p.project_id}{path}", timeout=60,
                         headers={"Authorization": f"Bearer {key or p.key}", **kw.pop("headers", {})},  # type: ignore[dict-item]
                         **kw)  # type: ignore[arg-type]


def test_links_out_of_the_home_are_refused(proj_a: Proj) -> None:
    out = proj_a.run("ln -sfn /etc out-etc && ln -sfn /proc/1/root out-root && ln -sfn ../.. out-up && "
                     "mkdir -p inside && echo ok > inside/f && ln -sfn inside/f in-link")
    assert out["exit_code"] == 0, out
    for path in ("/files/out-etc/passwd", "/files/out-root/etc/hostname", "/files/out-up/x"):
        r = api(proj_a, "GET", path)
        assert r.status_code == 403 and "outside the home" in r.json()["error"], (path, r.text)
    r = api(proj_a, "PUT", "/files/out-etc/planted", content=b"x")
    assert r.status_code == 403, r.text
    assert api(proj_a, "GET", "/files/out-etc", params={"list": ""}).status_code == 403
    assert api(proj_a, "GET", "/archive/out-root").status_code in (400, 403)
    assert api(proj_a, "POST", "/files:move", json={"from": "inside/f", "to": "out-etc/f"}).status_code == 403
    assert api(proj_a, "POST", "/archive/out-etc", content=b"").status_code == 403
    # a link that stays inside is an ordinary path
    assert api(proj_a, "GET", "/files/in-link").content == b"ok\n"
    # the link itself may be deleted (nothing outside is touched)
    assert api(proj_a, "DELETE", "/files/out-etc").status_code == 204
    assert proj_a.run("test -e /etc/passwd && echo still")["stdout"] == "still\n"


@pytest.mark.parametrize("raw", ["/files/%2E%2E/%2E%2E/etc/passwd", "/files/a/%2e%2e/%2e%2e/x",
                                 "/files/..%2F..%2Fetc%2Fpasswd"])
def test_dot_dot_is_refused(proj_a: Proj, raw: str) -> None:
    r = httpx.get(f"{proj_a.server.url}/api/v3/projects/{proj_a.project_id}{raw}", timeout=60,
                  headers={"Authorization": f"Bearer {proj_a.key}"})
    assert r.status_code in (400, 404), r.text
    assert "root:" not in r.text


def test_another_accounts_project_is_out_of_reach(proj_a: Proj, proj_b: Proj) -> None:
    secret = proj_b.secret  # type: ignore[attr-defined]
    attempts = [("GET", "/files/secret.txt", {}), ("GET", "/files/", {"params": {"list": ""}}),
                ("PUT", "/files/secret.txt", {"content": b"owned"}), ("DELETE", "/files/secret.txt", {}),
                ("POST", "/files:move", {"json": {"from": "secret.txt", "to": "x"}}),
                ("GET", "/archive/", {}), ("POST", "/archive/", {"content": b""})]
    for method, path, kw in attempts:
        r = api(proj_b, method, path, key=proj_a.key, **kw)
        assert r.status_code == 403, (method, path, r.text)
        assert secret not in r.text
    assert proj_b.run("cat secret.txt")["stdout"].strip() == secret


def test_the_daemon_file_calls_are_host_only(proj_a: Proj) -> None:
    for name in ("native.files.writeBegin", "native.files.read", "native.files.delete"):
        r = httpx.post(proj_a.server.url + "/api/conat/project", timeout=30,
                       headers={"Authorization": f"Bearer {proj_a.key}"},
                       json={"project_id": proj_a.project_id, "name": name, "args": [{"path": "x"}]})
        assert "unknown function" in r.json().get("error", ""), r.text


def _tar(members: list[tuple[str, str, bytes | str]]) -> bytes:
    """A hand-made tar: (kind, name, data or link target)."""
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for kind, name, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, str(payload)
                tar.addfile(info)
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, str(payload)
                tar.addfile(info)
            else:
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_hostile_archive_writes_nothing_outside_its_directory(proj_a: Proj) -> None:
    """Review finding: directory members skipped the tar filter (``../victim`` was made or,
    with ``backup``, renamed outside the target); links with ``..`` and hard links to
    anything but an earlier member are refused too, as this Python may predate the 2025
    tarfile filter fixes."""
    assert proj_a.run("mkdir -p victim && echo keep > victim/f && mkdir -p target")["exit_code"] == 0
    body = _tar([("dir", "../victim", b""), ("dir", "../made-outside", b""),
                 ("sym", "up", "../"), ("file", "up/escaped.txt", "x"),
                 ("sym", "abs", "/etc"), ("hard", "h", "../victim/f"), ("hard", "h2", "/etc/passwd"),
                 ("dir", "ok", b""), ("file", "ok/fine.txt", "fine")])
    r = api(proj_a, "POST", "/archive/target", content=body)
    assert r.status_code == 200, r.text
    assert r.json()["skipped_unsafe"] >= 6, r.json()
    home = proj_a.run("cd ~ && ls -A")["stdout"].split()
    assert "made-outside" not in home and "escaped.txt" not in home, home
    listing = proj_a.run("find target | sort")["stdout"]
    assert "target/up/escaped.txt" in listing, "the link was refused, so up/ is a plain directory"
    assert proj_a.run("cat victim/f")["stdout"] == "keep\n"
    assert "target/ok/fine.txt" in listing


def test_an_absurd_range_is_not_a_server_error(proj_a: Proj) -> None:
    assert proj_a.run("echo data > r.txt")["exit_code"] == 0
    for header in ("bytes=" + "9" * 5000 + "-", "bytes=0-" + "1" * 30, "bytes=5-2", "bytes=x-y"):
        r = api(proj_a, "GET", "/files/r.txt", headers={"Range": header})
        assert r.status_code in (200, 206, 416), (header[:30], r.status_code, r.text[:200])
