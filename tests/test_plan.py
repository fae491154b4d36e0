"""The answer planner (edge.core.plan): its table, against ranges and
conditional, and the byte-exactness of multipart framing and slice pieces."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from edge.core import plan as plans
from edge.core import ranges
from edge.core.httpdate import format_http_date

ETAG = '"abc-123"'
LM = 1_700_000_000


def p(method: str = "GET", size: int = 1000, **headers: str) -> plans.Plan:
    h = {k.replace("_", "-").encode(): v.encode() for k, v in headers.items()}
    return plans.plan(method, h, size, ETAG, LM)


def test_the_table() -> None:
    assert p() == plans.WHOLE_GET
    assert p("HEAD") == plans.WHOLE_HEAD
    assert p(range="bytes=0-9") == plans.Partial(((0, 9),), "bytes=0-9", False)
    assert p(range="bytes=5000-") == plans.Unsatisfiable("bytes=5000-")
    assert p(range="items=0-9") == plans.WHOLE_GET  # another unit: ignored
    assert p(if_none_match=ETAG) == plans.NOT_MODIFIED
    assert p("HEAD", if_none_match=ETAG) == plans.NOT_MODIFIED
    assert p(if_match='"other"') == plans.PRECONDITION_FAILED
    assert p(if_modified_since=format_http_date(LM)) == plans.NOT_MODIFIED
    assert p(if_unmodified_since=format_http_date(LM - 10)) == plans.PRECONDITION_FAILED


def test_range_applies_to_get_only() -> None:
    assert p("HEAD", range="bytes=0-9") == plans.WHOLE_HEAD


def test_a_failed_if_range_sends_the_whole_body() -> None:
    assert p(range="bytes=0-9", if_range='"old"') == plans.WHOLE_GET
    assert p(range="bytes=0-9", if_range=ETAG) == plans.Partial(((0, 9),), "bytes=0-9", False)


def test_preconditions_come_before_range() -> None:
    assert p(range="bytes=5000-", if_match='"other"') == plans.PRECONDITION_FAILED
    assert p(range="bytes=0-1", if_none_match=ETAG) == plans.NOT_MODIFIED


range_values = st.one_of(
    st.from_regex(r"bytes=[0-9]{0,4}-[0-9]{0,4}(,[0-9]{0,4}-[0-9]{0,4}){0,3}", fullmatch=True),
    st.text(max_size=20),
)


@given(range_values, st.integers(0, 5000))
def test_get_ranges_follow_ranges_decide(value: str, size: int) -> None:
    got = p(range=value, size=size) if value.isascii() else None
    if got is None:
        return
    decided = ranges.decide(value, size)
    if type(decided) is ranges.Partial:
        assert got == plans.Partial(decided.ranges, value, False)
    elif type(decided) is ranges.Unsatisfiable:
        assert got == plans.Unsatisfiable(value)
    else:
        assert got == plans.WHOLE_GET


spans_st = st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 400)), min_size=1, max_size=6)


@given(spans_st, st.integers(1, 700))
def test_slice_pieces_cover_exactly_the_spans(raw: list[tuple[int, int]], slice_size: int) -> None:
    data = bytes(i % 251 for i in range(4000))
    spans: list[bytes | tuple[int, int]] = []
    want = b""
    for a, n in raw:
        spans.append((a, a + n))
        spans.append(b"|")
        want += data[a : a + n + 1] + b"|"
    got = b""
    for piece in plans.slice_pieces(spans, slice_size):
        if type(piece) is bytes:
            got += piece
        else:
            idx, off, count = piece  # type: ignore[misc]
            assert off >= 0 and off + count <= slice_size and count > 0
            got += data[idx * slice_size + off : idx * slice_size + off + count]
    assert got == want


@given(st.lists(st.tuples(st.integers(0, 900), st.integers(0, 99)), min_size=2, max_size=5))
def test_multipart_framing_is_exact(raw: list[tuple[int, int]]) -> None:
    size = 1000
    decided = ranges.resolve([(a, a + n) for a, n in raw], size)
    if type(decided) is not ranges.Partial or len(decided.ranges) < 2:
        return
    data = bytes(i % 256 for i in range(size))
    segments, length = plans.multipart(decided.ranges, size, "video/mp2t", "B0UNDARY")
    body = b"".join(s if type(s) is bytes else data[s[0] : s[1] + 1] for s in segments)  # type: ignore[index]
    assert len(body) == length
    parts = body.split(b"--B0UNDARY")
    assert parts[-1] == b"--\r\n"
    for (a, b), part in zip(decided.ranges, parts[1:-1], strict=True):
        head, _, payload = part.partition(b"\r\n\r\n")
        assert re.search(rf"Content-Range: bytes {a}-{b}/{size}".encode(), head)
        assert payload.removesuffix(b"\r\n") == data[a : b + 1]
