"""The web UI: ``GET /`` serves a single-page app, ``GET /ui/{name}`` its assets.

Everything is built ahead of time (``ui/`` holds the sources, ``scripts/ui_build.sh`` bundles
them with esbuild into ``static/ui/``, committed), so the UI works offline and nothing is
built at install time.  The page holds no secret: it asks for an API key, keeps it in the
tab's sessionStorage and sends it as ``Authorization: Bearer`` (never in a URL, no cookies,
so no CSRF).  Every reply carries a strict Content-Security-Policy: scripts and styles only
from this server (nothing inline, no eval), requests only to this server (HTTP and its
WebSocket), images also from data:/blob: URLs (rich outputs, file previews), frames only
``srcdoc`` ones (untrusted HTML output, sandboxed without scripts), never framed itself.
"""

from __future__ import annotations

import gzip
import re
from functools import lru_cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

STATIC = Path(__file__).with_name("static") / "ui"

_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
}
_HASHED = re.compile(r"-[A-Z0-9]{8}\.(js|css)$")   # esbuild's [name]-[hash] names
# a Host header that can go into the policy as it is (anything else: 'self' alone)
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?$")

BASE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            "font-src 'self'; frame-src 'self'; object-src 'none'; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'")


def csp(host: str | None) -> str:
    """The policy for a reply to ``host``: connect-src names the WebSocket origins explicitly
    (older browsers do not count ws: as 'self')."""
    connect = "connect-src 'self'"
    if host and _HOST.match(host):
        connect += f" ws://{host} wss://{host}"
    return f"{BASE_CSP}; {connect}"


def _assets() -> dict[str, str]:
    """name -> media type of every built file (no path from a request reaches the disk)."""
    if not STATIC.is_dir():
        return {}
    return {p.name: _TYPES[p.suffix] for p in STATIC.iterdir() if p.is_file() and p.suffix in _TYPES}


ASSETS = _assets()


@lru_cache(maxsize=None)
def _read(name: str) -> bytes:
    return (STATIC / name).read_bytes()


@lru_cache(maxsize=None)
def _gzipped(name: str) -> bytes:
    """Compressed once per process (the editor chunk: 664 kB -> ~220 kB); mtime 0: stable bytes."""
    return gzip.compress(_read(name), compresslevel=9, mtime=0)


def _accepts_gzip(request: Request) -> bool:
    return any(part.split(";")[0].strip() == "gzip"
               for part in request.headers.get("accept-encoding", "").split(","))


def _headers(request: Request, cache: str) -> dict[str, str]:
    return {"Content-Security-Policy": csp(request.headers.get("host")), "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "Cache-Control": cache,
            "Cross-Origin-Opener-Policy": "same-origin"}


async def page(request: Request) -> Response:
    return Response(_read("index.html"), media_type="text/html; charset=utf-8",
                    headers=_headers(request, "no-cache"))


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    media_type = ASSETS.get(name)
    if media_type is None:
        return Response(b'{"error": "not found"}', status_code=404, media_type="application/json",
                        headers=_headers(request, "no-cache"))
    # built files are named by their content (ui/build.mjs): cached for good; the rest an hour
    cache = "public, max-age=31536000, immutable" if _HASHED.search(name) else "public, max-age=3600"
    headers = {**_headers(request, cache), "Vary": "Accept-Encoding"}
    if _accepts_gzip(request):
        return Response(_gzipped(name), media_type=media_type, headers={**headers, "Content-Encoding": "gzip"})
    return Response(_read(name), media_type=media_type, headers=headers)
