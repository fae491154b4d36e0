"""Replay-only comparisons: not selectable in the appliance.

- ``replay_sieve``: SIEVE (Zhang et al., NSDI '24), a FIFO queue with one
  "visited" bit per object and a hand that moves from the oldest object to
  the newest, sparing (and clearing) visited ones and evicting the first
  unvisited; with variable sizes it evicts until the new object fits. Every
  miss is stored (no admission), as in the paper.
- ``replay_oracle_fill``: the nightly fill planned from the *next* day's true
  request counts (it peeks ahead): the ceiling of what a better prediction in
  the fill could reach with the same planner and day-time policy. Not a policy.
- ``replay_belady``: the offline reference, furthest next use with bypass: a
  miss is stored unless its own next request comes after those of every object
  it would displace; the displaced are those asked again furthest in the
  future. Optimal for equal sizes; for variable sizes an *approximation* of
  the optimum (which is NP-hard), neither an upper bound nor size-aware.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence

from bench.policy.replay import DAY, NightlyFill, Result, replay_fill
from bench.policy.tracefile import Trace
from edge.core.admission import Admission
from edge.core.policy import EvictionPolicy
from fill.config import FillConfig
from fill.plan import Entry


class _Node:
    __slots__ = ("key", "newer", "older", "size", "visited")

    def __init__(self, key: str, size: int) -> None:
        self.key, self.size, self.visited = key, size, False
        self.newer: _Node | None = None
        self.older: _Node | None = None


def replay_sieve(trace: Trace, capacity: int) -> Result:
    res = Result("sieve (replay only)")
    nodes: dict[str, _Node] = {}
    head: _Node | None = None  # newest
    tail: _Node | None = None  # oldest
    hand: _Node | None = None
    used = 0
    started = time.perf_counter()
    for key, size in zip(trace.keys, trace.sizes, strict=True):
        res.bytes_requested += size
        node = nodes.get(key)
        if node is not None:
            res.hits += 1
            res.bytes_hit += size
            node.visited = True
            continue
        if size > capacity:
            continue
        while used + size > capacity:
            h = hand or tail
            assert h is not None
            while h.visited:
                h.visited = False
                h = h.newer or tail
                assert h is not None
            hand = h.newer
            if h.older is not None:
                h.older.newer = h.newer
            else:
                tail = h.newer
            if h.newer is not None:
                h.newer.older = h.older
            else:
                head = h.older
            del nodes[h.key]
            used -= h.size
            res.evict_rounds += 1
        node = nodes[key] = _Node(key, size)
        node.older = head
        if head is not None:
            head.newer = node
        head = node
        if tail is None:
            tail = node
        used += size
        res.bytes_stored += size
        assert used <= capacity
    res.seconds = time.perf_counter() - started
    res.requests = len(trace)
    return res


def next_uses(keys: Sequence[str]) -> list[int]:
    """For each request, the index of the next request for the same key (or len)."""
    n = len(keys)
    nxt = [n] * n
    last: dict[str, int] = {}
    for i in range(n - 1, -1, -1):
        k = keys[i]
        nxt[i] = last.get(k, n)
        last[k] = i
    return nxt


def replay_belady(trace: Trace, capacity: int) -> Result:
    res = Result("belady (approx., offline)")
    nxt = next_uses(trace.keys)
    n = len(trace)
    cached: dict[str, int] = {}  # key -> its next request
    size_of: dict[str, int] = {}
    heap: list[tuple[int, str]] = []  # (-next request, key); stale entries skipped
    used = 0
    started = time.perf_counter()
    for i, (key, size) in enumerate(zip(trace.keys, trace.sizes, strict=True)):
        res.bytes_requested += size
        nu = nxt[i]
        if key in cached:
            res.hits += 1
            res.bytes_hit += size
            cached[key] = nu
            heapq.heappush(heap, (-nu, key))
            continue
        if nu >= n or size > capacity:
            continue
        popped: list[tuple[int, str]] = []
        freed = 0
        while used - freed + size > capacity:
            neg, victim = heap[0]
            if cached.get(victim) != -neg:  # stale: asked again since
                heapq.heappop(heap)
                continue
            if -neg <= nu:  # everything left is needed before this object
                break
            popped.append(heapq.heappop(heap))
            freed += size_of[victim]
        if used - freed + size > capacity:
            for entry in popped:
                heapq.heappush(heap, entry)
            continue
        for _, victim in popped:
            del cached[victim]
            used -= size_of.pop(victim)
        cached[key] = nu
        size_of[key] = size
        heapq.heappush(heap, (-nu, key))
        used += size
        res.bytes_stored += size
        assert used <= capacity
    res.seconds = time.perf_counter() - started
    res.requests = n
    return res


class _Tomorrow(NightlyFill):
    def manifest(self, night: float, upto: int, root: object = None) -> list[Entry]:
        t = self.trace
        end = upto
        while end < len(t) and t.times[end] < night + DAY:
            end += 1
        counts: dict[str, float] = {}
        for k in t.keys[upto:end]:
            counts[k] = counts.get(k, 0.0) + 1.0
        self.sizes.update(zip(t.keys[upto:end], t.sizes[upto:end], strict=True))
        return [Entry(k, self.sizes[k], c) for k, c in counts.items()]


def replay_oracle_fill(
    trace: Trace,
    capacity: int,
    policy: EvictionPolicy,
    admission: Admission,
    cfg: FillConfig,
    night_hour: float,
) -> Result:
    return replay_fill(
        trace, capacity, policy, admission, cfg, night_hour,
        "fill knowing tomorrow (peeks; a ceiling)", nightly=_Tomorrow,
    )  # fmt: skip
