"""edge.core.ranges: RFC 9110 Range parsing and resolution, by example and by property."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge.core.ranges import FULL, UNSATISFIABLE, Full, Partial, Unsatisfiable, decide, parse_range


def test_single_ranges() -> None:
    assert decide("bytes=0-99", 1000) == Partial(((0, 99),))
    assert decide("bytes=500-", 1000) == Partial(((500, 999),))
    assert decide("bytes=-100", 1000) == Partial(((900, 999),))
    assert decide("bytes=0-0", 1000) == Partial(((0, 0),))
    assert decide("bytes=999-999", 1000) == Partial(((999, 999),))


def test_clipped_past_the_end() -> None:
    assert decide("bytes=900-5000", 1000) == Partial(((900, 999),))
    assert decide("bytes=-5000", 1000) == Partial(((0, 999),))
    assert decide("bytes=0-18446744073709551616000", 10) == Partial(((0, 9),))


def test_unsatisfiable() -> None:
    assert decide("bytes=1000-", 1000) is UNSATISFIABLE
    assert decide("bytes=1000-2000", 1000) is UNSATISFIABLE
    assert decide("bytes=-0", 1000) is UNSATISFIABLE
    assert decide("bytes=5-, 7-9", 3) is UNSATISFIABLE


def test_some_unsatisfiable_specs_are_dropped() -> None:
    assert decide("bytes=2000-3000, 0-1", 1000) == Partial(((0, 1),))


def test_invalid_syntax_is_ignored() -> None:
    for value in [
        "bytes=",
        "bytes=abc",
        "bytes=5-1",
        "bytes=1-2-3",
        "bytes=-",
        "bytes=--5",
        "bytes=+1-2",
        "bytes=1 -2",
        "bytes=0x10-20",
        "items=0-5",
        "bytes 0-5",
        "=0-5",
        "bytes=0-5,x",
        "bytes=\u0661-\u0662",  # non-ASCII digits
        "bytes=0-5;q=1",
    ]:
        assert parse_range(value) is None, value
        assert decide(value, 1000) is FULL, value


def test_unit_is_case_insensitive_and_empty_elements_allowed() -> None:
    assert decide("Bytes=0-1", 10) == Partial(((0, 1),))
    assert decide("BYTES=0-1,,  ,3-4", 10) == Partial(((0, 1), (3, 4)))


def test_overlapping_and_adjacent_ranges_merge() -> None:
    assert decide("bytes=0-10,5-20", 100) == Partial(((0, 20),))
    assert decide("bytes=0-9,10-19", 100) == Partial(((0, 19),))
    assert decide("bytes=50-60,0-5", 100) == Partial(((0, 5), (50, 60)))
    assert decide("bytes=0-1,0-1,0-1,0-1", 100) == Partial(((0, 1),))


def test_too_many_ranges_are_ignored() -> None:
    many = "bytes=" + ",".join(f"{i * 3}-{i * 3}" for i in range(65))
    assert decide(many, 10_000) is FULL
    assert isinstance(decide(many, 10_000, max_ranges=100), Partial)


def test_empty_representation() -> None:
    assert decide("bytes=0-", 0) is UNSATISFIABLE
    assert decide("bytes=-5", 0) is FULL
    assert decide(None, 0) is FULL


# -- properties ---------------------------------------------------------------

spec = st.one_of(
    st.tuples(st.integers(0, 3000), st.none()),
    st.tuples(st.integers(0, 3000), st.integers(0, 3000)).map(lambda t: (min(t), max(t))),
    st.tuples(st.none(), st.integers(0, 3000)),
)


def render(specs: list) -> str:
    parts = []
    for first, last in specs:
        if first is None:
            parts.append(f"-{last}")
        elif last is None:
            parts.append(f"{first}-")
        else:
            parts.append(f"{first}-{last}")
    return "bytes=" + ",".join(parts)


def covered(specs: list, length: int) -> set[int]:
    """The oracle: byte positions the specs select, straight from RFC 9110 §14.1.2."""
    out: set[int] = set()
    for first, last in specs:
        if first is None:
            out.update(range(max(0, length - last), length) if last else range(0))
        else:
            end = length - 1 if last is None else min(last, length - 1)
            out.update(range(first, end + 1))
    return out


@given(st.lists(spec, min_size=1, max_size=10), st.integers(0, 2500))
def test_resolution_selects_exactly_the_oracle_bytes(specs: list, length: int) -> None:
    decision = decide(render(specs), length)
    want = covered(specs, length)
    if isinstance(decision, Partial):
        got: set[int] = set()
        prev_end = -2
        for start, end in decision.ranges:
            assert 0 <= start <= end < length
            assert start > prev_end + 1  # sorted, disjoint, not adjacent
            prev_end = end
            got.update(range(start, end + 1))
        assert got == want
    elif isinstance(decision, Unsatisfiable):
        assert not want
        assert not (length == 0 and any(f is None and n for f, n in specs))
    else:
        assert isinstance(decision, Full)
        assert length == 0 and not want


@given(st.text(max_size=40))
def test_arbitrary_text_never_crashes(value: str) -> None:
    decision = decide(value, 1000)
    assert isinstance(decision, Full | Unsatisfiable | Partial)


@given(st.lists(spec, min_size=1, max_size=64))
def test_parse_round_trips(specs: list) -> None:
    assert parse_range(render(specs)) == [tuple(s) for s in specs]


@given(spec, st.integers(0, 2500), st.sampled_from(["bytes", "Bytes", "BYTES"]))
def test_single_range_fast_path_agrees_with_the_general_parser(one, length, unit) -> None:
    from edge.core.ranges import resolve

    value = unit + render([one])[len("bytes") :]
    assert decide(value, length) == resolve(parse_range(value), length)


def test_absurdly_long_positions_are_clipped() -> None:
    nines = "9" * 5000
    assert decide(f"bytes=0-{nines}", 10) == Partial(((0, 9),))
    assert decide(f"bytes={nines}-", 10) is UNSATISFIABLE
    assert decide(f"bytes=-{nines}", 10) == Partial(((0, 9),))
    assert decide(f"bytes=1-2,0-{nines}", 10) == Partial(((0, 9),))
