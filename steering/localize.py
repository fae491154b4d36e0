"""Where a client is: the first step of every decision.

What it decides: the ``Location`` of a client address. Rules it keeps, in
this order (the first that answers wins):
1. longest-prefix match on the prefixes appliances serve (what an ISP
   announces to its embedded appliances): the appliances announcing the
   longest matching prefix are the client's own, and its position is their
   site's;
2. longest-prefix match on the coverage zone file: the zone's position;
3. the GeoIP database: the record's ``location.latitude/longitude``;
4. unknown: the fleet's default position.
Locations for prefixes and zones are made once, when the fleet is compiled;
a lookup allocates only for GeoIP answers. Nothing here opens files; the
GeoIP reader is passed in as a function.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from steering.prefixes import Network, PrefixTable, parse_network

PREFIX, ZONE, GEOIP, UNKNOWN = "prefix", "zone", "geoip", "unknown"

GeoLookup = Callable[[str], tuple[float, float] | None]


@dataclass(frozen=True, slots=True)
class Location:
    source: str  # prefix | zone | geoip | unknown
    latitude: float
    longitude: float
    prefix: str | None = None  # the matching prefix (prefix and zone sources)
    site: str | None = None  # the client's own site (prefix) or the zone's site
    own: tuple[int, ...] = ()  # appliance indexes announcing the prefix
    zone: str | None = None
    # made once by the fleet, for the decision: the own appliances by site
    # (site, members, equal weights?), and the sites they cover entirely
    own_groups: tuple[tuple[int, tuple[int, ...], bool], ...] = ()
    own_sites: frozenset[int] = frozenset()

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"source": self.source}
        if self.prefix is not None:
            doc["prefix"] = self.prefix
        if self.zone is not None:
            doc["zone"] = self.zone
        if self.site is not None:
            doc["site"] = self.site
        doc["latitude"] = self.latitude
        doc["longitude"] = self.longitude
        return doc


class Localizer:
    def __init__(
        self,
        prefixes: PrefixTable[Location],
        zones: PrefixTable[Location],
        geoip: GeoLookup | None,
        unknown: Location,
    ) -> None:
        self.prefixes = prefixes
        self.zones = zones
        self.geoip = geoip
        self.unknown = unknown

    def locate(self, version: int, addr: int, text: str) -> Location:
        """``text`` is the address as given (for GeoIP); ``version``/``addr`` its parse."""
        hit = self.prefixes.lookup(version, addr)
        if hit is not None:
            return hit[1]
        hit = self.zones.lookup(version, addr)
        if hit is not None:
            return hit[1]
        if self.geoip is not None:
            pos = self.geoip(text)
            if pos is not None:
                return Location(GEOIP, pos[0], pos[1])
        return self.unknown


def parse_coverage_zones(
    doc: Any,
    site_positions: Mapping[str, tuple[float, float]],
    warnings: list[str] | None = None,
) -> list[tuple[Network, Location]]:
    """Apache Traffic Control's coverage zone JSON (``{"coverageZones": {NAME:
    {"coordinates": {"latitude", "longitude"}, "network": [...], "network6":
    [...]}}}``; other top-level keys, such as ``revision``, are ignored). A zone
    without coordinates takes the position of the site of its name.
    ``ValueError`` names the zone at fault.

    As Traffic Router does, a network with host bits set is masked
    (``2001:CAFE:F00D:1::/37`` is ``2001:cafe:f000::/37``): its file is what
    operators moving from Traffic Control have. Each masked entry, and each
    network a second zone claims again (the first zone keeps it), adds a line
    naming it to ``warnings``."""
    if not isinstance(doc, dict) or not isinstance(doc.get("coverageZones"), dict):
        raise ValueError('expected an object with "coverageZones"')
    out: list[tuple[Network, Location]] = []
    owner: dict[Network, str] = {}
    notes = warnings if warnings is not None else []
    for name, zone in doc["coverageZones"].items():
        if not isinstance(zone, dict):
            raise ValueError(f"zone {name!r}: expected an object")
        lat, lon, site = _zone_position(name, zone, site_positions)
        for field in ("network", "network6"):
            nets = zone.get(field, [])
            if not isinstance(nets, list):
                raise ValueError(f"zone {name!r}: {field} must be a list")
            for text in nets:
                net = _zone_network(name, field, str(text), notes)
                if net in owner:
                    notes.append(
                        f"zone {name!r}: {field} {str(text)!r} is {net}, already in zone "
                        f"{owner[net]!r}: that zone keeps it"
                    )
                    continue
                owner[net] = str(name)
                out.append(
                    (net, Location(ZONE, lat, lon, prefix=str(net), site=site, zone=str(name)))
                )
    return out


def _zone_position(
    name: str, zone: dict[str, Any], site_positions: Mapping[str, tuple[float, float]]
) -> tuple[float, float, str | None]:
    coords = zone.get("coordinates")
    site = name if name in site_positions else None
    if isinstance(coords, dict) and "latitude" in coords and "longitude" in coords:
        try:
            lat, lon = float(coords["latitude"]), float(coords["longitude"])
        except (TypeError, ValueError):
            raise ValueError(f"zone {name!r}: coordinates are not numbers") from None
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise ValueError(f"zone {name!r}: coordinates out of range")
        return lat, lon, site
    if site is not None:
        lat, lon = site_positions[site]
        return lat, lon, site
    raise ValueError(f"zone {name!r}: no coordinates and no site of that name")


def _zone_network(name: str, field: str, text: str, notes: list[str]) -> Network:
    try:
        return parse_network(text)
    except ValueError as strict:
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise ValueError(f"zone {name!r}: {strict}") from None
    notes.append(f"zone {name!r}: {field} {text!r} has host bits set; using {net}")
    return net


def load_coverage_zones(
    path: str,
    site_positions: Mapping[str, tuple[float, float]],
    warnings: list[str] | None = None,
) -> list[tuple[Network, Location]]:
    with open(path, "rb") as f:
        return parse_coverage_zones(json.load(f), site_positions, warnings)


def geoip_reader(path: str) -> tuple[GeoLookup, Callable[[], None]]:
    """(lookup, close) over a MaxMind database; City-style records give a position."""
    import maxminddb

    try:
        reader = maxminddb.open_database(path)
    except maxminddb.InvalidDatabaseError as exc:
        raise ValueError(str(exc)) from None

    def lookup(text: str) -> tuple[float, float] | None:
        try:
            record = reader.get(text)
        except ValueError:
            return None
        if not isinstance(record, dict):
            return None
        loc = record.get("location")
        if not isinstance(loc, dict):
            return None
        lat, lon = loc.get("latitude"), loc.get("longitude")
        if not isinstance(lat, int | float) or not isinstance(lon, int | float):
            return None
        return float(lat), float(lon)

    return lookup, reader.close
