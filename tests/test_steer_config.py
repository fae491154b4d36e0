"""steering.config and the fleet's files: errors name the option; zones and GeoIP load."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from edge.cli import build_parser
from steering.config import (
    ApplianceSpec,
    ConfigError,
    fleet_problems,
    load_steer_config,
    parse_bitrate,
    place,
    prefix_conflicts,
)
from steering.decide import decide
from steering.fleet import compile_fleet
from steering.health import FleetState
from steering.prefixes import address, parse_network

ROOT = Path(__file__).resolve().parent.parent
APPLIANCE = """
[[appliance]]
id = "a1"
url = "http://127.0.0.1:8080/"
site = "north"
latitude = 60
longitude = 10
prefixes = ["127.1.0.0/16"]
capacity = "1Gbit"
"""


def load(*argv: str):  # type: ignore[no-untyped-def]
    return load_steer_config(build_parser().parse_args(["steer", *argv]))


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "steer.toml"
    p.write_text(text)
    return str(p)


def test_deploy_example_loads() -> None:
    cfg = load("--config", str(ROOT / "deploy" / "steer.toml"))
    assert [a.id for a in cfg.appliances] == ["ams-1", "ams-2", "fra-1"]
    assert cfg.signing_key() == ("k2024a", b"replace-with-a-long-random-secret")
    assert cfg.appliances[0].capacity == 10e9 and cfg.appliances[1].weight == 2.0
    fleet = compile_fleet(cfg)
    assert fleet.sites == ["ams", "fra"] and fleet.prefix_count == 3


def test_steer_table_and_flags_win(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[serve]\nstore = ["/x"]\n[steer]\nanswers = 2\nhealth_interval = "5s"\n'
        + APPLIANCE.replace("[[appliance]]", "[[steer.appliance]]"),
    )
    cfg = load("--config", path, "--answers", "4", "--listen", "127.0.0.1:0")
    assert cfg.answers == 4 and cfg.health_interval == 5.0 and cfg.listen == ("127.0.0.1", 0)
    assert cfg.appliances[0].url == "http://127.0.0.1:8080"  # trailing slash dropped
    assert (cfg.header_timeout, cfg.keepalive_timeout, cfg.tls_handshake_timeout) == (15, 75, 10)
    cfg = load("--config", path, "--header-timeout", "2s", "--keepalive-timeout", "0")
    assert cfg.header_timeout == 2.0 and cfg.keepalive_timeout == 0.0
    cfg = load("--config", path, "--url-signing-key", "k=0123456789abcdef")
    assert cfg.signing_key() == ("k", b"0123456789abcdef")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("answers = 0\n" + APPLIANCE, "--answers / answers"),
        ("bogus = 1\n" + APPLIANCE, "unknown option 'bogus'"),
        ('health_interval = "soon"\n' + APPLIANCE, "--health-interval / health_interval"),
        ('health_timeout = "3s"\n' + APPLIANCE, "health_timeout must not exceed"),
        ('header_timeout = "0s"\n' + APPLIANCE, "--header-timeout / header_timeout"),
        ('trusted_proxies = ["10.0.0.1/8"]\n' + APPLIANCE, "--trusted-proxy / trusted_proxies"),
        ("", "no appliances"),
        (APPLIANCE + APPLIANCE, "'a1' is configured twice"),
        (APPLIANCE.replace("127.1.0.0/16", "127.1.0.1/16"), "appliance 'a1': invalid prefixes"),
        (APPLIANCE.replace("latitude = 60", "latitude = 91"), "appliance 'a1': invalid latitude"),
        (APPLIANCE.replace('"1Gbit"', '"fast"'), "appliance 'a1': invalid capacity"),
        (APPLIANCE.replace('id = "a1"', 'id = "a 1"'), "appliance[0].id"),
        (APPLIANCE + "colour = 1\n", "appliance[0]: unknown key 'colour'"),
        (APPLIANCE.replace('site = "north"\n', ""), "appliance[0]: site is required"),
        ('url_signing_keys = {k = "tiny"}\n' + APPLIANCE, "url_signing_keys = (secrets not"),
        (
            'url_signing_keys = {a = "0123456789abcdef", b = "0123456789abcdef"}\n' + APPLIANCE,
            "signing_key_id: several",
        ),
        ('signing_key_id = "zz"\n' + APPLIANCE, "names no key"),
        ('origin_fallback = "ftp://x"\n' + APPLIANCE, "--origin-fallback / origin_fallback"),
    ],
)
def test_errors_name_the_option(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load("--config", write(tmp_path, text))
    assert message in str(info.value)
    assert "tiny" not in str(info.value)


def test_bitrates() -> None:
    assert parse_bitrate("10Gbit") == 10e9
    assert parse_bitrate("400Mbps") == 400e6
    assert parse_bitrate(1e9) == 1e9
    for bad in ("0Gbit", "lots", -1, True):
        with pytest.raises(ValueError):
            parse_bitrate(bad)


def test_cli_exits_2_naming_the_option(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edge.cli", "steer", "--config",
         write(tmp_path, APPLIANCE), "--rise", "0"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.startswith("edgefleet steer: invalid --rise / rise")


def test_coverage_zone_file(tmp_path: Path) -> None:
    zones = tmp_path / "czf.json"
    zones.write_text(
        json.dumps(
            {
                "revision": "Mon Dec 21 15:04:01 2015",
                "customerName": "Kabletown",
                "coverageZones": {
                    "south-zone": {
                        "coordinates": {"latitude": 40.0, "longitude": 10.0},
                        "network": ["127.9.0.0/16"],
                        "network6": ["2001:db8:9::/48"],
                    },
                    "north": {"network": ["127.8.0.0/16"]},
                },
            }
        )
    )
    cfg = load("--config", write(tmp_path, APPLIANCE), "--coverage-zones", str(zones))
    fleet = compile_fleet(cfg)
    loc = fleet.localizer.locate(*address("127.9.3.4"), "127.9.3.4")
    assert (loc.source, loc.zone, loc.latitude) == ("zone", "south-zone", 40.0)
    loc = fleet.localizer.locate(*address("2001:db8:9::1"), "2001:db8:9::1")
    assert loc.zone == "south-zone"
    loc = fleet.localizer.locate(*address("127.8.0.1"), "127.8.0.1")
    assert (loc.site, loc.latitude) == ("north", 60.0)
    zones.write_text('{"coverageZones": {"nowhere": {"network": ["10.0.0.0/8"]}}}')
    with pytest.raises(ConfigError, match=r"coverage_zones.*'nowhere': no coordinates"):
        compile_fleet(cfg)
    zones.write_text("{not json")
    with pytest.raises(ConfigError, match="--coverage-zones / coverage_zones"):
        compile_fleet(cfg)


def test_geoip_is_the_last_resort(tmp_path: Path) -> None:
    db = tmp_path / "city.mmdb"
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City")
    writer.insert_network(
        IPSet(["127.50.0.0/16"]),
        {"location": {"latitude": 40.5, "longitude": 10.5}, "city": {"names": {"en": "S"}}},
    )
    writer.insert_network(IPSet(["127.1.0.0/16"]), {"location": {"latitude": 0, "longitude": 0}})
    writer.insert_network(IPSet(["127.51.0.0/16"]), {"country": {"iso_code": "XX"}})
    writer.to_db_file(str(db))
    text = APPLIANCE + APPLIANCE.replace('"a1"', '"s1"').replace(
        'site = "north"', 'site = "south"'
    ).replace("latitude = 60", "latitude = 40").replace("127.1.0.0/16", "127.2.0.0/16")
    cfg = load("--config", write(tmp_path, text), "--geoip", str(db))
    fleet = compile_fleet(cfg)
    state = FleetState([True, True], [None, None])

    def first(client: str) -> tuple[str, str]:
        loc = fleet.localizer.locate(*address(client), client)
        d = decide(fleet, state, "k.ts", loc, 2)
        return loc.source, fleet.specs[d.chosen[0]].id

    assert first("127.50.1.1") == ("geoip", "s1")
    assert first("127.1.1.1") == ("prefix", "a1")  # an appliance prefix comes before GeoIP
    assert first("127.51.1.1")[0] == "unknown"  # a record without a position
    assert first("127.52.1.1")[0] == "unknown"
    db.write_bytes(b"not a database")
    with pytest.raises(ConfigError, match="--geoip / geoip"):
        compile_fleet(cfg)
    fleet.close()


def _spec(i: int, site: str, placed: bool, prefixes: tuple[str, ...] = ()) -> ApplianceSpec:
    lat, lon = (float(i % 80), float(i % 170)) if placed else (math.nan, math.nan)
    nets = tuple(parse_network(p) for p in prefixes)
    return ApplianceSpec(f"a{i}", f"http://10.0.0.{i}:8080", site, lat, lon, nets)


@given(st.lists(st.tuples(st.sampled_from("abc"), st.booleans()), min_size=1, max_size=12))
def test_appliances_without_coordinates_stand_at_their_site(boxes: list[tuple[str, bool]]) -> None:
    specs = [_spec(i, site, placed) for i, (site, placed) in enumerate(boxes)]
    problems = fleet_problems(specs)
    placed_sites = {s.site for s in specs if not math.isnan(s.latitude)}
    # a problem exactly for each box of a site that has no coordinates at all
    assert len(problems) == sum(1 for s in specs if s.site not in placed_sites)
    for before, after in zip(specs, place(specs), strict=True):
        if not math.isnan(before.latitude):
            assert after == before  # placed boxes keep theirs
        elif before.site in placed_sites:
            lats = [s.latitude for s in specs if s.site == before.site]
            lats = [x for x in lats if not math.isnan(x)]
            assert min(lats) <= after.latitude <= max(lats)
        else:
            assert math.isnan(after.latitude)


def test_a_prefix_of_two_sites_is_named_nested_ones_are_not() -> None:
    specs = [
        _spec(1, "ams", True, ("10.0.0.0/8",)),
        _spec(2, "ams", True, ("10.0.0.0/8",)),
        _spec(3, "fra", True, ("10.1.0.0/16",)),
    ]
    assert prefix_conflicts(specs) == []
    specs.append(_spec(4, "fra", True, ("10.0.0.0/8",)))
    (problem,) = prefix_conflicts(specs)
    assert "10.0.0.0/8" in problem
    assert "site 'ams': a1, a2" in problem and "site 'fra': a4" in problem
