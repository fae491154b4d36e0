"""Steering against what clients and operators really send: forwarded addresses
with ports, reserved keys, ``+`` in keys, Traffic Router's coverage zone files.
Pure rules first, then a real ``edgefleet steer`` with a real appliance."""

from __future__ import annotations

import ipaddress
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import free_port, make_catalog, wait_for
from hypothesis import given
from hypothesis import strategies as st
from steer_fleet import Steering, appliance_toml, start_appliance

from steering import answer
from steering.config import ApplianceSpec, SteerConfig
from steering.fleet import Fleet
from steering.localize import parse_coverage_zones
from steering.prefixes import address, parse_network

TRUSTED = [parse_network("10.255.0.0/24"), parse_network("127.0.0.0/8")]


def tr_czf(prefix: str = "10.") -> dict[str, Any]:
    """A coverage zone file in the shape of Traffic Router's own test file:
    top-level ``revision`` and ``customerName``, coordinates as strings,
    ``network6`` entries with host bits set, the same network in several zones
    once masked."""
    zones = {}
    for n in range(3):
        zones[f"cache-group-{n}"] = {
            "network6": [f"2001:DB8:BEEF:{n}::/48", f"2001:DB8:F00D:{n}::/37"],
            "network": [f"{prefix}{n}.0.0/20", f"{prefix}{10 + n}.9.0/16"],
            "coordinates": {"longitude": f"-{100 + n}.5", "latitude": "48.0"},
        }
    return {"revision": "Wed May  4 15:04:01 2016", "customerName": "Acme", "coverageZones": zones}


# -- pure rules ------------------------------------------------------------------


def test_forwarded_entries_with_ports() -> None:
    c = answer.client_address
    assert c("10.255.0.1", "1.2.3.4:80", TRUSTED) == "1.2.3.4"
    assert c("10.255.0.1", "[2001:db8::1]:443", TRUSTED) == "2001:db8::1"
    assert c("10.255.0.1", "[2001:db8::1]", TRUSTED) == "2001:db8::1"
    assert c("10.255.0.1", "2001:db8::1", TRUSTED) == "2001:db8::1"
    # every hop trusted: the leftmost, without its port (it was returned as written)
    assert c("127.0.0.1", "127.0.0.2:80", TRUSTED) == "127.0.0.2"
    assert c("127.0.0.1", "[::ffff:127.0.0.2]:80, 127.0.0.3", TRUSTED) == "::ffff:127.0.0.2"
    for garbage in ("1.2.3.4:", "1.2.3.4:x", "[2001:db8::1", "[2001:db8::1]x", "[]:80",
                    "unknown", "1.2.3.4\x00", "fe80::1%eth0", ":80", "é"):  # fmt: skip
        assert c("10.255.0.1", f"5.6.7.8, {garbage}", TRUSTED) == "10.255.0.1", garbage


@given(
    st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(str),
        st.ip_addresses(v=4).map(lambda a: f"{a}:{8080}"),
        st.ip_addresses(v=6).map(lambda a: f"[{a}]:443"),
        st.text(max_size=40),
    ),
    st.lists(st.sampled_from(["127.0.0.9", "10.255.0.3:1", " ", ""]), max_size=3),
)
def test_the_client_is_always_an_address(hop: str, after: list[str]) -> None:
    """Whatever a trusted proxy forwards, the client is a parseable address
    (the decision and the token's prefix binding parse it)."""
    got = answer.client_address("127.0.0.1", ", ".join([hop, *after]), TRUSTED)
    address(got)
    ipaddress.ip_address(got)


def test_coverage_zones_with_host_bits_are_masked_and_named() -> None:
    warnings: list[str] = []
    zones = parse_coverage_zones(tr_czf(), {}, warnings)
    nets = {str(net): loc.zone for net, loc in zones}
    assert nets["2001:db8:f000::/37"] == "cache-group-0"  # 2001:DB8:F00D:0::/37 masked
    assert nets["2001:db8:beef::/48"] == "cache-group-0"  # exact already
    assert nets["10.10.0.0/16"] == "cache-group-0"
    # each masked entry is named, with the zone and what it became
    text = "\n".join(warnings)
    assert "zone 'cache-group-1': network6 '2001:DB8:F00D:1::/37' has host bits set" in text
    assert "using 2001:db8:f000::/37" in text
    assert "zone 'cache-group-2': network '10.12.9.0/16' has host bits set; using 10.12.0.0/16" in (
        text
    )
    # a masked network a second zone claims again stays the first zone's
    assert "already in zone 'cache-group-0'" in text
    assert not any("'10.1.0.0/20'" in w for w in warnings)  # exact entries are not warned about
    lat_lon = {loc.zone: (loc.latitude, loc.longitude) for _, loc in zones}
    assert lat_lon["cache-group-2"] == (48.0, -102.5)  # coordinates given as strings
    with pytest.raises(ValueError, match="cache-group-0"):
        bad = tr_czf()
        bad["coverageZones"]["cache-group-0"]["network"].append("10.0.0.0/33")
        parse_coverage_zones(bad, {})


def test_unknown_clients_go_to_the_centroid_of_the_sites() -> None:
    """Three boxes at one site and one at another: the default position is
    halfway between the sites, not pulled towards the bigger one."""
    specs = [ApplianceSpec(f"a{n}", f"http://a{n}:1", "west", 0.0, -10.0) for n in range(3)]
    specs.append(ApplianceSpec("e1", "http://e1:1", "east", 0.0, 10.0))
    unknown = Fleet(SteerConfig(appliances=specs)).localizer.unknown
    assert (unknown.latitude, unknown.longitude) == (0.0, 0.0)


# -- a real steering process ---------------------------------------------------

KEY = "titles/81234/movie.mp4"


@pytest.fixture(scope="module")
def steer(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("steer-hostile")
    origin = tmp / "origin"
    origin.mkdir()
    make_catalog(origin)
    (origin / "a+b.ts").write_bytes(b"plus")
    port = free_port()
    app = start_appliance(tmp, "n1", origin, port)
    czf = tmp / "czf.json"
    czf.write_text(json.dumps(tr_czf("127.")))
    config = tmp / "steer.toml"
    config.write_text(
        'health_interval = "0.3s"\nhealth_timeout = "0.3s"\n'
        'trusted_proxies = ["127.0.0.0/8"]\n'
        'url_signing_keys = {k1 = "steer-test-secret-0123456789"}\n'
        "token_prefix_v4 = 24\ntoken_prefix_v6 = 48\n"
        f'coverage_zones = "{czf}"\n'
        + appliance_toml("n1", port, "north", 60.0, ["1.2.3.0/24", "2001:db8::/32"])
    )
    log = tmp / "steer-access.log"
    s = Steering(config, "--access-log", str(log)).start()
    s.log = log  # type: ignore[attr-defined]
    wait_for(lambda: all(a["candidate"] for a in s.fleet().values()), 20)
    yield s
    assert s.stop() == 0
    app.stop()


def test_forwarded_for_with_ports_over_http(steer: Steering) -> None:
    """The 500: a trusted proxy forwarding ``127.0.0.2:80`` with prefix binding on."""
    for forwarded, source in (
        ("127.0.0.2:80", "zone"),  # every hop trusted: the leftmost, in 127.0.0.0/20
        ("1.2.3.4:80", "prefix"),
        ("[2001:db8::1]:443", "prefix"),
        ("nonsense:80", "zone"),  # not an address: the proxy is the client
    ):
        status, _, body = steer.request(
            f"/steer?object={KEY}", "127.0.0.1", {"X-Forwarded-For": forwarded}
        )
        assert status == 200, (forwarded, body)
        assert json.loads(body)["location"]["source"] == source, forwarded
        assert steer.request(f"/r/{KEY}", "127.0.0.1", {"X-Forwarded-For": forwarded})[0] == 302


def test_reserved_keys_are_refused(steer: Steering) -> None:
    for path in (
        "/steer?object=_edge/inventory",
        "/steer?object=_edge%2Finventory",
        "/steer?object=_edge",
        "/steer?object=_edge/t/x/titles/a.ts",
        "/r/_edge/inventory",
        "/r/_edge/health",
    ):
        status, _, body = steer.request(path)
        assert status == 400 and b"_edge/" in body, path
    assert steer.request("/steer?object=_edgeless/a.ts")[0] == 200


def test_plus_is_a_plus_in_both_endpoints(steer: Steering) -> None:
    doc = json.loads(steer.request("/steer?object=a+b.ts")[2])
    assert doc["object"] == "a+b.ts" and doc["urls"][0].split("?")[0].endswith("/a+b.ts")
    status, headers, _ = steer.request("/r/a+b.ts")
    assert status == 302 and headers["location"].split("?")[0].endswith("/a+b.ts")
    assert json.loads(steer.request("/steer?object=a%2Bb.ts")[2])["object"] == "a+b.ts"
    assert json.loads(steer.request("/steer?object=a%20b.ts")[2])["object"] == "a b.ts"
    status, headers, _ = steer.request("/r/a%20b.ts")
    assert headers["location"].split("?")[0].endswith("/a%20b.ts")
    # and the URL it answers fetches the object with the plus in its name
    import urllib.request

    with urllib.request.urlopen(steer.request("/r/a+b.ts")[1]["location"]) as r:
        assert r.status == 200 and r.read() == b"plus"


def test_coverage_zone_file_of_traffic_router_loads(steer: Steering) -> None:
    said = "".join(steer.stderr)
    assert "network6 '2001:DB8:F00D:1::/37' has host bits set; using 2001:db8:f000::/37" in said
    assert "network '127.11.9.0/16' has host bits set; using 127.11.0.0/16" in said
    loc = json.loads(steer.request(f"/steer?object={KEY}", "127.11.0.9")[2])["location"]
    assert loc["source"] == "zone" and loc["zone"] == "cache-group-1"
    assert loc["latitude"] == 48.0 and loc["longitude"] == -101.5


def test_access_log_time_is_the_wall_clock(steer: Steering) -> None:
    before = time.time()
    assert steer.request("/steer?object=access/log.ts", "127.0.0.9")[0] == 200

    def line() -> dict[str, Any] | None:
        for text in steer.log.read_text().splitlines():  # type: ignore[attr-defined]
            doc = json.loads(text)
            if doc["key"] == "access/log.ts":
                return doc
        return None

    doc = wait_for(line)
    logged = datetime.strptime(doc["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before - 1 <= logged.timestamp() <= time.time() + 1
    assert doc["location"] == "zone" and doc["client"] == "127.0.0.9"
