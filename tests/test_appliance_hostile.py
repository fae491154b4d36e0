"""The appliance against hostile clients and failing origins, over real HTTP:
long key segments never reach an origin nor its breaker, error bodies tell a
player a reason and a request id (the log gets the rest), the Host rule,
bounded log lines, each origin's state in /_edge/health and the status page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import SLICE, Appliance, raw_request, statuses, wait_for
from origin_server import OriginServer


@pytest.fixture
def origin():  # type: ignore[no-untyped-def]
    server = OriginServer().start()
    yield server
    server.stop()


def start(tmp: Path, *origins: str, extra: tuple[str, ...] = ()) -> Appliance:
    args = [
        "--store", str(tmp / "store"), "--capacity", "64MiB", "--slice-size", str(SLICE),
        "--origin-retries", "1", "--breaker-failures", "2", "--breaker-cooldown", "30s",
    ]  # fmt: skip
    for url in origins:
        args += ["--origin", url]
    return Appliance([*args, *extra]).start()


def test_long_segments_never_reach_the_origin_nor_its_breaker(
    tmp_path: Path, origin: OriginServer
) -> None:
    origin.put("titles/a.ts", b"a" * 1000)
    app = start(tmp_path, origin.url)
    try:
        for n in (256, 300, 1000):
            status, _, body = app.get("/" + "a" * n)
            assert status == 414 and b"255 bytes" in body
            assert app.get(f"/titles/{'b' * n}.ts")[0] == 414
        assert origin.log == []  # no origin was asked
        # the breaker (2 failures) is still closed: a real miss is served
        status, _, body = app.get("/titles/a.ts")
        assert status == 200 and body == b"a" * 1000
    finally:
        app.stop()


def test_long_segments_with_a_file_origin(appliance: Appliance, catalog: dict[str, bytes]) -> None:
    """The issue's case: ``File name too long`` from the origin was a 502, and two
    such requests opened the breaker for every object."""
    for _ in range(4):
        raw = raw_request(appliance.port, b"GET /" + b"a" * 256 + b" HTTP/1.0\r\n\r\n")
        assert statuses(raw) == [414]
    key = "titles/81234/720p/seg_00001.m4s"
    assert appliance.get("/" + key)[2] == catalog[key]


def test_error_bodies_carry_a_reason_and_a_request_id(tmp_path: Path) -> None:
    app = start(
        tmp_path,
        "http://127.0.0.1:1/private-videos",
        "s3://secret-bucket-name/prefix",
        extra=("--s3-endpoint", "http://127.0.0.1:1", "--breaker-failures", "100"),
    )
    try:
        status, headers, body = app.get("/show/hls/seg000.ts")
        assert status == 502
        text = body.decode()
        assert re.fullmatch(
            r"502 Bad Gateway: the origin failed to answer \(request [0-9a-f]{12}\)\n", text
        ), text
        for internal in ("127.0.0.1", "private-videos", "secret-bucket", "http", "s3:", "Cannot",
                         "connect", "show/hls", "/", "Error", "'"):  # fmt: skip
            assert internal not in text.split(": ", 1)[1], internal
        rid = re.search(r"request ([0-9a-f]{12})", text).group(1)  # type: ignore[union-attr]
        assert headers["x-request-id"] == rid
        # the log has the details, on a line with the same id
        line = wait_for(lambda: next((x for x in app.stderr if rid in x), None))
        assert "show/hls/seg000.ts" in line and ("127.0.0.1:1" in line or "secret" in line)
    finally:
        app.stop()


def test_host_header_rule(appliance: Appliance) -> None:
    ok = (
        b"GET /titles/81234/master.m3u8 HTTP/1.1\r\nHost: edge.example\r\nConnection: close\r\n\r\n"
    )
    assert statuses(raw_request(appliance.port, ok)) == [200]
    for bad in (
        b"GET /titles/81234/master.m3u8 HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /titles/81234/master.m3u8 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /titles/81234/master.m3u8 HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET /titles/81234/master.m3u8 HTTP/1.1\r\nHost: a b\r\n\r\n",
    ):
        raw = raw_request(appliance.port, bad)
        assert statuses(raw) == [400], bad
        assert b"Host" in raw
    # HTTP/1.0 may leave it out
    raw = raw_request(appliance.port, b"GET /titles/81234/master.m3u8 HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 ")
    # a pipelined request without Host after a good one: the good one is answered
    raw = raw_request(appliance.port, ok.replace(b"Connection: close\r\n", b"") + bad)
    assert statuses(raw) == [200, 400]


def test_log_lines_bound_and_escape_hostile_keys(tmp_path: Path) -> None:
    app = start(tmp_path, "http://127.0.0.1:1/v", extra=("--breaker-failures", "100"))
    try:
        hostile = "/".join(["x" * 100 + "\u2028forged line\u0085", "y" * 240, "z" * 240, "w.ts"])
        from urllib.parse import quote

        assert app.get("/" + quote(hostile))[0] == 502
        wait_for(lambda: any("request " in x for x in app.stderr))
        for line in app.stderr:
            assert len(line) < 1000, line
            assert "\u2028" not in line and "\u0085" not in line
            assert "y" * 240 not in line
    finally:
        app.stop()


def test_each_origins_state_while_stored_content_is_served(
    tmp_path: Path, origin: OriginServer
) -> None:
    origin.put("stored.ts", b"s" * 5000)
    origin.put("other.ts", b"o" * 5000)
    missing = tmp_path / "not-mounted"
    app = start(tmp_path, origin.url, f"file://{missing}", extra=("--breaker-failures", "100"))
    try:
        states = {o["url"]: o for o in app.health()["origins"]}
        assert states[origin.url]["state"] == "ok"
        assert states[f"file://{missing}"]["state"] == "failing"
        assert "does not exist" in states[f"file://{missing}"]["last_error"]
        assert app.get("/stored.ts")[0] == 200
        origin.faults.fail = 1000
        assert app.get("/other.ts")[0] == 500  # the origin's own answer, passed through
        doc = app.health()
        assert doc["status"] == "ok"  # what is stored is still served: steering keeps it
        state = {o["url"]: o for o in doc["origins"]}[origin.url]
        assert state["state"] == "failing" and "500" in state["last_error"]
        assert state["last_error_at"] >= state["since"] > 0
        assert app.get("/stored.ts") == (200, app.get("/stored.ts")[1], b"s" * 5000)
        page = app.get("/_edge/status")[2].decode()
        assert "failing" in page and origin.url in page
        origin.faults.fail = 0
        assert app.get("/other.ts")[0] == 200
        state = {o["url"]: o for o in app.health()["origins"]}[origin.url]
        assert state["state"] == "ok" and state["last_ok_at"] >= state["since"]
    finally:
        app.stop()


def test_steering_host_rule_too(tmp_path: Path) -> None:
    """Steering shares the connection, and with it the Host rule."""
    from conftest import free_port
    from steer_fleet import Steering, appliance_toml

    config = tmp_path / "steer.toml"
    config.write_text(appliance_toml("gone", free_port(), "north", 60.0, ["127.1.0.0/16"]))
    s = Steering(config).start()
    try:
        raw = raw_request(s.port, b"GET /_steer/health HTTP/1.1\r\n\r\n")
        assert statuses(raw) == [400]
        raw = raw_request(s.port, b"GET /_steer/health HTTP/1.1\r\nHost: s\r\n\r\n")
        assert statuses(raw) == [200] and json.loads(raw.split(b"\r\n\r\n", 1)[1])["appliances"]
    finally:
        s.stop()


def test_every_worker_tells_the_same_origin_state(tmp_path: Path, origin: OriginServer) -> None:
    """With two workers, the one that saw the origin fail and the one that did
    not answer /_edge/health alike (connections are spread by SO_REUSEPORT)."""
    origin.faults.fail = 1000
    app = start(tmp_path, origin.url, extra=("--workers", "2", "--breaker-failures", "100"))
    try:
        assert app.get("/once.ts")[0] == 500  # one worker saw it (the origin's answer)
        for _ in range(12):
            state = app.health()["origins"][0]
            assert state["state"] == "failing" and "500" in state["last_error"]
    finally:
        app.stop()


def test_access_log_bounds_a_range_flood(appliance: Appliance, tmp_path: Path) -> None:
    # 60 specs (under the 64 that make it ignored) of 150-digit positions: 9 KiB, a 416
    flood = "bytes=" + ",".join("9" * 150 + "-" for _ in range(60))
    assert appliance.get("/titles/81234/master.m3u8", Range=flood)[0] == 416

    def line() -> str | None:
        log = tmp_path / "access.log"
        return next((x for x in log.read_text().splitlines() if '"range":"bytes=999' in x), None)

    logged = wait_for(line)
    assert len(logged) < 600 and json.loads(logged)["range"].endswith("chars)")
