"""The official MCP server (cocalc-mcp-server from cocalc-api) works against projecthub."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from tests.server import Server


def _mcp_command() -> str:
    found = shutil.which("cocalc-mcp-server", path=str(Path(sys.executable).parent))
    assert found, "cocalc-mcp-server is installed with cocalc-api"
    return found


async def _session_run(params: StdioServerParameters) -> tuple[list[str], list[str], str]:
    with open(os.devnull, "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = [t.name for t in (await session.list_tools()).tools]
                resources = [str(r.uri) for r in (await session.list_resources()).resources]
                listing = await session.read_resource("cocalc://project-files")
                text = "".join(getattr(c, "text", "") for c in listing.contents)
                return tools, resources, text


def test_mcp_server_lists_project_files(server: Server, account, project, project_id: str) -> None:
    project.system.exec(command="mkdir -p notebooks && echo data > results.csv")
    key = server.cli("key", "create", "--account", account.account_id, "--project", project_id)["api_key"]
    params = StdioServerParameters(command=_mcp_command(), args=[],
                                   env={"COCALC_API_KEY": key, "COCALC_HOST": server.url})
    tools, resources, text = asyncio.run(asyncio.wait_for(_session_run(params), 90))
    assert "exec" in tools and "jupyter_execute" in tools
    assert "cocalc://project-files" in resources
    assert "results.csv" in text and "[FILE]" in text
    assert "notebooks" in text and "[DIR]" in text
