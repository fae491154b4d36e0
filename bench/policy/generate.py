"""Seeded video-edge traces: what an appliance at an ISP sees in a week.

Rules it keeps: the same spec (seed included) gives the same trace, request
for request; requests are sorted by time; an object's size never changes.
The model:
- a title is a run of segments of a few MB (``segment_seconds`` of video at
  the title's bitrate, each segment within 25% of the title's mean); its key
  is ``v/TITLE/SEGMENT.m4s``;
- sessions start on a diurnal curve (an ISP's evening peak, night trough),
  pick a title by Zipf-like popularity (``alpha``) and play it from the first
  segment, one segment every ``segment_seconds``; many abandon within the
  first minutes (``zap_share``), the rest watch a random share of the title;
- shapes: ``steady`` (a fixed catalogue), ``release`` (``releases_per_day``
  new titles at ``release_hour``, each starting at ``release_boost`` times
  the top title's draw and halving every ``release_half_life`` days), ``scan``
  (steady, plus ``scan_share`` of the sessions playing a back-catalogue title
  picked uniformly and played to its end: one-time bulk traffic that
  pollutes a recency cache).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, replace

from bench.policy.tracefile import Trace

DAY = 86400.0
SHAPES = ("steady", "release", "scan")
# share of a day's sessions starting in each hour (an ISP's evening peak)
DIURNAL = (
    0.45, 0.30, 0.20, 0.15, 0.12, 0.12, 0.15, 0.20, 0.30, 0.40, 0.45, 0.50,
    0.55, 0.55, 0.55, 0.60, 0.65, 0.75, 0.85, 0.95, 1.00, 1.00, 0.90, 0.70,
)  # fmt: skip


@dataclass(frozen=True)
class Spec:
    shape: str = "steady"
    seed: int = 1
    days: int = 7
    sessions_per_day: int = 800
    titles: int = 600
    alpha: float = 0.9
    segment_seconds: float = 6.0
    minutes: tuple[float, float] = (10.0, 50.0)  # title length range
    mbit: tuple[float, float] = (3.0, 6.0)  # title bitrate range
    zap_share: float = 0.35  # sessions abandoning within the first minutes
    zap_segments: float = 8.0  # their mean length in segments
    releases_per_day: int = 0
    release_hour: float = 0.0
    release_boost: float = 1.5
    release_half_life: float = 1.0  # days
    scan_share: float = 0.0
    scan_titles: int = 5000


def shaped(shape: str, **changes: object) -> Spec:
    """The spec of a named shape, with ``changes`` applied."""
    if shape not in SHAPES:
        raise ValueError(f"unknown trace shape {shape!r} (choose from {', '.join(SHAPES)})")
    base = Spec(shape=shape)
    if shape == "release":
        base = replace(base, releases_per_day=4)
    elif shape == "scan":
        base = replace(base, scan_share=0.3)
    return replace(base, **changes)  # type: ignore[arg-type]


class Catalogue:
    """Segment counts and sizes per title, drawn from the title's own seed."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self._sizes: dict[int, list[int]] = {}

    def sizes(self, title: int) -> list[int]:
        got = self._sizes.get(title)
        if got is None:
            s = self.spec
            rng = random.Random(f"{s.seed}/title/{title}")
            count = max(1, round(rng.uniform(*s.minutes) * 60 / s.segment_seconds))
            mean = rng.uniform(*s.mbit) * 1e6 / 8 * s.segment_seconds
            got = self._sizes[title] = [int(mean * rng.uniform(0.75, 1.25)) for _ in range(count)]
        return got


def _watched(rng: random.Random, spec: Spec, length: int) -> int:
    if rng.random() < spec.zap_share:
        n = 1 + int(rng.expovariate(1.0 / spec.zap_segments))
    else:
        n = max(1, round(length * rng.random()))
    return min(n, length)


def _titles_of_day(spec: Spec, day: int) -> tuple[list[int], list[float]]:
    """Titles on offer on ``day`` and their cumulative draw weights."""
    titles = list(range(spec.titles))
    weights = [(r + 1) ** -spec.alpha for r in range(spec.titles)]
    if spec.releases_per_day:
        for d in range(day - 6, day + 1):  # a week of releases; older ones join the tail
            for j in range(spec.releases_per_day):
                titles.append(100_000 + (d + 7) * 100 + j)
                age = day - d
                weights.append(spec.release_boost * 0.5 ** (age / spec.release_half_life))
    return titles, list(itertools.accumulate(weights))


def generate(spec: Spec) -> Trace:
    rng = random.Random(f"{spec.seed}/{spec.shape}/sessions")
    cat = Catalogue(spec)
    hours = list(range(24))
    requests: list[tuple[float, str, int]] = []
    end = spec.days * DAY
    for day in range(spec.days):
        titles, cum = _titles_of_day(spec, day)
        fresh = _titles_of_day(spec, day - 1) if spec.releases_per_day else (titles, cum)
        starts = rng.choices(hours, weights=DIURNAL, k=spec.sessions_per_day)
        for hour in starts:
            start = day * DAY + (hour + rng.random()) * 3600
            if rng.random() < spec.scan_share:
                title = 200_000 + rng.randrange(spec.scan_titles)
                sizes = cat.sizes(title)
                n = len(sizes)
            else:
                # before the day's releases come out, yesterday's offer is on
                offer, weights = fresh if hour < spec.release_hour else (titles, cum)
                title = rng.choices(offer, cum_weights=weights)[0]
                sizes = cat.sizes(title)
                n = _watched(rng, spec, len(sizes))
            for i in range(n):
                when = start + i * spec.segment_seconds
                if when >= end:
                    break
                requests.append((when, f"v/{title:06d}/{i:04d}.m4s", sizes[i]))
    requests.sort()
    trace = Trace(f"{spec.shape} (seed {spec.seed})")
    for when, key, size in requests:
        trace.append(round(when, 6), key, size)
    return trace
