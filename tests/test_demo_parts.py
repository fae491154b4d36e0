"""The demo's pure parts: playlists, synthetic segments, fleet layout and the player model."""

from __future__ import annotations

from pathlib import Path

import m3u8
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from demo.catalog import (
    NULL_PACKET,
    RENDITIONS,
    TS_PACKET,
    Segment,
    generate,
    master_playlist,
    media_playlist,
    segment_durations,
)
from demo.fleet import appliance_toml, layout, manifest_lines, steer_toml
from demo.player import DEFAULT_BUFFER_TARGET, Player, base_of, buffer_for

segments = st.lists(
    st.builds(
        Segment,
        st.floats(0.1, 20.0),
        st.from_regex(r"[a-z0-9_]{1,12}\.ts", fullmatch=True),
        st.none() | st.tuples(st.integers(1, 10**7), st.integers(0, 10**9)),
    ),
    min_size=1,
    max_size=30,
)


@given(segments)
def test_media_playlists_read_back_through_m3u8(segs: list[Segment]) -> None:
    parsed = m3u8.loads(media_playlist(segs))
    assert parsed.is_endlist and parsed.playlist_type == "vod"
    assert len(parsed.segments) == len(segs)
    assert parsed.target_duration >= max(s.duration for s in segs)
    for got, want in zip(parsed.segments, segs, strict=True):
        assert got.uri == want.uri
        assert got.duration == pytest.approx(want.duration, abs=1e-6)
        if want.byterange is None:
            assert got.byterange is None
        else:
            assert got.byterange == f"{want.byterange[0]}@{want.byterange[1]}"


def test_the_master_playlist_lists_both_renditions_best_first() -> None:
    master = m3u8.loads(master_playlist(RENDITIONS))
    assert master.is_variant
    bandwidths = [p.stream_info.bandwidth for p in master.playlists]
    assert bandwidths == sorted(bandwidths, reverse=True)
    assert [p.uri for p in master.playlists] == ["hi/index.m3u8", "lo/index.m3u8"]


@given(st.floats(0.5, 600.0), st.floats(0.5, 10.0))
def test_segments_cover_the_title(duration: float, segment: float) -> None:
    parts = segment_durations(duration, segment)
    assert sum(parts) == pytest.approx(duration, abs=1e-5 * len(parts))
    assert all(0 < p <= segment + 1e-9 for p in parts)
    assert all(p == pytest.approx(segment) for p in parts[:-1])


def test_a_synthetic_catalog_is_mpeg_ts_addressed_by_its_playlists(tmp_path: Path) -> None:
    objects, kind = generate(tmp_path, titles=2, duration=7.0, segment=2.0, synthetic=True)
    assert kind == "synthetic"
    by_key = {o.key: o for o in objects}
    for n in ("0001", "0002"):
        root = tmp_path / "titles" / n
        for key in ("master.m3u8", "hi/index.m3u8", "lo/index.m3u8", "lo/index.ts"):
            assert f"titles/{n}/{key}" in by_key
        hi = m3u8.loads((root / "hi/index.m3u8").read_text())
        assert [s.duration for s in hi.segments] == [2.0, 2.0, 2.0, 1.0]
        for s in hi.segments:
            data = (root / "hi" / s.uri).read_bytes()
            assert len(data) % TS_PACKET == 0 and data[:TS_PACKET] == NULL_PACKET
        lo = m3u8.loads((root / "lo/index.m3u8").read_text())
        size = (root / "lo/index.ts").stat().st_size
        offset = 0
        for s in lo.segments:  # contiguous ranges covering the whole file
            length, at = (int(x) for x in s.byterange.split("@"))
            assert at == offset and length % TS_PACKET == 0
            offset += length
        assert offset == size
    # a second run keeps what is there
    before = (tmp_path / "titles/0001/lo/index.ts").stat().st_mtime_ns
    generate(tmp_path, titles=2, duration=7.0, segment=2.0, synthetic=True)
    assert (tmp_path / "titles/0001/lo/index.ts").stat().st_mtime_ns == before


def test_the_fleet_configs_load_with_the_services_own_loaders(tmp_path: Path) -> None:
    from edge.cli import build_parser
    from edge.config import load_serve_config
    from fill.config import load_fill_config
    from fill.manifest import parse
    from steering.config import load_steer_config

    objects, _ = generate(tmp_path / "origin", titles=3, duration=4.0, synthetic=True)
    total = sum(o.size for o in objects)
    lay = layout(tmp_path, "127.0.0.1", 8080, (tmp_path / "origin").as_uri(), total)
    assert [a.port for a in lay.appliances] == [8081, 8082, 8083]
    a1, a2, b1 = lay.appliances
    assert a1.capacity > total and a2.capacity > total and b1.capacity < total
    assert a1.peer is None and a2.peer == b1.peer == "isp-a-1"
    parser = build_parser()
    for a in lay.appliances:
        path = tmp_path / f"{a.name}.toml"
        path.write_text(appliance_toml(lay, a, {"s3_region": "eu-west-1"}))
        cfg = load_serve_config(parser.parse_args(["serve", "--config", str(path)]))
        assert cfg.listen == ("127.0.0.1", a.port) and cfg.origin == [lay.origin]
        assert cfg.s3_region == "eu-west-1"
        fill_args = parser.parse_args(["fill", "--config", str(path)])
        assert load_fill_config(fill_args).concurrency == 4
    urls = {a.name: f"http://127.0.0.1:{a.port}" for a in lay.appliances}
    (tmp_path / "steer.toml").write_text(steer_toml(lay, urls))
    steer = load_steer_config(
        parser.parse_args(["steer", "--config", str(tmp_path / "steer.toml")])
    )
    assert [s.id for s in steer.appliances] == ["isp-a-1", "isp-a-2", "isp-b-1"]
    assert {s.site for s in steer.appliances} == {"a", "b"}
    entries = parse(manifest_lines(objects))
    assert len(entries) == len(objects)
    score = {e.key: e.score for e in entries}
    assert score["titles/0001/master.m3u8"] > score["titles/0002/master.m3u8"]
    # a byte-range file is asked for once per segment of a viewing
    assert score["titles/0001/lo/index.ts"] == 2 * score["titles/0001/hi/seg_00000.ts"]


def test_layout_with_port_zero_leaves_every_port_to_the_kernel(tmp_path: Path) -> None:
    lay = layout(tmp_path, "127.0.0.1", 0, "file:///x", 10**6)
    assert lay.steer_port == 0 and all(a.port == 0 for a in lay.appliances)


# --- the player model -----------------------------------------------------------


def test_startup_is_the_time_to_the_first_segment() -> None:
    p = Player(["http://a/"], started=100.0, buffer_target=10.0)
    assert p.wait(100.0, 2.0) == 0.0
    assert p.arrived(100.3, 2.0) is None
    assert p.startup == pytest.approx(0.3) and p.playing
    assert p.rebuffers == 0 and p.stalled == 0.0


def test_an_empty_buffer_is_a_stall_from_the_instant_it_ran_dry() -> None:
    p = Player(["http://a/"], started=0.0, buffer_target=10.0)
    p.arrived(1.0, 2.0)  # plays from 1.0, dry at 3.0
    p.advance(4.5)
    assert p.rebuffers == 1 and not p.playing
    assert p.stall_started == pytest.approx(3.0)
    assert p.arrived(5.0, 2.0) == pytest.approx(2.0)  # stalled 3.0 → 5.0
    assert p.stalled == pytest.approx(2.0) and p.played == pytest.approx(2.0)
    p.finish(5.5)
    assert p.played == pytest.approx(4.0)
    assert p.rebuffer_ratio == pytest.approx(2.0 / 6.0)
    p.advance(100.0)  # a finished session neither plays nor stalls
    assert p.rebuffer_ratio == pytest.approx(2.0 / 6.0)


def test_the_player_waits_while_the_buffer_is_full() -> None:
    p = Player(["http://a/"], started=0.0, buffer_target=6.0, speed=2.0)
    for _ in range(3):
        p.arrived(0.0, 2.0)
    assert p.buffered == pytest.approx(6.0)
    # a 2 s segment fits once 2 media seconds have played: 1 wall second at 2x
    assert p.wait(0.0, 2.0) == pytest.approx(1.0)
    assert p.wait(1.0, 2.0) == pytest.approx(0.0)
    assert p.remaining(1.0) == pytest.approx(2.0)  # 4 media seconds left at 2x
    p.finish(3.0)
    assert p.played == pytest.approx(3.0) and p.rebuffers == 0


def test_failover_walks_steerings_urls_in_order() -> None:
    bases = [base_of(f"http://h{i}:80/t/1/master.m3u8", "t/1/master.m3u8") for i in range(3)]
    assert bases[0] == "http://h0:80/"
    p = Player(bases, started=0.0)
    url = "http://h0:80/t/1/lo/index.ts"
    assert p.fail() == "http://h1:80/" and p.rebase(url) == "http://h1:80/t/1/lo/index.ts"
    assert p.fail() == "http://h2:80/" and p.fail() is None
    assert p.failovers == 2 and p.rebase("http://other/x") == "http://other/x"
    with pytest.raises(ValueError):
        base_of("http://h0/other.m3u8", "t/1/master.m3u8")


@settings(max_examples=200)
@given(
    st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(0.5, 4.0)), min_size=1, max_size=40),
    st.floats(0.5, 8.0),
)
def test_played_and_stalled_never_exceed_the_wall_time(
    steps: list[tuple[float, float]], speed: float
) -> None:
    p = Player(["http://a/"], started=0.0, buffer_target=8.0, speed=speed)
    now = 0.0
    media = 0.0
    for gap, seconds in steps:
        now += gap
        p.arrived(now, seconds)
        media += seconds
        assert p.buffered >= 0.0
    p.finish(now)
    assert p.startup is not None
    assert p.played + p.stalled <= now - p.startup + media / speed + 1e-6
    assert p.played * speed == pytest.approx(media, rel=1e-6, abs=1e-6)
    assert p.rebuffers == len(p.stall_durations)
    assert sum(p.stall_durations) == pytest.approx(p.stalled, abs=1e-6)


def test_the_demo_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli import main

    assert main(["demo", "--origin", "http://example.net/x"]) == 2
    assert "--origin" in capsys.readouterr().err
    assert main(["demo", "--duration", "4", "--segment", "6"]) == 2
    assert "--segment" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--titles", "0"])


def request_times(title: float, segment: float, target: float) -> list[float]:
    """When a player with the locustfile's defaults asks for each segment of a
    title, segments arriving at once (a fast appliance)."""
    p = Player(["http://a/"], started=0.0, buffer_target=buffer_for(target, title))
    now, asked = 0.0, []
    for _ in range(round(title / segment)):
        now += p.wait(now, segment)
        asked.append(now)
        p.arrived(now, segment)
    return asked


@pytest.mark.parametrize("title", [8.0, 30.0, 120.0])
def test_players_keep_streaming_through_a_title(title: float) -> None:
    asked = request_times(title, 2.0, DEFAULT_BUFFER_TARGET)
    # not everything in the first seconds: the last segments are asked for late
    assert asked[-1] >= title * 0.6
    assert buffer_for(DEFAULT_BUFFER_TARGET, 300.0) == DEFAULT_BUFFER_TARGET


@given(st.floats(0.0, 600.0), st.floats(0.0, 10_000.0))
def test_the_buffer_never_exceeds_a_third_of_the_title(target: float, title: float) -> None:
    kept = buffer_for(target, title)
    assert 0.0 <= kept <= target and kept <= title / 3 + 1e-9


def test_printed_commands_name_the_locust_that_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from demo.cli import as_typed

    bindir = tmp_path / ".venv" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "locust").write_text("#!/bin/sh\n")
    (bindir / "locust").chmod(0o755)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert as_typed("locust", bindir, cwd=tmp_path) == ".venv/bin/locust"
    assert as_typed("locust", bindir, cwd=tmp_path / "elsewhere") == str(bindir / "locust")
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    assert as_typed("locust", bindir, cwd=tmp_path) == "locust"
    assert as_typed("not-installed", bindir, cwd=tmp_path) == "not-installed"


def test_killed_demos_temp_dirs_are_swept(tmp_path: Path) -> None:
    import os
    import subprocess

    from demo.cli import OWNER_FILE, sweep_stale_temp_dirs

    gone = subprocess.Popen(["true"])
    gone.wait()
    owners = {"dead": gone.pid, "alive": os.getpid(), "unowned": None}
    for name, pid in owners.items():
        d = tmp_path / f"edgefleet-demo-{name}"
        d.mkdir()
        if pid is not None:
            (d / OWNER_FILE).write_text(f"{pid}\n")
    (tmp_path / "other-dead").mkdir()
    assert sweep_stale_temp_dirs(str(tmp_path)) == [str(tmp_path / "edgefleet-demo-dead")]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["edgefleet-demo-alive", "edgefleet-demo-unowned", "other-dead"]
