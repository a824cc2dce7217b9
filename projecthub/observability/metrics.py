"""Prometheus metrics (``prometheus-client``), one ``CollectorRegistry`` per app.

A per-app registry, not the library's global one: tests run several apps in one process, and
the global registry refuses a second metric with the same name.

What is counted where:

* ``projecthub_requests_total{surface,function,status}`` and
  ``projecthub_request_duration_seconds{surface,function}``: observed by the request middleware
  (``requestlog.py``).  ``function`` comes from a handler (a conat name, a v3 operation) and is
  client input, so label sets are bounded: past ``MAX_LABEL_SETS`` distinct (surface, function)
  pairs, new ones count as ``function="other"``.
* Event counters (``exec_timeouts``, ``oom_kills``, ``sandbox_failures``, ``auth_failures``):
  process-wide integers bumped by ``audit.audit_event`` (a plain ``+= 1``; the hot path never
  touches a registry), exported by a collector at scrape time.
* ``projecthub_running_projects``, ``projecthub_running_kernels``, ``projecthub_running_jobs``:
  computed at scrape time from the host (in-memory, bounded work).
* ``projecthub_key_cache_hits_total`` / ``_misses_total``: the KeyResolver's own counters.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import logs

# no *_created series: they double the output and nobody here needs a counter's birth time
disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_LABEL_SETS = 1000
# exec-sized latencies: a `true` through the API is ~1-3 ms, a timeout kill seconds
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# event name -> (metric name, help); counted process-wide by count_event
_EVENT_METRICS = {
    "timeout_kill": ("projecthub_exec_timeouts", "execs and jobs killed for exceeding their timeout"),
    "oom_kill": ("projecthub_oom_kills", "execs and jobs killed by the kernel's OOM killer"),
    "sandbox_start_failure": ("projecthub_sandbox_failures", "project sandboxes that failed to start"),
    "auth_failure": ("projecthub_auth_failures", "requests refused for a bad, expired or revoked key"),
}
_event_counts: dict[str, int] = dict.fromkeys(_EVENT_METRICS, 0)


def count_event(event: str) -> None:
    if event in _event_counts:
        _event_counts[event] += 1


class _ScrapeCollector(Collector):
    """Values read when /metrics is scraped."""

    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        self._state = state

    def collect(self) -> Iterable[Any]:
        for event, (name, text) in _EVENT_METRICS.items():
            family = CounterMetricFamily(name, text)
            family.add_metric([], _event_counts[event])
            yield family
        dropped = CounterMetricFamily("projecthub_log_lines_dropped", "log lines dropped: the log consumer was too slow")
        dropped.add_metric([], logs.dropped_lines())
        yield dropped
        state = self._state()
        for key, text in (("projects", "projects with a running daemon on this host"),
                          ("kernels", "open Jupyter kernel sessions on this host (stateless pool kernels not counted)"),
                          ("jobs", "background jobs running on this host")):
            if state.get(key) is not None:
                gauge = GaugeMetricFamily(f"projecthub_running_{key}", text)
                gauge.add_metric([], state[key])
                yield gauge
        for key, text in (("key_cache_hits", "API key resolutions answered from the cache"),
                          ("key_cache_misses", "API key resolutions that read the store")):
            if state.get(key) is not None:
                family = CounterMetricFamily(f"projecthub_{key}", text)
                family.add_metric([], state[key])
                yield family


class Metrics:
    """The registry of one app, and the request counters the middleware feeds."""

    def __init__(self) -> None:
        # what the scrape-time collector reports; set by the /metrics endpoint just before
        # render() (it gathers asynchronously, the collector runs synchronously)
        self.scrape_state: dict[str, Any] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("projecthub_requests", "HTTP requests by surface, function and status",
                                ["surface", "function", "status"], registry=self.registry)
        self.latency = Histogram("projecthub_request_duration_seconds", "HTTP request duration by surface "
                                 "and function (streams: until they end)", ["surface", "function"],
                                 registry=self.registry, buckets=BUCKETS)
        self.registry.register(_ScrapeCollector(lambda: self.scrape_state))
        # (surface, function, status) -> counter child; (surface, function) -> histogram child
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}

    def observe(self, surface: str, function: str, status: int, seconds: float) -> None:
        histogram = self._histograms.get((surface, function))
        if histogram is None:
            if len(self._histograms) >= MAX_LABEL_SETS:
                function = "other"
            histogram = self._histograms.get((surface, function))
            if histogram is None:
                histogram = self._histograms[(surface, function)] = self.latency.labels(surface, function)
        histogram.observe(seconds)
        counter = self._counters.get((surface, function, status))
        if counter is None:
            counter = self._counters[(surface, function, status)] = self.requests.labels(
                surface, function, str(status))
        counter.inc()

    def render(self, state: dict[str, Any]) -> bytes:
        self.scrape_state = state
        return generate_latest(self.registry)
