"""Keep-alive HTTP/1.1 for the blocking client's plain calls (stdlib ``http.client``).

httpx spends ~0.7 ms of CPU per request on this kind of machine, more than the whole client
may add to an ``exec true`` (issue 18: <= 0.3 ms over raw HTTP keep-alive).  Calls with a JSON
or bytes body and a buffered answer go through one ``http.client`` connection per thread
instead; streams (SSE, uploads and downloads of files) stay on httpx.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import threading
from typing import Any
from urllib.parse import urlencode, urlsplit


class ConnectFailed(Exception):
    """No connection could be made (nothing was sent)."""


class SendFailed(Exception):
    """The connection broke after the request may have been sent."""


class ReadTimedOut(Exception):
    """No answer within the timeout."""


class Headers(dict):
    def get(self, key: str, default: Any = None) -> Any:   # type: ignore[override]
        return super().get(key.lower(), default)


class Response:
    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: Headers, content: bytes) -> None:
        self.status_code, self.headers, self.content = status_code, headers, content

    def json(self) -> Any:
        return json.loads(self.content)


class FastHTTP:
    def __init__(self, url: str, prefix: str, headers: dict[str, str], timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/") + prefix
        self._head = "".join(f"{k}: {v}\r\n" for k, v in
                             {**headers, "Host": parts.netloc, "Accept-Encoding": "identity"}.items())
        self.timeout = timeout
        self._local = threading.local()
        self._all: list[socket.socket] = []
        self._lock = threading.Lock()
        self._ssl = ssl.create_default_context() if self.https else None

    def _socket(self) -> socket.socket:
        """This thread's connection: the kept-alive one unless the server closed it meanwhile
        (then it reads as "readable": EOF), else a new one."""
        sock: socket.socket | None = getattr(self._local, "sock", None)
        if sock is not None:
            try:
                if not select.select([sock], [], [], 0)[0]:
                    return sock
            except (OSError, ValueError):
                pass
            self._drop(sock)
        sock = self._connect()
        self._local.sock = sock
        with self._lock:
            self._all.append(sock)
        return sock

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=min(self.timeout, 10.0))
        except OSError as exc:
            raise ConnectFailed(str(exc)) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ssl is not None:
            try:
                sock = self._ssl.wrap_socket(sock, server_hostname=self.host)
            except OSError as exc:
                sock.close()
                raise ConnectFailed(str(exc)) from exc
        return sock

    def open_stream(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                    timeout: float = 60.0) -> tuple[http.client.HTTPResponse, socket.socket]:
        """A streamed answer on a connection of its own (read it with ``read1``; close the
        socket when done).  For Server-Sent Events: cheaper per chunk than httpx."""
        head = f"{method} {self.prefix + path} HTTP/1.1\r\n" + self._head
        if headers:
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        if method in ("POST", "PUT", "PATCH"):
            head += "Content-Length: 0\r\n"
        sock = self._connect()
        try:
            sock.settimeout(timeout)
            sock.sendall((head + "Connection: close\r\n\r\n").encode("latin-1"))
            answer = http.client.HTTPResponse(sock, method=method)
            answer.begin()
        except TimeoutError as exc:
            sock.close()
            raise ReadTimedOut(f"no answer within {timeout} s") from exc
        except (OSError, http.client.HTTPException) as exc:
            sock.close()
            raise SendFailed(repr(exc)) from exc
        return answer, sock

    def send_file(self, method: str, path: str, fh: Any, size: int, *, headers: dict[str, str] | None = None,
                  timeout: float = 600.0) -> Response:
        """``size`` bytes of the open file ``fh`` (from its position) as the request body, on a
        connection of its own, with ``socket.sendfile`` (``os.sendfile``: the kernel copies
        the file to the socket; a Python client's chunks cost a copy per byte more)."""
        head = f"{method} {self.prefix + path} HTTP/1.1\r\n" + self._head
        if headers:
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += f"Content-Length: {size}\r\nConnection: close\r\n\r\n"
        sock = self._connect()
        try:
            sock.settimeout(timeout)
            sent: OSError | None = None
            try:
                sock.sendall(head.encode("latin-1"))
                if size and sock.sendfile(fh, fh.tell(), size) != size:
                    raise SendFailed("the file shrank while it was sent")   # the server would wait for the rest
            except TimeoutError:
                raise
            except OSError as exc:   # the server may have answered early (401, 404, 413): read it
                sent = exc
            try:
                answer = http.client.HTTPResponse(sock, method=method)
                answer.begin()
                data = answer.read(1 << 20)
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, TimeoutError):
                    raise
                raise SendFailed(repr(sent or exc)) from exc
            if sent is not None and answer.status < 300:
                raise SendFailed(repr(sent))
        except TimeoutError as exc:
            raise ReadTimedOut(f"no answer within {timeout} s") from exc
        finally:
            sock.close()
        return Response(answer.status, Headers((k.lower(), v) for k, v in answer.getheaders()), data)

    def _drop(self, sock: socket.socket) -> None:
        if getattr(self._local, "sock", None) is sock:
            self._local.sock = None
        with self._lock:
            if sock in self._all:
                self._all.remove(sock)
        try:
            sock.close()
        except OSError:
            pass

    def request(self, method: str, path: str, *, json_body: Any = None, content: bytes | None = None,
                params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                timeout: float | None = None) -> Response:
        url = self.prefix + path
        if params:
            url += "?" + urlencode({k: _param(v) for k, v in params.items()})
        body = content
        head = f"{method} {url} HTTP/1.1\r\n" + self._head
        if json_body is not None:
            body = json.dumps(json_body, separators=(",", ":")).encode()
            head += "Content-Type: application/json\r\n"
        if headers:
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        if body is not None:
            head += f"Content-Length: {len(body)}\r\n"
        raw = (head + "\r\n").encode("latin-1") + (body or b"")   # one send: no Nagle/delayed-ACK dance
        sock = self._socket()
        sock.settimeout(timeout or self.timeout)
        try:
            sock.sendall(raw)
            answer = http.client.HTTPResponse(sock, method=method)
            answer.begin()
            data = answer.read()
        except TimeoutError as exc:
            self._drop(sock)
            raise ReadTimedOut(f"no answer within {timeout or self.timeout} s") from exc
        except (OSError, http.client.HTTPException) as exc:
            self._drop(sock)
            raise SendFailed(repr(exc)) from exc
        if answer.will_close:
            self._drop(sock)
        return Response(answer.status, Headers((k.lower(), v) for k, v in answer.getheaders()), data)

    def close(self) -> None:
        with self._lock:
            socks, self._all = self._all, []
        for sock in socks:
            try:
                sock.close()
            except OSError:
                pass


def _param(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


class AsyncFastHTTP:
    """The same for ``AsyncClient``: HTTP/1.1 keep-alive on asyncio streams, a pool of idle
    connections (one request per connection at a time; concurrent calls open more)."""

    MAX_IDLE = 32

    def __init__(self, url: str, prefix: str, headers: dict[str, str], timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/") + prefix
        self.timeout = timeout
        self._head = "".join(f"{k}: {v}\r\n" for k, v in
                             {**headers, "Host": parts.netloc, "Accept-Encoding": "identity"}.items())
        self._idle: list[tuple[Any, Any]] = []

    async def _open(self) -> tuple[Any, Any]:
        import asyncio
        try:
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=ssl.create_default_context() if self.https else None)
        except OSError as exc:
            raise ConnectFailed(str(exc)) from exc
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def request(self, method: str, path: str, *, json_body: Any = None, content: bytes | None = None,
                      params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                      timeout: float | None = None) -> Response:
        import asyncio
        url = self.prefix + path
        if params:
            url += "?" + urlencode({k: _param(v) for k, v in params.items()})
        body = content
        head = f"{method} {url} HTTP/1.1\r\n" + self._head
        if json_body is not None:
            body = json.dumps(json_body, separators=(",", ":")).encode()
            head += "Content-Type: application/json\r\n"
        if headers:
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        if body is not None:
            head += f"Content-Length: {len(body)}\r\n"
        raw = (head + "\r\n").encode("latin-1") + (body or b"")
        conn = None
        while self._idle:
            candidate = self._idle.pop()
            if candidate[0].at_eof() or candidate[1].is_closing():
                candidate[1].close()
                continue
            conn = candidate
            break
        if conn is None:
            conn = await self._open()
        reader, writer = conn
        try:
            async with asyncio.timeout(timeout or self.timeout):
                writer.write(raw)
                status_line = await reader.readuntil(b"\r\n")
                status = int(status_line.split(None, 2)[1])
                got: dict[str, str] = {}
                while True:
                    line = await reader.readuntil(b"\r\n")
                    if line == b"\r\n":
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    got[name.strip().lower()] = value.strip()
                if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                    data = b""
                elif "chunked" in got.get("transfer-encoding", ""):
                    chunks = []
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        if size == 0:
                            while await reader.readuntil(b"\r\n") != b"\r\n":
                                pass
                            break
                        chunks.append(await reader.readexactly(size))
                        await reader.readexactly(2)
                    data = b"".join(chunks)
                elif "content-length" in got:
                    data = await reader.readexactly(int(got["content-length"]))
                else:
                    data = await reader.read()
                    got["connection"] = "close"
        except TimeoutError as exc:
            writer.close()
            raise ReadTimedOut(f"no answer within {timeout or self.timeout} s") from exc
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            writer.close()
            raise SendFailed(repr(exc)) from exc
        except BaseException:   # cancelled mid-answer: the connection's state is unknown
            writer.close()
            raise
        if "close" in got.get("connection", "").lower() or len(self._idle) >= self.MAX_IDLE:
            writer.close()
        else:
            self._idle.append(conn)
        return Response(status, Headers(got), data)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
