"""deploy/grafana and deploy/prometheus against the metrics the services expose.

Every panel and alert queries metrics (and labels) that a freshly started
appliance and steering service expose, before any traffic: a renamed metric or
a family that appears only after its first event fails here, not on an
operator's empty dashboard. promtool checks and unit-tests the rules where it
is installed (Debian: apt-get install prometheus).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, free_port, make_catalog
from prometheus_client.parser import text_string_to_metric_families
from steer_fleet import Steering, appliance_toml, start_appliance

DASHBOARD = ROOT / "deploy/grafana/edgefleet.json"
PROMETHEUS = ROOT / "deploy/prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)"
)
# labels Prometheus adds to every scraped series, and its own series
TARGET_LABELS = {"instance", "job", "service"}
PROMETHEUS_OWN = {"up": {"instance", "job", "service"}}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
            "and", "or", "unless", "inf", "nan"}  # fmt: skip


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) of each series selector in a PromQL
    expression; Grafana's ``label_values(metric, label)`` counts as one."""
    values = re.fullmatch(r"\s*label_values\(\s*([\w:]+)\s*,\s*(\w+)\s*\)\s*", expr)
    if values:
        return [(values.group(1), {values.group(2)})]
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\$\w+", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    found = []
    for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?", e):
        name, matchers = m.group(1), m.group(2)
        if name in KEYWORDS or (not matchers and e[m.end() :].lstrip().startswith("(")):
            continue  # a keyword or a function
        found.append((name, set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers or ""))))
    return found


def dashboard_queries() -> dict[str, str]:
    doc = json.loads(DASHBOARD.read_text())
    out = {}
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            out[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            out[f"variable {var['name']}"] = var["query"]["query"]
    return out


def alert_queries() -> dict[str, str]:
    text = (PROMETHEUS / "edgefleet-alerts.yml").read_text()
    # the rules file is plain YAML; its alerts and their expr blocks are found by shape
    out = {}
    for m in re.finditer(r"- alert: (\w+)\n\s+expr: (\|\n((?:\s{10,}.*\n)+)|(.*)\n)", text):
        out[f"alert {m.group(1)}"] = m.group(3) or m.group(4)
    return out


def exposed(*texts: str) -> dict[str, set[str]]:
    """Sample name -> label names, from Prometheus text."""
    out: dict[str, set[str]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, set()).update(sample.labels)
    return out


def unknown(queries: dict[str, str], names: dict[str, set[str]]) -> list[str]:
    known = {**PROMETHEUS_OWN, **names}
    problems = []
    for where, expr in queries.items():
        for name, labels in selectors(expr):
            if name not in known:
                problems.append(f"{where}: {name} is not exposed")
            elif labels - known[name] - TARGET_LABELS:
                problems.append(f"{where}: {name} has no label {sorted(labels - known[name])}")
    return problems


def test_the_query_reader_finds_metrics_and_labels() -> None:
    expr = (
        'sum by (instance) (rate(edgefleet_sent_bytes_total{cache="hit",instance=~"$x"}'
        "[$__rate_interval] offset 1d)) / on(instance) edgefleet_b > 1e9 and time() - c_d"
    )
    assert selectors(expr) == [
        ("edgefleet_sent_bytes_total", {"cache", "instance"}),
        ("edgefleet_b", set()),
        ("c_d", set()),
    ]
    assert selectors("label_values(edgefleet_info, instance)") == [("edgefleet_info", {"instance"})]
    names = {"edgefleet_b": set()}
    assert unknown({"p": "edgefleet_nope_total + edgefleet_b{x='1'}"}, names) == [
        "p: edgefleet_nope_total is not exposed",
        "p: edgefleet_b has no label ['x']",
    ]


def test_every_query_names_a_metric_the_services_expose_from_start(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    make_catalog(origin)
    port = free_port()
    app = start_appliance(tmp_path, "a1", origin, port)
    config = tmp_path / "steer.toml"
    config.write_text(appliance_toml("a1", port, "ams", 52.0, ["127.1.0.0/16"]))
    steer = Steering(config).start()
    try:  # scraped before any player asked anything
        edge_text = app.get("/_edge/metrics")[2].decode()
        steer_text = steer.metrics()
    finally:
        steer.stop()
        app.stop()
    names = exposed(edge_text, steer_text)
    queries = {**dashboard_queries(), **alert_queries()}
    assert len(queries) >= 30  # the readers found the panels and the alerts
    assert unknown(queries, names) == []
    # labelled series are there from the start, at 0
    assert 'edgefleet_requests_total{cache="hit",status="200"} 0.0' in edge_text
    assert 'edgefleet_origin_requests_total{kind="read",result="error"} 0.0' in edge_text
    assert 'edgefleet_steer_answers_total{class="hit",site="ams"} 0.0' in steer_text
    assert "edgefleet_fill_last_update_timestamp_seconds 0.0" in edge_text


def test_the_dashboard_is_importable_json() -> None:
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)) and doc["uid"] == "edgefleet"
    for panel in doc["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]


@needs_promtool
def test_promtool_checks_the_rules_and_their_unit_tests() -> None:
    for argv in (
        ["check", "rules", "edgefleet-alerts.yml"],
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "edgefleet-alerts.test.yml"],
    ):
        out = subprocess.run(
            [str(PROMTOOL), *argv], capture_output=True, text=True, cwd=PROMETHEUS, timeout=60
        )
        assert out.returncode == 0, out.stdout + out.stderr
