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

import math
from dataclasses import dataclass

import xxhash

from edge.inventory import key_hash
from steering.fleet import Fleet
from steering.health import FleetState
from steering.localize import PREFIX, Location

HIT = "hit"
CONTENT_MISS = "content_miss"
HEALTH_MISS = "health_miss"
LOCATION_MISS = "location_miss"
NO_APPLIANCE = "no_appliance"
CLASSES = (HIT, CONTENT_MISS, HEALTH_MISS, LOCATION_MISS, NO_APPLIANCE)

_TWO64 = float(1 << 64)


@dataclass(slots=True)
class Decision:
    key: str
    location: Location
    chosen: list[int]  # appliance indexes, in answer order
    holds: list[bool]  # per chosen appliance: does its inventory hold the key?
    klass: str
    site: str  # the site the class is counted against


def _rank_group(
    members: list[int],
    kb: bytes,
    hashes: tuple[int, int],
    fleet: Fleet,
    state: FleetState,
    out: list[tuple[int, bool]],
) -> None:
    """Append the candidates among ``members``: holders first, then rendezvous."""
    candidate = state.candidate
    filters = state.filters
    seeds = fleet.seeds
    weights = fleet.weights
    scored = []
    for i in members:
        if not candidate[i]:
            continue
        f = filters[i]
        holds = f is not None and f.holds(*hashes)
        u = (xxhash.xxh3_64_intdigest(kb, seeds[i]) + 0.5) / _TWO64
        scored.append((holds, weights[i] / -math.log(u), i))
    if len(scored) > 1:
        scored.sort(reverse=True)
    out.extend((i, holds) for holds, _, i in scored)


def decide(fleet: Fleet, state: FleetState, key: str, location: Location, answers: int) -> Decision:
    kb = key.encode("utf-8", "surrogatepass")
    hashes = key_hash(key)
    site_of = fleet.site_of
    ranked: list[tuple[int, bool]] = []
    own = location.own
    order = fleet.site_order(location.latitude, location.longitude)
    if own:
        if len(own) == 1 or all(site_of[i] == site_of[own[0]] for i in own):
            _rank_group(list(own), kb, hashes, fleet, state, ranked)
        else:  # an ISP announcing one prefix to several sites: nearest site first
            rank_of = {s: n for n, s in enumerate(order)}
            by_site: dict[int, list[int]] = {}
            for i in own:
                by_site.setdefault(site_of[i], []).append(i)
            for s in sorted(by_site, key=rank_of.__getitem__):
                _rank_group(by_site[s], kb, hashes, fleet, state, ranked)
    own_count = len(ranked)
    own_set = set(own)
    members = fleet.members
    for s in order:
        if (
            len(ranked) >= answers
            and ranked
            and (answers == 1 or any(site_of[i] != site_of[ranked[0][0]] for i, _ in ranked))
        ):
            break
        group = [i for i in members[s] if i not in own_set] if own_set else members[s]
        _rank_group(group, kb, hashes, fleet, state, ranked)

    chosen = ranked[:answers]
    if len(chosen) > 1:
        first_site = site_of[chosen[0][0]]
        if all(site_of[i] == first_site for i, _ in chosen):
            other = next((r for r in ranked if site_of[r[0]] != first_site), None)
            if other is not None:
                chosen[-1] = other

    if location.source == PREFIX:
        site = location.site or "none"
    else:
        site = fleet.sites[site_of[chosen[0][0]]] if chosen else "none"
    if not chosen:
        klass = NO_APPLIANCE
    elif location.source != PREFIX:
        klass = LOCATION_MISS
    elif own_count == 0:
        klass = HEALTH_MISS
    elif not chosen[0][1]:
        klass = CONTENT_MISS
    else:
        klass = HIT
    return Decision(key, location, [i for i, _ in chosen], [h for _, h in chosen], klass, site)
