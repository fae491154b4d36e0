"""The fill's pure parts: manifests, the window and the rate, popularity from logs."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fill.budget import TokenBucket, Window, parse_rate
from fill.logs import Popularity, requests
from fill.manifest import ManifestError, dump, parse
from fill.plan import Entry

# -- manifests ---------------------------------------------------------------------


def test_json_lines_json_lists_and_documents_read_the_same() -> None:
    items = [
        {"key": "t/1.mp4", "size": 10, "score": 2.5, "etag": '"a"', "xxh3": "0123456789ABCDEF"},
        {"key": "t/2.mp4", "size": 0, "rank": 4},
    ]
    lines = "# top titles\n" + "\n".join(json.dumps(i) for i in items) + "\n\n"
    want = [
        Entry("t/1.mp4", 10, 2.5, '"a"', "0123456789abcdef"),
        Entry("t/2.mp4", 0, 0.25),  # rank 4 -> score 1/4
    ]
    assert parse(lines) == want
    assert parse(json.dumps(items)) == want
    assert parse(json.dumps({"objects": items})) == want
    assert parse(dump(want)) == want


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"key": "a", "size": 1, "score": 1}\n{"key": "b"', "m.jsonl:2: not valid JSON"),
        ('{"size": 1, "score": 1}', "m.jsonl:1: missing key"),
        ('{"key": "../etc/passwd", "size": 1, "score": 1}', "'..' path segment"),
        ('{"key": "_edge/health", "size": 1, "score": 1}', "cannot be stored"),
        ('{"key": "a", "size": -1, "score": 1}', "size must be a whole number"),
        ('{"key": "a", "size": 1}', "needs a score or a rank"),
        ('{"key": "a", "size": 1, "rank": 0}', "rank starts at 1"),
        ('{"key": "a", "size": 1, "score": 1, "xxh3": "zz"}', "xxh3 must be 16 hex digits"),
        ('{"key": "a", "size": 1, "score": 1, "sha": "x"}', "unknown field 'sha'"),
        ('{"key": "a", "size": 1, "score": 1}\n{"key": "a", "size": 2, "score": 1}', "duplicate"),
        ('{"objects": 3}', "a JSON manifest is a list"),
    ],
)
def test_a_bad_manifest_names_its_line(text: str, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse(text, "m.jsonl")
    assert message in str(info.value)


# -- window and rate ------------------------------------------------------------------


def test_window_open_closed_and_wrapping_midnight() -> None:
    night = Window.parse("02:00-06:00")
    assert night.left(datetime(2026, 5, 1, 3, 30)) == 2.5 * 3600
    assert night.left(datetime(2026, 5, 1, 6, 0)) == 0
    assert night.opens_in(datetime(2026, 5, 1, 7, 0)) == 19 * 3600
    wrap = Window.parse("22:00-04:00")
    assert wrap.left(datetime(2026, 5, 1, 23, 0)) == 5 * 3600
    assert wrap.left(datetime(2026, 5, 2, 1, 0)) == 3 * 3600
    assert wrap.left(datetime(2026, 5, 1, 12, 0)) == 0
    assert Window.parse("00:00-24:00").left(datetime(2026, 5, 1, 12, 0)) == 12 * 3600
    assert str(Window.parse("2:05-6:00:30")) == "02:05-06:00:30"
    for bad in ("2-6", "25:00-01:00", "02:00-24:30", "02:60-03:00"):
        with pytest.raises(ValueError):
            Window.parse(bad)


@given(st.integers(0, 86399), st.integers(0, 86399), st.integers(0, 86399))
def test_window_left_and_opens_in_agree(start: int, end: int, now_s: int) -> None:
    w = Window(start, end)
    now = datetime(2026, 5, 1) + timedelta(seconds=now_s)
    left, opens = w.left(now), w.opens_in(now)
    assert 0 <= left <= 86400 and 0 <= opens < 86400
    assert (left > 0) == (opens == 0)


def test_rates() -> None:
    assert parse_rate("500Mbit") == 500e6 / 8
    assert parse_rate("1Gbit") == 1e9 / 8
    assert parse_rate("50MB") == 50e6
    assert parse_rate("20MiB/s") == 20 * 1024 * 1024
    assert parse_rate("4096") == 4096  # bytes per second
    for bad in ("fast", "0Mbit", "5 parsecs", "-1MB"):
        with pytest.raises(ValueError):
            parse_rate(bad)


@given(st.lists(st.integers(1, 2_000_000), min_size=1, max_size=50))
def test_token_bucket_holds_the_rate(sizes: list[int]) -> None:
    rate = 1_000_000.0
    bucket = TokenBucket(rate, now=0.0)
    now = 0.0
    for n in sizes:
        now += bucket.delay(n, now)  # a sender that waits as long as it is told
    # everything sent by ``now`` fits the rate plus one burst
    assert sum(sizes) <= rate * now + bucket.burst + 1e-6


# -- popularity from access logs -----------------------------------------------------


def _line(key: str, when: str, status: int = 200, method: str = "GET") -> str:
    return json.dumps(
        {"time": when, "client": "10.0.0.1", "method": method, "key": key, "range": None,
         "status": status, "bytes": 10, "cache": "hit", "duration_ms": 0.1}
    )  # fmt: skip


def test_log_requests_skip_what_is_not_a_content_request() -> None:
    now = datetime.fromisoformat("2026-05-02T00:00:00+00:00").timestamp()
    lines = [
        _line("a", "2026-05-02T00:00:00.000Z"),
        _line("a", "2026-05-01T00:00:00.000Z"),  # a day old: half a request
        _line("b", "2026-05-01T12:00:00.000Z", 206),
        _line("b", "2026-05-01T12:00:00.000Z", 404),
        _line("c", "2026-05-01T12:00:00.000Z", method="HEAD"),
        _line("_edge/health", "2026-05-01T12:00:00.000Z"),
        _line("../x", "2026-05-01T12:00:00.000Z"),
        '{"time": "2026-05-01T',  # cut by rotation
        "not json",
    ]
    pop = Popularity()
    got = list(requests(lines, pop))
    assert got == [(now, "a"), (now - 86400, "a"), (now - 43200, "b")]
    assert (pop.lines, pop.counted, pop.skipped) == (9, 3, 6)


# -- configuration ----------------------------------------------------------------------


def _fill_args(*argv: str):  # type: ignore[no-untyped-def]
    import argparse

    from edge.config import add_serve_flags
    from fill.config import add_fill_flags

    parser = argparse.ArgumentParser()
    add_serve_flags(parser)
    add_fill_flags(parser)
    return parser.parse_args(list(argv))


def test_the_example_configuration_has_a_fill_table() -> None:
    from pathlib import Path

    from fill.config import load_fill_config

    example = Path(__file__).resolve().parent.parent / "deploy" / "edge.toml"
    cfg = load_fill_config(_fill_args("--config", str(example), "--rate", "100Mbit"))
    assert cfg.window == Window.parse("02:00-06:00") and cfg.concurrency == 8
    assert cfg.rate == 100e6 / 8  # the flag wins over the file
    assert cfg.budget(1000) == 900  # headroom = "10%": the example has a planner's manifest


def test_fill_options_are_checked_and_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edge.config import ConfigError
    from fill.config import load_fill_config

    conf = tmp_path / "edge.toml"
    conf.write_text('[fill]\nwindow = "02:00-06:00"\nspeed = "fast"\n')
    with pytest.raises(ConfigError, match="unknown option 'speed' in \\[fill\\]"):
        load_fill_config(_fill_args("--config", str(conf)))
    for argv, named in (
        (("--window", "2am"), "--window / window"),
        (("--headroom", "120%"), "--headroom / headroom"),
        (("--peer", "ftp://x"), "--peer / peers"),
        (("--concurrency", "0"), "--concurrency / concurrency"),
        (("--manifest", "m", "--from-logs", "l"), "not both"),
        (("--title-pattern", "(a)/(b)"), "--title-pattern / title_pattern.*2 groups"),
        (("--title-pattern", "(unclosed"), "--title-pattern / title_pattern.*not a regular"),
    ):
        with pytest.raises(ConfigError, match=named):
            load_fill_config(_fill_args(*argv))
    assert load_fill_config(_fill_args("--headroom", "50GiB")).budget(100 * 2**30) == 50 * 2**30
    assert load_fill_config(_fill_args("--title-pattern", "(shows/[^/]+)/")).title_pattern == (
        "(shows/[^/]+)/"
    )
