"""``python -m bench.policy``: replay a trace, print the byte hit ratio.

    python -m bench.policy --trace FILE --capacity BYTES [--policy NAME|all]
    python -m bench.policy --shape release --write-trace week.csv --capacity 10%

The first line is the appliance's default configuration (fill included):
``byte hit ratio 0.xxx`` with the object hit ratio beside it; ``--policy all``
then prints every policy's line per capacity. Capacities are bytes (``2TiB``)
or shares of the trace's distinct bytes (``10%``), comma-separated.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from bench.policy import generate, runs, tracefile
from bench.policy.replay import Result, Root
from bench.policy.tracefile import Trace
from edge.core.admission import make_admission
from edge.core.policy import Candidate, decayed, make_policy, make_room
from edge.core.sizes import parse_duration, parse_size


def capacities(text: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    for x in items:
        try:
            _ = float(x[:-1]) if x.endswith("%") else parse_size(x)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad capacity {x!r} (bytes like 2TiB, or 10%)"
            ) from None
    if not items:
        raise argparse.ArgumentTypeError("give a capacity")
    return items


def to_bytes(text: str, catalogue: int) -> int:
    return int(catalogue * float(text[:-1]) / 100) if text.endswith("%") else parse_size(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.policy", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--trace", metavar="FILE", help="CSV time,key,size (docs/offload.md)")
    src.add_argument("--shape", choices=generate.SHAPES, help="generate a video-edge trace")
    p.add_argument("--seed", type=int, default=1, help="with --shape (default 1)")
    p.add_argument("--days", type=int, default=7, help="with --shape (default 7)")
    p.add_argument("--sessions-per-day", type=int, default=800, help="with --shape")
    p.add_argument("--write-trace", metavar="FILE", help="with --shape: save the trace")
    p.add_argument(
        "--capacity", type=capacities, required=True, help="bytes or N%%, comma-separated"
    )
    p.add_argument("--policy", default="default", help=f"all, or one of {', '.join(runs.RUNS)}")
    p.add_argument("--night-hour", type=float, default=runs.DEFAULT_NIGHT_HOUR, help="fill time")
    p.add_argument("--headroom", type=float, help="fill headroom, a share of capacity (0.1)")
    p.add_argument("--log-half-life", type=parse_duration, help="fill: age halving a request")
    p.add_argument("--decisions", action="store_true", help="also time the per-request decisions")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON too")
    return p


def setup_from(args: argparse.Namespace) -> runs.Setup:
    s = runs.default_setup()
    s = runs.Setup(s.serve, s.fill, args.night_hour)
    if args.headroom is not None:
        s = runs.with_options(s, headroom=("fraction", args.headroom))
    if args.log_half_life is not None:
        s = runs.with_options(s, log_half_life=args.log_half_life)
    return s


def line(cap: str, r: Result, lru: Result | None, ref: Result | None) -> str:
    vs_ref = f"{r.byte_hit_ratio / ref.byte_hit_ratio:.2f}" if ref and ref.bytes_hit else "-"
    vs_lru = f"{(r.byte_hit_ratio - lru.byte_hit_ratio) * 100:+.1f}" if lru else "-"
    return (
        f"{cap:>8} {r.policy:<44} {r.byte_hit_ratio:>7.3f} {r.object_hit_ratio:>7.3f} "
        f"{vs_ref:>8} {vs_lru:>8} {r.requests_per_second:>10,.0f}"
    )


def record(cap: str, nbytes: int, name: str, r: Result) -> dict[str, object]:
    return {
        "capacity": cap,
        "capacity_bytes": nbytes,
        "run": name,
        "policy": r.policy,
        "byte_hit_ratio": r.byte_hit_ratio,
        "object_hit_ratio": r.object_hit_ratio,
        "requests_per_s": r.requests_per_second,
        "bytes_filled": r.bytes_filled,
        "bytes_stored": r.bytes_stored,
    }


def decisions(trace: Trace, capacity: int, setup: runs.Setup) -> dict[str, float]:
    """Per-call rates of the decisions the appliance makes per request."""
    n = min(len(trace), 200_000)
    keys = trace.keys[:n]
    door = make_admission("doorkeeper", setup.window(capacity))
    t0 = time.perf_counter()
    for k in keys:
        door.admit(k)
    admit = n / (time.perf_counter() - t0)
    hl = setup.serve.half_life
    c = Candidate("k", 1, 3.0, 0.0, 0.0)
    t0 = time.perf_counter()
    for i in range(n):  # the hit path's update: decayed popularity + 1
        c = Candidate(c.key, c.size, decayed(c.score, c.score_time, float(i), hl) + 1.0, i, i)
    hit = n / (time.perf_counter() - t0)
    root = Root(capacity, make_policy(setup.serve.eviction, hl), door, Result("x"))
    for now, key, size in zip(trace.times[:n], keys, trace.sizes[:n], strict=True):
        root.request(now, key, size)
    rounds = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        make_room(
            root.policy, root.stored.values, used=root.capacity, size=1,
            capacity=root.capacity, batch=root.batch, now=trace.times[n - 1],
        )  # fmt: skip
        rounds += 1
    room = rounds / (time.perf_counter() - t0)
    return {
        "admission_per_s": admit,
        "hit_update_per_s": hit,
        "make_room_per_s": room,
        "stored_objects": float(len(root.stored)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = list(runs.RUNS) if args.policy == "all" else [args.policy]
    if any(n not in runs.RUNS for n in names):
        parser.error(f"--policy: choose all or one of {', '.join(runs.RUNS)}")
    if args.trace:
        try:
            trace = tracefile.read(args.trace)
        except tracefile.TraceError as exc:
            print(f"python -m bench.policy: {exc}", file=sys.stderr)
            return 2
    else:
        spec = generate.shaped(
            args.shape, seed=args.seed, days=args.days, sessions_per_day=args.sessions_per_day
        )
        trace = generate.generate(spec)
        if args.write_trace:
            tracefile.write(args.write_trace, trace)
    if not len(trace):
        print("python -m bench.policy: the trace has no requests", file=sys.stderr)
        return 2
    setup = setup_from(args)
    catalogue = trace.catalogue_bytes()
    print(
        f"# {trace.name}: {len(trace)} requests, {len(trace.objects())} objects, "
        f"{catalogue / 1e9:.1f} GB distinct; fill at {setup.night_hour:g}h, "
        f"headroom {setup.fill.headroom[1]:g}",
        file=sys.stderr,
    )
    caps = [(c, to_bytes(c, catalogue)) for c in args.capacity]
    first = runs.run("default", trace, caps[0][1], setup)
    print(
        f"byte hit ratio {first.byte_hit_ratio:.3f} (object hit ratio {first.object_hit_ratio:.3f})"
    )
    out: list[dict[str, object]] = []
    if args.policy != "default" or len(caps) > 1:
        print(f"{'capacity':>8} {'policy':<44} {'byte HR':>7} {'obj HR':>7} {'xBelady':>8} "
              f"{'pt/LRU':>8} {'req/s':>10}")  # fmt: skip
    for cap, nbytes in caps:
        results = {n: (first if (n, cap) == ("default", caps[0][0]) else None) for n in names}
        for n in names:
            results[n] = results[n] or runs.run(n, trace, nbytes, setup)
        lru, ref = results.get("lru"), results.get("belady")
        for n in names:
            r = results[n]
            assert r is not None
            if args.policy != "default" or len(caps) > 1:
                print(line(cap, r, lru, ref))
            out.append(record(cap, nbytes, n, r))
    rates = decisions(trace, caps[0][1], setup) if args.decisions else {}
    if rates:
        print(
            f"decisions: admission {rates['admission_per_s']:,.0f}/s, hit update "
            f"{rates['hit_update_per_s']:,.0f}/s, make_room over "
            f"{rates['stored_objects']:.0f} objects {rates['make_room_per_s']:,.0f}/s"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"trace": trace.name, "requests": len(trace), "catalogue_bytes": catalogue,
                       "results": out, "decisions": rates}, f, indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
