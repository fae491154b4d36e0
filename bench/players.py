#!/usr/bin/env python3
"""Simulated video players against a demo fleet, with and without an appliance failing.

Starts ``edgefleet demo`` on free loopback ports, then runs Locust headless
(``bench/locustfile.py``) twice against its steering service with the same
settings: a quiet run, and a run in which, once players stream, the appliance
serving most of them fails (``--failure kill``: SIGKILL, connections refused at
once; ``--failure hang``: SIGSTOP, the box stops answering and players wait for
their read timeout). The demo is restarted between the runs so both start from
the same filled fleet. It prints, per run: players, sessions, segments/s,
startup p50/p99, rebuffer events and ratio, failovers and failed sessions; the
quiet run is the reference for the failure's cost. It ends with a picture
(``--png``, default players.png): both runs' segments/s second by second, their
failovers and rebuffers per second, and the moment of the failure.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/players.py                   # 20 players, 30 s runs
    .venv/bin/python bench/players.py --users 50 --run-time 60 --failure hang
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from charts import Timeline, timeline_png

from demo.processes import Process, start_edgefleet

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = (
    "players",
    "sessions",
    "segments_per_s",
    "startup_p50_ms",
    "startup_p99_ms",
    "rebuffer_events",
    "rebuffer_ratio",
    "failovers",
    "failed_sessions",
)


def start_demo(work: Path, args: argparse.Namespace) -> tuple[Process, dict[str, Any]]:
    """``edgefleet demo`` (through demo/processes.py), ready once it writes its state."""
    state_file = work / "state.json"
    state_file.unlink(missing_ok=True)
    cmd = ["demo", "--listen", "127.0.0.1:0"]
    cmd += ["--state-file", str(state_file), "--titles", str(args.titles)]
    cmd += ["--duration", str(args.duration), "--workdir", str(work / "fleet")]
    if args.synthetic:
        cmd.append("--synthetic")
    demo = start_edgefleet("demo", cmd, work / "demo.log")
    deadline = time.monotonic() + 120
    while not state_file.exists():
        if not demo.alive() or time.monotonic() > deadline:
            demo.stop()
            sys.exit("the demo did not start:\n" + (work / "demo.log").read_text()[-2000:])
        time.sleep(0.2)
    return demo, json.loads(state_file.read_text())


def busiest(state: dict[str, Any], floor: int) -> dict[str, Any] | None:
    counts = {
        a["name"]: Path(a["access_log"]).read_text().count('.ts"') for a in state["appliances"]
    }
    name = max(counts, key=lambda n: counts[n])
    if counts[name] < floor:
        return None
    return next(a for a in state["appliances"] if a["name"] == name)


def run_players(
    work: Path, state: dict[str, Any], args: argparse.Namespace, fail: bool
) -> tuple[dict[str, str], float, float | None]:
    """The players' summary row, when they started (Unix time) and when the
    failure struck (Unix time, or ``None``)."""
    prefix = work / ("fail" if fail else "quiet")
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "bench/locustfile.py")]
    cmd += ["--host", state["steer"]["url"], "--headless", "--only-summary"]
    cmd += ["-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{args.run_time}s"]
    cmd += ["--csv", str(prefix), "--csv-full-history", "--player-titles", str(args.titles)]
    cmd += ["--playback-speed", str(args.playback_speed), "--buffer-target", str(args.buffer)]
    started = time.time()
    locust = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = None
    struck: float | None = None
    if fail:
        time.sleep(args.run_time * 0.3)
        victim = busiest(state, floor=1)
        if victim is not None:
            os.kill(victim["pid"], signal.SIGKILL if args.failure == "kill" else signal.SIGSTOP)
            struck = time.time()
            print(
                f"  {args.failure}: {victim['name']} at {args.run_time * 0.3:.0f}s", file=sys.stderr
            )
    out, _ = locust.communicate(timeout=args.run_time + 120)
    if victim is not None and args.failure == "hang":
        os.kill(victim["pid"], signal.SIGCONT)
    path = Path(f"{prefix}_players.csv")
    if not path.exists():
        sys.exit("locust wrote no summary:\n" + out[-3000:])
    with open(path) as f:
        return next(csv.DictReader(f)), started, struck


def timeline(prefix: Path, name: str, started: float, struck: float | None, what: str) -> Timeline:
    """Per second from Locust's full stats history: segments answered, failovers and
    rebuffers (each a difference of the running totals)."""
    totals: dict[str, dict[float, float]] = {"segment": {}, "failover": {}, "rebuffer": {}}
    with open(f"{prefix}_stats_history.csv") as f:
        for row in csv.DictReader(f):
            if row["Name"] in totals:
                done = float(row["Total Request Count"]) - float(row["Total Failure Count"])
                totals[row["Name"]][float(row["Timestamp"])] = done
    stamps = sorted({t for series in totals.values() for t in series})
    run = Timeline(name, event_at=None if struck is None else struck - started, event=what)
    last = {k: 0.0 for k in totals}
    for prev, t in zip([started, *stamps], stamps, strict=False):
        step = max(t - prev, 1e-9)
        now = {k: totals[k].get(t, last[k]) for k in totals}
        run.seconds.append(t - started)
        run.segments_per_s.append((now["segment"] - last["segment"]) / step)
        run.failovers.append((now["failover"] - last["failover"]) / step)
        run.rebuffers.append((now["rebuffer"] - last["rebuffer"]) / step)
        last = now
    return run


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--spawn-rate", type=float, default=10.0)
    p.add_argument("--run-time", type=int, default=30, help="seconds per run")
    p.add_argument("--titles", type=int, default=4)
    p.add_argument("--duration", type=float, default=60.0, help="seconds per title")
    p.add_argument("--playback-speed", type=float, default=2.0)
    p.add_argument("--buffer", type=float, default=10.0, help="players' buffer target, s")
    p.add_argument("--failure", choices=("kill", "hang"), default="kill")
    p.add_argument("--synthetic", action="store_true", help="synthetic segments (no ffmpeg)")
    p.add_argument("--json", metavar="PATH", help="also write both rows as JSON")
    p.add_argument(
        "--png",
        metavar="PATH",
        default="players.png",
        help="the timeline of both runs (default players.png; '' for none)",
    )
    args = p.parse_args()
    results: dict[str, dict[str, str]] = {}
    runs: list[Timeline] = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-players-") as tmp:
        work = Path(tmp)
        for name, fail in (("quiet", False), (f"{args.failure} mid-run", True)):
            print(f"run: {name}", file=sys.stderr)
            proc, state = start_demo(work, args)
            try:
                results[name], started, struck = run_players(work, state, args, fail)
            finally:
                proc.stop(timeout=60)
            prefix = work / ("fail" if fail else "quiet")
            runs.append(timeline(prefix, name, started, struck, f"{args.failure} an appliance"))
    print(
        f"\n{args.users} players, {args.run_time}s per run, playback x{args.playback_speed}, "
        f"buffer target {args.buffer}s, {args.titles} titles of {args.duration:.0f}s"
    )
    print(f"{'run':16}" + "".join(f"{c:>17}" for c in COLUMNS))
    for name, row in results.items():
        print(f"{name:16}" + "".join(f"{row[c]:>17}" for c in COLUMNS))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.png:
        title = (
            f"{args.users} players, playback x{args.playback_speed:g}, buffer target "
            f"{args.buffer:g}s: quiet run and {args.failure} mid-run"
        )
        timeline_png(Path(args.png), runs, title)
        print(f"timeline written to {args.png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
