"""Steering's Prometheus metrics: counted in plain memory, read at scrape time.

One process, one event loop: the request path adds to dicts (no lock, no
prometheus-client call per request) and a collector on the service's own
registry turns them into metric families when ``/_steer/metrics`` is scraped.
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

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
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
        answers = CounterMetricFamily(
            "edgefleet_steer_answers",
            "Steering answers by miss class and the site they count against",
            labels=["class", "site"],
        )
        for (klass, site), n in sorted(m.answers.items()):
            answers.add_metric([klass, site], n)
        yield answers
        requests = CounterMetricFamily(
            "edgefleet_steer_requests", "HTTP requests by endpoint and status",
            labels=["endpoint", "status"],
        )  # fmt: skip
        for (endpoint, status), n in sorted(m.requests.items()):
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
        for name, site, is_up, is_cand in self.fleet_view():
            up.add_metric([name, site], int(is_up))
            cand.add_metric([name, site], int(is_cand))
        yield up
        yield cand
        trans = CounterMetricFamily(
            "edgefleet_steer_health_transitions", "Appliance state changes",
            labels=["appliance", "to"],
        )  # fmt: skip
        for (name, to), n in sorted(m.transitions.items()):
            trans.add_metric([name, to], n)
        yield trans
        polls = CounterMetricFamily(
            "edgefleet_steer_polls", "Polls of appliances by kind and result",
            labels=["kind", "result"],
        )  # fmt: skip
        for (kind, result), n in sorted(m.polls.items()):
            polls.add_metric([kind, result], n)
        yield polls
        reloads = CounterMetricFamily(
            "edgefleet_steer_reloads", "Configuration reloads (SIGHUP)", labels=["result"]
        )
        for result, n in sorted(m.reloads.items()):
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
