"""fill.forecast: titles and positions from keys, the title model's scores,
the trend of a new title, the diurnal share, the keys worth sizing."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fill.forecast import (
    DEFAULT_TITLE_PATTERN,
    ForecastRules,
    Logbook,
    sibling,
    sized,
    title_and_position,
    to_size,
    worth_sizing,
)

DAY = 86400.0
HOUR = 3600.0
PATTERN = re.compile(DEFAULT_TITLE_PATTERN)


@pytest.mark.parametrize(
    ("key", "title", "position"),
    [
        ("v/000017/0042.m4s", "v/000017", 42),
        ("a/b/1080p/seg7.ts", "a/b/1080p", 7),
        ("a/b/init.mp4", "a/b", 0),  # no number: position 0 (the '4' of mp4 is no number)
        ("movie.mp4", "movie.mp4", 0),  # no directory: its own title
        ("t/ep2/chunk-0003-v1.m4s", "t/ep2", 1),  # the last number of the name
    ],
)
def test_title_and_position(key: str, title: str, position: int) -> None:
    assert title_and_position(key, PATTERN) == (title, position)


def test_an_operators_pattern_names_the_title() -> None:
    show = re.compile(r"(shows/[^/]+)/")  # every rendition of a show is one title
    assert title_and_position("shows/x/720p/0005.m4s", show) == ("shows/x", 5)
    assert title_and_position("other/0005.m4s", show) == ("other/0005.m4s", 0)


@given(
    st.from_regex(r"[a-z]{1,5}(/[a-z0-9]{1,6}){0,2}", fullmatch=True),
    st.integers(0, 9999),
    st.integers(0, 9999),
    st.sampled_from(["", "-", "seg", "seg_"]),
    st.sampled_from([".m4s", ".ts", ""]),
    st.integers(1, 6),
)
def test_a_sibling_is_the_same_title_at_the_position_asked(
    d: str, n: int, p: int, prefix: str, ext: str, width: int
) -> None:
    key = f"{d}/{prefix}{str(n).rjust(width, '0')}{ext}"
    title, got = title_and_position(key, PATTERN)
    assert (title, got) == (d, n)
    sib = sibling(key, title, p)
    assert sib is not None and title_and_position(sib, PATTERN) == (d, p)
    assert sibling(key, title, n) == key


def sessions(book: Logbook, title: str, start: float, reach: int, count: int) -> None:
    """``count`` sessions of ``title`` from ``start`` on, each playing positions 0..reach."""
    for s in range(count):
        for p in range(reach + 1):
            book.add(start + s * 60 + p * 6, f"{title}/{p:04d}.m4s")


def test_a_more_watched_title_scores_higher_and_the_drop_off_shapes_its_segments() -> None:
    book = Logbook()
    sessions(book, "v/a", 0.0, 9, 4)  # 4 sessions to position 9
    sessions(book, "v/a", 3 * HOUR, 1, 6)  # 6 that stop at position 1
    sessions(book, "v/b", HOUR, 9, 2)
    now = DAY
    f = book.forecast(now)
    assert f["v/a/0000.m4s"] > f["v/b/0000.m4s"] > 0
    # the drop-off, measured over both titles: 12 starts, 12 at 1, 6 at 2..9
    assert f["v/a/0001.m4s"] == pytest.approx(f["v/a/0000.m4s"], rel=1e-3)
    assert f["v/a/0005.m4s"] == pytest.approx(f["v/a/0000.m4s"] * 6 / 12, rel=0.05)
    # b's segments follow the same curve, not b's own counts
    assert f["v/b/0005.m4s"] / f["v/b/0000.m4s"] == pytest.approx(6 / 12, rel=0.05)


def test_positions_not_asked_yet_are_scored_up_to_the_furthest_any_title_reached() -> None:
    book = Logbook()
    sessions(book, "v/a", 0.0, 9, 3)
    sessions(book, "v/b", 0.0, 2, 3)
    f = book.forecast(DAY)
    assert "v/b/0009.m4s" in f and f["v/b/0009.m4s"] == pytest.approx(f["v/a/0009.m4s"])
    assert "v/b/0010.m4s" not in f


def test_a_title_released_hours_ago_is_extrapolated_not_averaged_over_the_week() -> None:
    book = Logbook()
    for day in range(6):  # an old title: 10 starts a day, every day
        for i in range(10):
            book.add(day * DAY + i * 2 * HOUR, "v/old/0000.m4s")
    now = 6 * DAY + 2 * HOUR
    for i in range(4):  # a new one: 4 starts in the two hours before the fill
        book.add(6 * DAY + i * 0.5 * HOUR, "v/new/0000.m4s")
    f = book.forecast(now)
    # 3 starts (the first only made it seen) in 2 of the day's 24 hours of demand
    assert f["v/new/0000.m4s"] > 2 * f["v/old/0000.m4s"]
    never_new = Logbook(ForecastRules(new_after=10 * DAY))  # the same, averaged
    for key, k in book.keys.items():
        never_new.add_all((t, key) for t in k.times)
    g = never_new.forecast(now)
    assert g["v/new/0000.m4s"] < g["v/old/0000.m4s"] < f["v/new/0000.m4s"]


def test_a_new_title_seen_once_has_no_rate_of_its_own() -> None:
    reqs = [(day * DAY, "v/old/0000.m4s") for day in range(3)]
    reqs.append((3 * DAY - HOUR, "v/once/0000.m4s"))
    book, never_new = Logbook(), Logbook(ForecastRules(new_after=10 * DAY))
    book.add_all(reqs)
    never_new.add_all(reqs)
    # its one start made it seen: only the logs-long rate is left, as for an old title
    f, g = book.forecast(3 * DAY), never_new.forecast(3 * DAY)
    assert f["v/once/0000.m4s"] == pytest.approx(g["v/once/0000.m4s"])
    book.add(3 * DAY - HOUR / 2, "v/once/0000.m4s")  # a second start: a rate of its own
    assert book.forecast(3 * DAY)["v/once/0000.m4s"] > 10 * f["v/once/0000.m4s"]


def test_starts_in_the_trough_weigh_more_than_at_the_peak() -> None:
    book = Logbook()
    for day in range(4):  # the diurnal curve: most starts at 20:00
        for i in range(20):
            book.add(day * DAY + 20 * HOUR + i * 60, f"v/t{i}/0000.m4s")
    # two new titles, 3 starts each after their first: one in the trough, one at the peak
    for i in range(4):
        book.add(4 * DAY + 3 * HOUR + i * 60, "v/trough/0000.m4s")
        book.add(4 * DAY + 20 * HOUR + i * 60, "v/peak/0000.m4s")
    at_peak = book.forecast(4 * DAY + 21 * HOUR)["v/peak/0000.m4s"]
    in_trough = book.forecast(4 * DAY + 4 * HOUR)["v/trough/0000.m4s"]
    assert in_trough > 5 * at_peak  # the same starts in a quiet hour: a larger day


requests = st.lists(
    st.tuples(
        st.floats(0, 5 * DAY, allow_nan=False),
        st.sampled_from([f"v/{t}/{p:04d}.m4s" for t in "abcd" for p in range(6)] + ["x.mp4"]),
    ),
    max_size=80,
)


@settings(max_examples=80, deadline=None)
@given(requests, st.floats(0, DAY))
def test_scores_are_finite_do_not_depend_on_order_and_stay_in_seen_titles(
    reqs: list[tuple[float, str]], later: float
) -> None:
    now = max((t for t, _ in reqs), default=0.0) + later
    a, b = Logbook(), Logbook()
    a.add_all(reqs)
    b.add_all(reversed(reqs))
    fa, fb = a.forecast(now), b.forecast(now)
    assert fa.keys() == fb.keys()
    assert all(fa[k] == pytest.approx(fb[k]) for k in fa)
    assert all(0 < v < float("inf") for v in fa.values())
    assert {title_and_position(k, PATTERN)[0] for k in fa} <= {
        title_and_position(k, PATTERN)[0] for _, k in reqs
    }


SCORED = st.sampled_from([f"v/{t}/{p:04d}.m4s" for t in "abc" for p in range(8)])
SIZED = st.sampled_from([f"v/{t}/{p:04d}.m4s" for t in "ab" for p in range(8)])


@settings(max_examples=80, deadline=None)
@given(
    st.dictionaries(SCORED, st.floats(0.01, 100), min_size=1),
    st.dictionaries(SIZED, st.integers(1, 1000)),
    st.integers(0, 5000),
)
def test_worth_sizing_takes_the_best_per_byte_until_twice_the_budget(
    scores: dict[str, float], sizes: dict[str, int], budget: int
) -> None:
    book = Logbook()
    book.add_all((0.0, k) for k in [*scores, *sizes])
    got = worth_sizing(book, scores, sizes, budget)
    assert len(set(got)) == len(got) and set(got) <= set(scores)
    known = [v for v in sizes.values()]
    by_title: dict[str, list[int]] = {}
    for k, v in sizes.items():
        by_title.setdefault(k.split("/")[1], []).append(v)

    def est(k: str) -> float:
        if k in sizes:
            return sizes[k]
        same = by_title.get(k.split("/")[1])
        return sum(same) / len(same) if same else (sum(known) / len(known) if known else 1.0)

    rest = [k for k in scores if k not in got]
    # every key left out is worth no more per byte than every key taken
    worst = min((scores[k] / est(k) for k in got), default=float("inf"))
    assert all(scores[k] / est(k) <= worst * (1 + 1e-9) for k in rest)
    # taken until twice the budget is reached, no further
    assert not rest or sum(est(k) for k in got) >= 2 * budget
    assert sum(est(k) for k in got[:-1]) < 2 * budget or not got


def test_only_keys_a_plan_may_take_are_sized_at_the_origin() -> None:
    book = Logbook()
    for t in range(100):  # 100 titles of 10 segments, title t started 100 - t times
        for s in range(100 - t):
            for p in range(10):
                book.add(s * 600.0 + p * 6, f"v/{t:03d}/{p:04d}.m4s")
    scores = book.forecast(DAY)
    origin = {k: 1000 for k in scores if not k.endswith("0009.m4s")}  # 9: past the end
    sizes: dict[str, int] = {}
    asked: list[str] = []
    for ask in to_size(book, scores, sizes, budget=20_000):
        asked += ask
        for k in ask:
            if k in origin:
                sizes[k] = origin[k]
            else:
                del scores[k]
    got = sized(book, scores, sizes, 20_000)
    assert len(asked) < 120 < len(origin)  # 40 keys fill twice the budget
    full = {k: v for k, v in scores.items() if k in origin}
    assert got == worth_sizing(book, full, origin, 20_000)  # as if every size were known
