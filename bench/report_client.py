"""Targets and table of the client scenario (``client_bench.py``), for ``report.py``."""

from __future__ import annotations

from typing import Any, Callable

from report import f, g

Add = Callable[[str, Any, str, "bool | None", str], None]


def targets(s: dict[str, Any], add: Add) -> None:
    ex = g(s, "client", "exec_true_c1") or {}
    if ex and "error" not in ex:
        d = ex.get("paired_client_minus_raw_http_median_ms")
        add("projecthub.client exec `true` c=1: added p50 over raw HTTP keep-alive (issue 18)", d, "≤ 0.3 ms",
            d is not None and d <= 0.3,
            f"median of paired differences (each Client call minus the raw call next to it); p50s: Client "
            f"{f(g(ex, 'client', 'p50_ms'))} ms, raw {f(g(ex, 'raw_http', 'p50_ms'))} ms, bare httpx "
            f"{f(g(ex, 'httpx', 'p50_ms'))} ms; AsyncClient "
            f"{f(ex.get('paired_async_client_minus_raw_http_median_ms'), 3)} ms over raw")
    st = g(s, "client", "stream") or {}
    if st and "error" not in st:
        r = st.get("ratio")
        add("projecthub.client `job.stream()` vs the SSE throughput row (issue 18)", r, "≥ 0.8",
            r is not None and r >= 0.8,
            f"{f(g(st, 'client_stream', 'mb_per_s'))} MB/s vs {f(g(st, 'sse_row', 'mb_per_s'))} MB/s")


def markdown(s: dict[str, Any], quick: bool) -> list[str]:
    c = s.get("client") or {}
    if not c:
        return []
    ex = c.get("exec_true_c1") or {}
    L = [f"### 11. projecthub.client's own cost (exec `true` c=1, {g(c, 'params', 'n_true')} calls in "
         f"{g(c, 'params', 'rounds')} rounds, the four taking turns call by call)", "",
         "| what | p50 ms | p90 ms | p99 ms |", "|---|---|---|---|"]
    if "error" in ex:
        L.append(f"| error: {ex['error'][:200]} | | | |")
    else:
        for key, label in (("raw_http", "raw HTTP keep-alive (asyncio streams) `POST /api/v3/.../exec`"),
                           ("httpx", "bare `httpx.Client.post`, same request"),
                           ("client", "**`Client.exec(project, \"true\")`**"),
                           ("async_client", "**`await AsyncClient.exec(project, \"true\")`**")):
            row = ex.get(key) or {}
            L.append(f"| {label} | {f(row.get('p50_ms'))} | {f(row.get('p90_ms'))} | {f(row.get('p99_ms'))} |")
        L.append("")
        L.append("Median of paired differences (each call minus the raw HTTP call next to it, in ms): "
                 f"Client {f(ex.get('paired_client_minus_raw_http_median_ms'), 3)}, AsyncClient "
                 f"{f(ex.get('paired_async_client_minus_raw_http_median_ms'), 3)}, bare httpx "
                 f"{f(ex.get('paired_httpx_minus_raw_http_median_ms'), 3)}. Differences of the rounds' p50s, "
                 f"Client − raw: {ex.get('client_minus_raw_http_p50_ms_rounds')}.")
    st = c.get("stream") or {}
    L.append("")
    if "error" in st:
        L.append(f"Stream: error: {st['error'][:200]}")
    elif st:
        L.append(f"`job.stream()` of {f(g(c, 'params', 'stream_bytes') / 1e6)} MB: "
                 f"{f(g(st, 'client_stream', 'mb_per_s'))} MB/s vs the SSE row's "
                 f"{f(g(st, 'sse_row', 'mb_per_s'))} MB/s in the same run ({f(st.get('ratio'))}x).")
    L.append("")
    return L
