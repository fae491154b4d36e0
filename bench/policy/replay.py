"""Replaying a trace through one store root, as the appliance runs it.

The simulated root, like ``edge/store/`` and the appliance's miss path:
- holds whole objects against a byte capacity that is never exceeded;
- a hit adds 1 to the object's popularity (``decayed`` to the request's time
  with the policy's half-life) and sets its last access;
- a miss is stored with a popularity of 1 unless larger than the root; when it
  does not fit (the store is full) the admission filter is asked first, and if
  it admits, ``make_room`` chooses the victims with ``evict_batch`` (1% of the
  root, at most 256 MiB): the very functions ``Store._make_room`` calls;
- the nightly fill (``replay_fill``): at ``night_hour`` of every day of the
  trace's clock, the manifest is forecast by ``fill.forecast`` (as
  ``fill --from-logs`` does) from the requests *before* that moment only,
  planned by ``fill.plan.make_plan`` within ``FillConfig.budget`` (capacity
  less headroom), and loaded as ``fill/run.py`` loads it: kept objects
  pinned, adds stored pinned after removing what the old plan pinned and this
  one dropped, the rest unpinned.
Differences: the store fills and evicts slice by slice and counts hits in 2 s
batches; here an object is stored whole and counted at once. The fill's
downloads take no time (it loads in the night's trough).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.policy.tracefile import Trace
from edge.core.admission import Admission
from edge.core.policy import (
    DEFAULT_HALF_LIFE,
    Candidate,
    EvictionPolicy,
    decayed,
    evict_batch,
    make_room,
)
from fill.config import FillConfig
from fill.forecast import ForecastRules, Logbook, sized, to_size
from fill.plan import ADD, KEEP, Entry, Held, density, make_plan

DAY = 86400.0
EVICT_BATCH_FRACTION = 0.01  # Store(evict_batch_fraction=...)
EVICT_BATCH_MAX = 256 * 1024**2  # Store(evict_batch_max=...)


@dataclass
class Result:
    policy: str
    requests: int = 0
    hits: int = 0
    bytes_requested: int = 0
    bytes_hit: int = 0
    bytes_stored: int = 0  # written by pull-through
    bytes_filled: int = 0  # loaded by the nightly fill
    refused: int = 0  # misses the admission filter kept out
    evict_rounds: int = 0
    seconds: float = 0.0

    @property
    def byte_hit_ratio(self) -> float:
        return self.bytes_hit / self.bytes_requested if self.bytes_requested else 0.0

    @property
    def object_hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


class Root:
    """One store root: its objects as the store's index would list them."""

    def __init__(
        self,
        capacity: int,
        policy: EvictionPolicy,
        admission: Admission,
        result: Result,
        *,
        batch_fraction: float = EVICT_BATCH_FRACTION,
        batch_max: int = EVICT_BATCH_MAX,
    ) -> None:
        self.capacity = capacity
        self.policy = policy
        self.admission = admission
        self.res = result
        self.half_life = float(getattr(policy, "half_life", DEFAULT_HALF_LIFE))
        self.batch = evict_batch(capacity, batch_fraction, batch_max)
        self.stored: dict[str, Candidate] = {}
        self.used = 0

    def request(self, now: float, key: str, size: int) -> None:
        res = self.res
        res.bytes_requested += size
        c = self.stored.get(key)
        if c is not None:
            res.hits += 1
            res.bytes_hit += size
            score = decayed(c.score, c.score_time, now, self.half_life) + 1.0
            self.stored[key] = Candidate(key, c.size, score, now, now, c.pinned)
            return
        if size > self.capacity:
            return
        if self.used + size > self.capacity and not self.admission.admit(key):
            res.refused += 1
            return
        if self.put(key, size, now, score=1.0):
            res.bytes_stored += size

    def put(self, key: str, size: int, now: float, *, score: float, pinned: bool = False) -> bool:
        """Store ``key``, making room through ``make_room``; False if it cannot fit."""
        victims = make_room(
            self.policy,
            self.stored.values,
            used=self.used,
            size=size,
            capacity=self.capacity,
            batch=self.batch,
            now=now,
        )
        if victims is None:
            return False
        if victims:
            self.res.evict_rounds += 1
        for v in victims:
            self.remove(v.key)
        self.stored[key] = Candidate(key, size, score, now, now, pinned)
        self.used += size
        assert self.used <= self.capacity
        return True

    def remove(self, key: str) -> None:
        c = self.stored.pop(key)
        self.used -= c.size

    def pin(self, key: str, pinned: bool) -> None:
        c = self.stored[key]
        if c.pinned != pinned:
            self.stored[key] = Candidate(key, c.size, c.score, c.score_time, c.last_access, pinned)


def replay(
    trace: Trace, capacity: int, policy: EvictionPolicy, admission: Admission, name: str
) -> Result:
    """Pull-through only: every request through the root, no fill."""
    res = Result(name)
    root = Root(capacity, policy, admission, res)
    started = time.perf_counter()
    for now, key, size in zip(trace.times, trace.keys, trace.sizes, strict=True):
        root.request(now, key, size)
    res.seconds = time.perf_counter() - started
    res.requests = len(trace)
    return res


class NightlyFill:
    """The fill's view of the appliance's logs: what it may know at a night."""

    def __init__(self, trace: Trace, cfg: FillConfig) -> None:
        self.trace = trace
        self.cfg = cfg
        self.book = Logbook(ForecastRules(cfg.log_half_life, cfg.title_pattern))
        self.counted_to = 0  # requests before this index are in ``book``
        self.sizes: dict[str, int] = {}
        self.origin: dict[str, int] | None = None  # what a HEAD at the origin answers

    def manifest(self, night: float, upto: int, root: Root) -> list[Entry]:
        """Entries from the requests ``[0, upto)``, all before ``night``, as
        ``fill --from-logs`` makes them at ``night``: ``fill.forecast`` scores,
        sizes from the root (the index) or the origin (a key the trace never
        asks for is one the origin does not have)."""
        t = self.trace
        assert upto == len(t) or t.times[upto] >= night
        assert upto == 0 or t.times[upto - 1] < night
        lo = self.counted_to
        self.book.add_all(zip(t.times[lo:upto], t.keys[lo:upto], strict=True))
        self.counted_to = upto
        if self.origin is None:
            self.origin = t.objects()
        scores = self.book.forecast(night)
        sizes = {c.key: c.size for c in root.stored.values()}
        budget = self.cfg.budget(root.capacity)
        origin = self.origin
        for ask in to_size(self.book, scores, sizes, budget):
            for k in ask:  # the HEADs fill/run.py sends
                if k in origin:
                    sizes[k] = origin[k]
                else:
                    del scores[k]
        return [Entry(k, sizes[k], scores[k]) for k in sized(self.book, scores, sizes, budget)]


def load_plan(root: Root, entries: list[Entry], cfg: FillConfig, night: float) -> None:
    """Plan as ``fill/run.py`` does and load the root as it would."""
    held = [Held(c.key, c.size, "", c.size, True, c.pinned) for c in root.stored.values()]
    plan = make_plan(entries, held, cfg.budget(root.capacity), cfg.bytes_per_night)
    for d in plan.of(KEEP):
        root.pin(d.entry.key, True)
    per_byte = {d.entry.key: density(d.entry) for d in plan.decisions}
    queue = sorted(plan.evict, key=lambda h: (per_byte.get(h.key, -1.0), h.key))
    for d in plan.of(ADD):
        e = d.entry
        while queue and root.used + e.size > root.capacity:
            h = queue.pop(0)
            if h.key in root.stored:
                root.remove(h.key)
        if root.put(e.key, e.size, night, score=0.0, pinned=True):
            root.res.bytes_filled += e.size
    for h in queue:
        if h.key in root.stored:
            root.pin(h.key, False)


def replay_fill(
    trace: Trace,
    capacity: int,
    policy: EvictionPolicy,
    admission: Admission,
    cfg: FillConfig,
    night_hour: float,
    name: str,
    nightly: type[NightlyFill] | None = None,
) -> Result:
    """Pull-through by day, the nightly fill at ``night_hour`` of every day."""
    res = Result(name)
    root = Root(capacity, policy, admission, res)
    fill = (nightly or NightlyFill)(trace, cfg)
    started = time.perf_counter()
    first = trace.times[0] if len(trace) else 0.0
    night = (first // DAY) * DAY + night_hour * 3600
    if night <= first:
        night += DAY
    for i, (now, key, size) in enumerate(zip(trace.times, trace.keys, trace.sizes, strict=True)):
        while now >= night:
            load_plan(root, fill.manifest(night, i, root), cfg, night)
            night += DAY
        root.request(now, key, size)
    res.seconds = time.perf_counter() - started
    res.requests = len(trace)
    return res
