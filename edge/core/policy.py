"""Eviction policy: which stored objects leave when a root needs room.

What it decides: given every evictable object on a root, the bytes needed and
the time, the objects to remove, in order. Rules it keeps:
- pinned objects (fill-planned) go last, only when nothing unpinned is left;
- among the rest, the lowest *decayed popularity* goes first: request counts
  halve every ``half_life`` seconds, so yesterday's hit fades and tomorrow's
  plan can replace it; least recently used breaks ties;
- it picks the shortest prefix of that order whose bytes cover ``need``; if all
  candidates together do not, it returns them all and the caller decides;
- no sockets, files or clocks: the store hands in candidates and ``now``.

Policies are pluggable (``POLICIES``); bench/ replays traces through these very
classes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

DEFAULT_HALF_LIFE = 86400.0


@dataclass(frozen=True, slots=True)
class Candidate:
    key: str
    size: int  # bytes it holds on the root
    score: float  # popularity as of score_time
    score_time: float
    last_access: float
    pinned: bool = False


def decayed(score: float, score_time: float, now: float, half_life: float) -> float:
    """``score`` carried from ``score_time`` to ``now``, halving every ``half_life``."""
    if now <= score_time or score == 0.0:
        return score
    return score * 0.5 ** ((now - score_time) / half_life)


class EvictionPolicy(Protocol):
    name: str

    def order(self, candidates: Iterable[Candidate], now: float) -> list[Candidate]:
        """All candidates, first to evict first."""
        ...


def choose_victims(
    policy: EvictionPolicy, candidates: Iterable[Candidate], need: int, now: float
) -> list[Candidate]:
    """The shortest prefix of ``policy.order`` whose sizes sum to ``need`` or more."""
    victims: list[Candidate] = []
    freed = 0
    if need <= 0:
        return victims
    for c in policy.order(candidates, now):
        victims.append(c)
        freed += c.size
        if freed >= need:
            break
    return victims


def evict_batch(capacity: int, fraction: float, maximum: int) -> int:
    """Bytes evicted beyond what is needed, so that eviction runs in rounds
    rather than once per stored slice: ``fraction`` of the root, at most ``maximum``."""
    return min(int(capacity * fraction), maximum)


def make_room(
    policy: EvictionPolicy,
    candidates: Callable[[], Iterable[Candidate]],
    *,
    used: int,
    size: int,
    capacity: int,
    batch: int,
    now: float,
) -> list[Candidate] | None:
    """The objects to evict so ``size`` more bytes fit in ``capacity`` of which
    ``used`` are taken: ``[]`` when they fit already, ``None`` when they cannot
    fit (larger than the root, or more than every candidate holds). Otherwise
    the policy's victims for the bytes needed plus ``batch``. ``candidates`` is
    called only when room must be made (the store reads them from its index).

    The store's writes and bench/'s trace replays both make room through this
    one function."""
    if used + size <= capacity:
        return []
    if size > capacity:
        return None
    need = used + size - capacity
    pool = list(candidates())
    if sum(c.size for c in pool) < need:
        return None
    return choose_victims(policy, pool, need + batch, now)


@dataclass(frozen=True)
class PopularityPolicy:
    half_life: float = DEFAULT_HALF_LIFE
    name: str = "popularity"

    def order(self, candidates: Iterable[Candidate], now: float) -> list[Candidate]:
        hl = self.half_life
        return sorted(
            candidates,
            key=lambda c: (c.pinned, decayed(c.score, c.score_time, now, hl), c.last_access, c.key),
        )


@dataclass(frozen=True)
class LRUPolicy:
    name: str = "lru"

    def order(self, candidates: Iterable[Candidate], now: float) -> list[Candidate]:
        return sorted(candidates, key=lambda c: (c.pinned, c.last_access, c.key))


POLICIES = {"popularity": PopularityPolicy, "lru": LRUPolicy}


def make_policy(name: str, half_life: float = DEFAULT_HALF_LIFE) -> EvictionPolicy:
    if name == "popularity":
        return PopularityPolicy(half_life=half_life)
    if name == "lru":
        return LRUPolicy()
    raise ValueError(f"unknown eviction policy {name!r} (choose from {', '.join(POLICIES)})")
