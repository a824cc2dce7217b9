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
        self.headers = {**headers, "Host": parts.netloc, "Accept-Encoding": "identity"}
        self.timeout = timeout
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._ssl = ssl.create_default_context() if self.https else None

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection (and whether it is a reused one)."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None:
            # a keep-alive connection the server closed meanwhile reads as "readable" (EOF)
            try:
                readable = select.select([conn.sock], [], [], 0)[0]
            except (OSError, ValueError):
                readable = True
            if not readable:
                return conn, True
            conn.close()
        if conn is None:
            if self.https:
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._ssl)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise ConnectFailed(str(exc)) from exc
        sock = conn.sock
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, False

    def request(self, method: str, path: str, *, json_body: Any = None, content: bytes | None = None,
                params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                timeout: float | None = None) -> Response:
        url = self.prefix + path
        if params:
            url += "?" + urlencode({k: _param(v) for k, v in params.items()})
        send = dict(self.headers)
        if headers:
            send.update(headers)
        body: bytes | None = content
        if json_body is not None:
            body = json.dumps(json_body, separators=(",", ":")).encode()
            send["Content-Type"] = "application/json"
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        conn, _reused = self._connection()
        conn.sock.settimeout(timeout or self.timeout)   # type: ignore[union-attr]
        try:
            conn.request(method, url, body=body, headers=send)
            answer = conn.getresponse()
            data = answer.read()
        except TimeoutError as exc:
            conn.close()
            raise ReadTimedOut(f"no answer within {timeout or self.timeout} s") from exc
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise SendFailed(repr(exc)) from exc
        if answer.will_close:
            conn.close()
        return Response(answer.status, Headers((k.lower(), v) for k, v in answer.getheaders()), data)

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()


def _param(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)
