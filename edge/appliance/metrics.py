"""Prometheus metrics for an appliance, summed over its worker processes.

prometheus-client's multiprocess mode keeps each worker's values in files under
``PROMETHEUS_MULTIPROC_DIR``; the process that answers ``/_edge/metrics`` sums
them. That variable must be set before this module is imported (``serve`` does
it). Store figures (bytes, objects, evictions, checksum failures, drain) are not
per-process: they are read from the index at scrape time (``StoreCollector``).

Every family is there from the first scrape, its usual series at 0 (``start``),
so a dashboard or an alert never waits for a first event to find its metric;
deploy/ queries only these names (tests/test_dashboards.py holds it to that).
"""

from __future__ import annotations

import bisect
import json
import os
import re
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edge import __version__
from edge.store import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_CACHE_RESULTS = ("hit", "miss", "partial", "none")

REQUESTS = Counter(
    "edgefleet_requests", "Requests answered, by status and cache result", ["status", "cache"]
)
SENT = Counter("edgefleet_sent_bytes", "Body bytes sent, by cache result", ["cache"])
LATENCY = Histogram(
    "edgefleet_request_duration_seconds",
    "Time from request to last byte handed to the kernel",
    ["cache"],
    buckets=_BUCKETS,
)
ORIGIN_REQUESTS = Counter(
    "edgefleet_origin_requests", "Requests to origins, by kind and result", ["kind", "result"]
)
ORIGIN_BYTES = Counter("edgefleet_origin_bytes", "Bytes read from origins")
STORE_WRITE_FAILURES = Counter(
    "edgefleet_store_write_failures", "Slices fetched but not stored (no room or a disk error)"
)
STORE_SKIPPED = Counter(
    "edgefleet_store_skipped_slices",
    "Slices fetched and served but not stored: more than store_backlog waited for the store",
)
STORE_BACKLOG = Gauge(
    "edgefleet_store_backlog_bytes",
    "Bytes of fetched slices waiting for the store's writers",
    multiprocess_mode="livesum",
)
DISK_WAITS = Counter(
    "edgefleet_disk_waits",
    "Sends that waited for a slice file to be read from the disk, in a thread",
)
TOKEN_REJECTIONS = Counter(
    "edgefleet_token_rejections",
    "Content requests refused with 403 for their signed-URL token, by reason",
    ["reason"],
)
CONNECTIONS = Gauge(
    "edgefleet_open_connections", "Open client connections", multiprocess_mode="livesum"
)
EGRESS_RATE = Gauge(
    "edgefleet_egress_bytes_per_second",
    "Body bytes sent per second over the last few seconds",
    multiprocess_mode="livesum",
)
TLS_EXPIRY = Gauge(
    "edgefleet_tls_cert_expiry_seconds",
    "When each TLS certificate expires (Unix time of its notAfter)",
    ["name"],
    multiprocess_mode="max",
)


def set_tls_expiry(certs: list[tuple[str, float]]) -> None:
    """(name, notAfter) of the certificates in use."""
    for name, not_after in certs:
        TLS_EXPIRY.labels(name).set(not_after)


# the series each family has from the start (others appear as they happen)
ORIGIN_OUTCOMES = {
    "head": ("ok", "not_found", "error", "timeout", "breaker_open"),
    "read": ("ok", "not_found", "error", "timeout", "breaker_open"),
    "revalidate": ("not_modified", "modified", "not_found", "error", "timeout", "breaker_open"),
}
FIRST_STATUSES = {"hit": ("200", "206", "304"), "miss": ("200", "206"), "partial": ("200", "206")}
ERROR_STATUSES = ("400", "403", "404", "416", "502", "503", "504")
# what ``edgefleet fill`` leaves in the index (fill.run.FillRun.figures), 0 before any
FILL_FIGURES = (
    "running", "objects_planned", "bytes_planned", "objects_added", "bytes_downloaded",
    "bytes_per_second", "objects_verified", "objects_evicted", "errors",
    "checksum_mismatches", "last_update_timestamp_seconds", "last_run_success",
)  # fmt: skip


def start() -> None:
    """Make every labelled series this process may write, at 0."""
    from edge.core.signing import REASONS

    for cache in _CACHE_RESULTS:
        SENT.labels(cache)
        LATENCY.labels(cache)
        for status in FIRST_STATUSES.get(cache, ()):
            REQUESTS.labels(status, cache)
    for status in ERROR_STATUSES:
        REQUESTS.labels(status, "none")
    for kind, results in ORIGIN_OUTCOMES.items():
        for result in results:
            ORIGIN_REQUESTS.labels(kind, result)
    for reason in REASONS:
        TOKEN_REJECTIONS.labels(reason)


class RequestMetrics:
    """The hot path's side of the request metrics (and of the origin
    requests and bytes): plain counters in memory, added to the shared
    (multiprocess) metrics once a second and before each scrape by ``flush``,
    so a request, or an origin read, costs no lock, no mmap write and no
    getpid."""

    def __init__(self) -> None:
        start()
        self.sent_total = 0
        self._counts: dict[tuple[int, str], int] = {}
        self._sent = dict.fromkeys(_CACHE_RESULTS, 0)
        self._hist = {c: [0] * (len(_BUCKETS) + 1) for c in _CACHE_RESULTS}
        self._sum = dict.fromkeys(_CACHE_RESULTS, 0.0)
        self._rejected: dict[str, int] = {}
        self._origin_bytes = 0
        self._origin: dict[tuple[str, str], int] = {}

    def observe(self, status: int, cache: str, sent: int, seconds: float) -> None:
        key = (status, cache)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        if sent:
            self._sent[cache] += sent
            self.sent_total += sent
        self._hist[cache][bisect.bisect_left(_BUCKETS, seconds)] += 1
        self._sum[cache] += seconds

    def token_rejected(self, reason: str) -> None:
        self._rejected[reason] = self._rejected.get(reason, 0) + 1

    def flush(self) -> None:
        if self._origin_bytes:
            ORIGIN_BYTES.inc(self._origin_bytes)
            self._origin_bytes = 0
        origin, self._origin = self._origin, {}
        for (kind, result), n in origin.items():
            ORIGIN_REQUESTS.labels(kind, result).inc(n)
        rejected, self._rejected = self._rejected, {}
        for reason, n in rejected.items():
            TOKEN_REJECTIONS.labels(reason).inc(n)
        counts, self._counts = self._counts, {}
        for (status, cache), n in counts.items():
            REQUESTS.labels(str(status), cache).inc(n)
        for cache in _CACHE_RESULTS:
            if self._sent[cache]:
                SENT.labels(cache).inc(self._sent[cache])
                self._sent[cache] = 0
            hist = self._hist[cache]
            if not any(hist):
                continue
            child = LATENCY.labels(cache)
            buckets = getattr(child, "_buckets", None)
            if buckets is not None and len(buckets) == len(hist):
                for i, n in enumerate(hist):
                    if n:
                        buckets[i].inc(n)
                child._sum.inc(self._sum[cache])  # type: ignore[attr-defined]
            else:  # a prometheus-client without the internals this relies on
                bounds = (*_BUCKETS, _BUCKETS[-1] * 2)
                for i, n in enumerate(hist):
                    for _ in range(n):
                        child.observe(bounds[i])
            self._hist[cache] = [0] * len(hist)
            self._sum[cache] = 0.0

    def set_egress(self, rate: float) -> None:
        EGRESS_RATE.set(rate)

    def set_connections(self, n: int) -> None:
        CONNECTIONS.set(n)

    def disk_wait(self) -> None:
        DISK_WAITS.inc()

    def origin(self, kind: str, result: str) -> None:
        key = (kind, result)
        self._origin[key] = self._origin.get(key, 0) + 1

    def origin_bytes(self, n: int) -> None:
        self._origin_bytes += n  # each origin read's bytes: added at the next flush

    def store_write_failed(self) -> None:
        STORE_WRITE_FAILURES.inc()

    def store_skipped(self) -> None:
        STORE_SKIPPED.inc()

    def set_store_backlog(self, n: int) -> None:
        STORE_BACKLOG.set(n)


class StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        usage = self.store.usage()
        used = GaugeMetricFamily("edgefleet_store_bytes", "Bytes stored, by root", labels=["root"])
        cap = GaugeMetricFamily(
            "edgefleet_store_capacity_bytes", "Capacity, by root", labels=["root"]
        )
        objs = GaugeMetricFamily(
            "edgefleet_store_objects", "Objects with stored bytes, by root", labels=["root"]
        )
        failed = GaugeMetricFamily(
            "edgefleet_store_root_failed", "1 when a root has failed", labels=["root"]
        )
        for u in usage:
            used.add_metric([u.path], u.used)
            cap.add_metric([u.path], u.capacity)
            objs.add_metric([u.path], u.objects)
            failed.add_metric([u.path], int(u.failed))
        yield from (used, cap, objs, failed)
        counters = self.store.counters()
        for name, help_text in (
            ("evictions", "Objects evicted to make room"),
            ("evicted_bytes", "Bytes evicted to make room"),
            ("checksum_failures", "Slices that failed their checksum and were dropped"),
            ("write_errors", "Slice writes that failed with an I/O error"),
            ("damaged_slices", "Slices found missing, short or unreadable and dropped"),
            ("device_errors", "Device errors (EIO and the like) on slice files"),
            ("disk_full", "Times a root's disk was short of room (writes paused, eviction)"),
        ):
            c = CounterMetricFamily(f"edgefleet_{name}", help_text)
            c.add_metric([], counters.get(name, 0))
            yield c
        draining = GaugeMetricFamily("edgefleet_draining", "1 while the appliance is drained")
        draining.add_metric([], int(self.store.get_state("draining") == "1"))
        yield draining
        yield from _fill_figures(self.store.get_state("fill"))
        info = GaugeMetricFamily("edgefleet_info", "Version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


def fill_figures(text: str) -> dict[str, float]:
    """The last fill's figures as ``edgefleet fill`` left them in the index,
    every one of ``FILL_FIGURES`` (0 before the first fill)."""
    try:
        figures = json.loads(text) if text else {}
    except ValueError:
        figures = {}
    if not isinstance(figures, dict):
        figures = {}
    out = dict.fromkeys(FILL_FIGURES, 0.0)
    for name, value in figures.items():
        if isinstance(value, int | float) and re.fullmatch(r"[a-z_]+", str(name)):
            out[str(name)] = float(value)
    return out


def _fill_figures(text: str) -> Iterator[GaugeMetricFamily]:
    for name, value in sorted(fill_figures(text).items()):
        g = GaugeMetricFamily(f"edgefleet_fill_{name}", f"Fill: {name.replace('_', ' ')}")
        g.add_metric([], value)
        yield g


def registry_for(store: Store) -> CollectorRegistry:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    registry.register(StoreCollector(store))
    return registry


def render(store: Store) -> bytes:
    return generate_latest(registry_for(store))


def totals() -> dict[str, dict[tuple[str, ...], float]]:
    """Every sample summed over workers: name -> label values -> value."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for family in registry.collect():
        for sample in family.samples:
            labels = tuple(v for k, v in sorted(sample.labels.items()))
            series = out.setdefault(sample.name, {})
            series[labels] = series.get(labels, 0.0) + sample.value
    return out


LIVE = ("edgefleet_open_connections", "edgefleet_egress_bytes_per_second")


def live_totals() -> dict[str, float]:
    """Summed live gauges (connections, egress rate) across workers."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    out: dict[str, float] = {}
    for family in registry.collect():
        if family.name in LIVE:
            out[family.name] = sum(s.value for s in family.samples)
    return out


def live_of(totals: dict[str, dict[tuple[str, ...], float]]) -> dict[str, float]:
    """``live_totals`` from what ``totals`` already read."""
    return {name: sum(totals[name].values()) for name in LIVE if name in totals}
