"""The steering decision: which appliances answer a client for an object.

A pure function of the request (object key, client location), the fleet, and
the health and inventory state. Rules it keeps:
- candidates are the appliances the health state marks as candidates (up,
  ok, under their load limit), nothing else;
- rank: the client's own appliances (those announcing its prefix) first; then
  sites by distance from the client; within a site, appliances holding the
  object (by their inventory filter) before the others, then weighted
  rendezvous hashing on the key, so an object concentrates on one box;
- holding never outranks distance across sites: the nearest site pulls an
  object through rather than sending the player far away;
- the answer is the first ``answers`` in rank order, except that when they are
  all on one site and another site has a candidate, the last is the best of
  another site, so a player survives a whole site going away;
- only as many sites are ranked as the answer needs, so a decision costs about
  the same for 10 appliances as for 1,000;
- every decision has exactly one class (first that applies): ``no_appliance``,
  ``location_miss`` (no appliance prefix matched), ``health_miss`` (none of the
  client's own appliances is a candidate), ``content_miss`` (the first answer
  does not hold the object), ``hit``.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.core.inventory import key_hash_bytes
from steering.fleet import Fleet
from steering.health import FleetState
from steering.localize import PREFIX, Location
from steering.rendezvous import score

HIT = "hit"
CONTENT_MISS = "content_miss"
HEALTH_MISS = "health_miss"
LOCATION_MISS = "location_miss"
NO_APPLIANCE = "no_appliance"
CLASSES = (HIT, CONTENT_MISS, HEALTH_MISS, LOCATION_MISS, NO_APPLIANCE)  # metrics, status page


@dataclass(slots=True)
class Route:
    """Where a client is steered for a key: the appliances, in answer order."""

    key: str
    location: Location
    chosen: list[int]  # appliance indexes, in answer order
    holds: list[bool]  # per chosen appliance: does its inventory hold the key?
    klass: str
    site: str  # the site the class is counted against


def _rank_group(
    members: tuple[int, ...] | list[int],
    uniform: bool,
    kb: bytes,
    h1: int,
    h2: int,
    fleet: Fleet,
    state: FleetState,
) -> list[tuple[bool, float, int]]:
    """The candidates among ``members`` as (holds, score, index), best first:
    holders, then weighted rendezvous (equal weights rank by the raw hash, the
    same order without a logarithm)."""
    candidate = state.candidate
    filters = state.filters
    seeds = fleet.seeds
    weights = fleet.weights
    scored: list[tuple[bool, float, int]] = []
    for i in members:
        if not candidate[i]:
            continue
        f = filters[i]
        s = score(kb, seeds[i], None if uniform else weights[i])
        scored.append((f is not None and f.holds(h1, h2), s, i))
    if len(scored) > 1:
        scored.sort(reverse=True)
    return scored


def decide(fleet: Fleet, state: FleetState, key: str, location: Location, answers: int) -> Route:
    kb = key.encode("utf-8", "surrogatepass")
    h1, h2 = key_hash_bytes(kb)
    site_of = fleet.site_of
    order = fleet.site_order(location.latitude, location.longitude)
    groups = location.own_groups
    if len(groups) > 1:  # an ISP announcing one prefix to several sites: nearest first
        rank_of = {s: n for n, s in enumerate(order)}
        groups = tuple(sorted(groups, key=lambda g: rank_of[g[0]]))
    ranked: list[tuple[bool, float, int]] = []
    first_site = -1
    mixed = False  # does ranked hold a second site yet?
    for site, members, uniform in groups:
        got = _rank_group(members, uniform, kb, h1, h2, fleet, state)
        if got:
            if first_site < 0:
                first_site = site
            elif site != first_site:
                mixed = True
            ranked += got
    own_count = len(ranked)
    if own_count < answers or not (mixed or answers == 1):
        own_sites = location.own_sites
        own = location.own
        all_members = fleet.members
        uniform_sites = fleet.uniform
        for site in order:
            if site in own_sites:
                continue
            members = all_members[site]
            if own:
                members = [i for i in members if i not in own]
            got = _rank_group(members, uniform_sites[site], kb, h1, h2, fleet, state)
            if not got:
                continue
            if first_site < 0:
                first_site = site
            elif site != first_site:
                mixed = True
            ranked += got
            if len(ranked) >= answers and (mixed or answers == 1):
                break

    chosen = ranked[:answers]
    if mixed and len(chosen) > 1 and all(site_of[c[2]] == first_site for c in chosen):
        chosen[-1] = next(r for r in ranked if site_of[r[2]] != first_site)

    if location.source == PREFIX:
        label = location.site or "none"
    else:
        label = fleet.sites[site_of[chosen[0][2]]] if chosen else "none"
    if not chosen:
        klass = NO_APPLIANCE
    elif location.source != PREFIX:
        klass = LOCATION_MISS
    elif own_count == 0:
        klass = HEALTH_MISS
    elif not chosen[0][0]:
        klass = CONTENT_MISS
    else:
        klass = HIT
    return Route(key, location, [c[2] for c in chosen], [c[0] for c in chosen], klass, label)
