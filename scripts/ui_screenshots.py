#!/usr/bin/env python3
"""Screenshots of every page of the web UI for docs/ui.md (PNG files in docs/ui/).

Starts a throwaway server (tests/server.py's Server, in a temporary data dir), makes an admin
and a user account, and drives Debian's headless chromium through Playwright (never a
downloaded browser) the way a user would: sign in, create a project, upload files, run a
plotting cell, a job and a terminal command.  Everything it starts is stopped at the end.

    .venv/bin/python scripts/ui_screenshots.py [--out docs/ui]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.server import Account, Server, ensure_project_env  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WIDE = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

PLOT = """import numpy as np
import matplotlib.pyplot as plt
x = np.linspace(0, 4 * np.pi, 400)
plt.figure(figsize=(6, 3))
plt.plot(x, np.sin(x), label="sin")
plt.plot(x, np.cos(x) * np.exp(-x / 8), label="damped cos")
plt.legend(); plt.title("a cell's figure"); plt.show()"""

SCRIPT = """import csv, statistics
rows = list(csv.DictReader(open("data.csv")))
print(len(rows), "rows; mean y =", statistics.mean(float(r["y"]) for r in rows))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "ui"), help="directory for the PNG files")
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    ensure_project_env()
    with tempfile.TemporaryDirectory(prefix="ui-shots-") as tmp:
        srv = Server(Path(tmp)).start()
        try:
            shoot(srv, out, Path(tmp), sync_playwright)
        finally:
            srv.stop()
            srv.cli("stop-all")


def shoot(srv: Server, out: Path, tmp: Path, sync_playwright) -> None:
    made = srv.cli("account", "create", "--name", "Grace Hopper", "--email", "grace@example.org", "--admin")
    admin = Account(made["account_id"], made["api_key"])
    srv.new_account("Ada Lovelace")
    data = tmp / "data.csv"
    data.write_text("x,y\n" + "".join(f"{i},{(i * 7) % 11}\n" for i in range(2000)))
    (tmp / "analysis.py").write_text(SCRIPT)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport=WIDE, device_scale_factor=1)
            context.set_default_timeout(90_000)
            page = context.new_page()

            def snap(name: str) -> None:
                page.wait_for_timeout(400)   # let charts and fonts settle
                page.screenshot(path=str(out / f"{name}.png"))
                print(f"{out / name}.png")

            page.goto(srv.url + "/")
            page.locator("#key").wait_for()
            snap("signin")
            page.fill("#key", "sk-not-a-real-key")
            page.click("button[type=submit]")
            page.locator(".signin [role=alert]", has_text="refused").wait_for()
            snap("signin-refused")

            page.fill("#key", admin.api_key)
            page.click("button[type=submit]")
            page.locator("h1", has_text="Projects").wait_for()
            for title in ("thesis experiments", "teaching"):
                srv.post("/api/v3/projects", {"title": title, "start": False}, key=admin.api_key)
            page.fill("#new-title", "data analysis")
            page.click("text=Create project")
            page.locator(".badge.state-running").first.wait_for()
            project_url = page.url
            project_id = project_url.rsplit("/", 1)[-1]
            page.goto(srv.url + "/#/projects")
            page.locator("td a", has_text="data analysis").wait_for()
            snap("projects")

            # overview: let the usage charts gather some samples under a little load
            srv.post(f"/api/v3/projects/{project_id}/exec",
                     {"command": "python3 -c 'import time\nt=time.time()\nwhile time.time()-t<30: pass'",
                      "async": True}, key=admin.api_key)
            page.goto(project_url)
            page.locator(".chart .value", has_text="%").wait_for()
            page.wait_for_timeout(7000)
            snap("project")

            page.goto(f"{project_url}/files")
            page.locator(".dropzone").wait_for()
            page.set_input_files("#upload", [str(data), str(tmp / "analysis.py")])
            page.locator("table.files button.link", has_text="analysis.py").wait_for()
            page.locator("table.files button.link", has_text="data.csv").wait_for()
            page.locator("table.files button.link", has_text="analysis.py").click()
            page.locator(".cm-content").wait_for()
            snap("files")

            page.goto(f"{project_url}/sessions")
            page.click("text=New session")
            cell = page.locator("textarea.code").first
            cell.fill(PLOT)
            cell.press("Shift+Enter")
            page.locator(".outputs img.out.image").wait_for(timeout=120_000)
            nxt = page.locator("textarea.code").nth(1)
            nxt.fill("%run analysis.py\nrows[0]")
            nxt.press("Shift+Enter")
            page.locator(".outputs pre.result").wait_for()
            third = page.locator("textarea.code").nth(2)
            third.fill("undefined_name + 1")
            third.press("Shift+Enter")
            page.locator(".outputs pre.out.error").wait_for()
            snap("session")

            page.goto(f"{project_url}/jobs")
            page.fill("#job-command", "for i in $(seq 1 5); do echo step $i of 5; sleep 0.5; done; echo done >&2")
            page.click("text=Start job")
            page.locator(".job .badge.job-completed").wait_for()
            snap("jobs")

            page.goto(f"{project_url}/terminal")
            page.locator(".status.ok", has_text="Connected").wait_for()
            page.locator(".xterm-helper-textarea").focus()
            page.keyboard.type("echo hi from $(whoami) in $PWD; ls -l\n")
            page.locator(".xterm-rows", has_text="analysis.py").wait_for()
            snap("terminal")

            page.goto(srv.url + "/#/keys")
            page.fill("#key-name", "laptop")
            page.click("text=Create key")
            page.locator(".secret", has_text="shown only once").wait_for()
            snap("keys")

            page.goto(srv.url + "/#/admin")
            page.locator("h2", has_text="Isolation").wait_for()
            page.locator("h2", has_text="Default project limits").wait_for()
            page.screenshot(path=str(out / "admin.png"), full_page=True)
            print(f"{out / 'admin'}.png")

            page.set_viewport_size(PHONE)
            page.goto(f"{project_url}/sessions")
            page.locator("table a").first.click()
            cell = page.locator("textarea.code").first
            cell.fill("print('hello from a phone')")
            cell.press("Shift+Enter")
            page.locator(".outputs pre.stream").wait_for()
            snap("phone")
        finally:
            browser.close()


if __name__ == "__main__":
    main()
