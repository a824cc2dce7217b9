"""/api/v3/docs (issue 16 item 4): the interactive API reference renders every operation in
headless Chromium from assets shipped in the package, with no failed request and nothing
fetched from anywhere but this server (it works offline), under a strict
Content-Security-Policy (no inline script), without a key.

Chromium is Debian's /usr/bin/chromium driven by Playwright (never a downloaded browser);
under CI=true a missing browser is a failure, not a skip (.ci/run installs it)."""

from __future__ import annotations

import os
import shutil
from urllib.parse import urlsplit

import httpx
import pytest

from projecthub.api import docs
from tests.conftest import require
from tests.server import Server

CHROMIUM = os.environ.get("PROJECTHUB_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def test_docs_assets_are_in_the_package() -> None:
    for name in [*docs.ASSETS, "docs.html"]:
        assert (docs.STATIC / name).stat().st_size > 0, name
    assert "script-src 'self';" in docs.CSP and "unsafe-eval" not in docs.CSP
    assert "'unsafe-inline'" not in docs.CSP.split("script-src", 1)[1].split(";", 1)[0]
    html = (docs.STATIC / "docs.html").read_text()
    assert "<script>" not in html and "http" not in html.replace("http-equiv", "")   # no inline code, no CDN


def test_docs_http(server: Server) -> None:
    r = httpx.get(server.url + "/api/v3/docs", timeout=30)   # no key needed
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"] == docs.CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    for name, media in docs.ASSETS.items():
        a = httpx.get(server.url + "/api/v3/docs/" + name, timeout=30)
        assert a.status_code == 200 and a.headers["content-type"] == media, name
        assert a.headers["content-security-policy"] == docs.CSP
    for bad in ("..%2Fnative.py", "swagger-ui-LICENSE", "docs.html", "x.js", "%2e%2e%2fdocs.py"):
        assert httpx.get(server.url + "/api/v3/docs/" + bad, timeout=30).status_code == 404, bad
    assert httpx.get(server.url + "/api/v3/openapi.json", timeout=30).status_code == 200
    redirect = httpx.get(server.url + "/api/v3/docs/", timeout=30)
    assert redirect.status_code == 308 and redirect.headers["location"] == "../docs"


def test_docs_page_renders_offline_in_chromium(server: Server) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require("the playwright package (pip install -e '.[test]')", False)
    require(f"chromium at {CHROMIUM}", os.access(CHROMIUM, os.X_OK))
    origin = urlsplit(server.url).netloc
    requests: list[str] = []
    failed: list[str] = []
    foreign: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context()

            def route(r) -> None:   # offline: anything not from this server is refused
                if urlsplit(r.request.url).netloc != origin and not r.request.url.startswith("data:"):
                    foreign.append(r.request.url)
                    r.abort()
                else:
                    r.continue_()

            context.route("**/*", route)
            page = context.new_page()
            page.on("request", lambda req: requests.append(req.url))
            page.on("requestfailed", lambda req: failed.append(f"{req.url}: {req.failure}"))
            page.on("response", lambda res: res.status >= 400 and failed.append(f"{res.url}: {res.status}"))
            page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            response = page.goto(server.url + "/api/v3/docs", wait_until="load")
            assert response is not None and response.status == 200
            page.wait_for_selector(".opblock", timeout=30_000)
            page.wait_for_load_state("networkidle")
            operations = page.locator(".opblock").count()
            paths = page.locator(".opblock-summary-path").all_inner_texts()
            title = page.locator(".info .title").inner_text()
            # open one operation: its schema renders from the same document
            page.locator(".opblock-post .opblock-summary-path", has_text="/exec").first.click()
            page.wait_for_selector("text=Idempotency-Key", timeout=10_000)
        finally:
            browser.close()
    assert "projecthub native API" in title
    assert operations >= 25, operations
    joined = " ".join(paths).replace("\u200b", "")
    for path in ("/api/v3/projects/{project_id}/exec", "/api/v3/keys", "/api/v3/accounts", "/healthz"):
        assert path in joined, (path, joined[:500])
    assert not foreign, foreign
    assert not failed, failed
    assert not errors, errors   # CSP violations and script errors show up here
    local = [u for u in requests if urlsplit(u).netloc == origin]
    assert any(u.endswith("/api/v3/docs/swagger-ui-bundle.js") for u in local), local
    assert any(u.endswith("/api/v3/openapi.json") for u in local), local
