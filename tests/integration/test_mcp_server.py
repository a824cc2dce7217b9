"""`projecthub mcp` driven by the official `mcp` client library (stdio and streamable HTTP)
against a real projecthub server.  (tests/integration/test_mcp.py is cocalc-api's own MCP server.)"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.server import Server, free_port, stop_process

PROJECTHUB = [sys.executable, "-m", "projecthub.cli"]


def _text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def _data(result: Any) -> Any:
    assert not result.isError, _text(result)
    return json.loads(_text(result))


async def _exercise(session: ClientSession, tmp: Path) -> None:
    tools = {t.name for t in (await session.list_tools()).tools}
    assert {"exec", "job_output", "job_kill", "session_create", "session_run", "session_close", "file_read",
            "file_write", "file_list", "file_upload", "projects_list", "project_create",
            "project_limits"} <= tools
    project = _data(await session.call_tool("project_create", {"title": "mcp"}))["project_id"]
    assert project in {p["project_id"] for p in _data(await session.call_tool("projects_list", {}))["projects"]}
    assert _data(await session.call_tool("project_limits", {"project_id": project}))["pids"]
    assert _data(await session.call_tool("project_limits", {"project_id": project,
                                                            "set": {"pids": 200}}))["pids"] == 200

    quick = _data(await session.call_tool("exec", {"project_id": project, "command": "echo hi; exit 3"}))
    assert quick["exit_code"] == 3 and quick["stdout"] == "hi\n" and quick["status"] == "completed"

    # a long command: a job handle after wait_s, progress notifications meanwhile
    progress: list[tuple[float, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, message))
    t0 = time.monotonic()
    running = _data(await session.call_tool(
        "exec", {"project_id": project, "command": "for i in $(seq 1 40); do echo tick$i; sleep 0.1; done",
                 "wait_s": 1.0}, progress_callback=on_progress))
    assert time.monotonic() - t0 < 3.5, "exec blocked past wait_s"
    assert running["status"] == "running" and running["job_id"] and "tick1\n" in running["stdout"]
    assert progress and any("tick1" in (m or "") for _, m in progress)
    seen = running["stdout"]
    offset = running["next_offset"]
    while True:
        more = _data(await session.call_tool("job_output", {
            "project_id": project, "job_id": running["job_id"], "offset": offset, "wait_s": 5}))
        seen += more["stdout"]
        offset = more["next_offset"]
        if more["status"] != "running":
            break
    assert seen == "".join(f"tick{i}\n" for i in range(1, 41)) and more["exit_code"] == 0

    sleeper = _data(await session.call_tool("exec", {"project_id": project, "command": "sleep 60", "wait_s": 0.2}))
    assert _data(await session.call_tool("job_kill", {"project_id": project, "job_id": sleeper["job_id"]}))["killed"]

    # Jupyter: state, values, errors, images
    sid = _data(await session.call_tool("session_create", {"project_id": project}))["session_id"]
    await session.call_tool("session_run", {"project_id": project, "session_id": sid, "code": "x = 6"})
    value = await session.call_tool("session_run", {"project_id": project, "session_id": sid, "code": "x * 7"})
    assert "42" in _text(value)
    plot = await session.call_tool("session_run", {
        "project_id": project, "session_id": sid,
        "code": "import matplotlib.pyplot as plt\n%matplotlib inline\nprint('plotting')\nplt.plot([1, 2]); plt.show()"})
    images = [c for c in plot.content if c.type == "image"]
    assert images and images[0].mimeType == "image/png" and "plotting" in _text(plot)
    import base64
    assert base64.b64decode(images[0].data).startswith(b"\x89PNG")
    err = await session.call_tool("session_run", {"project_id": project, "session_id": sid, "code": "1/0"})
    assert "ZeroDivisionError" in _text(err)
    assert _data(await session.call_tool("session_close", {"project_id": project, "session_id": sid}))["closed"]

    # files
    wrote = _data(await session.call_tool("file_write", {"project_id": project, "path": "d/a.txt", "content": "hello"}))
    assert wrote["size"] == 5
    assert _text(await session.call_tool("file_read", {"project_id": project, "path": "d/a.txt"})) == "hello"
    assert [e["name"] for e in _data(await session.call_tool("file_list", {"project_id": project, "path": "d"}))["entries"]] == ["a.txt"]
    (tmp / "local.txt").write_text("from the agent's machine")
    up = _data(await session.call_tool("file_upload", {"project_id": project, "local_path": "local.txt",
                                                       "path": "up/local.txt"}))
    assert up["size"] == len("from the agent's machine")
    outside = await session.call_tool("file_upload", {"project_id": project, "local_path": "/etc/passwd",
                                                      "path": "stolen"})
    assert outside.isError and "upload root" in _text(outside)
    missing = await session.call_tool("file_read", {"project_id": project, "path": "nope.txt"})
    assert missing.isError and "no such file" in _text(missing)   # the server's message reaches the agent
    bad = await session.call_tool("exec", {"project_id": "not-a-uuid", "command": "true"})
    assert bad.isError and "UUID" in _text(bad)


def test_mcp_stdio(server: Server, account, tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "projecthub.cli", "mcp", "--url", server.url], cwd=str(tmp_path),
        env={**os.environ, "PROJECTHUB_API_KEY": account.api_key, "PYTHONPATH": str(Path.cwd())})

    async def main() -> None:
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                await _exercise(session, tmp_path)
    asyncio.run(asyncio.wait_for(main(), 180))


def test_mcp_streamable_http(server: Server, account, tmp_path: Path) -> None:
    try:
        from mcp.client.streamable_http import streamable_http_client as http_client
    except ImportError:   # older 1.x
        from mcp.client.streamable_http import streamablehttp_client as http_client
    port = free_port()
    proc = subprocess.Popen([*PROJECTHUB, "mcp", "--url", server.url, "--api-key", account.api_key,
                             "--transport", "http", "--port", str(port), "--upload-root", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=Path.cwd())
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)

        async def main() -> None:
            async with http_client(f"http://127.0.0.1:{port}/mcp") as streams:
                read, write = streams[0], streams[1]
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    await _exercise(session, tmp_path)
        asyncio.run(asyncio.wait_for(main(), 180))
    finally:
        stop_process(proc)


def test_mcp_bad_arguments() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROJECTHUB_API_KEY"}
    out = subprocess.run([*PROJECTHUB, "mcp", "--url", "http://127.0.0.1:9"], capture_output=True, text=True,
                         env=env, timeout=30)
    assert out.returncode == 2 and "API key" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([*PROJECTHUB, "mcp", "--url", "ftp://x", "--api-key", "k"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2 and "--url" in out.stderr


def test_sdk_generation_is_detected() -> None:
    """mcp 2.x has mcp.server.mcpserver (no fastmcp), 1.x mcp.server.fastmcp: either works."""
    import importlib.util

    from projecthub.mcp_server import _import_sdk
    server_cls, _, _, v2 = _import_sdk()
    assert v2 == (importlib.util.find_spec("mcp.server.mcpserver") is not None)
    assert server_cls.__name__ == ("MCPServer" if v2 else "FastMCP")
