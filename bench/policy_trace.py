"""Trace-driven simulation of one store root: eviction policies and admission.

Replays synthetic, seeded video-like traces through edgefleet's own
``edge.core.policy`` (``LRUPolicy`` and ``PopularityPolicy`` through
``make_policy``, ``make_room``, ``Candidate``, ``decayed``) and
``edge.core.admission``, mirroring what the store does with them, and prints the
byte and object hit ratios of each combination next to an offline reference
(furthest next use, "Belady").

The simulated root, like ``edge/store/``:
- holds whole objects against a byte capacity that is never exceeded;
- on a hit adds 1 to the object's popularity (``decayed`` to the request's time
  with the policy's half-life) and sets its last access;
- on a miss stores the object with a popularity of 1, unless it is larger than
  the root; when it does not fit ("capacity pressure") it first asks the
  admission filter, and if admitted evicts what ``make_room`` chooses, with
  ``evict_batch`` = 1% of the capacity (at most 256 MiB): the very functions
  ``Store._make_room`` calls;
- an evicted object loses its popularity (its index row is deleted).
Differences: the store fills and evicts slice by slice and counts requests in
2 s batches; here an object is stored whole at once and counted at once.

Usage: python bench/policy_trace.py [--requests N] [--json PATH] (--help).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchlib import GIB, KIB, MIB, print_header, write_json

from edge.core.admission import ADMISSIONS, Admission, make_admission
from edge.core.policy import (
    DEFAULT_HALF_LIFE,
    POLICIES,
    Candidate,
    EvictionPolicy,
    decayed,
    evict_batch,
    make_policy,
    make_room,
)

DAY = 86400.0
EVICT_BATCH_FRACTION = 0.01  # Store(evict_batch_fraction=...)
EVICT_BATCH_MAX = 256 * MIB  # Store(evict_batch_max=...)

TRACES = ("zipf", "scan", "shift")
TRACE_HELP = {
    "zipf": "Zipf popularity over a fixed catalogue",
    "scan": "the zipf trace with a share of one-hit wonders mixed in",
    "shift": "a new hot set every day (new objects take the head of the Zipf)",
}


@dataclass
class Trace:
    name: str
    description: str
    times: list[float]
    keys: list[str]
    sizes: list[int]

    def __len__(self) -> int:
        return len(self.keys)


# -- traces ------------------------------------------------------------------


def object_size(rng: random.Random) -> int:
    """A video CDN's mix: mostly ~2 MiB media segments, some small and some large files."""
    u = rng.random()
    if u < 0.80:  # media segments: ~4 s at ~4 Mbit/s, varying with the content
        return rng.randint(3 * MIB // 2, 5 * MIB // 2)
    if u < 0.95:  # manifests, init segments, subtitles, thumbnails: 1-64 KiB
        return int(math.exp(rng.uniform(math.log(1 * KIB), math.log(64 * KIB))))
    # progressive MP4s, 4K segments, downloads: 8-64 MiB
    return int(math.exp(rng.uniform(math.log(8 * MIB), math.log(64 * MIB))))


def zipf_ranks(rng: random.Random, n_objects: int, alpha: float, count: int) -> list[int]:
    """``count`` draws of ranks 0..n_objects-1 with P(rank r) proportional to 1/(r+1)^alpha."""
    cum = list(itertools.accumulate((r + 1) ** -alpha for r in range(n_objects)))
    return rng.choices(range(n_objects), cum_weights=cum, k=count)


def arrival_times(rng: random.Random, count: int, days: float) -> list[float]:
    """Poisson arrivals spread over ``days``."""
    mean_gap = days * DAY / count
    t = 0.0
    out = []
    for _ in range(count):
        t += rng.expovariate(1.0 / mean_gap)
        out.append(t)
    return out


@dataclass(frozen=True)
class TraceSpec:
    requests: int = 200_000
    objects: int = 20_000
    alpha: float = 0.9
    days: float = 4.0
    one_hit_share: float = 0.4
    seed: int = 1


def catalogue(spec: TraceSpec) -> tuple[list[str], list[int]]:
    """The keys and sizes of the Zipf traces' catalogue, rank order shuffled."""
    rng = random.Random(f"{spec.seed}/catalogue")
    keys = [f"title/{i:06d}.m4s" for i in range(spec.objects)]
    sizes = [object_size(rng) for _ in keys]
    order = list(range(spec.objects))
    rng.shuffle(order)  # rank r is object order[r]: size and rank independent
    return [keys[i] for i in order], [sizes[i] for i in order]


def zipf_trace(spec: TraceSpec) -> Trace:
    keys, sizes = catalogue(spec)
    rng = random.Random(f"{spec.seed}/zipf")
    ranks = zipf_ranks(rng, spec.objects, spec.alpha, spec.requests)
    times = arrival_times(random.Random(f"{spec.seed}/times"), spec.requests, spec.days)
    return Trace(
        "zipf",
        f"Zipf({spec.alpha}) over {spec.objects} objects",
        times,
        [keys[r] for r in ranks],
        [sizes[r] for r in ranks],
    )


def scan_trace(spec: TraceSpec) -> Trace:
    """The zipf trace's requests in the same order, a share of them replaced
    (at random places) by requests for keys asked exactly once."""
    base = zipf_trace(spec)
    rng = random.Random(f"{spec.seed}/scan")
    keys: list[str] = []
    sizes: list[int] = []
    popular = 0
    for i in range(spec.requests):
        if rng.random() < spec.one_hit_share:
            keys.append(f"once/{i:07d}.m4s")
            sizes.append(object_size(rng))
        else:
            keys.append(base.keys[popular])
            sizes.append(base.sizes[popular])
            popular += 1
    once = 1 - popular / spec.requests
    return Trace(
        "scan",
        f"zipf + {once:.0%} of requests to one-hit wonders",
        base.times,
        keys,
        sizes,
    )


def shift_trace(spec: TraceSpec) -> Trace:
    """Every day a new batch of ``objects/4`` objects takes Zipf ranks 0..B-1;
    the previous days' batches move down by B ranks each, the oldest drops out."""
    per_day = max(1, spec.objects // 4)
    generations = math.ceil(spec.objects / per_day)
    rng = random.Random(f"{spec.seed}/shift")
    ranks = zipf_ranks(rng, spec.objects, spec.alpha, spec.requests)
    times = arrival_times(random.Random(f"{spec.seed}/times"), spec.requests, spec.days)
    size_rng = random.Random(f"{spec.seed}/shift-sizes")
    size_of: dict[str, int] = {}
    keys: list[str] = []
    sizes: list[int] = []
    for t, r in zip(times, ranks, strict=True):
        day = int(t // DAY)
        batch = day + generations - 1 - r // per_day  # the newest batch is the hottest
        key = f"day{batch:03d}/{r % per_day:06d}.m4s"
        size = size_of.get(key)
        if size is None:
            size = size_of[key] = object_size(size_rng)
        keys.append(key)
        sizes.append(size)
    return Trace(
        "shift",
        f"Zipf({spec.alpha}) over {spec.objects} objects, {per_day} new hottest ones a day",
        times,
        keys,
        sizes,
    )


TRACE_MAKERS: dict[str, Callable[[TraceSpec], Trace]] = {
    "zipf": zipf_trace,
    "scan": scan_trace,
    "shift": shift_trace,
}


def working_set(trace: Trace) -> tuple[int, int]:
    """Distinct objects a trace asks for, and their bytes."""
    seen: dict[str, int] = dict(zip(trace.keys, trace.sizes, strict=True))
    return len(seen), sum(seen.values())


# -- simulation --------------------------------------------------------------


@dataclass
class Result:
    trace: str
    policy: str
    admission: str
    requests: int = 0
    hits: int = 0
    bytes_requested: int = 0
    bytes_hit: int = 0
    stored: int = 0  # misses stored
    bytes_stored: int = 0  # what the store wrote to disk
    refused: int = 0  # misses the admission filter kept out
    too_large: int = 0  # misses larger than the root
    evictions: int = 0
    evict_rounds: int = 0
    seconds: float = 0.0

    @property
    def byte_hit_ratio(self) -> float:
        return self.bytes_hit / self.bytes_requested if self.bytes_requested else 0.0

    @property
    def object_hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0


def simulate(
    trace: Trace,
    capacity: int,
    policy: EvictionPolicy,
    admission: Admission,
    *,
    batch_fraction: float = EVICT_BATCH_FRACTION,
    batch_max: int = EVICT_BATCH_MAX,
) -> Result:
    """Replay ``trace`` through one root of ``capacity`` bytes."""
    res = Result(trace.name, policy.name, admission.name)
    half_life = float(getattr(policy, "half_life", DEFAULT_HALF_LIFE))
    batch = evict_batch(capacity, batch_fraction, batch_max)
    stored: dict[str, Candidate] = {}  # the root's objects, as the store would list them
    used = 0
    hits = bytes_hit = bytes_requested = 0
    started = time.perf_counter()
    for now, key, size in zip(trace.times, trace.keys, trace.sizes, strict=True):
        bytes_requested += size
        c = stored.get(key)
        if c is not None:
            hits += 1
            bytes_hit += size
            score = decayed(c.score, c.score_time, now, half_life) + 1.0
            stored[key] = Candidate(key, c.size, score, now, now, c.pinned)
            continue
        if size > capacity:
            res.too_large += 1
            continue
        if used + size > capacity:
            if not admission.admit(key):
                res.refused += 1
                continue
            victims = make_room(
                policy,
                stored.values,
                used=used,
                size=size,
                capacity=capacity,
                batch=batch,
                now=now,
            )
            assert victims is not None  # size <= capacity and everything else is a candidate
            for v in victims:
                del stored[v.key]
                used -= v.size
            res.evictions += len(victims)
            res.evict_rounds += 1
        stored[key] = Candidate(key, size, 1.0, now, now)
        used += size
        res.stored += 1
        res.bytes_stored += size
        assert used <= capacity
    res.seconds = time.perf_counter() - started
    res.requests = len(trace)
    res.hits, res.bytes_hit, res.bytes_requested = hits, bytes_hit, bytes_requested
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


def simulate_belady(trace: Trace, capacity: int) -> Result:
    """Offline reference: furthest next use, with bypass.

    On a miss the object is stored unless its own next request comes after
    those of every object it would displace; the objects displaced are those
    requested furthest in the future. Exact (optimal) for equal sizes; with
    variable sizes it is the usual approximation of the offline optimum (which
    is NP-hard), neither an upper bound nor size-aware (Belady-size would also
    weigh sizes)."""
    res = Result(trace.name, "belady", "-")
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
            res.refused += 1
            continue
        popped: list[tuple[int, str]] = []
        freed = 0
        while used - freed + size > capacity:
            neg, victim = heap[0]
            if cached.get(victim) != -neg:  # stale: the object was requested since
                heapq.heappop(heap)
                continue
            if -neg <= nu:  # everything left is needed before this object
                break
            popped.append(heapq.heappop(heap))
            freed += size_of[victim]
        if used - freed + size > capacity:
            for entry in popped:
                heapq.heappush(heap, entry)
            res.refused += 1
            continue
        for _, victim in popped:
            del cached[victim]
            used -= size_of.pop(victim)
        res.evictions += len(popped)
        cached[key] = nu
        size_of[key] = size
        heapq.heappush(heap, (-nu, key))
        used += size
        res.stored += 1
        res.bytes_stored += size
    res.seconds = time.perf_counter() - started
    res.requests = n
    return res


# -- driver ------------------------------------------------------------------


class PerWorker:
    """One admission filter per worker process (as ``workers = N`` would have);
    each miss is handled by a worker picked at random (seeded)."""

    def __init__(self, filters: list[Admission], seed: int) -> None:
        self.filters = filters
        self.name = filters[0].name
        self._rng = random.Random(seed)

    def admit(self, key: str) -> bool:
        return self._rng.choice(self.filters).admit(key)


def make_filter(name: str, window: int, workers: int, seed: int) -> Admission:
    if workers <= 1:
        return make_admission(name, expected_keys=window)
    return PerWorker([make_admission(name, expected_keys=window) for _ in range(workers)], seed)


def parse_size(text: str) -> int:
    units = {"": 1, "k": KIB, "kib": KIB, "m": MIB, "mib": MIB, "g": GIB, "gib": GIB}
    s = text.strip().lower()
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num) :]
    if unit not in units:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 6GiB)")
    return int(float(num) * units[unit])


def csv_of(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}")
        return items

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Replay synthetic video traces through edgefleet's eviction policies "
        "and admission filters; print byte and object hit ratios against Belady."
    )
    p.add_argument("--requests", type=int, default=200_000, help="requests per trace")
    p.add_argument("--objects", type=int, default=20_000, help="catalogue size")
    p.add_argument("--alpha", type=float, default=0.9, help="Zipf exponent")
    p.add_argument("--days", type=float, default=4.0, help="time the trace spans")
    p.add_argument(
        "--one-hit-share", type=float, default=0.4, help="one-hit wonders in the scan trace"
    )
    p.add_argument("--half-life", type=float, default=DEFAULT_HALF_LIFE, help="seconds")
    p.add_argument(
        "--capacity-fraction",
        type=float,
        default=0.10,
        help="capacity as a share of the zipf trace's working set (default 0.10)",
    )
    p.add_argument("--capacity", type=parse_size, help="capacity in bytes (overrides the above)")
    p.add_argument(
        "--window",
        type=int,
        help="doorkeeper window (expected keys); default: --window-factor x the "
        "objects the capacity holds at the catalogue's mean size",
    )
    p.add_argument("--window-factor", type=float, default=1.0)
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes, each with its own doorkeeper of --window keys (default 1)",
    )
    p.add_argument("--traces", type=csv_of(TRACES), default=list(TRACES))
    p.add_argument("--policies", type=csv_of(tuple(POLICIES)), default=["lru", "popularity"])
    p.add_argument("--admissions", type=csv_of(ADMISSIONS), default=list(ADMISSIONS))
    p.add_argument("--no-belady", action="store_true", help="skip the offline reference")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", metavar="PATH", help="also write settings and results as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.requests < 1 or args.objects < 1 or args.days <= 0 or args.workers < 1:
        parser.error("--requests, --objects, --days and --workers must be positive")
    if not 0.0 <= args.one_hit_share < 1.0 or args.half_life <= 0:
        parser.error("--one-hit-share must be in [0, 1) and --half-life positive")
    spec = TraceSpec(
        requests=args.requests,
        objects=args.objects,
        alpha=args.alpha,
        days=args.days,
        one_hit_share=args.one_hit_share,
        seed=args.seed,
    )
    started = time.perf_counter()
    base = zipf_trace(spec)
    ws_objects, ws_bytes = working_set(base)
    capacity = args.capacity or int(ws_bytes * args.capacity_fraction)
    mean_size = ws_bytes / ws_objects
    window = args.window or max(1, round(args.window_factor * capacity / mean_size))
    settings = {
        **asdict(spec),
        "half_life": args.half_life,
        "capacity": capacity,
        "working_set_objects": ws_objects,
        "working_set_bytes": ws_bytes,
        "evict_batch": min(int(capacity * EVICT_BATCH_FRACTION), EVICT_BATCH_MAX),
        "doorkeeper_window": window,
        "workers": args.workers,
    }
    print(
        f"capacity {capacity / GIB:.2f} GiB = {capacity / ws_bytes:.0%} of the zipf trace's "
        f"working set ({ws_objects} objects, {ws_bytes / GIB:.1f} GiB, "
        f"mean {mean_size / MIB:.2f} MiB); eviction batch "
        f"{settings['evict_batch'] / MIB:.0f} MiB; half-life {args.half_life / 3600:g} h; "
        f"doorkeeper window {window} keys"
        + (f" x {args.workers} workers" if args.workers > 1 else ""),
        file=sys.stderr,
    )
    results: list[Result] = []
    traces_meta = []
    for name in args.traces:
        trace = base if name == "zipf" else TRACE_MAKERS[name](spec)
        n_obj, n_bytes = working_set(trace)
        traces_meta.append(
            {
                "name": name,
                "description": trace.description,
                "requests": len(trace),
                "distinct_objects": n_obj,
                "distinct_bytes": n_bytes,
                "span_days": trace.times[-1] / DAY,
            }
        )
        print(
            f"{name}: {trace.description}; {len(trace)} requests over "
            f"{trace.times[-1] / DAY:.1f} days, {n_obj} distinct objects "
            f"({n_bytes / GIB:.1f} GiB)",
            file=sys.stderr,
        )
        trace_results: list[Result] = []
        if not args.no_belady:
            trace_results.append(simulate_belady(trace, capacity))
        for pname in args.policies:
            for aname in args.admissions:
                res = simulate(
                    trace,
                    capacity,
                    make_policy(pname, args.half_life),
                    make_filter(aname, window, args.workers, args.seed),
                )
                trace_results.append(res)
        for r in trace_results:
            print(
                f"  {r.policy:<10} {r.admission:<10} byte {r.byte_hit_ratio:.3f} "
                f"object {r.object_hit_ratio:.3f}  ({r.seconds:.1f} s)",
                file=sys.stderr,
            )
        results += trace_results
    print_table(results)
    elapsed = time.perf_counter() - started
    print(f"\n{elapsed:.1f} s", file=sys.stderr)
    if args.json:
        doc = {
            "settings": settings,
            "traces": traces_meta,
            "results": [result_dict(r, results) for r in results],
            "python": platform.python_version(),
            "seconds": elapsed,
        }
        write_json(args.json, doc)
    return 0


def reference(r: Result, results: list[Result]) -> Result | None:
    for x in results:
        if x.trace == r.trace and x.policy == "belady":
            return x
    return None


def baseline(r: Result, results: list[Result]) -> Result | None:
    for x in results:
        if x.trace == r.trace and x.policy == r.policy and x.admission == "off":
            return x
    return None


def result_dict(r: Result, results: list[Result]) -> dict[str, Any]:
    d = asdict(r)
    d["byte_hit_ratio"] = r.byte_hit_ratio
    d["object_hit_ratio"] = r.object_hit_ratio
    ref = reference(r, results)
    if ref is not None and r is not ref:
        d["byte_vs_belady"] = r.byte_hit_ratio / ref.byte_hit_ratio if ref.bytes_hit else None
        d["object_vs_belady"] = r.object_hit_ratio / ref.object_hit_ratio if ref.hits else None
    return d


def print_table(results: list[Result]) -> None:
    head = (
        f"{'trace':<6} {'policy':<11} {'admission':<11} {'byte HR':>8} {'object HR':>10} "
        f"{'byte/Belady':>12} {'obj/Belady':>11} {'Δbyte vs off':>13} {'Δobj vs off':>12} "
        f"{'written GiB':>12}"
    )
    print_header(head)
    last = None
    for r in results:
        if last is not None and r.trace != last:
            print()
        last = r.trace
        ref = reference(r, results)
        if ref is None or r is ref:
            vs_b = vs_o = "-"
        else:
            vs_b = f"{r.byte_hit_ratio / ref.byte_hit_ratio:.2f}" if ref.bytes_hit else "-"
            vs_o = f"{r.object_hit_ratio / ref.object_hit_ratio:.2f}" if ref.hits else "-"
        base = baseline(r, results)
        if base is None or base is r or r.policy == "belady":
            d_b = d_o = ""
        else:
            d_b = f"{(r.byte_hit_ratio - base.byte_hit_ratio) * 100:+.1f} pt"
            d_o = f"{(r.object_hit_ratio - base.object_hit_ratio) * 100:+.1f} pt"
        print(
            f"{r.trace:<6} {r.policy:<11} {r.admission:<11} {r.byte_hit_ratio:>8.3f} "
            f"{r.object_hit_ratio:>10.3f} {vs_b:>12} {vs_o:>11} {d_b:>13} {d_o:>12} "
            f"{r.bytes_stored / GIB:>12.1f}"
        )


if __name__ == "__main__":
    sys.exit(main())
