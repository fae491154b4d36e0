"""Steering's Prometheus metrics: counted in plain memory, read at scrape time.

One process, one event loop: the request path adds to dicts (no lock, no
prometheus-client call per request) and a collector on the service's own
registry turns them into metric families when ``/_steer/metrics`` is scraped.
Every family and its usual series are there from the first scrape, at 0 (every
answer class for every site, every appliance's states), so dashboards and
alerts (deploy/) find them before the first event.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from edge import __version__
from steering.decide import CLASSES, NO_APPLIANCE

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = ("up", "down", "draining", "failing")  # what the poller tells (steering.poller)
FIRST_REQUESTS = (("steer", 200), ("redirect", 302), ("ops", 200), ("steer", 503))
FIRST_POLLS = (("health", "ok"), ("health", "error"), ("inventory", "ok"),
               ("inventory", "not_modified"), ("inventory", "error"))  # fmt: skip
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)


class SteerMetrics:
    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], int] = {}
        self.requests: dict[tuple[str, int], int] = {}
        self.hist = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        self.transitions: dict[tuple[str, str], int] = {}
        self.polls: dict[tuple[str, str], int] = {}
        self.reloads: dict[str, int] = {}

    def answer(self, klass: str, site: str) -> None:
        k = (klass, site)
        self.answers[k] = self.answers.get(k, 0) + 1

    def request(self, endpoint: str, status: int, seconds: float | None) -> None:
        """One response; ``seconds`` from request to last byte, for the answers."""
        k = (endpoint, status)
        self.requests[k] = self.requests.get(k, 0) + 1
        if seconds is not None:
            self.hist[bisect.bisect_left(BUCKETS, seconds)] += 1
            self.latency_sum += seconds

    def transition(self, appliance: str, to: str) -> None:
        k = (appliance, to)
        self.transitions[k] = self.transitions.get(k, 0) + 1

    def poll(self, kind: str, result: str) -> None:
        k = (kind, result)
        self.polls[k] = self.polls.get(k, 0) + 1

    def reload(self, result: str) -> None:
        self.reloads[result] = self.reloads.get(result, 0) + 1


class _Collector(Collector):
    def __init__(
        self, m: SteerMetrics, fleet_view: Callable[[], list[tuple[str, str, bool, bool]]]
    ) -> None:
        self.m = m
        self.fleet_view = fleet_view

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        m = self.m
        view = self.fleet_view()
        sites = sorted({site for _, site, _, _ in view})
        answers = CounterMetricFamily(
            "edgefleet_steer_answers",
            "Steering answers by miss class and the site they count against",
            labels=["class", "site"],
        )
        counted = {(k, s): 0 for k in CLASSES for s in sites}
        counted[(NO_APPLIANCE, "none")] = 0  # a client no prefix places, and no appliance
        counted.update(m.answers)
        for (klass, site), n in sorted(counted.items()):
            answers.add_metric([klass, site], n)
        yield answers
        requests = CounterMetricFamily(
            "edgefleet_steer_requests", "HTTP requests by endpoint and status",
            labels=["endpoint", "status"],
        )  # fmt: skip
        for (endpoint, status), n in sorted({**dict.fromkeys(FIRST_REQUESTS, 0),
                                             **m.requests}.items()):  # fmt: skip
            requests.add_metric([endpoint, str(status)], n)
        yield requests
        buckets, total = [], 0
        for bound, n in zip((*BUCKETS, float("inf")), m.hist, strict=True):
            total += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        yield HistogramMetricFamily(
            "edgefleet_steer_request_duration_seconds",
            "Time from request to the answer's last byte handed to the kernel (/steer, /r/)",
            buckets=buckets,
            sum_value=m.latency_sum,
        )
        up = GaugeMetricFamily(
            "edgefleet_steer_appliance_up", "1 when the appliance is up (hysteresis)",
            labels=["appliance", "site"],
        )  # fmt: skip
        cand = GaugeMetricFamily(
            "edgefleet_steer_appliance_candidate",
            "1 when the appliance may get new players (up, ok, under its load limit)",
            labels=["appliance", "site"],
        )
        for name, site, is_up, is_cand in view:
            up.add_metric([name, site], int(is_up))
            cand.add_metric([name, site], int(is_cand))
        yield up
        yield cand
        trans = CounterMetricFamily(
            "edgefleet_steer_health_transitions", "Appliance state changes",
            labels=["appliance", "to"],
        )  # fmt: skip
        told = {(name, to): 0 for name, _, _, _ in view for to in STATES}
        told.update(m.transitions)
        for (name, to), n in sorted(told.items()):
            trans.add_metric([name, to], n)
        yield trans
        polls = CounterMetricFamily(
            "edgefleet_steer_polls", "Polls of appliances by kind and result",
            labels=["kind", "result"],
        )  # fmt: skip
        for (kind, result), n in sorted({**dict.fromkeys(FIRST_POLLS, 0), **m.polls}.items()):
            polls.add_metric([kind, result], n)
        yield polls
        reloads = CounterMetricFamily(
            "edgefleet_steer_reloads", "Configuration reloads (SIGHUP)", labels=["result"]
        )
        for result, n in sorted({"ok": 0, "error": 0, **m.reloads}.items()):
            reloads.add_metric([result], n)
        yield reloads
        info = GaugeMetricFamily("edgefleet_steer_info", "Version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


def registry(
    m: SteerMetrics, fleet_view: Callable[[], list[tuple[str, str, bool, bool]]]
) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(m, fleet_view))
    return reg


def render(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
