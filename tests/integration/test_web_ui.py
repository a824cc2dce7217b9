"""The web UI (issue 20) in headless Chromium against a real server: a new user's tasks with
only what the page shows (sign in, create a project, upload a file, run a matplotlib cell,
watch a job, the terminal, the admin page), a revoked and a wrong key, and the strict
Content-Security-Policy with no violation on any page.

Chromium is Debian's /usr/bin/chromium driven by Playwright (never a downloaded browser);
under CI=true a missing browser is a failure, not a skip (.ci/run installs it).  One server
and one browser for the module; a fresh browser context (empty sessionStorage) per test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from projecthub.api import ui
from tests.conftest import require
from tests.server import Account, Server

CHROMIUM = os.environ.get("PROJECTHUB_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
TIMEOUT = 60_000   # ms: a project start or a kernel start on a loaded 2-core machine

# collects CSP violations from inside the page (the console shows them too)
WATCH_CSP = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__violations.push(e.violatedDirective + " " + e.blockedURI));
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("ui")).start()
    try:
        yield server
    finally:
        server.stop()
        server.cli("stop-all")


@pytest.fixture(scope="module")
def user(srv: Server) -> Account:
    return srv.new_account("Ada Lovelace")


@pytest.fixture(scope="module")
def admin(srv: Server) -> Account:
    out = srv.cli("account", "create", "--name", "Grace Admin", "--admin")
    return Account(out["account_id"], out["api_key"])


@pytest.fixture(scope="module")
def project_id(srv: Server, user: Account) -> str:
    """A running project of ``user`` for the pages that need one (creating one through the
    page is test_sign_in_and_create_a_project's job)."""
    r = srv.post("/api/v3/projects", {"title": "ui tests", "start": True}, key=user.api_key, timeout=120)
    assert r.status_code == 201, r.text
    return r.json()["project_id"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require("the playwright package (pip install -e '.[test]')", False)
    require(f"chromium at {CHROMIUM}", os.access(CHROMIUM, os.X_OK))
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


class Page:
    """A fresh context and page, with every script error and CSP violation recorded."""

    def __init__(self, browser: Any, srv: Server) -> None:
        self.context = browser.new_context(viewport={"width": 1200, "height": 850})
        self.context.set_default_timeout(TIMEOUT)
        self.context.add_init_script(WATCH_CSP)
        self.page = self.context.new_page()
        self.url = srv.url
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.page.on("console", lambda msg: "Content Security Policy" in msg.text and self.errors.append(msg.text))

    def sign_in(self, key: str) -> None:
        self.page.goto(self.url + "/")
        self.page.fill("#key", key)
        self.page.click("button[type=submit]")

    def check_clean(self) -> None:
        violations = self.page.evaluate("window.__violations")
        assert not violations, violations
        assert not self.errors, self.errors


@pytest.fixture
def page(browser: Any, srv: Server) -> Iterator[Page]:
    p = Page(browser, srv)
    try:
        yield p
        p.check_clean()
    finally:
        p.context.close()


# -- plain HTTP: headers and assets --------------------------------------------------------

def test_ui_assets_are_in_the_package() -> None:
    html = (ui.STATIC / "index.html").read_text()
    assert "<script>" not in html and "http" not in html   # no inline code, no CDN
    scripts = [name for name in ui.ASSETS if name.endswith(".js")]
    assert any(n.startswith("main-") for n in scripts) and len(scripts) >= 3, ui.ASSETS
    for name in ui.ASSETS:
        text = (ui.STATIC / name).read_bytes()
        assert b"//cdn." not in text and b"https://unpkg" not in text, name
    assert "script-src 'self';" in ui.BASE_CSP and "unsafe" not in ui.BASE_CSP
    assert "frame-ancestors 'none'" in ui.BASE_CSP and "default-src 'self'" in ui.BASE_CSP


def test_ui_http_headers(srv: Server) -> None:
    r = httpx.get(srv.url + "/", timeout=30)   # no key: the page holds no secret
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    host = f"127.0.0.1:{srv.port}"
    assert r.headers["content-security-policy"] == ui.BASE_CSP + f"; connect-src 'self' ws://{host} wss://{host}"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in r.headers
    for name, media in ui.ASSETS.items():
        a = httpx.get(srv.url + "/ui/" + name, timeout=30)
        assert a.status_code == 200 and a.headers["content-type"] == media, name
        assert a.headers["content-security-policy"].startswith(ui.BASE_CSP)
        if name.startswith(("main-", "chunk-")):   # content-hashed names: cached for good
            assert "immutable" in a.headers["cache-control"], name
    assert r.headers["cache-control"] == "no-cache"   # the page names the current build
    # compressed for clients that say they take gzip (httpx does, and decodes it)
    big = max(ui.ASSETS, key=lambda n: (ui.STATIC / n).stat().st_size)
    z = httpx.get(srv.url + "/ui/" + big, headers={"Accept-Encoding": "gzip"}, timeout=30)
    assert z.headers["content-encoding"] == "gzip" and z.content == (ui.STATIC / big).read_bytes()
    assert int(z.headers["content-length"]) < (ui.STATIC / big).stat().st_size / 2
    plain = httpx.get(srv.url + "/ui/" + big, headers={"Accept-Encoding": "identity"}, timeout=30)
    assert "content-encoding" not in plain.headers and plain.content == z.content
    for bad in ("..%2Fui.py", "index.html", "x.js", "%2e%2e%2fapp.py", "..%2F..%2Fapp.py"):
        assert httpx.get(srv.url + "/ui/" + bad, timeout=30).status_code == 404, bad
    # a Host header that could bend the policy is left out of it
    evil = httpx.get(srv.url + "/", headers={"Host": "x; script-src *"}, timeout=30)
    assert evil.headers["content-security-policy"] == ui.BASE_CSP + "; connect-src 'self'"


def test_new_endpoints(srv: Server, user: Account, admin: Account, project_id: str) -> None:
    def get(path: str, key: str) -> httpx.Response:
        return httpx.get(srv.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    me = get("/api/v3/me", user.api_key).json()
    assert me["account"]["account_id"] == user.account_id and me["is_admin"] is False
    keys = httpx.get(srv.url + "/api/v3/keys", headers={"Authorization": f"Bearer {user.api_key}"}).json()
    assert me["key_id"] in [k["id"] for k in keys]
    assert get("/api/v3/me", "sk-wrong").status_code == 401
    assert get("/api/v3/admin/server", user.api_key).status_code == 403
    report = get("/api/v3/admin/server", admin.api_key).json()
    assert {"isolation", "project_limits", "account_limits"} <= set(report)
    assert report["isolation"]["layers"] and "memory_bytes" in report["project_limits"]
    status = get(f"/api/v3/projects/{project_id}", user.api_key).json()["status"]
    assert isinstance(status["cpu_s"], float) and status["processes"] >= 1
    # collaborators: added, seen in the project, removed; a stranger cannot add himself
    other = srv.new_account("Other")
    url = f"/api/v3/projects/{project_id}/collaborators"
    assert srv.post(url, {"account_id": other.account_id}, key=other.api_key).status_code == 403
    assert srv.post(url, {"account_id": other.account_id}, key=user.api_key).status_code == 201
    assert other.account_id in get(f"/api/v3/projects/{project_id}", user.api_key).json()["users"]
    assert srv.post(url, {"account_id": "nope"}, key=user.api_key).status_code == 404   # no such account
    gone = httpx.delete(f"{srv.url}{url}/{user.account_id}", headers={"Authorization": f"Bearer {other.api_key}"})
    assert gone.status_code == 403   # a collaborator cannot remove the owner (or anyone else)
    left = httpx.delete(f"{srv.url}{url}/{other.account_id}", headers={"Authorization": f"Bearer {other.api_key}"})
    assert left.status_code == 204
    # disabling an account (admins only) refuses its keys at once
    patch = httpx.patch(f"{srv.url}/api/v3/accounts/{other.account_id}", json={"disabled": True},
                        headers={"Authorization": f"Bearer {user.api_key}"})
    assert patch.status_code == 403
    patch = httpx.patch(f"{srv.url}/api/v3/accounts/{other.account_id}", json={"disabled": True},
                        headers={"Authorization": f"Bearer {admin.api_key}"})
    assert patch.status_code == 200 and patch.json()["disabled"] is True
    assert get("/api/v3/me", other.api_key).status_code == 401


# -- in the browser --------------------------------------------------------------------------

def test_wrong_key_is_refused_in_words(page: Page) -> None:
    page.sign_in("sk-this-is-not-a-key")
    alert = page.page.locator(".signin [role=alert]")
    alert.filter(has_text="refused").wait_for()
    assert "wrong, revoked or expired" in alert.inner_text()
    assert page.page.evaluate("sessionStorage.length") == 0   # a refused key is not kept
    assert "sk-this" not in page.page.url


def test_sign_in_and_create_a_project(page: Page, user: Account) -> None:
    page.sign_in(user.api_key)
    page.page.locator("h1", has_text="Projects").wait_for()
    assert user.api_key not in page.page.url
    page.page.fill("#new-title", "made in the browser")
    page.page.click("text=Create project")
    # the new project's page: running, with live usage numbers
    page.page.locator(".badge.state-running").first.wait_for()
    page.page.locator(".chart .value", has_text="MiB").wait_for()
    page.page.locator(".chart .value", has_text="%").wait_for()   # CPU needs two samples
    page.page.click("text=Projects >> nth=0")
    page.page.locator("td a", has_text="made in the browser").wait_for()


def test_upload_a_file_and_see_it_listed(page: Page, user: Account, project_id: str, tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("x,y\n1,2\n" * 50_000)   # ~400 kB: a real progress bar
    page.sign_in(user.api_key)
    page.page.locator("h1", has_text="Projects").wait_for()
    page.page.goto(f"{page.url}/#/p/{project_id}/files")
    page.page.locator(".dropzone").wait_for()
    page.page.set_input_files("#upload", str(data))
    page.page.locator(".uploads", has_text="uploaded").wait_for()
    page.page.locator("table.files button.link", has_text="data.csv").wait_for()
    # open it in the editor, change it and save (ETag/If-Match): the server has the new text
    page.page.locator("table.files button.link", has_text="data.csv").click()
    editor = page.page.locator(".cm-content")
    editor.wait_for()
    editor.click()
    page.page.keyboard.press("Control+Home")
    page.page.keyboard.type("# edited\n")
    page.page.keyboard.press("Control+s")
    page.page.locator(".viewer .status.ok", has_text="Saved").wait_for()
    r = httpx.get(f"{page.url}/api/v3/projects/{project_id}/files/data.csv",
                  headers={"Authorization": f"Bearer {user.api_key}"}, timeout=30)
    assert r.text.startswith("# edited\nx,y\n"), r.text[:40]
    # download: fetched with the key, saved by the browser
    row = page.page.locator("table.files tr", has_text="data.csv")
    with page.page.expect_download() as got:
        row.locator("button", has_text="Download").click()
    download = got.value
    assert download.suggested_filename == "data.csv"
    assert Path(download.path()).read_text() == r.text
    # rename in place, then delete (asked in the page: Cancel keeps it)
    row.locator("button", has_text="Rename").click()
    field = page.page.locator("table.files input[aria-label='new name or path for data.csv']")
    field.fill("renamed.csv")
    field.press("Enter")
    row = page.page.locator("table.files tr", has_text="renamed.csv")
    row.wait_for()
    row.locator("button", has_text="Delete").click()
    row.locator("button", has_text="Cancel").click()
    row.locator("button", has_text="Delete").click()
    row.locator("button", has_text="Yes, delete").click()
    page.page.locator(".status.ok", has_text="Deleted renamed.csv").wait_for()
    page.page.locator("table.files button.link", has_text="renamed.csv").wait_for(state="detached")


def test_notebook_cell_draws_a_matplotlib_figure(page: Page, user: Account, project_id: str) -> None:
    page.sign_in(user.api_key)
    page.page.locator("h1", has_text="Projects").wait_for()
    page.page.goto(f"{page.url}/#/p/{project_id}/sessions")
    page.page.click("text=New session")
    cell = page.page.locator("textarea.code").first
    cell.wait_for()
    cell.fill("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()\nprint('drawn')")
    cell.press("Shift+Enter")
    image = page.page.locator(".outputs img.out.image").first
    image.wait_for(timeout=120_000)
    assert image.get_attribute("src").startswith("data:image/png;base64,")
    assert page.page.evaluate("document.querySelector('.outputs img.out.image').naturalWidth") > 100
    page.page.locator(".outputs pre.stream", has_text="drawn").wait_for()
    # the next cell got the focus; an error shows its traceback; HTML stays in a script-less sandbox
    nxt = page.page.locator("textarea.code").nth(1)
    nxt.fill("from IPython.display import HTML, display\ndisplay(HTML('<b id=x>bold</b><script>parent.pwned=1</script>'))\n1/0")
    nxt.press("Shift+Enter")
    page.page.locator(".outputs pre.out.error", has_text="ZeroDivisionError").wait_for()
    frame = page.page.locator("iframe.out.html")
    assert frame.get_attribute("sandbox") == ""
    assert page.page.evaluate("window.pwned") is None
    page.page.locator(".badge.kernel-idle").wait_for()
    # a reload keeps the cells' code (and the kernel its variables)
    page.page.reload()
    assert "plt.plot" in page.page.locator("textarea.code").first.input_value()
    page.page.click("button:text-is(\"Run all\")")   # runs them in order, stops at the error
    page.page.locator(".outputs img.out.image").first.wait_for()
    page.page.locator(".status.error", has_text="Stopped at a cell that raised an error").wait_for()
    last = page.page.locator("textarea.code").last
    last.fill("print(len(plt.gcf().axes) >= 0, 'still here')")
    last.press("Shift+Enter")
    page.page.locator(".outputs pre.stream", has_text="True still here").wait_for()


def test_notebook_interrupt(page: Page, user: Account, project_id: str) -> None:
    page.sign_in(user.api_key)
    page.page.locator("h1", has_text="Projects").wait_for()
    page.page.goto(f"{page.url}/#/p/{project_id}/sessions")
    page.page.fill("#session-name", "interrupt me")
    page.page.click("text=New session")
    cell = page.page.locator("textarea.code").first
    cell.fill("import time\nprint('sleeping', flush=True)\ntime.sleep(300)")
    cell.press("Shift+Enter")
    page.page.locator(".outputs pre.stream", has_text="sleeping").wait_for(timeout=120_000)
    page.page.locator(".badge.kernel-busy").wait_for()
    page.page.click("button:text-is(\"Interrupt\")")
    page.page.locator(".outputs pre.out.error", has_text="KeyboardInterrupt").wait_for()
    page.page.locator(".badge.kernel-idle").wait_for()


def test_job_output_arrives_live(page: Page, user: Account, project_id: str) -> None:
    page.sign_in(user.api_key)
    page.page.locator("h1", has_text="Projects").wait_for()
    page.page.goto(f"{page.url}/#/p/{project_id}/jobs")
    page.page.fill("#job-command", "for i in 1 2 3; do echo line-$i; sleep 1; done; echo oops >&2")
    page.page.click("text=Start job")
    output = page.page.locator("pre.job-output")
    output.filter(has_text="line-1").wait_for()
    assert "line-3" not in output.inner_text()   # it arrived while the job still ran
    output.filter(has_text="line-3").wait_for()
    page.page.locator(".job .badge.job-completed", has_text="exit code 0").wait_for()
    assert "oops" in page.page.locator("pre.job-output .stderr").inner_text()


def test_kill_a_job(page: Page, user: Account, project_id: str) -> None:
    page.sign_in(user.api_key)
    page.page.locator("h1", has_text="Projects").wait_for()
    page.page.goto(f"{page.url}/#/p/{project_id}/jobs")
    page.page.fill("#job-command", "echo started; sleep 300")
    page.page.click("text=Start job")
    page.page.locator("pre.job-output", has_text="started").wait_for()
    page.page.locator(".job button", has_text="Kill").click()
    page.page.locator(".job .badge.job-killed").wait_for()


def test_terminal_echo(page: Page, srv: Server, user: Account, project_id: str) -> None:
    probe = httpx.get(f"{srv.url}/api/v3/projects/{project_id}/terminals",
                      headers={"Authorization": f"Bearer {user.api_key}"}, timeout=30)
    require("the terminal backend (/api/v3/projects/{id}/terminals)", probe.status_code == 200)
    page.sign_in(user.api_key)
    page.page.locator("h1", has_text="Projects").wait_for()
    page.page.goto(f"{page.url}/#/p/{project_id}/terminal")
    page.page.locator(".status.ok", has_text="Connected").wait_for()
    page.page.locator(".xterm-helper-textarea").focus()
    page.page.keyboard.type("echo hi-$((40+2))\n")
    # the shell's answer, not the typed echo of the command line
    page.page.locator(".xterm-rows", has_text="hi-42").wait_for()
    rows = page.page.locator(".xterm-rows > div").all_inner_texts()
    assert any(r.strip() == "hi-42" for r in rows), rows
    # a reload attaches to the same terminal and replays its scrollback
    page.page.reload()
    page.page.locator(".status.ok", has_text="Connected").wait_for()
    page.page.locator(".xterm-rows", has_text="hi-42").wait_for()
    # the shell's end is said in words, and a new one is a click away
    page.page.locator(".xterm-helper-textarea").focus()
    page.page.keyboard.type("exit 3\n")
    page.page.locator(".status.error", has_text="exited with code 3").wait_for()
    page.page.click("text=New terminal")
    page.page.locator(".status.ok", has_text="Connected").wait_for()
    page.page.locator(".xterm-helper-textarea").focus()
    page.page.keyboard.type("echo again-$((6*7))\n")
    page.page.locator(".xterm-rows", has_text="again-42").wait_for()


def test_admin_pages(page: Page, admin: Account, user: Account) -> None:
    page.sign_in(admin.api_key)
    page.page.locator("h1", has_text="Projects").wait_for()
    page.page.click("header >> text=Admin")
    page.page.locator("h2", has_text="Isolation").wait_for()
    page.page.locator("td code", has_text=user.account_id).wait_for()
    page.page.locator("h2", has_text="Default project limits").wait_for()
    # another account's keys, and revoking one of them (a leaked key)
    spare = httpx.post(f"{page.url}/api/v3/keys", json={"name": "leaked laptop key"},
                       headers={"Authorization": f"Bearer {user.api_key}"}, timeout=30).json()
    page.page.locator("tr", has_text=user.account_id).locator("button", has_text="Keys").click()
    row = page.page.locator(".account-keys tr", has_text="leaked laptop key")
    row.locator("button", has_text="Revoke").click()
    row.locator("button", has_text="Yes, revoke").click()
    page.page.locator(".status.ok", has_text="Key revoked").wait_for()
    gone = httpx.get(f"{page.url}/api/v3/me", headers={"Authorization": f"Bearer {spare['secret']}"}, timeout=30)
    assert gone.status_code == 401
    page.page.click("header >> text=API keys")
    page.page.fill("#key-name", "from the browser")
    page.page.click("text=Create key")
    page.page.locator(".secret", has_text="shown only once").wait_for()
    page.page.locator("td", has_text="from the browser").wait_for()


def test_non_admin_sees_no_admin_page(page: Page, user: Account) -> None:
    page.sign_in(user.api_key)
    page.page.locator("h1", has_text="Projects").wait_for()
    assert page.page.locator("header >> text=Admin").count() == 0
    page.page.goto(page.url + "/#/admin")
    page.page.locator(".status.error", has_text="admin keys only").wait_for()


def test_revoked_key_ends_the_session(page: Page, srv: Server, user: Account, project_id: str) -> None:
    made = srv.post("/api/v3/keys", {"name": "to revoke"}, key=user.api_key)
    assert made.status_code == 201
    key = made.json()
    page.sign_in(key["secret"])
    page.page.locator("h1", has_text="Projects").wait_for()
    page.page.goto(f"{page.url}/#/p/{project_id}")   # polls its usage every 2 s
    page.page.locator(".chart .value", has_text="MiB").wait_for()
    gone = httpx.delete(f"{srv.url}/api/v3/keys/{key['id']}", headers={"Authorization": f"Bearer {user.api_key}"})
    assert gone.status_code == 204
    alert = page.page.locator(".signin [role=alert]")
    alert.filter(has_text="refused your API key").wait_for(timeout=15_000)
    assert page.page.evaluate("sessionStorage.length") == 0


def test_revoking_this_tabs_key_in_the_page_signs_out(page: Page, srv: Server, user: Account) -> None:
    made = srv.post("/api/v3/keys", {"name": "the tab's key"}, key=user.api_key)
    assert made.status_code == 201
    page.sign_in(made.json()["secret"])
    page.page.locator("h1", has_text="Projects").wait_for()
    page.page.click("header >> text=API keys")
    row = page.page.locator("tr", has_text="this tab")
    assert "the tab's key" in row.inner_text()
    row.locator("button", has_text="Revoke").click()
    row.locator("button", has_text="Yes, revoke").click()   # asked in the page, not a dialog
    page.page.locator(".signin [role=alert]", has_text="refused your API key").wait_for()
    r = httpx.get(srv.url + "/api/v3/me", headers={"Authorization": f"Bearer {made.json()['secret']}"})
    assert r.status_code == 401


def test_sign_out_forgets_the_tab(page: Page, user: Account, project_id: str) -> None:
    page.sign_in(user.api_key)
    page.page.locator("h1", has_text="Projects").wait_for()
    page.page.goto(f"{page.url}/#/p/{project_id}/jobs")
    page.page.fill("#job-command", "echo bye")
    page.page.click("text=Start job")
    page.page.locator("pre.job-output", has_text="bye").wait_for()
    assert page.page.evaluate("sessionStorage.length") >= 2   # the key and the job's command
    page.page.click("header >> text=Sign out")
    page.page.locator(".signin [role=alert]", has_text="signed out").wait_for()
    assert page.page.evaluate("sessionStorage.length") == 0
    page.page.go_back()   # history does not bring the session back
    page.page.locator("#key").wait_for()


def test_a_deep_link_survives_signing_in(page: Page, user: Account, project_id: str) -> None:
    page.page.goto(f"{page.url}/#/p/{project_id}/jobs")
    page.page.fill("#key", user.api_key)
    page.page.click("button[type=submit]")
    page.page.locator("#job-command").wait_for()
    assert page.page.url.endswith(f"#/p/{project_id}/jobs")
    page.page.goto(f"{page.url}/#/p/%E0%A4%A/files")   # a malformed link: an error in words, no crash
    page.page.locator(".status.error").first.wait_for()


def test_project_key_sees_its_project(page: Page, srv: Server, user: Account, project_id: str) -> None:
    made = srv.post("/api/v3/keys", {"name": "project key", "project_id": project_id}, key=user.api_key)
    assert made.status_code == 201, made.text
    page.sign_in(made.json()["secret"])
    page.page.locator("h1", has_text="ui tests").wait_for()   # straight to its project
    page.page.locator(".badge.state-running").first.wait_for()
    assert page.page.locator("header >> text=API keys").count() == 0


def test_no_csp_violation_on_any_page(page: Page, admin: Account, srv: Server) -> None:
    """Every page and tab of the app, with the lazily loaded terminal and editor, under the
    served policy: no violation reported by the page or the console (the fixture checks)."""
    r = srv.post("/api/v3/projects", {"title": "csp tour", "start": True}, key=admin.api_key, timeout=120)
    project = f"{page.url}/#/p/{r.json()['project_id']}"
    httpx.put(f"{page.url}/api/v3/projects/{r.json()['project_id']}/files/notes.md", content=b"# notes\n",
              headers={"Authorization": f"Bearer {admin.api_key}"}, timeout=60).raise_for_status()
    response = page.page.goto(page.url + "/")
    assert response is not None and "frame-ancestors 'none'" in response.headers["content-security-policy"]
    page.page.fill("#key", admin.api_key)
    page.page.click("button[type=submit]")
    page.page.locator("h1", has_text="Projects").wait_for()
    for url, ready in [(project, ".chart .value >> text=MiB"), (f"{project}/terminal", ".xterm-rows"),
                       (f"{project}/files", "table.files"), (f"{project}/sessions", "text=New session"),
                       (f"{project}/jobs", "#job-command"), (f"{page.url}/#/keys", "text=Create key"),
                       (f"{page.url}/#/admin", "h2 >> text=Isolation")]:
        page.page.goto(url)
        page.page.locator(ready).first.wait_for()
    page.page.goto(f"{project}/files")
    page.page.locator("table.files button.link", has_text="notes.md").click()
    page.page.locator(".cm-content").wait_for()
    assert page.page.evaluate("window.__violations") == []


def test_phone_width(page: Page, user: Account, project_id: str) -> None:
    page.page.set_viewport_size({"width": 375, "height": 740})
    page.sign_in(user.api_key)
    page.page.locator("h1", has_text="Projects").wait_for()
    page.page.goto(f"{page.url}/#/p/{project_id}/files")
    page.page.locator(".dropzone").wait_for()
    # nothing wider than the screen: no sideways scrolling
    assert page.page.evaluate("document.documentElement.scrollWidth") <= 375
