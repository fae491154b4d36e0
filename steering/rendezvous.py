"""Rendezvous (highest random weight) hashing of object keys onto appliances.

What it decides: which appliance of a group an object concentrates on, and
the order of the rest. Rules it keeps:
- every (key, appliance) pair gets a score from xxh3-64 of the key seeded by
  the appliance (the seed comes from its id, so every steering replica agrees
  without talking to the others); the highest score wins;
- weighted: ``weight / -ln(u)`` with ``u`` the hash in (0, 1), so an appliance
  with twice the weight wins about twice the keys (Schindelhauer and
  Schomaker's logarithmic method);
- removing an appliance only moves the keys it held; adding one only takes
  keys to it;
- equal weights rank by the raw hash (the same order, no logarithm);
- pure.
"""

from __future__ import annotations

import math

import xxhash

_TWO64 = float(1 << 64)


def seed_for(appliance_id: str) -> int:
    return xxhash.xxh3_64_intdigest(appliance_id.encode("utf-8"))


def score(key: bytes, seed: int, weight: float | None = None) -> float:
    """The key's score on the appliance with ``seed``: the highest wins.

    ``weight=None`` when every appliance in the group has the same weight: the
    raw hash then ranks them in the same order as ``weight / -ln(u)`` would,
    without a logarithm."""
    h = xxhash.xxh3_64_intdigest(key, seed)
    if weight is None:
        return h
    return weight / -math.log((h + 0.5) / _TWO64)
