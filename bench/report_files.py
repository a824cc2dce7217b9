"""Target and table of the files scenario (``files.py``), for ``report.py``."""

from __future__ import annotations

from typing import Any, Callable

from report import _div, f, g

Add = Callable[[str, Any, str, "bool | None", str], None]


def targets(s: dict[str, Any], add: Add) -> None:
    fl = g(s, "files", "projecthub") or {}
    if not fl:
        return
    size = g(s, "files", "params", "size_mb")
    cp = g(fl, "cp", "mb_per_s")
    # through projecthub.client (what our users call) and through bare httpx (any Python client)
    for what, client in (("client_upload", "projecthub.client"), ("client_download", "projecthub.client"),
                         ("upload", "httpx"), ("download", "httpx")):
        v = g(fl, what, "mb_per_s")
        if v is None:
            continue
        r = _div(v, cp)
        add(f"files API {what.removeprefix('client_')} of {size} MB ({client}) vs a local `cp` of the same "
            "file (MB/s; issue 18)", r, "≥ 0.5", r is not None and r >= 0.5,
            f"{f(v)} MB/s vs {f(cp)} MB/s (medians of rounds taking turns)")


def markdown(s: dict[str, Any], quick: bool) -> list[str]:
    fl = g(s, "files", "projecthub") or {}
    if not fl:
        return []
    size = g(s, "files", "params", "size_mb")
    L = [f"### 10. files in and out of a project: one {size} MB file (v3 files API, httpx, streamed)", "",
         "| what | median s | MB/s | vs cp | runs (s) |", "|---|---|---|---|---|"]
    cp = g(fl, "cp", "mb_per_s")
    for name, label in (("cp", "floor: `cp` on the same data disk"), ("upload", "**projecthub** `PUT …/files/{path}`, httpx"),
                        ("download", "**projecthub** `GET …/files/{path}`, httpx"),
                        ("client_upload", "**projecthub** `Client.files.upload` (projecthub.client: sendfile)"),
                        ("client_download", "**projecthub** `Client.files.download` (projecthub.client: http.client readinto)"),
                        ("floor_upload", "floor: bare uvicorn + Starlette `PUT` (`floor_http.py`), httpx"),
                        ("floor_download", "floor: bare uvicorn + Starlette `GET` (`floor_http.py`), httpx"),
                        ("upload_curl", "projecthub `PUT`, client `curl -T`"),
                        ("download_curl", "projecthub `GET`, client `curl -o`")):
        row = fl.get(name)
        if row is None:
            continue
        L.append(f"| {label} | {f(row.get('median_s'))} | {f(row.get('mb_per_s'))} | "
                 f"{f(_div(row.get('mb_per_s'), cp))}x | {', '.join(str(v) for v in row.get('runs_s', []))} |")
    if "error" in fl:
        L.append(f"| error: {fl['error'][:200]} | | | | |")
    L.append("")
    return L
