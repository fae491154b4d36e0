"""edge.core.freshness: RFC 9111 storability, lifetime, age and stale-if-error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.core.freshness import evaluate, is_fresh, may_serve_stale_on_error, parse_cache_control
from edge.core.httpdate import format_http_date

NOW = 1_800_000_000.0
DATE = format_http_date(NOW)


def fresh(**kw):
    args = {
        "cache_control": None,
        "expires": None,
        "date": DATE,
        "age": None,
        "last_modified": None,
        "request_time": NOW,
        "response_time": NOW,
    }
    args.update(kw)
    return evaluate(**args)


def test_parse_directives() -> None:
    cc = parse_cache_control('public, max-age=60, S-MAXAGE="120", stale-if-error=30, x="a,b"')
    assert cc.max_age == 60 and cc.s_maxage == 120 and cc.stale_if_error == 30
    assert parse_cache_control("no-store").no_store
    assert parse_cache_control('private="Set-Cookie"').private
    assert parse_cache_control("no-cache").no_cache
    assert parse_cache_control("max-age=abc").invalid_age
    assert parse_cache_control("max-age=-1").invalid_age
    assert parse_cache_control(None) == parse_cache_control("")


def test_lifetime_precedence() -> None:
    assert fresh(cache_control="max-age=60").fresh_until == NOW + 60
    assert fresh(cache_control="max-age=60, s-maxage=10").fresh_until == NOW + 10
    assert fresh(expires=format_http_date(NOW + 300)).fresh_until == NOW + 300
    assert fresh(cache_control="max-age=5", expires=format_http_date(NOW + 300)).fresh_until == (
        NOW + 5
    )
    # heuristic: 10% of the time since Last-Modified, capped at a day
    assert fresh(last_modified=format_http_date(NOW - 1000)).fresh_until == NOW + 100
    assert fresh(last_modified=format_http_date(NOW - 10**8)).fresh_until == NOW + 86400
    assert fresh().fresh_until == NOW  # nothing to go by: stale at once


def test_invalid_values_mean_stale() -> None:
    assert fresh(cache_control="max-age=soon").fresh_until == NOW
    assert fresh(expires="0").fresh_until == NOW
    assert fresh(expires=format_http_date(NOW - 10)).fresh_until == NOW


def test_age_counts_against_the_lifetime() -> None:
    assert fresh(cache_control="max-age=60", age="20").fresh_until == NOW + 40
    # a Date 30 s in the past: apparent age
    assert fresh(cache_control="max-age=60", date=format_http_date(NOW - 30)).fresh_until == (
        NOW + 30
    )
    # time in transit
    assert fresh(cache_control="max-age=60", request_time=NOW - 5).fresh_until == NOW + 55


def test_storability_and_revalidation() -> None:
    assert not fresh(cache_control="no-store").storable
    assert not fresh(cache_control="private, max-age=60").storable
    nc = fresh(cache_control="no-cache, max-age=600")
    assert nc.storable and nc.fresh_until == NOW
    assert fresh(cache_control="max-age=1, must-revalidate").must_revalidate
    assert fresh(cache_control="max-age=1, proxy-revalidate").must_revalidate
    assert fresh(cache_control="s-maxage=1").must_revalidate
    assert not fresh(cache_control="max-age=1").must_revalidate


def test_stale_if_error() -> None:
    f = fresh(cache_control="max-age=10, stale-if-error=60")
    assert f.stale_if_error == 60
    assert may_serve_stale_on_error(f.fresh_until, f.stale_if_error, False, NOW + 69)
    assert not may_serve_stale_on_error(f.fresh_until, f.stale_if_error, False, NOW + 71)
    assert not may_serve_stale_on_error(f.fresh_until, f.stale_if_error, True, NOW + 11)
    assert may_serve_stale_on_error(None, 0, False, NOW + 10**9)
    assert is_fresh(None, NOW) and is_fresh(NOW + 1, NOW) and not is_fresh(NOW, NOW)


@given(st.text(max_size=80))
def test_any_cache_control_parses(value: str) -> None:
    parse_cache_control(value)


@given(
    max_age=st.integers(0, 10**6),
    age=st.integers(0, 10**6),
    transit=st.floats(0, 100),
)
def test_fresh_until_never_exceeds_the_lifetime(max_age: int, age: int, transit: float) -> None:
    f = fresh(cache_control=f"max-age={max_age}", age=str(age), request_time=NOW - transit)
    assert f.fresh_until <= NOW + max_age
    assert f.fresh_until == pytest.approx(NOW - max(0.0, age + transit) + max_age, abs=1e-6)
