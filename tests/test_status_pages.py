"""The status pages as a browser shows them: headless Chromium loads
``/_edge/status`` and ``/_steer/status`` from real processes, and what the
rendered page says is compared with the JSON endpoints."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, SLICE, Appliance, free_port, make_catalog, wait_for
from steer_fleet import Steering, appliance_toml, start_appliance

from edge.http.page import human_bytes, percent

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no headless Chromium (apt-get install chromium)"
)
KEY = "titles/81234/movie.mp4"


class Fields(HTMLParser):
    """The rendered DOM's ``data-field`` values, by table row where in a table."""

    def __init__(self) -> None:
        super().__init__()
        self.top: dict[str, dict[str, str]] = {}
        self.tables: dict[str, list[dict[str, dict[str, str]]]] = {}
        self.charts: dict[str, int] = {}
        self.outside: list[str] = []  # anything fetched from elsewhere
        self._table: str | None = None
        self._open: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "script" or (tag in ("img", "link", "iframe") and ("src" in a or "href" in a)):
            self.outside.append(tag)
        if "data-table" in a:
            self._table = a["data-table"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append({})
        if "data-chart" in a:
            self.charts[a["data-chart"]] = int(a["data-points"])
        if "data-field" in a:
            self._open.append((a["data-field"], {"value": a.get("data-value", ""), "text": ""}))

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1][1]["text"] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        if tag == "span" and self._open:
            name, got = self._open.pop()
            rows = self.tables.get(self._table or "", [])
            (rows[-1] if self._table and rows else self.top)[name] = got


def rendered(url: str, tmp: Path) -> Fields:
    assert CHROMIUM is not None
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp / 'chromium'}", "--dump-dom", url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and "<html" in out.stdout, out.stderr[-2000:]
    page = Fields()
    page.feed(out.stdout)
    assert page.outside == []  # self-contained
    return page


def get_json(app: Any, path: str) -> Any:
    status, _, body = app.request("GET", path) if isinstance(app, Appliance) else app.request(path)
    assert status == 200, body
    return json.loads(body)


def fill_store(store: Path, origin: Path, tmp: Path) -> dict[str, Any]:
    manifest = tmp / "manifest.jsonl"
    size = (origin / KEY).stat().st_size
    manifest.write_text(json.dumps({"key": KEY, "size": size, "rank": 1}) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "edge.cli", "fill", "--store", str(store), "--capacity", "64MiB",
         "--origin", f"file://{origin}", "--slice-size", str(SLICE), "--manifest", str(manifest),
         "--now"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@needs_chromium
def test_the_appliance_status_page_shows_what_the_json_says(
    tmp_path: Path, origin_dir: Path, catalog: dict[str, bytes]
) -> None:
    store = tmp_path / "store"
    report = fill_store(store, origin_dir, tmp_path)
    dead = f"http://127.0.0.1:{free_port()}/gone"
    app = Appliance(
        ["--store", str(store), "--capacity", "64MiB", "--origin", f"file://{origin_dir}",
         "--origin", dead, "--origin-retries", "0", "--slice-size", str(SLICE),
         "--id", "box-7", "--site", "ams"]
    ).start()  # fmt: skip
    try:
        app.get("/" + KEY)  # a hit (filled)
        app.get("/titles/81234/master.m3u8")  # a miss
        app.get("/not-there.ts")  # 404 after the dead origin failed: a recent error
        wait_for(lambda: app.health()["store"]["objects"] == 2)  # the miss is stored
        health = app.health()
        wait_for(lambda: get_json(app, "/_edge/status?format=json")["hit_ratio"]["requests"])
        doc = get_json(app, "/_edge/status?format=json")
        page = rendered(app.url("/_edge/status"), tmp_path)
    finally:
        app.stop()
    top = page.top
    assert top["id"]["text"] == health["id"] == "box-7"
    assert top["site"]["text"] == health["site"] == "ams"
    assert top["status"]["text"] == health["status"] == "ok"
    assert top["hit_ratio.requests"]["text"] == percent(doc["hit_ratio"]["requests"]) == "50.0%"
    assert top["hit_ratio.bytes"]["text"] == percent(doc["hit_ratio"]["bytes"])
    assert abs(page.charts["egress"] - len(doc["egress"]["history"])) <= 1
    (root,) = page.tables["store"][1:]
    (want,) = health["store"]["roots"]
    assert root["path"]["text"] == want["path"] and root["state"]["text"] == "ok"
    assert int(root["used_bytes"]["value"]) == want["used_bytes"] > 0
    assert root["used_bytes"]["text"] == human_bytes(want["used_bytes"])
    assert int(root["capacity_bytes"]["value"]) == want["capacity_bytes"] == 64 * 2**20
    origins = {r["url"]["text"]: r["state"]["text"] for r in page.tables["origins"][1:]}
    assert origins == {o["url"]: o["state"] for o in doc["origins"]}
    assert origins[f"file://{origin_dir}"] == "ok" and origins[dead] == "failing"
    assert top["fill.outcome"]["text"] == "succeeded"
    assert int(top["fill.objects_added"]["text"]) == report["added"]["objects"] == 1
    assert int(top["fill.errors"]["text"]) == 0
    messages = [r["message"]["text"] for r in page.tables["recent_errors"][1:]]
    assert messages == [e["message"] for e in doc["recent_errors"]] and dead in messages[0]


@needs_chromium
def test_the_steering_status_page_shows_what_the_json_says(
    tmp_path: Path, origin_dir: Path, catalog: dict[str, bytes]
) -> None:
    make_catalog(origin_dir)
    port, gone = free_port(), free_port()
    app = start_appliance(tmp_path, "n1", origin_dir, port)
    config = tmp_path / "steer.toml"
    config.write_text(
        'health_interval = "0.3s"\nhealth_timeout = "0.3s"\ninventory_interval = "0.3s"\n'
        + appliance_toml("n1", port, "north", 60.0, ["127.1.0.0/16"])
        + appliance_toml("s1", gone, "south", 40.0, ["127.2.0.0/16"])
    )
    steer = Steering(config).start()
    try:
        wait_for(lambda: steer.fleet()["n1"]["inventory"] is not None)
        for source in ("127.1.0.5", "127.1.0.6", "127.2.0.5"):
            assert steer.request(f"/steer?object={KEY}", source)[0] in (200, 503)
        doc = get_json(steer, "/_steer/status?format=json")
        fleet = steer.fleet()
        page = rendered(f"http://127.0.0.1:{steer.port}/_steer/status", tmp_path)
    finally:
        steer.stop()
        app.stop()
    rows = {r["id"]["text"]: r for r in page.tables["appliances"][1:]}
    assert set(rows) == set(fleet) == {"n1", "s1"}
    assert rows["n1"]["state"]["text"] == fleet["n1"]["state"] == "up"
    assert rows["s1"]["state"]["text"] == fleet["s1"]["state"] == "down"
    for name in rows:
        assert rows[name]["site"]["text"] == fleet[name]["site"]
        assert rows[name]["utilization"]["value"] == str(fleet[name]["utilization"])
    assert rows["n1"]["inventory_age_seconds"]["value"] != "None"
    assert rows["s1"]["inventory_age_seconds"]["value"] == "None"
    by_class = {
        r["class"]["text"]: int(r[f"answers.by_class.{r['class']['text']}"]["text"])
        for r in page.tables["answers"][1:]
    }
    assert by_class == doc["answers"]["by_class"]
    # north clients: their box holds nothing yet; the south one's box is down
    assert by_class["content_miss"] == 2 and by_class["health_miss"] == 1
    assert sum(by_class.values()) == 3
