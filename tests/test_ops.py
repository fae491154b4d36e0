"""/_edge/ endpoints and the access log, against a real appliance."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from conftest import SLICE, wait_for

TOKEN = "0123456789abcdef-token"
KEY = "titles/81234/movie.mp4"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_health(appliance, catalog) -> None:
    appliance.get("/" + KEY)
    doc = appliance.health()
    assert doc["status"] == "ok" and doc["draining"] is False
    assert doc["version"]
    root = doc["store"]["roots"][0]
    assert root["capacity_bytes"] == 64 * 1024 * 1024 and root["state"] == "ok"
    wait_for(lambda: appliance.health()["store"]["used_bytes"] == len(catalog[KEY]))
    assert doc["connections"] >= 1
    assert "egress_bytes_per_second" in doc


def test_metrics(appliance, catalog) -> None:
    appliance.get("/" + KEY)
    wait_for(lambda: appliance.health()["store"]["used_bytes"] == len(catalog[KEY]))
    appliance.get("/" + KEY)
    appliance.get("/nope.ts")
    time.sleep(0.2)
    status, headers, body = appliance.get("/_edge/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()

    def value(name: str) -> float:
        m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
        assert m, name
        return float(m.group(1))

    assert value('edgefleet_requests_total{cache="hit",status="200"}') >= 1
    assert value('edgefleet_requests_total{cache="miss",status="200"}') == 1
    assert value('edgefleet_requests_total{cache="none",status="404"}') == 1
    assert value('edgefleet_sent_bytes_total{cache="hit"}') == len(catalog[KEY])
    assert value('edgefleet_request_duration_seconds_count{cache="hit"}') >= 1
    assert value("edgefleet_origin_bytes_total") == len(catalog[KEY])
    root = appliance.health()["store"]["roots"][0]["path"]
    assert value(f'edgefleet_store_objects{{root="{root}"}}') == 1
    assert value(f'edgefleet_store_bytes{{root="{root}"}}') == len(catalog[KEY])
    for name in (
        "edgefleet_evictions_total",
        "edgefleet_checksum_failures_total",
        "edgefleet_draining",
    ):
        assert value(name) == 0


def test_status_page(appliance) -> None:
    status, headers, body = appliance.get("/_edge/status")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"edgefleet appliance" in body and b"ok" in body


def test_inventory(appliance, catalog) -> None:
    appliance.get("/" + KEY)
    appliance.get("/titles/81234/master.m3u8")
    appliance.get("/titles/81234/movie.mp4", Range="bytes=0-0")

    def listing():
        got = [json.loads(x) for x in appliance.get("/_edge/inventory")[2].splitlines()]
        return got if len(got) == 2 else None

    lines = wait_for(listing)
    keys = {x["key"] for x in lines}
    assert keys == {KEY, "titles/81234/master.m3u8"}
    only = appliance.get("/_edge/inventory?prefix=titles/81234/m")[2]
    assert {json.loads(x)["key"] for x in only.splitlines()} == keys


def test_admin_needs_the_token(appliance) -> None:
    assert appliance.request("POST", "/_edge/admin/drain")[0] == 401
    bad = {"Authorization": "Bearer wrong-token-wrong-token"}
    assert appliance.request("POST", "/_edge/admin/drain", bad)[0] == 401
    assert appliance.request("GET", "/_edge/admin/drain", AUTH)[0] == 405
    assert appliance.request("POST", "/_edge/admin/explode", AUTH)[0] == 404
    assert appliance.health()["status"] == "ok"


def test_admin_disabled_without_a_token(tmp_path: Path, origin_dir: Path) -> None:
    from conftest import Appliance

    app = Appliance(["--store", str(tmp_path / "s"), "--capacity", "1GiB"]).start()
    try:
        status, _, body = app.request("POST", "/_edge/admin/drain", AUTH)
        assert status == 403 and b"admin_token" in body
    finally:
        assert app.stop() == 0


def test_drain_and_undrain(appliance) -> None:
    status, _, _ = appliance.request("POST", "/_edge/admin/drain", AUTH)
    assert status == 200
    status, _, body = appliance.request("GET", "/_edge/health")
    assert status == 503 and json.loads(body)["status"] == "draining"
    # a drained appliance still serves the players it has
    assert appliance.get("/" + KEY)[0] == 200
    assert appliance.request("POST", "/_edge/admin/undrain", AUTH)[0] == 200
    assert appliance.health()["status"] == "ok"


def test_purge(appliance, catalog) -> None:
    appliance.get("/" + KEY)
    appliance.get("/titles/81234/master.m3u8")
    wait_for(lambda: appliance.health()["store"]["objects"] == 2)
    status, _, body = appliance.request("POST", f"/_edge/admin/purge?key={KEY}", AUTH)
    assert status == 200 and json.loads(body) == {"purged": 1}
    assert appliance.health()["store"]["objects"] == 1
    status, _, body = appliance.request("POST", "/_edge/admin/purge?prefix=titles/", AUTH)
    assert json.loads(body) == {"purged": 1}
    assert appliance.health()["store"]["used_bytes"] == 0
    assert appliance.request("POST", "/_edge/admin/purge?key=../x", AUTH)[0] == 400
    assert appliance.request("POST", "/_edge/admin/purge", AUTH)[0] == 400
    # purged objects come back from the origin
    status, _, body = appliance.get("/" + KEY)
    assert status == 200 and body == catalog[KEY]


def test_scrub_drops_corrupt_slices(appliance, catalog, tmp_path: Path) -> None:
    appliance.get("/" + KEY)
    wait_for(lambda: appliance.health()["store"]["used_bytes"] == len(catalog[KEY]))
    store = tmp_path / "store" / "slices"
    files = sorted(p for p in store.rglob("*") if p.is_file())
    assert len(files) == len(catalog[KEY]) // SLICE
    with open(files[0], "r+b") as f:
        f.write(b"\xff\xfe")
    status, _, body = appliance.request("POST", "/_edge/admin/scrub", AUTH)
    report = json.loads(body)
    assert status == 200 and report["failures"] == 1 and report["failed_keys"] == [KEY]
    # the corrupt slice is never served: it is fetched again from the origin
    status, _, body = appliance.get("/" + KEY)
    assert status == 200 and body == catalog[KEY]
    text = appliance.get("/_edge/metrics")[2].decode()
    assert "edgefleet_checksum_failures_total 1.0" in text


def test_access_log_lines(appliance, catalog, tmp_path: Path) -> None:
    appliance.get("/" + KEY, Range="bytes=0-99")
    wait_for(lambda: appliance.health()["store"]["used_bytes"] == SLICE)
    appliance.get("/" + KEY, Range="bytes=0-99")
    appliance.get("/missing.ts")
    log_path = tmp_path / "access.log"

    def lines():
        if not log_path.exists():
            return None
        got = [json.loads(x) for x in log_path.read_text().splitlines()]
        got = [x for x in got if not x["key"].startswith("_edge/")]
        return got if len(got) >= 3 else None

    got = wait_for(lines)
    first, second, third = got[:3]
    assert first["key"] == KEY and first["range"] == "bytes=0-99" and first["status"] == 206
    assert first["cache"] == "miss" and second["cache"] == "hit"
    assert first["bytes"] == second["bytes"] == 100
    assert third["status"] == 404 and third["key"] == "missing.ts"
    for line in got:
        assert set(line) >= {
            "time",
            "client",
            "key",
            "range",
            "status",
            "bytes",
            "cache",
            "duration_ms",
        }
        assert line["client"] == "127.0.0.1"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])


def test_purge_takes_a_key_written_as_a_path(appliance, catalog) -> None:
    appliance.get("/" + KEY)
    wait_for(lambda: appliance.health()["store"]["objects"] == 1)
    status, _, body = appliance.request("POST", f"/_edge/admin/purge?key=/{KEY}", AUTH)
    assert status == 200 and json.loads(body) == {"purged": 1}
    appliance.get("/" + KEY)
    wait_for(lambda: appliance.health()["store"]["objects"] == 1)
    status, _, body = appliance.request("POST", "/_edge/admin/purge?prefix=/titles/", AUTH)
    assert status == 200 and json.loads(body) == {"purged": 1}
