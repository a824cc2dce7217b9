"""The daemon's terminals (project/terminal.py) in process: a real PTY and a real bash,
tracked by the MarkerTracker.  What the real server tests cannot reach quickly: the bounds
(scrollback ring, a stuck client's backlog, input the shell does not read), the grace
timer and the daemon-stop path."""

from __future__ import annotations

import asyncio
import base64
from typing import Any, AsyncIterator

import pytest

from projecthub.errors import RemoteError
from projecthub.project import terminal
from projecthub.project.context import ProjectContext

pytestmark = pytest.mark.anyio


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def typed(ctx: ProjectContext, tid: str, line: str) -> None:
    await terminal.write_input(ctx, {"terminal_id": tid, "data": b64((line + "\r").encode())})


async def read_until(items: AsyncIterator[dict[str, Any]], needle: bytes, timeout: float = 10) -> bytes:
    out = b""
    async with asyncio.timeout(timeout):
        while needle not in out:
            item = await items.__anext__()
            if "data" in item:
                out += base64.b64decode(item["data"])
            elif "scrollback" in item:
                out += base64.b64decode(item["scrollback"])
    return out


@pytest.fixture
def manager(ctx: ProjectContext) -> Any:
    yield terminal.manager(ctx)
    terminal.manager(ctx).close_all()


async def test_scrollback_is_a_bounded_ring(ctx: ProjectContext, manager: Any) -> None:
    tid = (await terminal.create(ctx, {}))["terminal_id"]
    items = terminal.attach(ctx, {"terminal_id": tid})
    await items.__anext__()
    await typed(ctx, tid, "head -c 700000 /dev/zero | tr '\\0' y; echo; echo done-$((1+1))")
    await read_until(items, b"done-2\r\n", 20)
    await items.aclose()
    term = manager.get(tid)
    assert len(term.ring) == terminal.SCROLLBACK_BYTES
    assert term.ring.endswith(b"done-2\r\n") or b"done-2\r\n" in term.ring[-200:]
    again = terminal.attach(ctx, {"terminal_id": tid})
    first = await again.__anext__()
    assert len(base64.b64decode(first["scrollback"])) == terminal.SCROLLBACK_BYTES
    await again.aclose()


async def test_a_stuck_client_is_dropped_and_the_others_keep_going(
        ctx: ProjectContext, manager: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(terminal, "CLIENT_STALL_S", 0.5)
    tid = (await terminal.create(ctx, {}))["terminal_id"]
    term = manager.get(tid)
    stuck = terminal.attach(ctx, {"terminal_id": tid})
    await stuck.__anext__()
    live = terminal.attach(ctx, {"terminal_id": tid})
    await live.__anext__()
    await typed(ctx, tid, "head -c 3000000 /dev/zero | tr '\\0' z; echo; echo end-$((2+2))")
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, *(len(c.pending) for c in term.clients), 0)
            await asyncio.sleep(0.001)

    watcher = asyncio.ensure_future(watch())
    try:
        await read_until(live, b"end-4\r\n", 30)   # the live client gets everything
    finally:
        watcher.cancel()
    # the stuck one never held more than its mark and one batch, and was dropped
    assert most <= terminal.CLIENT_HIGH_WATER + 64 * 1024, most
    with pytest.raises(RemoteError) as info:
        while True:
            await stuck.__anext__()
    assert info.value.extra.get("dropped") is True and "attach again" in info.value.message
    assert len(term.clients) == 1
    await live.aclose()


async def test_input_the_shell_does_not_read_is_capped(ctx: ProjectContext, manager: Any) -> None:
    tid = (await terminal.create(ctx, {}))["terminal_id"]
    await typed(ctx, tid, "stty -icanon; sleep 100")   # the foreground job never reads
    await asyncio.sleep(0.5)
    chunk = b64(b"k" * terminal.INPUT_FRAME_MAX)
    with pytest.raises(RemoteError) as info:
        for _ in range(20):
            await terminal.write_input(ctx, {"terminal_id": tid, "data": chunk})
    assert info.value.extra.get("status") == 429
    assert len(manager.get(tid)._input) <= terminal.INPUT_PENDING_MAX


async def test_bad_requests(ctx: ProjectContext, manager: Any) -> None:
    for opts in ({"cols": 0}, {"rows": 1001}, {"cols": True}, {"cols": "80"}):
        with pytest.raises(RemoteError) as info:
            await terminal.create(ctx, opts)
        assert info.value.extra.get("status") == 400
    tid = (await terminal.create(ctx, {"cols": 1000, "rows": 1}))["terminal_id"]
    for bad in (None, 7, "x" * 500, tid.upper(), "0" * 32):
        with pytest.raises(RemoteError) as info:
            await terminal.kill(ctx, {"terminal_id": bad})
        assert info.value.extra.get("status") == 404
    for data in ("not base64!", b64(b"x" * (terminal.INPUT_FRAME_MAX + 3)), 5):
        with pytest.raises(RemoteError) as info:
            await terminal.write_input(ctx, {"terminal_id": tid, "data": data})
        assert info.value.extra.get("status") == 400
    with pytest.raises(RemoteError):
        await terminal.resize(ctx, {"terminal_id": tid, "cols": 1001})


async def test_grace_period_then_killed(ctx: ProjectContext, manager: Any) -> None:
    manager.grace_s = 0.4
    tid = (await terminal.create(ctx, {}))["terminal_id"]
    items = terminal.attach(ctx, {"terminal_id": tid})
    await items.__anext__()
    await asyncio.sleep(0.8)   # attached: no grace period
    assert [t["terminal_id"] for t in await terminal.list_terminals(ctx, {})] == [tid]
    term = manager.get(tid)
    await items.aclose()
    async with asyncio.timeout(5):
        while term.exit_code is None:
            await asyncio.sleep(0.05)
    assert term.exit_code == 137 and await terminal.list_terminals(ctx, {}) == []
    assert term._master is None and term._pidfd is None


async def test_daemon_stop_closes_everything(ctx: ProjectContext, manager: Any) -> None:
    tids = [(await terminal.create(ctx, {}))["terminal_id"] for _ in range(3)]
    terms = [manager.get(t) for t in tids]
    manager.close_all()
    assert manager.terminals == {}
    assert all(t.exit_code == 137 and t._master is None and t._pidfd is None for t in terms)


async def test_attached_clients_are_capped(ctx: ProjectContext, manager: Any) -> None:
    tid = (await terminal.create(ctx, {}))["terminal_id"]
    attached = []
    for _ in range(terminal.MAX_CLIENTS):
        items = terminal.attach(ctx, {"terminal_id": tid})
        await items.__anext__()
        attached.append(items)
    extra = terminal.attach(ctx, {"terminal_id": tid})
    with pytest.raises(RemoteError) as info:
        await extra.__anext__()
    assert info.value.extra.get("status") == 429
    await attached.pop().aclose()
    again = terminal.attach(ctx, {"terminal_id": tid})
    await again.__anext__()   # room again
    for items in (*attached, again):
        await items.aclose()
    assert manager.get(tid).clients == set()


async def test_a_shell_whose_pidfd_cannot_be_opened_is_not_left_running(
        ctx: ProjectContext, manager: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """pidfd_open fails after the spawn (EMFILE: the project can lower its own daemon's fd
    limit): the shell must not live on untracked (no grace timer, no count, no re-exec hold)."""
    import errno
    import os

    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}

    def no_fd(pid: int) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(terminal.os, "pidfd_open", no_fd)
    with pytest.raises(RemoteError, match="could not start a terminal"):
        await terminal.create(ctx, {})
    monkeypatch.undo()
    assert manager.list() == [] and not manager.busy()
    left = [p for p in psutil.Process().children(recursive=True)
            if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [p.cmdline() for p in left]
