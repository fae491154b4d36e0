"""The fleet as the decision reads it: the configuration compiled into tables.

What it holds: per appliance its site, rendezvous seed and weight; per site
its position and members; the prefix and coverage-zone tables with their
``Location``s made once; and, per client position, the sites ordered by
distance (computed on first use and remembered). Rules it keeps:
- built once per configuration and never changed afterwards (a reload builds
  a new one and swaps it in whole), so a request never sees half of two;
- appliance indexes are positions in the configuration's list; the health
  state (``steering.health.FleetState``) uses the same indexes;
- a site's position is the mean of its appliances'; distances are great-circle.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from steering.config import ApplianceSpec, SteerConfig
from steering.localize import (
    PREFIX,
    UNKNOWN,
    GeoLookup,
    Localizer,
    Location,
    load_coverage_zones,
)
from steering.prefixes import Network, PrefixTable
from steering.rendezvous import seed_for

log = logging.getLogger("edgefleet.steer")

EARTH_KM = 6371.0
MAX_ORDERS = 100_000
# per site among a prefix's announcers: (site, its announcing appliances, same weights)
OwnGroups = tuple[tuple[int, tuple[int, ...], bool], ...]


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(a)))


def centroid(points: list[tuple[float, float]]) -> tuple[float, float]:
    """The mean position on the sphere (right across the antimeridian too)."""
    x = y = z = 0.0
    for lat, lon in points:
        p, la = math.radians(lat), math.radians(lon)
        x += math.cos(p) * math.cos(la)
        y += math.cos(p) * math.sin(la)
        z += math.sin(p)
    if abs(x) < 1e-12 and abs(y) < 1e-12 and abs(z) < 1e-12:
        return points[0]
    lon = math.degrees(math.atan2(y, x))
    lat = math.degrees(math.atan2(z, math.hypot(x, y)))
    return round(lat, 6), round(lon, 6)


class Fleet:
    """A compiled configuration. ``zones`` and ``geoip`` come from the files the
    configuration names (``compile_fleet`` reads them)."""

    def __init__(
        self,
        cfg: SteerConfig,
        zones: list[tuple[Network, Location]] | None = None,
        geoip: GeoLookup | None = None,
        close: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.specs: list[ApplianceSpec] = list(cfg.appliances)
        self.index = {a.id: i for i, a in enumerate(self.specs)}
        self._group_sites()
        self.seeds = [seed_for(a.id) for a in self.specs]
        self.weights = [a.weight for a in self.specs]
        self.urls = [a.url for a in self.specs]
        # a site whose boxes weigh the same ranks by the raw hash (no logarithm)
        self.uniform = [len({self.weights[i] for i in m}) == 1 for m in self.members]
        announced: dict[Network, list[int]] = {}
        for i, a in enumerate(self.specs):
            for net in a.prefixes:
                announced.setdefault(net, []).append(i)
        default = cfg.default_location or centroid(self.site_pos)
        self.localizer = Localizer(
            PrefixTable(self._prefix_locations(announced)),
            PrefixTable(zones or []),
            geoip,
            Location(UNKNOWN, default[0], default[1]),
        )
        self.prefix_count = len(announced)
        self.zone_count = len(zones or [])
        self._close = close
        self._orders: dict[tuple[float, float], tuple[int, ...]] = {}

    def _group_sites(self) -> None:
        """Sites in the order the configuration first names them, each with its
        members and its position (the centroid of its appliances)."""
        self.sites: list[str] = []
        self.site_index: dict[str, int] = {}
        self.site_of: list[int] = []
        self.members: list[list[int]] = []
        for i, a in enumerate(self.specs):
            s = self.site_index.get(a.site)
            if s is None:
                s = self.site_index[a.site] = len(self.sites)
                self.sites.append(a.site)
                self.members.append([])
            self.site_of.append(s)
            self.members[s].append(i)
        self.site_pos = [
            centroid([(self.specs[i].latitude, self.specs[i].longitude) for i in m])
            for m in self.members
        ]

    def _prefix_locations(
        self, announced: dict[Network, list[int]]
    ) -> list[tuple[Network, Location]]:
        """Each announced prefix as a ``Location``: at its first announcer's
        site, with its announcers grouped by site (an ISP's prefixes share their
        announcers, so the groups are made once per set of announcers)."""
        groups_of: dict[tuple[int, ...], tuple[OwnGroups, frozenset[int]]] = {}
        items = []
        for net, own in announced.items():
            key = tuple(own)
            if key not in groups_of:
                by_site: dict[int, list[int]] = {}
                for i in own:
                    by_site.setdefault(self.site_of[i], []).append(i)
                groups = tuple(
                    (s, tuple(m), len({self.weights[i] for i in m}) == 1)
                    for s, m in by_site.items()
                )
                full = frozenset(s for s, m in by_site.items() if len(m) == len(self.members[s]))
                groups_of[key] = (groups, full)
            groups, full = groups_of[key]
            site = self.site_of[own[0]]
            lat, lon = self.site_pos[site]
            where = Location(
                PREFIX, lat, lon, str(net), self.sites[site], key, own_groups=groups, own_sites=full
            )
            items.append((net, where))
        return items

    def site_order(self, lat: float, lon: float) -> tuple[int, ...]:
        """Site indexes by distance from (lat, lon), then by name."""
        key = (lat, lon)
        order = self._orders.get(key)
        if order is None:
            dist = [distance_km(lat, lon, p[0], p[1]) for p in self.site_pos]
            order = tuple(sorted(range(len(self.sites)), key=lambda s: (dist[s], self.sites[s])))
            if len(self._orders) >= MAX_ORDERS:
                self._orders.clear()
            self._orders[key] = order
        return order

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None


def compile_fleet(cfg: SteerConfig) -> Fleet:
    """Read the files ``cfg`` names and compile; ``ConfigError`` names the option."""
    from steering.config import ConfigError
    from steering.localize import geoip_reader

    positions: dict[str, list[tuple[float, float]]] = {}
    for a in cfg.appliances:
        positions.setdefault(a.site, []).append((a.latitude, a.longitude))
    site_positions = {s: centroid(p) for s, p in positions.items()}
    zones = None
    if cfg.coverage_zones:
        warnings: list[str] = []
        try:
            zones = load_coverage_zones(cfg.coverage_zones, site_positions, warnings)
        except OSError as exc:
            raise ConfigError(
                f"--coverage-zones / coverage_zones: cannot read {cfg.coverage_zones}: "
                f"{exc.strerror}"
            ) from None
        except ValueError as exc:
            raise ConfigError(
                f"--coverage-zones / coverage_zones: {cfg.coverage_zones}: {exc}"
            ) from None
        for note in warnings:
            log.warning("--coverage-zones / coverage_zones: %s: %s", cfg.coverage_zones, note)
    geoip = close = None
    if cfg.geoip:
        try:
            geoip, close = geoip_reader(cfg.geoip)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"--geoip / geoip: cannot open {cfg.geoip} as a MaxMind database: {exc}"
            ) from None
    return Fleet(cfg, zones, geoip, close)
