"""bench.policy: the trace format, the generator, and the replay's invariants
(capacity never exceeded, the nightly fill knows only the past)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.policy import generate, runs, tracefile
from bench.policy.reference import replay_belady, replay_sieve
from bench.policy.replay import NightlyFill, Result, Root, replay, replay_fill
from bench.policy.tracefile import Trace, TraceError
from edge.core.admission import AdmitAll, Doorkeeper
from edge.core.policy import LRUPolicy, PopularityPolicy
from fill.config import FillConfig
from fill.forecast import ForecastRules, Logbook, sized, to_size

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400.0

keys = st.sampled_from([f"v/{i:03d}/0001.m4s" for i in range(12)])
requests = st.lists(
    st.tuples(st.floats(0, 3 * DAY, allow_nan=False), keys, st.integers(1, 50)),
    max_size=120,
)


def make_trace(reqs: list[tuple[float, str, int]]) -> Trace:
    t = Trace("t")
    size_of: dict[str, int] = {}
    for when, key, size in sorted(reqs):
        t.append(round(when, 6), key, size_of.setdefault(key, size))
    return t


# -- the trace format ------------------------------------------------------------


@given(requests)
def test_trace_written_reads_back_the_same(reqs: list[tuple[float, str, int]]) -> None:
    t = make_trace(reqs)
    buf = io.StringIO()
    tracefile.write_to(buf, t)
    back = list(tracefile.parse_lines(io.StringIO(buf.getvalue())))
    assert back == list(zip(t.times, t.keys, t.sizes, strict=True))


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("t,k,s\n1,a,2\n", ":1: the header"),
        ("time,key,size\n1,a,2\n0.5,b,3\n", ":3: time 0.5 is before"),
        ("time,key,size\n1,a,2\n2,b,x\n", ":3: time must be a number"),
        ("time,key,size\n1,a,-2\n", ":2: bad request"),
        ("time,key,size\n1,a,2,3\n", ":2: expected time,key,size"),
    ],
)
def test_trace_errors_name_the_line(text: str, where: str) -> None:
    with pytest.raises(TraceError, match=re.escape("t.csv" + where)):
        list(tracefile.parse_lines(io.StringIO(text), "t.csv"))


def test_trace_refuses_keys_it_cannot_write_back() -> None:
    t = Trace("t")
    t.append(0.0, "a,b", 1)
    with pytest.raises(TraceError, match="comma"):
        tracefile.write_to(io.StringIO(), t)


# -- the generator -------------------------------------------------------------------

SMALL = {"days": 2, "sessions_per_day": 40, "titles": 50, "scan_titles": 200}


@pytest.mark.parametrize("shape", generate.SHAPES)
def test_generator_is_deterministic_and_well_formed(shape: str) -> None:
    a = generate.generate(generate.shaped(shape, **SMALL))
    b = generate.generate(generate.shaped(shape, **SMALL))
    c = generate.generate(generate.shaped(shape, seed=2, **SMALL))
    assert (a.times, a.keys, a.sizes) == (b.times, b.keys, b.sizes)
    assert a.keys != c.keys
    assert a.times == sorted(a.times) and a.times[-1] < 2 * DAY
    size_of: dict[str, int] = {}
    for k, s in zip(a.keys, a.sizes, strict=True):
        assert size_of.setdefault(k, s) == s  # an object's size never changes
        assert 1_000_000 < s < 6_000_000  # segments of a few MB
    assert any(k.endswith("/0000.m4s") for k in a.keys)  # sessions start at the beginning


def test_shapes_differ_as_described() -> None:
    steady = generate.generate(generate.shaped("steady", **SMALL))
    release = generate.generate(generate.shaped("release", **SMALL))
    scan = generate.generate(generate.shaped("scan", **SMALL))
    assert not any(k.startswith("v/1") for k in steady.keys)
    assert sum(k.startswith("v/1") for k in release.keys) > len(release) / 4  # releases lead
    assert sum(k.startswith("v/2") for k in scan.keys) > len(scan) / 10  # one-time scans


# -- the replay -------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(requests, st.integers(1, 200), st.booleans())
def test_root_never_exceeds_its_capacity(reqs: list, capacity: int, door: bool) -> None:
    t = make_trace(reqs)
    admission = Doorkeeper(16) if door else AdmitAll()
    root = Root(capacity, PopularityPolicy(), admission, Result("x"), batch_fraction=0.1)
    for when, key, size in zip(t.times, t.keys, t.sizes, strict=True):
        root.request(when, key, size)
        assert root.used == sum(c.size for c in root.stored.values()) <= capacity


@settings(max_examples=60, deadline=None)
@given(requests, st.integers(1, 200))
def test_fill_replay_stays_within_capacity_and_counts_every_request(
    reqs: list, capacity: int
) -> None:
    t = make_trace(reqs)
    r = replay_fill(t, capacity, PopularityPolicy(), AdmitAll(), FillConfig(), 2.0, "fill")
    assert r.requests == len(t) and r.bytes_requested == sum(t.sizes)
    assert 0 <= r.bytes_hit <= r.bytes_requested


@settings(max_examples=60, deadline=None)
@given(requests, st.integers(0, 2), st.floats(0, 23), st.integers(1, 400))
def test_the_manifest_at_a_night_is_forecast_from_the_requests_before_it_only(
    reqs: list, nights: int, hour: float, capacity: int
) -> None:
    t = make_trace(reqs)
    cfg = FillConfig()
    fill = NightlyFill(t, cfg)
    root = Root(capacity, PopularityPolicy(), AdmitAll(), Result("x"))
    night = hour * 3600
    for _ in range(nights + 1):
        upto = sum(1 for x in t.times if x < night)
        got = {e.key: e.score for e in fill.manifest(night, upto, root)}
        past = Logbook(ForecastRules(cfg.log_half_life, cfg.title_pattern))
        past.add_all(zip(t.times[:upto], t.keys[:upto], strict=True))
        want = past.forecast(night)
        sizes = {c.key: c.size for c in root.stored.values()}
        for ask in to_size(past, want, sizes, cfg.budget(capacity)):
            for k in ask:
                if k in t.objects():  # what the origin has
                    sizes[k] = t.objects()[k]
                else:
                    del want[k]
        assert list(got) == sized(past, want, sizes, cfg.budget(capacity))
        assert all(got[k] == pytest.approx(want[k]) for k in got)  # nothing after the night
        night += DAY


def test_a_title_first_asked_after_the_night_is_not_planned_that_night() -> None:
    t = Trace("t")
    t.append(1.0, "v/old/0001.m4s", 10)
    t.append(2 * 3600 + 1, "v/new/0001.m4s", 10)
    fill = NightlyFill(t, FillConfig())
    root = Root(100, PopularityPolicy(), AdmitAll(), Result("x"))
    assert [e.key for e in fill.manifest(2 * 3600, 1, root)] == ["v/old/0001.m4s"]


@settings(max_examples=60, deadline=None)
@given(st.lists(keys, max_size=150), st.integers(1, 8))
def test_belady_beats_lru_and_sieve_on_equal_sizes(ks: list[str], slots: int) -> None:
    t = Trace("t")
    for i, k in enumerate(ks):
        t.append(float(i), k, 10)
    cap = slots * 10
    best = replay_belady(t, cap).hits
    assert best >= replay(t, cap, LRUPolicy(), AdmitAll(), "lru").hits
    assert best >= replay_sieve(t, cap).hits


def test_the_cli_replays_a_written_trace(tmp_path: Path) -> None:
    path = tmp_path / "week.csv"
    cmd = [sys.executable, "-m", "bench.policy", "--days", "1", "--sessions-per-day", "30"]
    gen = subprocess.run(
        [*cmd, "--shape", "release", "--write-trace", str(path), "--capacity", "10%"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert re.fullmatch(r"byte hit ratio 0\.\d{3} \(object hit ratio 0\.\d{3}\)\n", gen.stdout)
    assert tracefile.read(str(path)).keys
    out = subprocess.run(
        [*cmd, "--trace", str(path), "--capacity", "10%,20%", "--policy", "all"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert out[0] == gen.stdout.strip()  # the same trace, the same default
    rows = [x for x in out if re.match(r"\s+(10|20)% ", x)]
    assert len(rows) == 2 * len(runs.RUNS)
    bad = subprocess.run(
        [*cmd, "--trace", str(tmp_path / "none.csv"), "--capacity", "1GiB"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "none.csv" in bad.stderr
