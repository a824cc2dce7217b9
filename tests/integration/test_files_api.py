"""The v3 files API (issue 18 item 1) against a real server: uploads and downloads streamed
both ways, ETags, ranges, listings, delete, move, archives, the disk limit."""

from __future__ import annotations

import io
import os
import tarfile
from typing import Iterator

import httpx
import pytest

from tests.security.conftest import Proj, new_project
from tests.server import Account, Server


@pytest.fixture(scope="module")
def owner(server: Server) -> Account:
    return server.new_account("Files")


@pytest.fixture(scope="module")
def proj(server: Server, owner: Account) -> Iterator[Proj]:
    p = new_project(server, owner, "files")
    yield p
    p.stop()


@pytest.fixture(scope="module")
def http(server: Server, owner: Account, proj: Proj) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{server.url}/api/v3/projects/{proj.project_id}", timeout=120,
                      headers={"Authorization": f"Bearer {owner.api_key}"}) as client:
        yield client


def test_upload_download_etags_and_ranges(http: httpx.Client, proj: Proj) -> None:
    data = os.urandom(3 * 2**20 + 12345)   # more than one chunk, not a multiple of one
    r = http.put("/files/data/blob.bin", content=data)
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["size"] == len(data) and info["path"] == "data/blob.bin" and r.headers["etag"] == info["etag"]
    assert info["mtime"].endswith("Z")
    assert proj.run("sha256sum data/blob.bin")["stdout"].split()[0] == \
        __import__("hashlib").sha256(data).hexdigest()
    r = http.get("/files/data/blob.bin")
    assert r.status_code == 200 and r.content == data and r.headers["etag"] == info["etag"]
    assert int(r.headers["content-length"]) == len(data)
    assert http.get("/files/data/blob.bin", headers={"If-None-Match": info["etag"]}).status_code == 304
    # ranges
    r = http.get("/files/data/blob.bin", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    assert r.headers["content-range"] == f"bytes 10-19/{len(data)}"
    r = http.get("/files/data/blob.bin", headers={"Range": "bytes=-5"})
    assert r.status_code == 206 and r.content == data[-5:]
    r = http.get("/files/data/blob.bin", headers={"Range": f"bytes={len(data) - 3}-"})
    assert r.status_code == 206 and r.content == data[-3:]
    r = http.get("/files/data/blob.bin", headers={"Range": f"bytes={len(data) + 10}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(data)}"
    # If-Match: only over the version the client saw
    r = http.put("/files/data/blob.bin", content=b"v2", headers={"If-Match": '"stale"'})
    assert r.status_code == 412, r.text
    assert http.get("/files/data/blob.bin").content == data, "a refused upload changes nothing"
    r = http.put("/files/data/blob.bin", content=b"v2", headers={"If-Match": info["etag"]})
    assert r.status_code == 200 and r.json()["size"] == 2 and r.json()["etag"] != info["etag"]
    assert http.put("/files/new.txt", content=b"x", headers={"If-Match": "*"}).status_code == 412
    assert http.get("/files/data/nope.bin").status_code == 404
    assert http.get("/files/data").status_code == 400, "a directory is listed, not read"


def test_list_delete_and_move(http: httpx.Client, proj: Proj) -> None:
    assert proj.run("mkdir -p tree/sub && echo a > tree/a.txt && echo b > tree/sub/b.txt && "
                    "ln -s a.txt tree/link")["exit_code"] == 0
    r = http.get("/files/tree", params={"list": ""})
    assert r.status_code == 200, r.text
    listing = r.json()
    assert listing["path"] == "tree" and listing["truncated"] is False
    assert [(e["name"], e["type"]) for e in listing["entries"]] == [
        ("a.txt", "file"), ("link", "symlink"), ("sub", "dir")]
    assert all(e["mtime"].endswith("Z") for e in listing["entries"])
    home = http.get("/files/", params={"list": ""}).json()
    assert "tree" in [e["name"] for e in home["entries"]] and home["path"] == ""
    # move
    r = http.post("/files:move", json={"from": "tree/a.txt", "to": "moved/a.txt"})
    assert r.status_code == 200 and r.json() == {"path": "moved/a.txt"}, r.text
    assert http.get("/files/moved/a.txt").content == b"a\n"
    assert http.post("/files:move", json={"from": "tree/sub/b.txt", "to": "moved/a.txt"}).status_code == 409
    assert http.post("/files:move", json={"from": "tree/sub/b.txt", "to": "moved/a.txt",
                                          "overwrite": True}).status_code == 200
    assert http.post("/files:move", json={"from": "x", "to": "y", "extra": 1}).status_code == 422
    # delete
    assert http.delete("/files/moved").status_code == 409, "not empty"
    assert http.delete("/files/moved", params={"recursive": "true"}).status_code == 204
    assert http.get("/files/moved/a.txt").status_code == 404
    assert http.delete("/files/moved").status_code == 404


def test_archives_round_trip(http: httpx.Client, proj: Proj) -> None:
    assert proj.run("mkdir -p arch/in && echo one > arch/one.txt && echo two > arch/in/two.txt")["exit_code"] == 0
    r = http.get("/archive/arch")
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        names = sorted(n.lstrip("./") for n in tar.getnames() if n not in (".", "./"))
    assert names == ["in", "in/two.txt", "one.txt"]
    r = http.post("/archive/unpacked/here", content=r.content)
    assert r.status_code == 200 and r.json()["files"] == 2, r.text
    assert http.get("/files/unpacked/here/in/two.txt").content == b"two\n"
    assert http.post("/archive/bad", content=b"not a tar").status_code == 400


def test_the_disk_limit_bounds_an_upload(server: Server, owner: Account) -> None:
    small = new_project(server, owner, "small disk", disk_bytes="64M")
    url = f"{server.url}/api/v3/projects/{small.project_id}/files/big.bin"
    headers = {"Authorization": f"Bearer {owner.api_key}"}
    assert httpx.put(url, content=b"old", headers=headers, timeout=60).status_code == 201

    def body() -> Iterator[bytes]:
        block = b"\0" * 2**20
        for _ in range(100):
            yield block
    r = httpx.put(url, content=body(), headers=headers, timeout=120)
    assert r.status_code == 413 and "disk" in r.json()["error"], r.text
    assert httpx.get(url, headers=headers, timeout=60).content == b"old", "the old file is intact"
    assert small.run("ls -A")["stdout"].split() == ["big.bin"], "no temporary file is left"
    small.stop()


def test_small_text_uploads_are_file_history(server: Server, owner: Account, http: httpx.Client,
                                             proj: Proj) -> None:
    import cocalc_api
    http.put("/files/hist.txt", content="first\n".encode())
    http.put("/files/hist.txt", content="first\nsecond\n".encode())
    hub = cocalc_api.Hub(api_key=owner.api_key, host=server.url)
    entries = hub.sync.history(project_id=proj.project_id, path="hist.txt")
    assert len(entries) == 2 and entries[0]["account_id"] == owner.account_id
    hub.client.close()
