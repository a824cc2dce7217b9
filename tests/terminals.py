"""Helpers for the terminal tests: the v3 REST calls and a real WebSocket client
(``websockets.sync.client``) on a real server."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.server import Server


def terminals_url(server: Server, project_id: str) -> str:
    return f"{server.url}/api/v3/projects/{project_id}/terminals"


def ws_url(server: Server, project_id: str, terminal_id: str) -> str:
    return f"ws://127.0.0.1:{server.port}/api/v3/projects/{project_id}/terminals/{terminal_id}/ws"


def create(server: Server, project_id: str, key: str, **body: Any) -> httpx.Response:
    return httpx.post(terminals_url(server, project_id), json=body,
                      headers={"Authorization": f"Bearer {key}"}, timeout=60)


def listing(server: Server, project_id: str, key: str) -> list[dict[str, Any]]:
    r = httpx.get(terminals_url(server, project_id), headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["terminals"]


def delete(server: Server, project_id: str, terminal_id: str, key: str) -> httpx.Response:
    return httpx.delete(f"{terminals_url(server, project_id)}/{terminal_id}",
                        headers={"Authorization": f"Bearer {key}"}, timeout=30)


def new_terminal(server: Server, project_id: str, key: str, **body: Any) -> str:
    r = create(server, project_id, key, **body)
    assert r.status_code == 201, r.text
    return r.json()["terminal_id"]


class Term:
    """One attached WebSocket: ``scrollback`` is what came first; ``read_until`` collects
    output until a pattern shows up; ``closed`` is (code, reason) once the server closed."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.output = b""
        self.controls: list[dict[str, Any]] = []
        self.closed: tuple[int | None, str] | None = None
        self.scrollback = self._recv(10)
        assert isinstance(self.scrollback, bytes), (self.scrollback, self.closed)

    def _recv(self, timeout: float) -> Any:
        try:
            return self.ws.recv(timeout=timeout)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            self.closed = (rcvd.code if rcvd else None, rcvd.reason if rcvd else "")
            return None

    def send(self, data: bytes | str) -> None:
        self.ws.send(data)

    def type(self, line: str) -> None:
        self.ws.send((line + "\r").encode())

    def resize(self, cols: int, rows: int) -> None:
        self.ws.send(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

    def read_until(self, needle: bytes, timeout: float = 10) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            left = deadline - time.monotonic()
            if left <= 0 or self.closed is not None:
                raise AssertionError(f"{needle!r} not seen; got {self.output[-2000:]!r}, closed={self.closed}")
            try:
                item = self._recv(min(left, 1.0))
            except TimeoutError:
                continue
            self._take(item)
        return self.output

    def _take(self, item: Any) -> None:
        if isinstance(item, bytes):
            self.output += item
        elif isinstance(item, str):
            self.controls.append(json.loads(item))

    def wait_closed(self, timeout: float = 10) -> tuple[int | None, str]:
        deadline = time.monotonic() + timeout
        while self.closed is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"still open after {timeout} s; got {self.output[-500:]!r}")
            try:
                self._take(self._recv(min(left, 1.0)))
            except TimeoutError:
                continue
        return self.closed

    def close(self) -> None:
        self.ws.close()


def attach(server: Server, project_id: str, terminal_id: str, key: str, *, header: bool = True,
           **kwargs: Any) -> Term:
    """Attach with the key in the Authorization header, or (``header=False``) in the first
    message, as a browser does."""
    headers = {"Authorization": f"Bearer {key}"} if header else {}
    # entered like a context manager (Term.close closes it): websockets >= 17.1 wants that
    ws = connect(ws_url(server, project_id, terminal_id), additional_headers=headers, open_timeout=10,
                 **kwargs).__enter__()
    if not header:
        ws.send(json.dumps({"type": "auth", "token": key}))
    return Term(ws)


def refused(server: Server, project_id: str, terminal_id: str, *, key: str | None = None,
            header: bool = True, first: Any = None, timeout: float = 20, **kwargs: Any) -> tuple[int | None, str]:
    """Connect and return the close (code, reason) the server ends the socket with; fails
    if the server sends any data first."""
    headers = {"Authorization": f"Bearer {key}"} if key is not None and header else {}
    with connect(ws_url(server, project_id, terminal_id), additional_headers=headers, open_timeout=10,
                 **kwargs) as ws:
        if key is not None and not header:
            ws.send(json.dumps({"type": "auth", "token": key}))
        if first is not None:
            ws.send(first)
        try:
            got = ws.recv(timeout=timeout)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, exc
            return exc.rcvd.code, exc.rcvd.reason
        raise AssertionError(f"the server sent {got!r} instead of closing")
