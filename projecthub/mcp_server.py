"""``projecthub mcp``: an MCP server for agents, built on ``projecthub.client``.

    projecthub mcp --url http://127.0.0.1:8765 --api-key sk-...          # stdio
    projecthub mcp --url ... --transport http --port 8931                 # streamable HTTP, /mcp

Tools: projects (list, create, limits), exec (a command still running after ``wait_s``
seconds returns a job handle; output arrives as progress notifications meanwhile), job output
and kill, Jupyter sessions (create, run a cell: images come back as MCP image content, close),
files (read, write, list, upload).  Works with the ``mcp`` SDK 1.x (``mcp.server.fastmcp``)
and 2.x (``mcp.server.mcpserver``): it uses only what both provide.

Every tool acts with the API key's rights, nothing more.  The HTTP transport binds
127.0.0.1 by default: whoever reaches it uses the key.  ``upload`` reads files of the machine
the MCP server runs on, so only below ``--upload-root`` (stdio: default the current
directory; HTTP: off unless given).
"""

import argparse
import asyncio
import base64
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any

INSTRUCTIONS = (
    "projecthub runs code in isolated projects (Linux sandboxes with a home directory). "
    "Create or list a project first, then exec shell commands, run Python in persistent Jupyter "
    "sessions (state survives between cells; plots come back as images), and read/write files. "
    "exec returns at once with a job_id when a command runs longer than wait_s: follow it with "
    "job_output (pass the returned offsets to continue) and stop it with job_kill."
)
MAX_TEXT = 200_000   # characters of output returned per tool call (the job keeps everything)
READ_LIMIT = 10 * 1024 * 1024


def _import_sdk() -> tuple[Any, Any, Any, bool]:
    """(server class, Context, Image, is_v2): mcp 2.x's MCPServer, else 1.x's FastMCP."""
    try:
        from mcp.server.mcpserver import Context, Image, MCPServer   # mcp >= 2
        return MCPServer, Context, Image, True
    except ImportError:
        from mcp.server.fastmcp import Context, FastMCP, Image       # mcp 1.x
        return FastMCP, Context, Image, False


def _tool_error() -> Any:
    """The SDK's ToolError: its message reaches the agent (2.x hides other exceptions' text)."""
    try:
        from mcp.server.mcpserver.exceptions import ToolError
    except ImportError:
        from mcp.server.fastmcp.exceptions import ToolError
    return ToolError


def _clip(text: str) -> str:
    if len(text) <= MAX_TEXT:
        return text
    return text[:MAX_TEXT // 2] + f"\n... [{len(text) - MAX_TEXT} characters cut] ...\n" + text[-MAX_TEXT // 2:]


def _result_json(result: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"status": result.status or "completed", "exit_code": result.exit_code,
                           "stdout": _clip(result.stdout), "stderr": _clip(result.stderr)}
    for name in ("signal", "killed_by", "job_id", "wall_s"):
        value = getattr(result, name)
        if value is not None:
            out[name] = value
    if result.timed_out:
        out["timed_out"] = True
    if result.stdout_truncated or result.stderr_truncated:
        out["truncated"] = "the reply was capped: read the rest with job_output"
    return out


def build_server(url: str, api_key: str, *, upload_root: Path | None = None, host: str = "127.0.0.1",
                 port: int = 8931) -> Any:
    """The MCP server object (FastMCP on mcp 1.x, MCPServer on 2.x) with every tool."""
    from .client import AsyncClient, NotFound, ProjectHubError, TimeoutExpired

    Server, Context, Image, v2 = _import_sdk()
    if v2:
        mcp = Server("projecthub", instructions=INSTRUCTIONS)
    else:
        mcp = Server("projecthub", instructions=INSTRUCTIONS, host=host, port=port)
    state: dict[str, Any] = {}
    ToolError = _tool_error()
    logging.getLogger("httpx").setLevel(logging.WARNING)   # no line per API call on stderr

    def tool(fn: Any) -> Any:
        """Register ``fn``; the server's refusals and bad arguments become tool errors that
        carry their message (status and text) to the agent."""
        @functools.wraps(fn)
        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except (ProjectHubError, ValueError, OSError) as exc:
                raise ToolError(str(exc)) from None
        return mcp.tool()(wrapped)

    def client() -> AsyncClient:
        # one client per event loop (created on the first call, inside the server's loop)
        if state.get("client") is None:
            state["client"] = AsyncClient(url, api_key)
        return state["client"]

    async def follow(job: Any, wait_s: float, ctx: Any, *, last_event_id: str | None = None) -> dict[str, Any]:
        """Stream the job's output for up to ``wait_s`` s as progress notifications."""
        out: list[str] = []
        err: list[str] = []
        total = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait_s)
        stream = job.stream(last_event_id=last_event_id)
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    chunk = await asyncio.wait_for(stream.__anext__(), left)
                except (StopAsyncIteration, asyncio.TimeoutError):
                    break
                (out if chunk.stream == "stdout" else err).append(chunk.data)
                total += len(chunk.data)
                if ctx is not None:
                    try:
                        await ctx.report_progress(total, None, f"{chunk.stream}: {chunk.data[-500:]}")
                    except Exception:
                        pass
        finally:
            try:
                await stream.aclose()
            except Exception:
                pass
        position = job.last_event_id or last_event_id or "0:0"
        out_offset, _, err_offset = position.partition(":")
        if job.result is not None:
            result = _result_json(job.result)
            result["stdout"], result["stderr"] = _clip("".join(out)), _clip("".join(err))
            result["job_id"] = job.job_id
        else:
            result = {"status": "running", "job_id": job.job_id, "stdout": _clip("".join(out)),
                      "stderr": _clip("".join(err)),
                      "note": "still running: call job_output with the offsets below to follow it, "
                              "job_kill to stop it"}
        result["next_offset"], result["next_stderr_offset"] = int(out_offset or 0), int(err_offset or 0)
        return result

    @tool
    async def projects_list():
        """List your projects (id, title, state)."""
        return {"projects": [{"project_id": p.project_id, "title": p.title, "state": (p.state or {}).get("state")}
                             for p in await client().projects.list()]}

    @tool
    async def project_create(title: str = "", description: str = "", start: bool = True):
        """Create a project (an isolated Linux sandbox with its own home); returns its project_id."""
        project = await client().projects.create(title, description, start=start)
        return {"project_id": project.project_id, "title": project.title}

    @tool
    async def project_limits(project_id: str, set: dict[str, Any] | None = None):
        """A project's limits (memory_bytes, pids, cpu_cores, disk_bytes, idle_timeout_s, network...).
        With `set` (e.g. {"pids": 256}) change them first (owners may only tighten)."""
        limits = await (client().limits.set(project_id, **set) if set else client().limits.get(project_id))
        return {k: v for k, v in limits.raw.items()}

    @tool
    async def exec(project_id: str, command: str, timeout: float = 600, wait_s: float = 5,
                   cwd: str | None = None, ctx: Context = None):
        """Run a shell command (bash) in the project's home.  Waits at most `wait_s` seconds,
        sending its output as progress notifications: a command that finishes in time returns
        exit_code, stdout and stderr; a longer one returns {"status": "running", "job_id", ...}
        at once (it keeps running up to `timeout` seconds, 0 = no limit): follow it with
        job_output and stop it with job_kill."""
        job = await client().start(project_id, command, cwd=cwd, timeout=timeout)
        return await follow(job, wait_s, ctx)

    @tool
    async def job_output(project_id: str, job_id: str, offset: int = 0, stderr_offset: int = 0,
                         wait_s: float = 10, ctx: Context = None):
        """A job's output from byte `offset` of stdout (`stderr_offset` of stderr), waiting up to
        `wait_s` seconds for more (sent as progress notifications too).  Returns status,
        exit_code once finished, and next_offset/next_stderr_offset to continue from."""
        job = client().job(project_id, job_id)
        try:
            return await follow(job, wait_s, ctx, last_event_id=f"{int(offset)}:{int(stderr_offset)}")
        except NotFound:
            raise ValueError(f"no job {job_id} in project {project_id}")

    @tool
    async def job_kill(project_id: str, job_id: str):
        """Kill a running job (and everything it started)."""
        return {"job_id": job_id, "killed": await client().job(project_id, job_id).kill()}

    @tool
    async def session_create(project_id: str, kernel: str = "python3"):
        """Start a persistent Jupyter kernel; variables survive between session_run calls."""
        session = await client().session(project_id, kernel)
        return {"session_id": session.session_id, "kernel": session.info.kernel}

    @tool
    async def session_run(project_id: str, session_id: str, code: str, timeout: float = 60):
        """Run a cell in a session.  Returns its printed output, its value, errors (with the
        traceback) and every image it displayed (e.g. matplotlib plots) as image content."""
        from .client import AsyncSession, SessionInfo
        session = AsyncSession(client(), project_id, SessionInfo(session_id=session_id))
        try:
            result = await session.run(code, timeout=timeout)
            prefix = ""
        except TimeoutExpired as exc:
            result = exc.result
            prefix = (f"[timed out after {timeout} s; the kernel's state "
                      f"{'survived' if result.state_survived else 'was lost (restarted)'}]\n")
        content: list[Any] = []
        text: list[str] = [prefix] if prefix else []
        for item in result.outputs:
            if item.type == "stream":
                text.append(item.text)
            elif item.type == "error":
                raw = item.raw
                text.append("\n".join(raw.get("traceback") or [f"{raw.get('ename')}: {raw.get('evalue')}"]) + "\n")
            else:
                images = item.images
                for mime_type, data in images.items():
                    if mime_type in ("image/png", "image/jpeg", "image/gif", "image/webp"):
                        content.append(Image(data=data, format=mime_type.split("/")[1]))
                if not images:
                    value = item.mime("text/plain")
                    if isinstance(value, str):
                        text.append(value + "\n")
        summary = _clip("".join(text)) or ("(no output)" if not content else "")
        if result.status != "ok" and not prefix:
            summary = f"[status: {result.status}]\n" + summary
        return ([summary] if summary else []) + content

    @tool
    async def session_close(project_id: str, session_id: str):
        """Stop a session's kernel."""
        from .client import AsyncSession, SessionInfo
        await AsyncSession(client(), project_id, SessionInfo(session_id=session_id)).close()
        return {"session_id": session_id, "closed": True}

    @tool
    async def file_read(project_id: str, path: str):
        """Read a file of the project (path relative to its home).  Text comes back as text,
        images as image content, other binary files as base64."""
        data = await client().files.read_bytes(project_id, path)
        if len(data) > READ_LIMIT:
            raise ValueError(f"{path} has {len(data)} bytes; file_read returns at most {READ_LIMIT}")
        suffix = path.rsplit(".", 1)[-1].lower()
        if suffix in ("png", "jpg", "jpeg", "gif", "webp"):
            return [Image(data=data, format="jpeg" if suffix == "jpg" else suffix)]
        try:
            return _clip(data.decode("utf-8"))
        except UnicodeDecodeError:
            return {"path": path, "size": len(data), "base64": base64.b64encode(data).decode()}

    @tool
    async def file_write(project_id: str, path: str, content: str, base64_encoded: bool = False):
        """Create or replace a file (its directories are made).  `content` is UTF-8 text, or
        base64 with base64_encoded=true."""
        data = base64.b64decode(content, validate=True) if base64_encoded else content.encode()
        info = await client().files.write_bytes(project_id, path, data)
        return {"path": info.path, "size": info.size, "etag": info.etag}

    @tool
    async def file_list(project_id: str, path: str = ""):
        """List a directory of the project ("" = the home): name, type, size, mtime."""
        listing = await client().files.list(project_id, path)
        return {"path": listing.path, "truncated": listing.truncated,
                "entries": [{"name": e.name, "type": e.type, "size": e.size, "mtime": e.mtime} for e in listing]}

    @tool
    async def file_upload(project_id: str, local_path: str, path: str):
        """Upload a file from the machine this MCP server runs on (below its upload root) to
        `path` in the project."""
        if upload_root is None:
            raise ValueError("uploads from this machine are off (start projecthub mcp with --upload-root DIR)")
        source = Path(local_path if os.path.isabs(local_path) else upload_root / local_path).resolve()
        if not source.is_relative_to(upload_root) or not source.is_file():
            raise ValueError(f"{local_path}: not a file below the upload root {upload_root}")
        info = await client().files.upload(project_id, source, path)
        return {"path": info.path, "size": info.size, "etag": info.etag}

    mcp._projecthub_v2 = v2
    return mcp


def run(url: str, api_key: str, transport: str = "stdio", host: str = "127.0.0.1", port: int = 8931,
        upload_root: str | None = None) -> None:
    root = Path(upload_root).resolve() if upload_root else (Path.cwd().resolve() if transport == "stdio" else None)
    server = build_server(url, api_key, upload_root=root, host=host, port=port)
    if transport == "stdio":
        server.run(transport="stdio")
    elif server._projecthub_v2:
        server.run(transport="streamable-http", host=host, port=port)
    else:
        server.run(transport="streamable-http")


def cmd_mcp(args: argparse.Namespace) -> None:
    api_key = args.api_key or os.environ.get("PROJECTHUB_API_KEY")
    if not api_key:
        raise ValueError("an API key is required: --api-key KEY or $PROJECTHUB_API_KEY")
    if not args.url.startswith(("http://", "https://")):
        raise ValueError(f"--url must be an http(s) URL, not {args.url!r}")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be 1-65535, not {args.port}")
    try:
        _import_sdk()
    except ImportError:
        raise ValueError("the mcp package is missing: pip install 'projecthub[mcp]'")
    if args.transport == "http" and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"projecthub mcp: serving on {args.host}: anyone who reaches it acts with this API key",
              file=sys.stderr)
    run(args.url, api_key, "stdio" if args.transport == "stdio" else "http", args.host, args.port,
        args.upload_root)


def add_mcp_parser(sub: Any) -> None:
    p = sub.add_parser("mcp", help="an MCP server for agents (stdio or streamable HTTP), on a server's v3 API",
                       description="An MCP server (tools: projects, exec and jobs, Jupyter sessions, "
                                   "files) that acts on a projecthub server with one API key.")
    p.add_argument("--url", default=os.environ.get("PROJECTHUB_URL", "http://127.0.0.1:8765"),
                   help="the projecthub server (default: $PROJECTHUB_URL, else http://127.0.0.1:8765)")
    p.add_argument("--api-key", default=None, help="the API key (default: $PROJECTHUB_API_KEY)")
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                   help="stdio (default) or streamable HTTP at http://HOST:PORT/mcp")
    p.add_argument("--host", default="127.0.0.1", help="HTTP: the address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8931, help="HTTP: the port (default 8931)")
    p.add_argument("--upload-root", default=None, metavar="DIR",
                   help="file_upload reads local files only below DIR (stdio default: the current "
                        "directory; HTTP: off unless given)")
    p.set_defaults(func=cmd_mcp)


def main(argv: list[str] | None = None) -> None:
    """``python -m projecthub.mcp_server``: the same as ``projecthub mcp`` (without the server's
    CLI, so it runs where only the client and mcp are installed)."""
    parser = argparse.ArgumentParser(prog="projecthub mcp")
    sub = parser.add_subparsers(dest="command", required=True)
    add_mcp_parser(sub)
    args = parser.parse_args(["mcp", *(sys.argv[1:] if argv is None else argv)])
    try:
        args.func(args)
    except ValueError as exc:
        print(f"projecthub mcp: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
