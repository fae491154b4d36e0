"""edge.core.sizes: sizes and durations as people write them, and back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.core.sizes import format_size, human_size, parse_duration, parse_size


def test_units() -> None:
    assert parse_size("2MiB") == parse_size("2m") == 2 * 1024**2
    assert parse_size("1.5TB") == 1_500_000_000_000
    assert parse_size("4096") == parse_size(4096) == 4096
    assert parse_duration("250ms") == 0.25 and parse_duration("1d") == 86400
    for bad in ("-1", "2XB", "", True, "1.2.3"):
        with pytest.raises(ValueError):
            parse_size(bad)
    with pytest.raises(ValueError):
        parse_duration("soon")


@given(st.integers(0, 2**50))
def test_format_size_reads_back(n: int) -> None:
    assert parse_size(format_size(n).replace(" ", "")) == n


@given(st.floats(0, 2**60, allow_nan=False))
def test_human_size_is_within_rounding(n: float) -> None:
    text = human_size(n)
    value, unit = text.split()
    back = (
        float(value) * {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}[unit]
    )
    assert abs(back - n) <= 0.05 * max(n, 1) + 1
