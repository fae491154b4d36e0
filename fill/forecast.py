"""Tomorrow's demand from access logs: a score for every key worth holding.

What it decides: given the content requests an appliance logged (time, key)
and the moment of the fill (``now``), how many requests each key is expected
to get in the next 24 hours, for keys seen in the logs and for the keys of
the same titles not asked for yet. Rules it keeps:
- pure: requests (all before ``now``) and ``now`` in, scores out; no files,
  sockets or clocks;
- a key belongs to a **title**: the first group of ``title_pattern`` matched
  at the key's start (default ``(.+)/``: the key's directory, so
  ``v/0017/0042.m4s`` is in ``v/0017``); a key the pattern does not match,
  or matches whole, is a title of its own. Its **position** is the last
  number of its name before the extension (``0042``), counted from the
  lowest position seen in the title; a name without a number is position 0;
- a title's **starts** are the requests of its lowest position (players
  start at the first segment). Its **rate** (starts a day) is its starts,
  decayed by ``half_life``, over the time the logs cover, decayed alike, each
  hour weighted by its share of the day's starts (the **diurnal** curve,
  measured on every title's starts): a fill at 02:00 has seen the night's
  trough of a title released at midnight, not a twelfth of its day;
- the time covered starts at the logs' first request; for a **new** title
  (first seen ``new_after`` or more after the logs begin) also at its own
  first request, not counted (that request is what made it seen: a title
  seen once has no rate of its own); a title's rate is the larger of the two,
  so a release is extrapolated from its first hours, not averaged over a week;
- the **drop-off** ``d(p)``: the share of starts that reach position ``p``,
  measured over every title whose furthest seen position is ``p`` or more;
  a key's score is its title's rate times ``d(p)``, so noisy per-key counts
  never rank keys, and the positions a title has not had asked yet (up to
  the furthest any title reached) are scored too (``sibling`` names them);
- ``worth_sizing``: which keys a plan of ``budget`` bytes may take, by score
  per byte (to twice the budget), sizes estimated from the title's known
  ones; ``to_size`` asks for sizes in rounds of those only, so the origin is
  asked about what a plan may take, not about every key scored.
"""

from __future__ import annotations

import math
import re
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

DAY = 86400.0
HOUR = 3600.0
DEFAULT_TITLE_PATTERN = r"(.+)/"
_NUMBER = re.compile(r"(\d+)\D*$")


def _number(key: str, start: int) -> re.Match[str] | None:
    """The last run of digits in ``key[start:]`` before its extension."""
    dot = key.rfind(".", start)
    return _NUMBER.search(key, start, dot if dot > start else len(key))


@dataclass(frozen=True)
class ForecastRules:
    """``half_life``: age that halves a request (``log_half_life``);
    ``title_pattern``: names a key's title (``title_pattern``); ``new_after``:
    time after the logs begin from which a first-seen title is new."""

    half_life: float = DAY
    title_pattern: str = DEFAULT_TITLE_PATTERN
    new_after: float = DAY


def sibling(key: str, title: str, position: int) -> str | None:
    """The key at ``position`` of ``key``'s title: its last number replaced,
    zero-padded to the same width (``v/7/0042.m4s`` at 43 is ``v/7/0043.m4s``)."""
    form = _form(key, title)
    return None if form is None else form.format(position)


def _form(key: str, title: str) -> str | None:
    """``key`` as a format string with its position as the field."""
    n = _number(key, len(title))
    if n is None:
        return None
    width = len(n.group(1)) if n.group(1).startswith("0") else 1
    head, tail = (
        x.replace("{", "{{").replace("}", "}}") for x in (key[: n.start(1)], key[n.end(1) :])
    )
    return f"{head}{{:0{width}d}}{tail}"


def title_and_position(key: str, pattern: re.Pattern[str]) -> tuple[str, int]:
    """The key's title and its number in it (see the rules above)."""
    m = pattern.match(key)
    if m is None:
        return key, 0
    title = m.group(1) if m.groups() and m.group(1) is not None else m.group(0)
    if title == key:
        return key, 0
    n = _number(key, len(title))
    return title, int(n.group(1)) if n else 0


@dataclass
class _Key:
    title: str
    position: int
    times: array[float] = field(default_factory=lambda: array("d"))  # 8 bytes a request


@dataclass
class _Title:
    first_seen: float
    keys: list[str] = field(default_factory=list)


class Logbook:
    """The requests seen so far, by key and title; ``forecast`` reads them."""

    def __init__(self, rules: ForecastRules | None = None) -> None:
        self.rules = rules or ForecastRules()
        self.pattern = re.compile(self.rules.title_pattern)
        self.keys: dict[str, _Key] = {}
        self.titles: dict[str, _Title] = {}
        self.first: float | None = None
        self.unseen: dict[str, str] = {}  # the last forecast's keys not asked yet: their titles

    def add(self, when: float, key: str) -> None:
        k = self.keys.get(key)
        if k is None:
            title, pos = title_and_position(key, self.pattern)
            k = self.keys[key] = _Key(title, pos)
            t = self.titles.get(title)
            if t is None:
                t = self.titles[title] = _Title(when)
            t.keys.append(key)
        k.times.append(when)
        t = self.titles[k.title]
        if when < t.first_seen:
            t.first_seen = when
        if self.first is None or when < self.first:
            self.first = when

    def title_of(self, key: str) -> str:
        k = self.keys.get(key)
        if k is not None:
            return k.title
        title = self.unseen.get(key)
        return title if title is not None else title_and_position(key, self.pattern)[0]

    def add_all(self, requests: Iterable[tuple[float, str]]) -> None:
        for when, key in requests:
            self.add(when, key)

    def forecast(self, now: float) -> dict[str, float]:
        """Expected requests in the 24 hours after ``now``, by key (scores of 0 left out)."""
        if self.first is None:
            return {}
        r = self.rules
        hl = r.half_life
        decay = math.log(2) / hl

        def weight(times: Iterable[float]) -> float:
            return sum(math.exp(-decay * (now - t)) for t in times if t <= now)

        own = {key: weight(k.times) for key, k in self.keys.items()}
        starts: dict[str, tuple[str, int]] = {}  # title -> (its first key, lowest position)
        for name, t in self.titles.items():
            low = min(t.keys, key=lambda key: self.keys[key].position)
            starts[name] = (low, self.keys[low].position)
        diurnal = _diurnal([tm for low, _ in starts.values() for tm in self.keys[low].times])
        drop = _drop_off(self, starts, own)
        old_exposure = max(_exposure(self.first, now, hl, diurnal), 1e-6)
        out: dict[str, float] = {}
        self.unseen = {}
        for name, t in self.titles.items():
            low, base = starts[name]
            rate = own[low] / old_exposure
            if t.first_seen - self.first >= r.new_after:
                first = min(self.keys[low].times)
                young = max(0.0, own[low] - math.exp(-decay * (now - first)))
                rate = max(rate, young / max(_exposure(t.first_seen, now, hl, diurnal), 1e-3))
            if rate <= 0:
                continue
            for key in t.keys:
                share = drop.get(self.keys[key].position - base, 0.0)
                if share > 0:
                    out[key] = rate * share
            form = _form(low, name)
            if form is None:
                continue
            for p, share in drop.items():
                sib = form.format(base + p)
                if sib not in out:
                    out[sib] = rate * share
                    self.unseen[sib] = name
        return out


def _diurnal(times: list[float]) -> list[float]:
    """Share of a day's starts in each hour of the day (flat when none)."""
    hours = [1.0] * 24  # one start per hour as a prior: no hour is ever empty
    for t in times:
        hours[int(t % DAY // HOUR)] += 1.0
    total = sum(hours)
    return [h / total for h in hours]


def _exposure(since: float, now: float, half_life: float, diurnal: list[float]) -> float:
    """Days of demand between ``since`` and ``now``, each hour weighted by its
    diurnal share (a whole day is 1) and decayed to ``now``."""
    if now <= since:
        return 0.0
    decay = math.log(2) / half_life
    total = 0.0
    t = now
    while t > since and now - t < 12 * half_life:
        h0 = math.floor(t / HOUR) * HOUR
        if h0 >= t:
            h0 -= HOUR
        lo = max(since, h0)
        share = diurnal[int(h0 % DAY // HOUR)] * (t - lo) / HOUR
        total += share * math.exp(-decay * (now - (t + lo) / 2))
        t = lo
    return total


def _drop_off(
    book: Logbook, starts: dict[str, tuple[str, int]], own: dict[str, float]
) -> dict[int, float]:
    """Share of starts that reach each position, over titles that have it."""
    reach: dict[int, float] = {}
    base_at: dict[int, float] = {}
    for name, t in book.titles.items():
        low, base = starts[name]
        s = own[low]
        longest = 0
        for key in t.keys:
            p = book.keys[key].position - base
            reach[p] = reach.get(p, 0.0) + own[key]
            longest = max(longest, p)
        base_at[longest] = base_at.get(longest, 0.0) + s
    # titles reaching position p: those whose longest seen position is >= p
    out: dict[int, float] = {}
    running = 0.0
    for p in sorted(set(reach) | set(base_at), reverse=True):
        running += base_at.get(p, 0.0)
        if p in reach and running > 0:
            out[p] = reach[p] / running
    return out


def worth_sizing(
    book: Logbook, scores: dict[str, float], sizes: dict[str, int], budget: int, margin: float = 2.0
) -> list[str]:
    """The keys of ``scores`` a plan of ``budget`` bytes may take: by score per
    byte, highest first, until ``margin`` times the budget is reached. A key's
    size is ``sizes[key]`` when known, else the mean known size of its title's
    keys (else of all known keys, else 1 byte)."""
    total_known = count_known = 0
    by_title: dict[str, list[int]] = {}
    for key, size in sizes.items():
        if size > 0:
            by_title.setdefault(book.title_of(key), []).append(size)
            total_known += size
            count_known += 1
    fallback = total_known / count_known if count_known else 1.0
    mean = {t: sum(v) / len(v) for t, v in by_title.items()}
    known, title_of = sizes.get, book.title_of
    est = {}
    for key in scores:
        size = known(key)
        est[key] = max(1.0, size if size is not None else mean.get(title_of(key), fallback))
    ranked = sorted(scores, key=lambda key: -scores[key] / est[key])
    out: list[str] = []
    total, limit = 0.0, margin * budget
    for key in ranked:
        if total >= limit:
            break
        out.append(key)
        total += est[key]
    return out


FIRST_SIZED = 64  # keys sized, best scores first, when no size is known at all


def to_size(
    book: Logbook, scores: dict[str, float], sizes: dict[str, int], budget: int, rounds: int = 4
) -> Iterator[list[str]]:
    """The keys to ask the origin about, round by round, so that only the keys
    a plan may take are asked: the caller records each answer in ``sizes``,
    or removes the key from ``scores`` when the origin has none, before the
    next round. Estimates improve as sizes come in; a key once sized stays.
    After the rounds, ``sized(...)`` is the manifest's keys."""
    if not any(k in scores for k in sizes):
        yield sorted(scores, key=lambda key: -scores[key])[:FIRST_SIZED]
    for _ in range(rounds):
        ask = [k for k in worth_sizing(book, scores, sizes, budget) if k not in sizes]
        if not ask:
            return
        yield ask


def sized(book: Logbook, scores: dict[str, float], sizes: dict[str, int], budget: int) -> list[str]:
    """The keys a plan may take, among those whose size is known."""
    return [k for k in worth_sizing(book, scores, sizes, budget) if k in sizes]
