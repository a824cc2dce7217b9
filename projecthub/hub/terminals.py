"""The hub's terminal operations: the one internal path for every surface (v3 REST and
WebSocket today; the client, MCP and web UI use the same endpoints).

A terminal lives in the project daemon (``project/terminal.py``); the hub only forwards.
Authorization is the caller's job, as for every ``HubService`` project call (the API checks
the identity against the project first).  Creating a terminal starts a stopped project;
listing, attaching and killing never do (a stopped project has no terminals).

Bytes travel base64-encoded in the fabric's JSON frames.  Output is pulled through the
fabric's flow-controlled stream (``HubService.project_stream``: the hub holds at most one
window per attached client), and an attached stream counts as a call in flight, so a
project with an attached terminal is never stopped as idle.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any, AsyncIterator

from ..errors import RemoteError
from .service import HubService

# Set by the daemon (os.urandom(16).hex()); anything else is refused before the fabric.
TERMINAL_ID_RE = re.compile(r"^[0-9a-f]{32}$")
INPUT_FRAME_MAX = 64 * 1024
MAX_DIMENSION = 1000
# An attach stream's flow-control window (bytes of fabric frames the hub may hold): a few
# screens of output in flight is plenty for an interactive terminal.
ATTACH_WINDOW = 512 * 1024
_CALL_BUDGET_S = 15.0


def missing_terminal(terminal_id: str) -> RemoteError:
    shown = terminal_id if len(terminal_id) <= 64 else terminal_id[:64] + "..."
    return RemoteError(f"Error: terminal '{shown}' does not exist", status=404)


def _check_id(terminal_id: str) -> None:
    if not TERMINAL_ID_RE.match(terminal_id):
        raise missing_terminal(terminal_id)


def check_size(cols: Any, rows: Any) -> None:
    for name, value in (("cols", cols), ("rows", rows)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 1 <= value <= MAX_DIMENSION):
            raise RemoteError(f"Error: '{name}' must be an integer from 1 to {MAX_DIMENSION}", status=400)


@dataclass
class Output:
    """One item of an attached terminal: ``data`` (bytes; the first item is the scrollback)
    or, last, the shell's ``exit_code``."""

    data: bytes = b""
    exit_code: int | None = None
    scrollback: bool = False


async def create_terminal(hub: HubService, project_id: str, cols: int | None = None,
                          rows: int | None = None) -> dict[str, Any]:
    check_size(cols, rows)
    opts = {k: v for k, v in (("cols", cols), ("rows", rows)) if v is not None}
    return await hub.project_call(project_id, "native.terminal.create", [opts], _CALL_BUDGET_S)


async def list_terminals(hub: HubService, project_id: str) -> list[dict[str, Any]]:
    if not hub.host.is_running(project_id):
        return []
    result = await hub.project_call(project_id, "native.terminal.list", [{}], _CALL_BUDGET_S)
    return result if isinstance(result, list) else []


async def kill_terminal(hub: HubService, project_id: str, terminal_id: str) -> None:
    _check_id(terminal_id)
    if not hub.host.is_running(project_id):
        raise missing_terminal(terminal_id)
    await hub.project_call(project_id, "native.terminal.kill", [{"terminal_id": terminal_id}],
                           _CALL_BUDGET_S)


async def send_input(hub: HubService, project_id: str, terminal_id: str, data: bytes) -> None:
    _check_id(terminal_id)
    if len(data) > INPUT_FRAME_MAX:
        raise RemoteError(f"Error: input frames are limited to {INPUT_FRAME_MAX} bytes", status=413)
    if not data:
        return
    if not hub.host.is_running(project_id):
        raise missing_terminal(terminal_id)
    await hub.project_call(project_id, "native.terminal.input",
                           [{"terminal_id": terminal_id, "data": base64.b64encode(data).decode("ascii")}],
                           _CALL_BUDGET_S)


async def resize_terminal(hub: HubService, project_id: str, terminal_id: str, cols: int,
                          rows: int) -> dict[str, Any]:
    _check_id(terminal_id)
    check_size(cols, rows)
    if not hub.host.is_running(project_id):
        raise missing_terminal(terminal_id)
    return await hub.project_call(project_id, "native.terminal.resize",
                                  [{"terminal_id": terminal_id, "cols": cols, "rows": rows}],
                                  _CALL_BUDGET_S)


async def attach(hub: HubService, project_id: str, terminal_id: str) -> AsyncIterator[Output]:
    """The terminal's scrollback, then its output as it comes, then its exit code.
    Raises RemoteError (status 404) for an unknown terminal, before anything is yielded.
    Closing the iterator detaches (the terminal keeps running for its grace period)."""
    _check_id(terminal_id)
    if not hub.host.is_running(project_id):
        raise missing_terminal(terminal_id)
    stream = hub.project_stream(project_id, "native.terminal.attach", [{"terminal_id": terminal_id}],
                                ATTACH_WINDOW)
    try:
        async for item in stream:
            if not isinstance(item, dict):
                continue
            if "exit" in item:
                code = item["exit"]
                yield Output(exit_code=code if isinstance(code, int) and not isinstance(code, bool) else -1)
                return
            scrollback = "scrollback" in item
            text = item.get("scrollback" if scrollback else "data")
            if isinstance(text, str):
                try:
                    data = base64.b64decode(text, validate=True)
                except (binascii.Error, ValueError):   # the daemon is not trusted to be well-formed
                    raise RemoteError("Error: the project daemon sent malformed terminal output")
                yield Output(data=data, scrollback=scrollback)
    finally:
        await stream.aclose()
