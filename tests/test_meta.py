"""``same_version``: one rule for "is this the same version of the object"."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge.core.meta import ObjectMeta, same_version
from fill.plan import Entry

sizes = st.integers(0, 10)
etags = st.sampled_from(['"a"', '"b"', '"a-1"'])


@given(sizes, etags, sizes, etags)
def test_same_size_and_etag_and_nothing_else(s1: int, e1: str, s2: int, e2: str) -> None:
    a, b = ObjectMeta(s1, e1, 0, "video/mp4"), ObjectMeta(s2, e2, 5, "text/plain")
    assert same_version(a, b) == (s1 == s2 and e1 == e2) == same_version(b, a)
    assert same_version(a, a)


@given(sizes, etags, sizes)
def test_an_unknown_etag_matches_any(s1: int, e1: str, s2: int) -> None:
    meta, entry = ObjectMeta(s1, e1, 0, "video/mp4"), Entry("k", s2, 1.0, None)
    assert same_version(meta, entry) == (s1 == s2) == same_version(entry, meta)
