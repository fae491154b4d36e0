"""``edgefleet steer`` end to end: real appliances, a real steering process, clients
on their own 127.x.y.z addresses. Two sites: north (n1, n2) serves 127.1/16,
south (s1) serves 127.2/16."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import free_port, make_catalog, raw_request, statuses, wait_for
from steer_fleet import SECRET, Steering, appliance_toml, start_appliance

from edge.core.signing import sign

KEY = "titles/81234/movie.mp4"
NORTH, SOUTH, NOWHERE, PROXY = "127.1.0.5", "127.2.0.5", "127.3.0.5", "127.0.0.77"
INTERVAL, FALL, RISE = 0.3, 2, 2
AUTH = {"Authorization": "Bearer 0123456789abcdef-token"}


class Fleet:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.origin = tmp / "origin"
        self.origin.mkdir()
        self.catalog = make_catalog(self.origin)
        self.ports = {"n1": free_port(), "n2": free_port(), "s1": free_port()}
        self.apps = {name: self._start(name) for name in self.ports}
        self.config = tmp / "steer.toml"
        self.write_config()
        self.steering = Steering(self.config).start()

    def _start(self, name: str):  # type: ignore[no-untyped-def]
        return start_appliance(self.tmp, name, self.origin, self.ports[name])

    def write_config(self, south_prefixes: tuple[str, ...] = ("127.2.0.0/16",)) -> None:
        self.config.write_text(
            f'health_interval = "{INTERVAL}s"\nhealth_timeout = "{INTERVAL}s"\n'
            f'fall = {FALL}\nrise = {RISE}\ninventory_interval = "0.3s"\n'
            f'trusted_proxies = ["{PROXY}/32"]\n'
            f'url_signing_keys = {{k1 = "{SECRET}"}}\n'
            + appliance_toml("n1", self.ports["n1"], "north", 60.0, ["127.1.0.0/16"])
            + appliance_toml("n2", self.ports["n2"], "north", 60.0, ["127.1.0.0/16"])
            + appliance_toml("s1", self.ports["s1"], "south", 40.0, list(south_prefixes))
        )

    def all_candidates(self) -> None:
        wait_for(lambda: all(a["candidate"] for a in self.steering.fleet().values()), 20)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    f = Fleet(tmp_path_factory.mktemp("steer"))
    yield f
    f.steering.stop()
    for app in f.apps.values():
        if app.proc is not None and app.proc.poll() is None:
            app.stop()


def fetch(url: str, source: str = "127.0.0.1") -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=30, source_address=(source, 0)
    )  # type: ignore[arg-type]
    try:
        conn.request("GET", parts.path + ("?" + parts.query if parts.query else ""))
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def site_of(doc: dict[str, Any], n: int = 0) -> str:
    return doc["appliances"][n]["site"]


def test_clients_get_their_own_site_first(fleet: Fleet) -> None:
    fleet.all_candidates()
    s = fleet.steering
    north = s.steer(KEY, NORTH)
    assert site_of(north) == "north" and site_of(north, 1) == "north"
    assert site_of(north, 2) == "south"  # the last answer leaves the site
    assert north["location"] == {
        "source": "prefix", "prefix": "127.1.0.0/16", "site": "north",
        "latitude": 60.0, "longitude": 10.0,
    }  # fmt: skip
    assert north["expires"] > 0 and len(north["urls"]) == 3
    south = s.steer(KEY, SOUTH)
    assert south["appliances"][0]["id"] == "s1"
    assert site_of(south, 1) == "north"
    # every north client gets the same north box for one object (rendezvous)
    assert {s.first(KEY, f"127.1.{n}.9") for n in range(1, 8)} == {north["appliances"][0]["id"]}
    nowhere = s.steer(KEY, NOWHERE)
    assert nowhere["class"] == "location_miss" and nowhere["location"]["source"] == "unknown"
    # the signed URL works at the appliance; tampered, it does not
    status, body = fetch(north["urls"][0], NORTH)
    assert status == 200 and body == fleet.catalog[KEY]
    assert fetch(north["urls"][0].replace("movie.mp4", "master.m3u8"))[0] == 403
    assert fetch(north["urls"][0].split("?")[0])[0] == 403


def test_holders_are_preferred(fleet: Fleet) -> None:
    fleet.all_candidates()
    s = fleet.steering
    key = "titles/81234/720p/seg_00002.m4s"
    doc = s.steer(key, NORTH)
    assert doc["class"] == "content_miss"
    second = doc["appliances"][1]["id"]
    # a player fetched it from the second north box: once its inventory says so,
    # that box comes first for the object
    assert fetch(doc["urls"][1])[0] == 200
    wait_for(lambda: s.first(key, NORTH) == second, 15)
    again = s.steer(key, NORTH)
    assert again["class"] == "hit" and again["appliances"][0]["holds"] is True
    hits = re.search(
        r'edgefleet_steer_answers_total\{class="hit",site="north"\} (\S+)', s.metrics()
    )
    assert hits and float(hits.group(1)) >= 1
    view = s.fleet()[second]
    assert view["inventory"]["keys"] >= 1 and view["inventory"]["etag"]


def test_redirect(fleet: Fleet) -> None:
    fleet.all_candidates()
    status, headers, body = fleet.steering.request(f"/r/{KEY}", SOUTH)
    assert status == 302 and body == b""
    assert headers["location"].startswith(f"http://127.0.0.1:{fleet.ports['s1']}/{KEY}?token=k1~")
    assert headers["link"].count("rel=duplicate") == 2 and "pri=2" in headers["link"]
    assert headers["cache-control"] == "no-store"
    # a web player's fetch follows the redirect only when the answer allows its origin
    assert headers["access-control-allow-origin"] == "*"
    assert (
        fleet.steering.request(f"/steer?object={KEY}", SOUTH)[1]["access-control-allow-origin"]
        == "*"
    )
    assert fetch(headers["location"], SOUTH)[0] == 200
    refused = fleet.steering.request("/r/a/../b", SOUTH)
    assert refused[0] == 400 and refused[1]["access-control-allow-origin"] == "*"
    assert fleet.steering.request("/steer", SOUTH)[0] == 400
    assert fleet.steering.request("/steer?object=a%00b", SOUTH)[0] == 400


def test_access_log(fleet: Fleet, tmp_path: Path) -> None:
    log = tmp_path / "steer-access.log"
    # both north boxes hold KEY, whichever ran before: the answer below is a hit
    for name in ("n1", "n2"):
        status = fleet.apps[name].get(f"/{KEY}?token={sign(KEY, 'k1', SECRET.encode(), 2**31)}")[0]
        assert status == 200
    s = Steering(fleet.config, "--access-log", str(log)).start()
    try:
        wait_for(lambda: all(a["candidate"] for a in s.fleet().values()), 20)
        wait_for(lambda: s.steer(KEY, SOUTH)["appliances"][1]["holds"], 20)  # seen held
        s.steer(KEY, NORTH)
        assert s.request(f"/r/{KEY}", PROXY, {"X-Forwarded-For": SOUTH})[0] == 302
        assert s.request("/nowhere", NORTH)[0] == 404

        def lines() -> list[dict[str, Any]] | None:
            got = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
            # not the test's own polling, nor the wait above (answers to SOUTH)
            got = [
                x
                for x in got
                if x["key"] != "/_steer/fleet" and not (x["client"] == SOUTH and x["status"] == 200)
            ]
            return got if len(got) >= 3 else None

        north, south, other = wait_for(lines)  # written within a second
        assert north["client"] == NORTH and north["key"] == KEY and north["status"] == 200
        assert north["class"] == "hit" and north["site"] == "north"
        assert north["to"] in ("n1", "n2") and north["location"] == "prefix"
        assert north["method"] == "GET" and north["duration_ms"] >= 0
        assert north["time"].endswith("Z")
        # the client the decision used: the proxy's X-Forwarded-For
        assert south["client"] == SOUTH and south["status"] == 302 and south["to"] == "s1"
        assert other["key"] == "/nowhere" and other["status"] == 404 and other["class"] is None
    finally:
        assert s.stop() == 0
    bad = Steering(fleet.config, "--access-log", str(tmp_path / "file" / "log"))
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(RuntimeError, match="--access-log / access_log: cannot open"):
        bad.start()


def test_path_tokens_reach_a_whole_title(fleet: Fleet) -> None:
    """With ``token_in = path`` a player resolving a playlist's relative URLs keeps
    the token: every object of the title is served, nothing else is."""
    from urllib.parse import urljoin

    s = Steering(fleet.config, "--token-in", "path").start()
    try:
        wait_for(lambda: all(a["candidate"] for a in s.fleet().values()), 20)
        doc = s.steer("titles/81234/master.m3u8", NORTH)
        first = doc["urls"][0]
        assert "/_edge/t/" in first and "?" not in first
        assert fetch(first, NORTH) == (200, fleet.catalog["titles/81234/master.m3u8"])
        segment = urljoin(first, "720p/seg_00001.m4s")  # as a player resolves it
        assert fetch(segment, NORTH) == (200, fleet.catalog["titles/81234/720p/seg_00001.m4s"])
        assert fetch(urljoin(first, "../../empty.ts"), NORTH)[0] in (403, 404)
        assert fetch(urljoin(first, "/empty.ts"), NORTH)[0] == 403  # no token at all
        # a top-level key has no directory: its token stays in the query
        top = s.steer("empty.ts", NORTH)["urls"][0]
        assert "?token=" in top and fetch(top, NORTH)[0] == 200
    finally:
        assert s.stop() == 0


def test_trusted_proxy(fleet: Fleet) -> None:
    fleet.all_candidates()
    s = fleet.steering
    assert site_of(s.steer(KEY, PROXY, **{"X-Forwarded-For": SOUTH})) == "south"
    assert site_of(s.steer(KEY, PROXY, **{"X-Forwarded-For": f"{NORTH}, {SOUTH}"})) == "south"
    # not a trusted proxy: its X-Forwarded-For is ignored
    assert site_of(s.steer(KEY, NORTH, **{"X-Forwarded-For": SOUTH})) == "north"


def test_kill_drain_restart(fleet: Fleet) -> None:
    fleet.all_candidates()
    s = fleet.steering
    victim = s.first(KEY, NORTH)
    assert victim in ("n1", "n2")
    other = "n2" if victim == "n1" else "n1"
    before = s.fleet()[victim]["transitions"]
    fleet.apps[victim].kill()
    # gone from answers after FALL failed polls (the wait is generous; the
    # state below says it went down by hysteresis, not by chance)
    wait_for(lambda: victim not in [a["id"] for a in s.steer(KEY, NORTH)["appliances"]], 15)
    view = s.fleet()[victim]
    assert view["state"] == "down" and view["fail_streak"] >= FALL
    assert view["transitions"] == before + 1 and view["last_error"]
    assert view["inventory"] is None
    assert s.first(KEY, NORTH) == other

    # draining: still reachable, no new players
    assert fleet.apps["s1"].request("POST", "/_edge/admin/drain", AUTH)[0] == 200
    wait_for(lambda: "s1" not in [a["id"] for a in s.steer(KEY, SOUTH)["appliances"]], 15)
    view = s.fleet()["s1"]
    assert view["state"] == "up" and view["reason"] == "draining" and not view["candidate"]
    doc = s.steer(KEY, SOUTH)
    assert doc["class"] == "health_miss" and doc["appliances"][0]["id"] == other
    assert fleet.apps["s1"].request("POST", "/_edge/admin/undrain", AUTH)[0] == 200
    wait_for(lambda: s.first(KEY, SOUTH) == "s1", 15)

    # the north box comes back once RISE polls in a row succeed
    fleet.apps[victim] = fleet._start(victim)
    wait_for(lambda: s.fleet()[victim]["state"] == "up", 20)
    view = s.fleet()[victim]
    assert view["ok_streak"] >= RISE and view["transitions"] == before + 2
    wait_for(lambda: s.first(KEY, NORTH) == victim, 10)
    # each change is logged once, at INFO, however many polls saw it
    said = told(s.stderr)
    assert said[victim][-3:] == ["up", "down", "up"]
    assert said["s1"][-3:] == ["up", "draining", "up"]
    assert all(level == "INFO" for level in told(s.stderr, levels=True))
    text = s.metrics()
    assert f'edgefleet_steer_health_transitions_total{{appliance="{victim}",to="down"}}' in text
    assert 'edgefleet_steer_health_transitions_total{appliance="s1",to="draining"} 1.0' in text
    assert re.search(
        r'edgefleet_steer_answers_total\{class="health_miss",site="south"\} [1-9]', text
    )


def told(lines: list[str], levels: bool = False) -> Any:
    """What the log said of each appliance's state, in order (or the levels)."""
    said: dict[str, list[str]] = {}
    found = []
    for line in lines:
        m = re.search(r" (\w+) edgefleet\.steer\[\d+\]: appliance (\S+) \(.*\) is (\w+)", line)
        if m:
            found.append(m.group(1))
            said.setdefault(m.group(2), []).append(m.group(3))
    return found if levels else said


def test_reload_without_dropping_requests(fleet: Fleet) -> None:
    fleet.all_candidates()
    s = fleet.steering
    assert s.steer(KEY, NOWHERE)["location"]["source"] == "unknown"
    failures: list[Any] = []
    answered = [0]
    done = threading.Event()

    def hammer() -> None:
        while not done.is_set():
            try:
                status, _, _ = s.request(f"/steer?object={KEY}", NORTH)
                if status != 200:
                    failures.append(status)
                answered[0] += 1
            except OSError as exc:
                failures.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        fleet.write_config(("127.2.0.0/16", "127.3.0.0/16"))
        s.send(signal.SIGHUP)
        wait_for(lambda: s.steer(KEY, NOWHERE)["location"].get("site") == "south", 15)
        # a broken file is refused and the running configuration kept
        good = fleet.config.read_text()
        fleet.config.write_text(good + "\nbogus = 1\n")
        s.send(signal.SIGHUP)
        wait_for(lambda: 'edgefleet_steer_reloads_total{result="error"}' in s.metrics(), 15)
        assert s.steer(KEY, NOWHERE)["location"]["site"] == "south"
        fleet.config.write_text(good)
        start = answered[0]
        wait_for(lambda: answered[0] > start + 50)  # requests went on across both reloads
    finally:
        done.set()
        for t in threads:
            t.join()
    assert failures == []
    # health and inventory survived the reload for the unchanged appliances
    assert all(a["state"] == "up" for a in s.fleet().values())
    assert any("reload failed" in line for line in s.stderr)
    fleet.write_config()
    s.send(signal.SIGHUP)
    wait_for(lambda: s.steer(KEY, NOWHERE)["location"]["source"] == "unknown", 15)


def test_operational_endpoints(fleet: Fleet) -> None:
    fleet.all_candidates()
    s = fleet.steering
    status, _, body = s.request("/_steer/health")
    doc = json.loads(body)
    assert status == 200 and doc["appliances"] == 3 and doc["up"] == 3 and doc["candidates"] == 3
    text = s.metrics()
    assert 'edgefleet_steer_appliance_up{appliance="n1",site="north"} 1.0' in text
    assert re.search(r'edgefleet_steer_requests_total\{endpoint="steer",status="200"\} [1-9]', text)
    assert "edgefleet_steer_request_duration_seconds_bucket" in text


def test_no_appliance(tmp_path: Path) -> None:
    dead = free_port()
    config = tmp_path / "steer.toml"
    config.write_text(
        'health_interval = "0.3s"\nhealth_timeout = "0.3s"\n'
        + appliance_toml("gone", dead, "north", 60.0, ["127.1.0.0/16"])
    )
    s = Steering(config).start()
    try:
        status, headers, body = s.request(f"/steer?object={KEY}", NORTH)
        assert status == 503 and headers["cache-control"] == "no-store"
        assert body.startswith(b"503 Service Unavailable: no appliance can serve this object")
        assert b"1 down" in body
        assert s.request(f"/r/{KEY}", NORTH)[0] == 503
        text = s.metrics()
        assert 'edgefleet_steer_answers_total{class="no_appliance",site="north"} 2.0' in text
    finally:
        assert s.stop() == 0
    s = Steering(config, "--origin-fallback", "http://origin.example/videos").start()
    try:
        doc = s.steer(KEY, NORTH)
        assert doc["urls"] == [f"http://origin.example/videos/{KEY}"]
        assert doc["class"] == "no_appliance" and doc["origin"] is True
        status, headers, _ = s.request(f"/r/{KEY}", NORTH)
        assert status == 302 and headers["location"] == f"http://origin.example/videos/{KEY}"
    finally:
        assert s.stop() == 0


def test_connection_limits_are_the_operators(tmp_path: Path) -> None:
    """``header_timeout`` and ``keepalive_timeout`` hold on steering's port as
    on the appliance's: late headers get 408, and 0 turns keep-alive off."""
    config = tmp_path / "steer.toml"
    config.write_text(appliance_toml("gone", free_port(), "north", 60.0, ["127.1.0.0/16"]))
    s = Steering(config, "--header-timeout", "1s", "--keepalive-timeout", "0").start()
    try:
        get = f"GET /steer?object={KEY} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        raw = raw_request(s.port, get + get)
        assert statuses(raw) == [503]  # one answer, then closed
        assert b"Connection: close" in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
            c.sendall(b"GET /steer?object=x HTTP/1.1\r\nHost: x\r\n")  # and nothing more
            late = c.recv(65536)
        assert statuses(late) == [408]
    finally:
        assert s.stop() == 0
