"""projecthub.client's files: upload/download (paths and file objects, streamed), bytes and
ranges, ETags (If-Match), listing, move, delete, archives — against a real server."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
from pathlib import Path

import pytest

from projecthub.client import AsyncClient, Client, ConnectionFailed, NotFound, PreconditionFailed, ProjectHubError
from tests.conftest import require
from tests.integration.client_proxy import CuttingProxy
from tests.server import Server


@pytest.fixture
def proj(client: Client):
    project = client.projects.create("client files")
    answer = client._http.get(f"/projects/{project.project_id}/files/", params={"list": ""})
    require("the v3 files API (/api/v3/projects/{id}/files/)", answer.status_code != 404
            or "no such project" in answer.text)
    yield project
    client.projects.delete(project)


def test_bytes_text_etag_range_list_move_delete(client: Client, proj) -> None:
    info = client.files.write_bytes(proj, "data/hello.txt", b"hello world")
    assert info.created and info.size == 11 and info.etag and info.path == "data/hello.txt"
    assert client.files.read_bytes(proj, "data/hello.txt") == b"hello world"
    assert client.files.read_bytes(proj, "data/hello.txt", range=(6, 10)) == b"world"
    assert client.files.read_bytes(proj, "data/hello.txt", range=(6, None)) == b"world"
    again = client.files.write_text(proj, "data/hello.txt", "hello again", if_match=info.etag)
    assert not again.created and again.etag != info.etag
    with pytest.raises(PreconditionFailed) as stale:
        client.files.write_text(proj, "data/hello.txt", "lost update", if_match=info.etag)
    assert stale.value.status == 412
    assert client.files.read_text(proj, "data/hello.txt") == "hello again"
    # the code that runs in the project sees the same file
    assert client.exec(proj, "cat data/hello.txt").stdout == "hello again"
    listing = client.files.list(proj, "data")
    assert listing.names() == ["hello.txt"] and listing[0].type == "file" and listing[0].size == 11
    assert "data" in {e.name for e in client.files.list(proj) if e.is_dir}
    assert client.files.move(proj, "data/hello.txt", "moved/hi.txt") == "moved/hi.txt"
    with pytest.raises(NotFound):
        client.files.read_bytes(proj, "data/hello.txt")
    client.files.delete(proj, "moved/hi.txt")
    assert client.files.list(proj, "moved").names() == []
    with pytest.raises(ProjectHubError) as escape:
        client.files.read_bytes(proj, "../../etc/passwd")
    assert escape.value.status in (400, 403, 404)


def test_upload_download_paths_and_file_objects(client: Client, proj, tmp_path: Path) -> None:
    blob = os.urandom(3 * 1024 * 1024 + 17)        # several chunks, not a multiple of one
    local = tmp_path / "blob.bin"
    local.write_bytes(blob)
    info = client.files.upload(proj, local, "in/blob.bin")
    assert info.size == len(blob)
    assert client.exec(proj, "wc -c < in/blob.bin").stdout.strip() == str(len(blob))
    out = tmp_path / "back.bin"
    got = client.files.download(proj, "in/blob.bin", out)
    assert out.read_bytes() == blob and got.size == len(blob) and got.etag == info.etag
    buffer = io.BytesIO()
    client.files.download(proj, "in/blob.bin", buffer)
    assert buffer.getvalue() == blob
    client.files.upload(proj, io.BytesIO(b"from a file object"), "in/obj.txt")
    with open(local, "rb") as fh:
        client.files.upload(proj, fh, "in/fh.bin")
    assert client.files.read_bytes(proj, "in/obj.txt") == b"from a file object"
    assert client.files.read_bytes(proj, "in/fh.bin") == blob
    # then run code on the uploaded file
    assert client.exec(proj, "python3 -c \"print(len(open('in/fh.bin','rb').read()))\"").stdout == f"{len(blob)}\n"


def test_download_cut_short_or_refused(server: Server, account, client: Client, proj, tmp_path: Path) -> None:
    """The download reads its answer with http.client, which takes a body cut short of its
    Content-Length for the end: the client must raise instead of keeping a truncated file.
    A connection closed before any answer is retried (a GET; nothing written yet)."""
    blob = os.urandom(3 * 1024 * 1024 + 5)
    client.files.write_bytes(proj, "cut.bin", blob)
    proxy = CuttingProxy(server.port, cut_after=100_000)   # the headers and part of the body
    try:
        with Client(proxy.url, account.api_key, backoff=0.01) as through:
            with pytest.raises(ConnectionFailed, match="ended after|broke after"):
                through.files.download(proj, "cut.bin", tmp_path / "short.bin")
            proxy.cuts_left, proxy.cut_after = 1, 0        # closed before the answer: retried
            got = through.files.download(proj, "cut.bin", tmp_path / "whole.bin")
            assert got.size == len(blob) and (tmp_path / "whole.bin").read_bytes() == blob
            with pytest.raises(NotFound):
                through.files.download(proj, "missing.bin", tmp_path / "none.bin")
            assert not (tmp_path / "none.bin").exists()
    finally:
        proxy.close()


def test_upload_path_refused_or_cut(server: Server, account, client: Client, proj, tmp_path: Path) -> None:
    """A path is sent with sendfile on a connection of its own: a refusal the server sends
    before it reads the body still comes back as its error, and a connection closed before
    the answer is retried (a whole-file PUT)."""
    blob = os.urandom(3 * 1024 * 1024 + 9)
    local = tmp_path / "up.bin"
    local.write_bytes(blob)
    assert client.files.upload(proj, local, "up.bin").size == len(blob)
    with pytest.raises(PreconditionFailed):
        client.files.upload(proj, local, "up.bin", if_match='"stale"')
    with pytest.raises(ProjectHubError) as foreign:   # answered before the body is read
        client.files.upload("00000000-0000-4000-8000-000000000000", local, "up.bin")
    assert foreign.value.status in (403, 404)
    proxy = CuttingProxy(server.port, cut_after=0)
    try:
        with Client(proxy.url, account.api_key, backoff=0.01) as through:
            again = through.files.upload(proj, local, "up.bin")
            assert proxy.connections == 2 and again.size == len(blob)
    finally:
        proxy.close()
    assert client.files.read_bytes(proj, "up.bin") == blob


def test_archives(client: Client, proj, tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in (("a.txt", b"A"), ("sub/b.txt", b"BB")):
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            tar.addfile(entry, io.BytesIO(data))
    unpacked = client.files.upload_archive(proj, raw.getvalue(), "unpacked")
    assert unpacked["files"] == 2
    assert client.files.read_text(proj, "unpacked/sub/b.txt") == "BB"
    dest = tmp_path / "out.tar.gz"
    assert client.files.download_archive(proj, "unpacked", dest) > 0
    with tarfile.open(dest) as tar:
        names = {Path(n).as_posix().lstrip("./") for n in tar.getnames()}
    assert {"a.txt", "sub/b.txt"} <= names or {"unpacked/a.txt", "unpacked/sub/b.txt"} <= names


def test_async_files(server: Server, account, proj, tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncClient(server.url, account.api_key) as client:
            await client.files.write_bytes(proj, "async.txt", b"async bytes")
            assert await client.files.read_bytes(proj, "async.txt") == b"async bytes"
            local = tmp_path / "up.bin"
            local.write_bytes(b"x" * 2_500_000)
            assert (await client.files.upload(proj, local, "up.bin")).size == 2_500_000
            assert (await client.files.download(proj, "up.bin", tmp_path / "down.bin")).size == 2_500_000
            assert "async.txt" in (await client.files.list(proj)).names()
            await client.files.move(proj, "async.txt", "async2.txt")
            await client.files.delete(proj, "async2.txt")
            with pytest.raises(NotFound):
                await client.files.read_bytes(proj, "async2.txt")
    asyncio.run(main())
    assert (tmp_path / "down.bin").read_bytes() == b"x" * 2_500_000
