"""edge.core.conditional and edge.core.httpdate: RFC 9110 preconditions and dates."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge.core.conditional import Outcome, evaluate, parse_etags
from edge.core.httpdate import format_http_date, parse_http_date

ETAG = '"abc-123"'
LM = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT
LM_TEXT = "Sun, 06 Nov 1994 08:49:37 GMT"
EARLIER = "Sat, 05 Nov 1994 08:49:37 GMT"
LATER = "Mon, 07 Nov 1994 08:49:37 GMT"


def ev(method: str = "GET", **kw) -> Outcome:
    return evaluate(method, kw.pop("etag", ETAG), LM, **kw)


def test_dates_in_all_three_forms() -> None:
    assert parse_http_date(LM_TEXT) == LM
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == LM
    assert parse_http_date("Sun Nov  6 08:49:37 1994") == LM
    assert format_http_date(LM) == LM_TEXT


def test_bad_dates_are_none() -> None:
    for text in [
        "",
        "yesterday",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 25:49:37 GMT",
        "Xyz, 06 Nov 1994 08:49:37 GMT",
        "Sun, 6 Nov 1994 08:49:37 GMT",
    ]:
        assert parse_http_date(text) is None, text


@given(st.integers(0, 253402300799))
def test_dates_round_trip(ts: int) -> None:
    assert parse_http_date(format_http_date(ts)) == ts


@given(st.text(max_size=40))
def test_date_parser_never_crashes(text: str) -> None:
    parse_http_date(text)


def test_etag_lists() -> None:
    assert parse_etags('"a", W/"b" ,"c,d"') == [
        (False, '"a"'),
        (True, 'W/"b"'[2:]),
        (False, '"c,d"'),
    ]
    assert parse_etags('"a" "b"') is None
    assert parse_etags("abc") is None
    assert parse_etags('"unterminated') is None


def test_if_match() -> None:
    assert ev(if_match=ETAG) is Outcome.PROCEED
    assert ev(if_match='"other", "abc-123"') is Outcome.PROCEED
    assert ev(if_match="*") is Outcome.PROCEED
    assert ev(if_match='"other"') is Outcome.PRECONDITION_FAILED
    assert ev(if_match='W/"abc-123"') is Outcome.PRECONDITION_FAILED  # strong comparison
    assert ev(if_match="garbage") is Outcome.PRECONDITION_FAILED


def test_if_unmodified_since() -> None:
    assert ev(if_unmodified_since=LM_TEXT) is Outcome.PROCEED
    assert ev(if_unmodified_since=EARLIER) is Outcome.PRECONDITION_FAILED
    assert ev(if_unmodified_since="not a date") is Outcome.PROCEED
    # If-Match present: If-Unmodified-Since is not evaluated.
    assert ev(if_match=ETAG, if_unmodified_since=EARLIER) is Outcome.PROCEED


def test_if_none_match() -> None:
    assert ev(if_none_match=ETAG) is Outcome.NOT_MODIFIED
    assert ev(if_none_match='W/"abc-123"') is Outcome.NOT_MODIFIED  # weak comparison
    assert ev("HEAD", if_none_match="*") is Outcome.NOT_MODIFIED
    assert ev(if_none_match='"other"') is Outcome.PROCEED
    assert ev("DELETE", if_none_match=ETAG) is Outcome.PRECONDITION_FAILED


def test_if_modified_since() -> None:
    assert ev(if_modified_since=LM_TEXT) is Outcome.NOT_MODIFIED
    assert ev(if_modified_since=LATER) is Outcome.NOT_MODIFIED
    assert ev(if_modified_since=EARLIER) is Outcome.PROCEED
    assert ev(if_modified_since="garbage") is Outcome.PROCEED
    # If-None-Match present: If-Modified-Since is ignored.
    assert ev(if_none_match='"other"', if_modified_since=LATER) is Outcome.PROCEED


def test_if_range() -> None:
    assert ev(if_range=ETAG, has_range=True) is Outcome.PROCEED
    assert ev(if_range='"old"', has_range=True) is Outcome.PROCEED_IGNORE_RANGE
    assert ev(if_range='W/"abc-123"', has_range=True) is Outcome.PROCEED_IGNORE_RANGE
    assert ev(if_range=LM_TEXT, has_range=True) is Outcome.PROCEED
    assert ev(if_range=LATER, has_range=True) is Outcome.PROCEED_IGNORE_RANGE
    assert ev(if_range="garbage", has_range=True) is Outcome.PROCEED_IGNORE_RANGE
    assert ev(if_range='"old"', has_range=False) is Outcome.PROCEED
    # a weak stored ETag never satisfies If-Range
    assert ev(etag='W/"abc-123"', if_range='W/"abc-123"', has_range=True) is (
        Outcome.PROCEED_IGNORE_RANGE
    )


def test_precedence_412_before_304() -> None:
    assert ev(if_match='"other"', if_none_match=ETAG) is Outcome.PRECONDITION_FAILED
