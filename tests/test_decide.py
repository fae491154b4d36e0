"""steering.decide, .health and .answer: the decision as a pure function."""

from __future__ import annotations

import ipaddress

import pytest

from edge.core.inventory import build
from edge.core.signing import Verifier
from steering import answer
from steering.config import ApplianceSpec, SteerConfig
from steering.decide import (
    CONTENT_MISS,
    HEALTH_MISS,
    HIT,
    LOCATION_MISS,
    NO_APPLIANCE,
    decide,
)
from steering.fleet import Fleet, distance_km
from steering.health import DOWN, UNKNOWN, UP, FleetState, Health
from steering.localize import parse_coverage_zones
from steering.prefixes import address, parse_network

KEY = "titles/81234/720p/seg_00001.m4s"


def spec(id_: str, site: str, lat: float, lon: float, *prefixes: str, **kw) -> ApplianceSpec:  # type: ignore[no-untyped-def]
    return ApplianceSpec(
        id_, f"http://{id_}.example:8080", site, lat, lon,
        tuple(parse_network(p) for p in prefixes), **kw,
    )  # fmt: skip


def fleet(**cfg_kw) -> Fleet:  # type: ignore[no-untyped-def]
    specs = [
        spec("ams-1", "ams", 52.37, 4.90, "192.0.2.0/24"),
        spec("ams-2", "ams", 52.37, 4.90, "192.0.2.0/24"),
        spec("ams-3", "ams", 52.37, 4.90, "192.0.2.0/24"),
        spec("fra-1", "fra", 50.11, 8.68, "198.51.100.0/24"),
        spec("lon-1", "lon", 51.51, -0.13, "203.0.113.0/24", "2001:db8::/32"),
    ]
    zones = parse_coverage_zones(
        {
            "coverageZones": {
                "paris": {
                    "coordinates": {"latitude": 48.86, "longitude": 2.35},
                    "network": ["100.64.0.0/16"],
                },
                "fra": {"network": ["100.65.0.0/16"]},
            }
        },
        {"ams": (52.37, 4.90), "fra": (50.11, 8.68), "lon": (51.51, -0.13)},
    )
    return Fleet(SteerConfig(appliances=specs, **cfg_kw), zones)


def all_up(f: Fleet) -> FleetState:
    s = FleetState.sized(len(f.specs))
    s.candidate = [True] * len(f.specs)
    return s


def run(f: Fleet, s: FleetState, client: str, key: str = KEY, answers: int = 3):  # type: ignore[no-untyped-def]
    version, n = address(client)
    return decide(f, s, key, f.localizer.locate(version, n, client), answers)


def ids(f: Fleet, d) -> list[str]:  # type: ignore[no-untyped-def]
    return [f.specs[i].id for i in d.chosen]


def test_own_site_first_and_another_site_last() -> None:
    f = fleet()
    s = all_up(f)
    d = run(f, s, "192.0.2.10")
    got = ids(f, d)
    assert got[0].startswith("ams-") and got[1].startswith("ams-")
    assert got[2] == "lon-1"  # nearest other site (358 km; Frankfurt 364), not a third ams box
    assert d.location.source == "prefix" and d.location.site == "ams"
    assert d.klass == CONTENT_MISS and d.site == "ams"  # no inventory known yet
    d = run(f, s, "198.51.100.7")
    assert ids(f, d)[0] == "fra-1"
    assert f.sites[f.site_of[d.chosen[1]]] == "ams"  # Amsterdam is nearer Frankfurt than London
    assert ids(f, run(f, s, "2001:db8::5"))[0] == "lon-1"


def test_rendezvous_concentrates_each_object_on_one_box() -> None:
    f = fleet()
    s = all_up(f)
    firsts = {ids(f, run(f, s, f"192.0.2.{n}"))[0] for n in range(1, 50)}
    assert len(firsts) == 1  # every client of the site: the same box for one object
    spread = {ids(f, run(f, s, "192.0.2.1", key=f"titles/{n}.ts"))[0] for n in range(60)}
    assert spread == {"ams-1", "ams-2", "ams-3"}


def test_holders_first_within_a_site_not_across() -> None:
    f = fleet()
    s = all_up(f)
    first = ids(f, run(f, s, "192.0.2.1"))[0]
    other = next(a for a in ("ams-1", "ams-2", "ams-3") if a != first)
    s.filters[f.index[other]] = build([KEY], 1)
    d = run(f, s, "192.0.2.1")
    assert ids(f, d)[0] == other and d.holds[0] and d.klass == HIT
    # London holds it but Amsterdam is nearer: distance wins across sites
    s2 = all_up(f)
    s2.filters[f.index["lon-1"]] = build([KEY], 1)
    d = run(f, s2, "192.0.2.1")
    assert ids(f, d)[0].startswith("ams-") and d.klass == CONTENT_MISS


def test_health_and_location_misses() -> None:
    f = fleet()
    s = all_up(f)
    for a in ("ams-1", "ams-2", "ams-3"):
        s.candidate[f.index[a]] = False
    d = run(f, s, "192.0.2.1")
    assert ids(f, d)[0] == "lon-1" and d.klass == HEALTH_MISS and d.site == "ams"
    s = all_up(f)
    d = run(f, s, "100.64.1.1")  # coverage zone: Paris, no appliance prefix
    assert d.location.source == "zone" and d.location.zone == "paris"
    assert d.klass == LOCATION_MISS and ids(f, d)[0] == "lon-1"  # London is nearest Paris
    d = run(f, s, "100.65.1.1")  # a zone named after a site takes its position
    assert ids(f, d)[0] == "fra-1" and d.location.site == "fra"
    d = run(f, s, "8.8.8.8")
    assert d.location.source == "unknown" and d.klass == LOCATION_MISS


def test_no_appliance() -> None:
    f = fleet()
    s = FleetState.sized(len(f.specs))
    d = run(f, s, "192.0.2.1")
    assert d.chosen == [] and d.klass == NO_APPLIANCE and d.site == "ams"
    d = run(f, s, "8.8.8.8")
    assert d.klass == NO_APPLIANCE and d.site == "none"


def test_answer_count_and_one_site() -> None:
    f = fleet()
    s = all_up(f)
    assert len(run(f, s, "192.0.2.1", answers=1).chosen) == 1
    assert len(set(run(f, s, "192.0.2.1", answers=5).chosen)) == 5
    for a in ("fra-1", "lon-1"):
        s.candidate[f.index[a]] = False
    assert {f.specs[i].site for i in run(f, s, "192.0.2.1").chosen} == {"ams"}


def test_unknown_clients_use_the_default_location() -> None:
    f = fleet(default_location=(51.5, -0.1))
    assert ids(f, run(f, all_up(f), "8.8.8.8"))[0] == "lon-1"


def test_distance() -> None:
    assert distance_km(52.37, 4.90, 50.11, 8.68) == pytest.approx(364, abs=5)
    assert distance_km(0, 179.9, 0, -179.9) == pytest.approx(22, abs=1)


def test_hysteresis() -> None:
    h = Health()
    assert h.state == UNKNOWN
    assert h.observe(True, 0, rise=2, fall=3) == UP  # the first poll decides
    assert h.observe(False, 1, 2, 3) is None and h.observe(False, 2, 2, 3) is None
    assert h.observe(False, 3, 2, 3) == DOWN and h.fail_streak == 3 and h.changed_at == 3
    assert h.observe(True, 4, 2, 3) is None and h.state == DOWN
    assert h.observe(False, 5, 2, 3) is None and h.ok_streak == 0  # a failure resets the streak
    assert h.observe(True, 6, 2, 3) is None
    assert h.observe(True, 7, 2, 3) == UP and h.transitions == 3
    first = Health()
    assert first.observe(False, 0, 2, 3) == DOWN


def test_candidacy() -> None:
    h = Health()
    h.observe(True, 0, 2, 3)
    h.report({"status": "ok", "draining": False, "egress_bytes_per_second": 1_000_000_000})
    assert h.why_not(None, 0.9) == ""  # no capacity configured: no load limit
    assert h.why_not(10e9, 0.9) == ""  # 8 Gbit/s of 10
    assert h.why_not(8.5e9, 0.9) == "overloaded"
    h.report({"status": "draining", "draining": True})
    assert h.why_not(None, 0.9) == "draining"
    h.report({"status": "failing", "draining": False})
    assert h.why_not(None, 0.9) == "failing"
    # what is shown (logs, metrics, pages) and what decides agree, also for a
    # status steering does not know
    for status, shown in (("ok", "up"), ("draining", "draining"), ("degraded", "failing")):
        h.report({"status": status})
        assert h.shown() == shown
        assert h.why_not(None, 0.9) == ("" if shown == "up" else shown)
    h.observe(False, 1, 2, 1)
    assert h.shown() == h.why_not(None, 0.9) == "down"
    with pytest.raises(ValueError):
        h.report({"nope": 1})


def test_client_address() -> None:
    trusted = [parse_network("10.255.0.0/24")]
    assert answer.client_address("192.0.2.1", "198.51.100.1", trusted) == "192.0.2.1"
    assert answer.client_address("10.255.0.1", "198.51.100.1", trusted) == "198.51.100.1"
    # a client-made entry on the left is not believed: the rightmost untrusted hop
    got = answer.client_address("10.255.0.1", "6.6.6.6, 198.51.100.1, 10.255.0.2", trusted)
    assert got == "198.51.100.1"
    assert answer.client_address("10.255.0.1", "garbage", trusted) == "10.255.0.1"
    assert answer.client_address("10.255.0.1", "[2001:db8::1]:443", trusted) == "2001:db8::1"
    assert answer.client_address("10.255.0.1", None, trusted) == "10.255.0.1"


def test_signed_urls() -> None:
    f = fleet(
        url_signing_keys={"k1": b"0123456789abcdef", "k2": b"fedcba9876543210"},
        signing_key_id="k2",
        token_prefix_v4=24,
    )
    d = run(f, all_up(f), "192.0.2.77", key="dir with space/ü.ts")
    urls, expires = answer.urls(d, f, f.cfg, "192.0.2.77", 1000.0)
    assert expires == 1000 + 6 * 3600
    assert urls[0].startswith(f"{f.specs[d.chosen[0]].url}/dir%20with%20space/%C3%BC.ts?token=k2~")
    query = urls[0].split("?", 1)[1]
    v = Verifier(f.cfg.url_signing_keys)
    assert v.check("dir with space/ü.ts", query, "192.0.2.1", 1000.0) is None
    assert v.check("dir with space/ü.ts", query, "192.0.3.1", 1000.0) == "wrong_prefix"
    doc = answer.document(d, f, urls, expires)
    assert doc["location"]["prefix"] == "192.0.2.0/24" and doc["class"] == CONTENT_MISS
    unsigned = fleet()
    urls, _ = answer.urls(d, unsigned, unsigned.cfg, "192.0.2.77", 1000.0)
    assert "?" not in urls[0]
    assert answer.origin_url(fleet(origin_fallback="https://origin.example/v").cfg, "a b") == (
        "https://origin.example/v/a%20b"
    )


def test_big_fleet_ranks_only_what_it_needs() -> None:
    import random

    rng = random.Random(7)
    specs = []
    for n in range(1000):
        site = n // 4
        net = ipaddress.IPv4Network((0x0A000000 + (n << 8), 24))
        specs.append(
            spec(f"a{n}", f"s{site}", rng.uniform(-60, 60), rng.uniform(-180, 180), str(net))
        )
    f = Fleet(SteerConfig(appliances=specs))
    s = all_up(f)
    d = run(f, s, "10.0.5.9")
    assert f.specs[d.chosen[0]].id == "a5" and len(d.chosen) == 3
    assert len({f.site_of[i] for i in d.chosen}) >= 2
