"""The benchmarks' pictures: the players' timeline reads Locust's running totals
second by second, and both charts are written as PNG files without a display."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

HEAD = (
    "Timestamp,User Count,Type,Name,Requests/s,Failures/s,Total Request Count,Total Failure Count\n"
)


def test_timeline_takes_each_second_from_the_running_totals(tmp_path: Path) -> None:
    from players import timeline

    rows = [
        "101,5,GET,segment,0,0,10,0",
        "101,5,player,failover,0,0,0,0",
        "102,5,GET,segment,0,0,22,2",  # 12 asked, 2 of them failed: 10 answered
        "102,5,player,failover,0,0,3,0",
        "102,5,player,rebuffer,0,0,1,0",
        "103,5,GET,segment,0,0,30,2",
        "103,5,GET,steer,0,0,99,0",  # not drawn
    ]
    (tmp_path / "run_stats_history.csv").write_text(HEAD + "\n".join(rows) + "\n")
    run = timeline(tmp_path / "run", "kill", 100.0, 101.5, "kill an appliance")
    assert run.seconds == [1.0, 2.0, 3.0]
    assert run.segments_per_s == [10.0, 10.0, 8.0]
    assert run.failovers == [0.0, 3.0, 0.0]
    assert run.rebuffers == [0.0, 1.0, 0.0]
    assert run.event_at == 1.5


def test_charts_are_png_files(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from charts import Timeline, ratio_bars_png, timeline_png

    quiet = Timeline("quiet", [1, 2, 3], [10, 12, 12], [0, 0, 0], [0, 0, 0])
    kill = Timeline("kill", [1, 2, 3], [10, 4, 12], [0, 3, 0], [0, 1, 0], 1.5, "kill")
    timeline_png(tmp_path / "t.png", [quiet, kill], "players")
    groups = {"segment": {"req/s": 0.9, "p99": 1.5}, "small": {"req/s": 0.4, "p99": 2.5}}
    ratio_bars_png(tmp_path / "r.png", groups, {"segment": {"req/s": 1.0}}, "ratios", "x")
    for name in ("t.png", "r.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
