"""``GET /api/v3/docs``: an interactive API reference (Swagger UI) of ``/api/v3/openapi.json``.

Everything it loads is shipped in the package (``static/``; ``scripts/docs_assets.sh``
fetches the pinned Swagger UI release), so it works offline.  No key is needed: the page
and the document hold no secrets.  Every reply carries a strict Content-Security-Policy:
scripts only from this server (the initialisation is ``static/docs.js``, never inline),
requests only to this server, no frames, no forms, no plugins.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

STATIC = Path(__file__).with_name("static")

# Nothing inline at all (Swagger UI sets styles through the CSSOM, which CSP allows; the
# browser test fails on any CSP violation).  Images: its icons are data: URIs.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "font-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'; object-src 'none'")

# the only files served (no path from the request ever reaches the file system)
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "docs.js": "text/javascript; charset=utf-8",
    "docs.css": "text/css; charset=utf-8",
}


@lru_cache(maxsize=None)
def _read(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def _headers(cache: str) -> dict[str, str]:
    return {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "Cache-Control": cache}


async def page(request: Request) -> Response:
    return Response(_read("docs.html"), media_type="text/html; charset=utf-8", headers=_headers("no-cache"))


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    media_type = ASSETS.get(name)
    if media_type is None:
        return Response(b'{"error": "not found"}', status_code=404, media_type="application/json",
                        headers=_headers("no-cache"))
    return Response(_read(name), media_type=media_type, headers=_headers("public, max-age=3600"))


async def slash(request: Request) -> Response:
    """``/api/v3/docs/``: the page's relative links expect ``/api/v3/docs``."""
    return RedirectResponse("../docs", status_code=308)
