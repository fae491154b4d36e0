"""Steering configuration: a TOML file (top level or ``[steer]``), flags win.

Rules it keeps (as ``edge.config`` does for the appliance): an unknown key, a
bad value or a missing requirement raises ``ConfigError`` naming the option
(``--health-interval`` / ``health_interval``, or ``appliance[2].prefixes``);
every option but the appliance list is also a flag; secrets never appear in
an error message. Files the configuration names (coverage zones, GeoIP) are
read when the fleet is compiled (``steering.fleet``), so a reload checks them
too.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from edge.config import (
    CONNECTION_OPTIONS,
    METAVARS,
    NAMED_METAVARS,
    TLS_OPTIONS,
    ConfigError,
    Options,
    add_option_flags,
    apply_listening_options,
    choice,
    parse_listen,
    positive_int,
)
from edge.core.signing import parse_keys
from edge.core.sizes import parse_duration
from steering.prefixes import Network, parse_network

__all__ = ["ApplianceSpec", "ConfigError", "SteerConfig", "add_steer_flags", "load_steer_config"]

_BITRATE_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def parse_bitrate(value: Any) -> float:
    """``10Gbit``, ``400Mbps``, ``1e9`` → bits per second (decimal units, as links are sold)."""
    if isinstance(value, bool):
        raise ValueError("expected a bit rate like 10Gbit")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError("must be positive")
        return float(value)
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)(?:bit|bps|b/s)?\s*", str(value))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{value!r} is not a bit rate (like 10Gbit, 400Mbit, 1Gbps)")
    return float(m.group(1)) * _BITRATE_UNITS[m.group(2).lower()]


@dataclass(frozen=True)
class ApplianceSpec:
    id: str
    url: str  # content URL base, no trailing slash
    site: str
    latitude: float
    longitude: float
    prefixes: tuple[Network, ...] = ()
    capacity: float | None = None  # bits/s
    weight: float = 1.0


@dataclass
class SteerConfig:
    listen: tuple[str, int] | None = ("127.0.0.1", 8090)  # None: HTTPS only
    tls_listen: list[tuple[str, int]] = field(default_factory=list)
    tls_cert: list[tuple[str, str | None]] = field(default_factory=list)
    ca_file: str | None = None  # verifies https:// appliances (None: the system store)
    # a client connection's limits, as the appliance's (edge.http.server)
    tls_handshake_timeout: float = 10.0
    header_timeout: float = 15.0
    keepalive_timeout: float = 75.0
    appliances: list[ApplianceSpec] = field(default_factory=list)
    coverage_zones: str | None = None
    geoip: str | None = None
    default_location: tuple[float, float] | None = None
    cors_origin: str = "*"  # Access-Control-Allow-Origin on /steer and /r/ answers
    url_signing_keys: dict[str, bytes] = field(default_factory=dict)
    signing_key_id: str | None = None
    token_ttl: float = 6 * 3600.0
    token_prefix_v4: int = 0
    token_prefix_v6: int = 0
    token_in: str = "query"  # or "path": a directory token in the URL's path (HLS, DASH)
    answers: int = 3
    health_interval: float = 2.0
    health_timeout: float = 1.0
    fall: int = 3
    rise: int = 2
    max_utilization: float = 0.9
    inventory_interval: float = 30.0
    trusted_proxies: list[Network] = field(default_factory=list)
    origin_fallback: str | None = None
    log_level: str = "info"
    access_log: str | None = None

    def signing_key(self) -> tuple[str, bytes] | None:
        """(key id, secret) that signs new URLs, or ``None`` when URLs go unsigned."""
        if not self.url_signing_keys:
            return None
        kid = self.signing_key_id or next(iter(self.url_signing_keys))
        return kid, self.url_signing_keys[kid]


def _prefix_len(bits: int):  # type: ignore[no-untyped-def]
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("expected a prefix length")
        n = int(value)
        if not 0 <= n <= bits:
            raise ValueError(f"must be between 0 (not bound) and {bits}")
        return n

    return parse


def _positive_duration(value: Any) -> float:
    d = parse_duration(value)
    if d <= 0:
        raise ValueError("must be more than 0")
    return d


def _share(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    x = float(value)
    if not 0 < x <= 10:
        raise ValueError("must be a share of capacity above 0 (0.9 is 90%)")
    return x


def _location(value: Any) -> tuple[float, float]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError("expected [latitude, longitude]")
    return _latitude(value[0]), _longitude(value[1])


def _latitude(value: Any) -> float:
    x = float(value)
    if not -90 <= x <= 90:
        raise ValueError("latitude must be between -90 and 90")
    return x


def _longitude(value: Any) -> float:
    x = float(value)
    if not -180 <= x <= 180:
        raise ValueError("longitude must be between -180 and 180")
    return x


def _networks(value: Any) -> list[Network]:
    items = value if isinstance(value, list) else [value]
    return [parse_network(str(x)) for x in items]


def _http_base(value: Any) -> str:
    url = str(value).rstrip("/")
    if not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", url):
        raise ValueError(f"{value!r} is not an http(s):// URL without query")
    return url


# readable placeholders in --help for steering's own value readers
METAVARS.update(
    {
        _positive_duration: "DURATION",
        _share: "FRACTION",
        _networks: "CIDR",
        _http_base: "URL",
    }
)
NAMED_METAVARS.update({"token_prefix_v4": "BITS", "token_prefix_v6": "BITS"})

STEER_OPTIONS: Options = {
    "listen": ("--listen", parse_listen, "HOST:PORT to serve /steer, /r/ and /_steer/ on"),
    **TLS_OPTIONS,
    **CONNECTION_OPTIONS,
    "ca_file": (
        "--ca-file",
        str,
        "CA certificates (PEM) that https:// appliances are verified against (default: system)",
    ),
    "coverage_zones": ("--coverage-zones", str, "coverage zone JSON file (Traffic Control format)"),
    "geoip": ("--geoip", str, "MaxMind .mmdb database, the last resort to localize a client"),
    "cors_origin": (
        "--cors-origin",
        str,
        "Access-Control-Allow-Origin on /steer and /r/ answers, for web players (default *)",
    ),
    "default_location": (
        "--default-location",
        _location,
        "LAT,LON for clients that cannot be localized (default: the centroid of the sites)",
    ),
    "url_signing_keys": (
        "--url-signing-key",
        parse_keys,
        "KID=SECRET for signing URLs (repeat for rotation)",
    ),
    "signing_key_id": ("--signing-key-id", str, "the key id that signs new URLs"),
    "token_ttl": ("--token-ttl", _positive_duration, "how long a signed URL is valid (6h)"),
    "token_prefix_v4": (
        "--token-prefix-v4",
        _prefix_len(32),
        "bind URLs to the client's IPv4 /N (0: not bound)",
    ),
    "token_prefix_v6": (
        "--token-prefix-v6",
        _prefix_len(128),
        "bind URLs to the client's IPv6 /N (0: not bound)",
    ),
    "token_in": (
        "--token-in",
        choice("query", "path"),
        "where signed URLs carry the token: query (one object) or path (its directory)",
    ),
    "answers": ("--answers", positive_int, "URLs per answer (3)"),
    "health_interval": ("--health-interval", _positive_duration, "health poll interval (2s)"),
    "health_timeout": ("--health-timeout", _positive_duration, "health poll timeout (1s)"),
    "fall": ("--fall", positive_int, "consecutive failed polls that take an appliance down (3)"),
    "rise": ("--rise", positive_int, "consecutive good polls that bring it back (2)"),
    "max_utilization": (
        "--max-utilization",
        _share,
        "egress share of capacity above which an appliance gets no new players (0.9)",
    ),
    "inventory_interval": (
        "--inventory-interval",
        _positive_duration,
        "how often appliance inventories are refreshed (30s)",
    ),
    "trusted_proxies": (
        "--trusted-proxy",
        _networks,
        "CIDR whose X-Forwarded-For is believed (repeat)",
    ),
    "origin_fallback": (
        "--origin-fallback",
        _http_base,
        "origin base URL answered when no appliance can serve",
    ),
    "log_level": ("--log-level", choice("debug", "info", "warning", "error"), "log level"),
    "access_log": ("--access-log", str, "JSON-lines access log: a path, or - for stdout"),
}
_REPEATABLE = {"url_signing_keys", "trusted_proxies", "tls_listen", "tls_cert"}
_SECRET = {"url_signing_keys"}
_APPLIANCE_KEYS = {
    "id",
    "url",
    "site",
    "latitude",
    "longitude",
    "prefixes",
    "capacity",
    "weight",
}


def add_steer_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    add_option_flags(parser, STEER_OPTIONS, _REPEATABLE)


def parse_appliance(i: int, item: Any) -> ApplianceSpec:
    where = f"appliance[{i}]"
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected a table ([[appliance]])")
    unknown = sorted(set(item) - _APPLIANCE_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_APPLIANCE_KEYS))})"
        )
    for required in ("id", "url", "site"):
        if required not in item:
            raise ConfigError(f"{where}: {required} is required")
    name = str(item["id"])
    if not _ID.fullmatch(name):
        raise ConfigError(f"{where}.id = {name!r}: use letters, digits, '.', '-' or '_'")
    where = f"appliance {name!r}"
    parsers: dict[str, Any] = {
        "url": _http_base,
        "site": str,
        "latitude": _latitude,
        "longitude": _longitude,
        "prefixes": lambda v: tuple(_networks(v)),
        "capacity": parse_bitrate,
        "weight": float,
    }
    # without coordinates, an appliance stands at its site's (``place``)
    values: dict[str, Any] = {"id": name, "latitude": math.nan, "longitude": math.nan}
    for key, parse in parsers.items():
        if key in item:
            try:
                values[key] = parse(item[key])
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{where}: invalid {key} = {item[key]!r}: {exc}") from None
    weight = values.get("weight", 1.0)
    if not (weight > 0 and math.isfinite(weight)):
        raise ConfigError(f"{where}: weight must be a positive number")
    if not values["site"]:
        raise ConfigError(f"{where}: site must not be empty")
    if math.isnan(values["latitude"]) != math.isnan(values["longitude"]):
        raise ConfigError(f"{where}: give latitude and longitude together")
    return ApplianceSpec(**values)


def fleet_problems(specs: list[ApplianceSpec]) -> list[str]:
    """What stops a fleet from loading, each named: an id used twice, a site
    none of whose appliances has coordinates."""
    problems = []
    seen: set[str] = set()
    for a in specs:
        if a.id in seen:
            problems.append(f"appliance {a.id!r} is configured twice (ids must be unique)")
        seen.add(a.id)
    placed = {a.site for a in specs if not math.isnan(a.latitude)}
    for a in specs:
        if a.site not in placed:
            problems.append(
                f"appliance {a.id!r} has no latitude/longitude and no appliance of site "
                f"{a.site!r} has any to stand by"
            )
    return problems


def prefix_conflicts(specs: list[ApplianceSpec]) -> list[str]:
    """Prefixes announced by appliances of different sites. Steering serves
    them (the announcers share the clients), but it is seldom what an ISP
    meant: ``steer check`` names each. Nested prefixes are fine: the longest
    match wins."""
    problems = []
    announced: dict[Network, dict[str, list[str]]] = {}
    for a in specs:
        for net in a.prefixes:
            announced.setdefault(net, {}).setdefault(a.site, []).append(a.id)
    for net, sites in announced.items():
        if len(sites) > 1:
            who = "; ".join(f"site {s!r}: {', '.join(ids)}" for s, ids in sorted(sites.items()))
            problems.append(f"prefix {net} is announced by appliances of different sites ({who})")
    return problems


def place(specs: list[ApplianceSpec]) -> list[ApplianceSpec]:
    """Appliances without coordinates take their site's: the mean of its placed ones."""
    known: dict[str, list[tuple[float, float]]] = {}
    for a in specs:
        if not math.isnan(a.latitude):
            known.setdefault(a.site, []).append((a.latitude, a.longitude))
    out = []
    for a in specs:
        if math.isnan(a.latitude) and a.site in known:
            points = known[a.site]
            lat = sum(p[0] for p in points) / len(points)
            lon = sum(p[1] for p in points) / len(points)
            a = dataclasses.replace(a, latitude=lat, longitude=lon)
        out.append(a)
    return out


def read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path} is not valid TOML: {exc}") from None
    if isinstance(raw.get("steer"), dict):
        return dict(raw["steer"])
    return {k: v for k, v in raw.items() if k not in ("serve", "fill")}


def load_steer_config(args: argparse.Namespace) -> SteerConfig:
    """The configuration from ``--config`` and the flags (which win)."""
    raw: dict[str, Any] = {}
    path = getattr(args, "config", None)
    if path:
        raw = read_file(path)
        appliances = raw.pop("appliance", [])
        unknown = sorted(set(raw) - set(STEER_OPTIONS))
        if unknown:
            raise ConfigError(
                f"{path}: unknown option {unknown[0]!r} "
                f"(known: {', '.join(sorted([*STEER_OPTIONS, 'appliance']))})"
            )
    else:
        appliances = []
    cfg = SteerConfig()
    apply_listening_options(cfg, STEER_OPTIONS, raw, args, secret=_SECRET)
    if not isinstance(appliances, list):
        raise ConfigError("appliance: expected an array of tables ([[appliance]])")
    specs = [parse_appliance(i, item) for i, item in enumerate(appliances)]
    if not specs:
        raise ConfigError("no appliances: add [[appliance]] tables (id, url, site, ...)")
    problems = fleet_problems(specs)
    if problems:
        raise ConfigError(problems[0])
    cfg.appliances = place(specs)
    if cfg.signing_key_id is not None and cfg.signing_key_id not in cfg.url_signing_keys:
        raise ConfigError(
            f"--signing-key-id / signing_key_id = {cfg.signing_key_id!r} names no key "
            "in url_signing_keys"
        )
    if len(cfg.url_signing_keys) > 1 and cfg.signing_key_id is None:
        raise ConfigError(
            "--signing-key-id / signing_key_id: several url_signing_keys, name the one that signs"
        )
    if cfg.health_timeout > cfg.health_interval:
        raise ConfigError("--health-timeout / health_timeout must not exceed health_interval")
    return cfg
