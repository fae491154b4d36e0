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
quiet run is the reference for the failure's cost.

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


def start_demo(
    work: Path, args: argparse.Namespace
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    state_file = work / "state.json"
    state_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "edge.cli", "demo", "--listen", "127.0.0.1:0"]
    cmd += ["--state-file", str(state_file), "--titles", str(args.titles)]
    cmd += ["--duration", str(args.duration), "--workdir", str(work / "fleet")]
    if args.synthetic:
        cmd.append("--synthetic")
    log = open(work / "demo.log", "ab")  # noqa: SIM115 (the demo keeps it)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 120
    while not state_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit("the demo did not start:\n" + (work / "demo.log").read_text()[-2000:])
        time.sleep(0.2)
    return proc, json.loads(state_file.read_text())


def stop_demo(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(60)


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
) -> dict[str, str]:
    prefix = work / ("fail" if fail else "quiet")
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "bench/locustfile.py")]
    cmd += ["--host", state["steer"]["url"], "--headless", "--only-summary"]
    cmd += ["-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{args.run_time}s"]
    cmd += ["--csv", str(prefix), "--player-titles", str(args.titles)]
    cmd += ["--playback-speed", str(args.playback_speed), "--buffer-target", str(args.buffer)]
    locust = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = None
    if fail:
        time.sleep(args.run_time * 0.3)
        victim = busiest(state, floor=1)
        if victim is not None:
            os.kill(victim["pid"], signal.SIGKILL if args.failure == "kill" else signal.SIGSTOP)
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
        return next(csv.DictReader(f))


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
    args = p.parse_args()
    results: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="edgefleet-players-") as tmp:
        work = Path(tmp)
        for name, fail in (("quiet", False), (f"{args.failure} mid-run", True)):
            print(f"run: {name}", file=sys.stderr)
            proc, state = start_demo(work, args)
            try:
                results[name] = run_players(work, state, args, fail)
            finally:
                stop_demo(proc)
    print(
        f"\n{args.users} players, {args.run_time}s per run, playback x{args.playback_speed}, "
        f"buffer target {args.buffer}s, {args.titles} titles of {args.duration:.0f}s"
    )
    print(f"{'run':16}" + "".join(f"{c:>17}" for c in COLUMNS))
    for name, row in results.items():
        print(f"{name:16}" + "".join(f"{row[c]:>17}" for c in COLUMNS))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
