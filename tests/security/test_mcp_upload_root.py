"""`projecthub mcp`'s file_upload reads files of the machine the MCP server runs on: only below
--upload-root (a symlink or `..` leading out is refused), and over HTTP not at all unless a
root was given.  The HTTP transport binds loopback by default."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.server import Server, stop_process


def _text(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def _calls(params: StdioServerParameters, calls: list[tuple[str, dict]]) -> list:
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            return [await session.call_tool(name, args) for name, args in calls]


def test_upload_stays_below_the_upload_root(server: Server, account, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the root")
    (root / "ok.txt").write_text("inside")
    (root / "link.txt").symlink_to(secret)          # a symlink in the root that leads out
    (root / "sub").mkdir()
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "projecthub.cli", "mcp", "--url", server.url, "--upload-root", str(root)],
        cwd=str(tmp_path), env={**os.environ, "PROJECTHUB_API_KEY": account.api_key,
                                "PYTHONPATH": str(Path.cwd())})

    async def main() -> list:
        first = await _calls(params, [("project_create", {"title": "mcp root"})])
        pid = json.loads(_text(first[0]))["project_id"]
        return await _calls(params, [
            ("file_upload", {"project_id": pid, "local_path": "ok.txt", "path": "ok.txt"}),
            ("file_upload", {"project_id": pid, "local_path": "link.txt", "path": "a"}),
            ("file_upload", {"project_id": pid, "local_path": "sub/../../secret.txt", "path": "b"}),
            ("file_upload", {"project_id": pid, "local_path": str(secret), "path": "c"}),
            ("file_upload", {"project_id": pid, "local_path": "/etc/passwd", "path": "d"}),
            ("file_list", {"project_id": pid, "path": ""}),
        ])
    ok, link, dotdot, absolute, passwd, listing = asyncio.run(asyncio.wait_for(main(), 120))
    assert not ok.isError and json.loads(_text(ok))["size"] == len("inside")
    for refused in (link, dotdot, absolute, passwd):
        assert refused.isError and "upload root" in _text(refused)
    names = {e["name"] for e in json.loads(_text(listing))["entries"]}
    assert "ok.txt" in names and not names & {"a", "b", "c", "d"}


def test_http_transport_uploads_nothing_without_a_root(server: Server, account, tmp_path: Path) -> None:
    import subprocess
    import time

    import httpx
    try:
        from mcp.client.streamable_http import streamable_http_client as http_client
    except ImportError:
        from mcp.client.streamable_http import streamablehttp_client as http_client
    from tests.server import free_port
    (tmp_path / "local.txt").write_text("x")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "projecthub.cli", "mcp", "--url", server.url, "--api-key",
                             account.api_key, "--transport", "http", "--port", str(port)],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path.cwd())},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        # loopback only by default
        import socket
        with socket.socket() as probe:
            probe.settimeout(1)
            assert probe.connect_ex(("127.0.0.1", port)) == 0

        async def main():
            async with http_client(f"http://127.0.0.1:{port}/mcp") as streams:
                async with ClientSession(streams[0], streams[1]) as session:
                    await session.initialize()
                    created = await session.call_tool("project_create", {"title": "mcp http"})
                    pid = json.loads(_text(created))["project_id"]
                    return await session.call_tool("file_upload", {"project_id": pid, "local_path": "local.txt",
                                                                   "path": "x"})
        refused = asyncio.run(asyncio.wait_for(main(), 120))
        assert refused.isError and "--upload-root" in _text(refused)
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        local = {line.split()[3] for line in listening.splitlines() if line.strip()}
        assert local == {f"127.0.0.1:{port}"}, listening
    finally:
        stop_process(proc)
