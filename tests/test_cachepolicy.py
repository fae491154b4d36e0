"""The shared cache's pure decisions (``edge.core.cachepolicy``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge.core import cachepolicy as cp
from edge.core.freshness import parse_cache_control

names = st.sampled_from(["a", "b", "token", "t", "x-y"])
values = st.text("abc=%/", max_size=4)
params = st.lists(st.tuples(names, values), max_size=5)


def query_of(ps: list[tuple[str, str]]) -> str:
    return "&".join(f"{n}={v}" for n, v in ps)


@given(params, params)
def test_different_queries_never_share_a_key(p1: list, p2: list) -> None:
    ignored = frozenset({"token"})
    k1 = cp.cache_key("show/seg.ts", query_of(p1), ignored)
    k2 = cp.cache_key("show/seg.ts", query_of(p2), ignored)
    kept1 = [p for p in p1 if p[0] != "token"]
    kept2 = [p for p in p2 if p[0] != "token"]
    assert (k1 == k2) == (query_of(kept1) == query_of(kept2))


@given(params)
def test_ignored_parameters_do_not_fragment_the_cache(ps: list) -> None:
    with_token = [*ps, ("token", "k1~123~~sig")]
    ignored = frozenset({"token"})
    assert cp.cache_key("k", query_of(with_token), ignored) == cp.cache_key(
        "k", query_of(ps), ignored
    )
    path, query = cp.split_key(cp.cache_key("k", query_of(ps), ignored))
    kept = [f"{n}={v}" for n, v in ps if n != "token"]
    assert path == "k" and query == "&".join(kept)


def test_a_path_with_a_question_mark_never_meets_a_query() -> None:
    assert cp.cache_key("a?b", "", frozenset()) != cp.cache_key("a", "b", frozenset())
    assert cp.cache_key("a", "", frozenset()) == "a"


@given(st.lists(st.sampled_from(["Foo", "foo", " Bar", "baz ", ""]), max_size=4))
def test_vary_names_are_a_set(items: list[str]) -> None:
    got = cp.parse_vary(", ".join(items))
    assert got == tuple(sorted({i.strip().lower() for i in items if i.strip()}))
    assert cp.parse_vary(", ".join([*items, "*"])) is None


header_values = st.one_of(st.none(), st.sampled_from(["1", "2", " 1", "a, b", "a,b", "a,  b"]))


@given(header_values, header_values)
def test_a_variant_answers_only_requests_that_match_it(v1: str | None, v2: str | None) -> None:
    h1 = {} if v1 is None else {"foo": v1}
    h2 = {} if v2 is None else {"foo": v2}
    stored = cp.vary_values(("foo",), h1)
    norm = {None: None, "1": "1", "2": "2", " 1": "1", "a, b": "a,b", "a,b": "a,b", "a,  b": "a,b"}
    assert cp.vary_matches(stored, h2) == (norm[v1] == norm[v2])


CONTROLS = ["", "max-age=60", "no-store", "private", "s-maxage=5"]


@given(st.integers(100, 599), st.sampled_from(CONTROLS), st.booleans())
def test_what_may_be_stored(status: int, cc: str, expires: bool) -> None:
    ok = cp.storable(status, parse_cache_control(cc), expires)
    if status < 200 or status in (206, 304) or cc in ("no-store", "private"):
        assert not ok
    elif "age" in cc or expires:
        assert ok
    else:
        assert ok == (status in cp.HEURISTIC_STATUSES)


def test_hop_by_hop_and_connection_listed_headers_are_not_stored() -> None:
    got = cp.end_to_end([("Connection", "a, B"), ("a", "1"), ("b", "2"), ("c", "3"),
                         ("Keep-Alive", "x"), ("Content-Length", "3"), ("X-Test", "v"),
                         ("Set-Cookie", "s"), ("Transfer-Encoding", "chunked")])  # fmt: skip
    assert got == (("c", "3"), ("X-Test", "v"), ("Set-Cookie", "s"))


def test_a_304_updates_all_but_what_describes_the_body() -> None:
    stored = (("ETag", '"a"'), ("Content-Encoding", "gzip"), ("Test-Header", "A"), ("X", "1"))
    fresh = [("ETag", '"b"'), ("Content-Encoding", "br"), ("Test-Header", "B"), ("Age", "3")]
    got = dict(cp.updated_by_304(stored, fresh))
    assert got == {"ETag": '"a"', "Content-Encoding": "gzip", "Test-Header": "B", "X": "1"}


def test_what_a_miss_forwards() -> None:
    got = cp.forwarded({"foo": "1", "range": "bytes=0-1", "if-none-match": '"x"', "host": "h",
                        "connection": "close, bar", "bar": "2", "te": "trailers",
                        "accept-language": "fr"})  # fmt: skip
    assert got == {"foo": "1", "accept-language": "fr"}


@given(st.one_of(st.none(), st.integers(100, 599)))
def test_only_no_answer_and_5xx_count_against_an_origin(status: int | None) -> None:
    assert cp.origin_failed(status) == (status is None or status >= 500)


def test_cache_status_members() -> None:
    assert cp.cache_status("edgefleet", hit=True) == "edgefleet; hit"
    assert (
        cp.cache_status("edgefleet", fwd="stale", fwd_status=304, stored=True)
        == "edgefleet; fwd=stale; fwd-status=304; stored"
    )
    assert cp.cache_status("edgefleet", fwd="miss", detail="origin-error") == (
        "edgefleet; fwd=miss; detail=origin-error"
    )


@given(
    st.sampled_from(
        ["max-age=60", "public, max-age=60", "s-maxage=5", "max-age=5, must-revalidate"]
    )
)
def test_an_authorized_request_is_stored_only_when_the_origin_says_so(cc: str) -> None:
    parsed = parse_cache_control(cc)
    shared = cp.has_directive(cc, "public") or "s-maxage" in cc or "must-revalidate" in cc
    assert (
        cp.storable(200, parsed, False, cp.has_directive(cc, "public"), authorized=True) == shared
    )
    assert cp.storable(200, parsed, False, cp.has_directive(cc, "public"))


# -- request directives -------------------------------------------------------------------

directive = st.sampled_from(
    ["no-store", "no-cache", "max-age=0", "max-age=30", "max-stale", "max-stale=20",
     "min-fresh=10", "only-if-cached", "no-transform", "max-age=x", "Max-Stale=5"]
)  # fmt: skip
header_values = st.lists(directive, max_size=4).map(", ".join)


def test_request_directives_by_mode() -> None:
    value = "no-cache, max-age=5, min-fresh=3, max-stale, only-if-cached, no-store"
    assert cp.request_directives(value, "ignore") == cp.NO_DIRECTIVES
    assert cp.request_directives(value, "safe") == cp.RequestDirectives(
        max_stale=float("inf"), only_if_cached=True
    )
    assert cp.request_directives(value, "all") == cp.RequestDirectives(
        no_store=True, no_cache=True, max_age=5, max_stale=float("inf"), min_fresh=3,
        only_if_cached=True,
    )  # fmt: skip
    assert cp.request_directives("max-stale=x, max-age=-1", "all") == cp.NO_DIRECTIVES


@given(header_values)
def test_safe_mode_never_sends_more_to_the_origin(value: str) -> None:
    """What ``safe`` honours can only make a stored answer usable more often."""
    d = cp.request_directives(value, "safe")
    assert not (d.no_cache or d.no_store or d.max_age is not None or d.min_fresh is not None)
    for now in (50.0, 100.0, 200.0):
        if cp.reusable(cp.NO_DIRECTIVES, fresh_until=100.0, born=0.0, now=now,
                       stale_forbidden=False):  # fmt: skip
            assert cp.reusable(d, fresh_until=100.0, born=0.0, now=now, stale_forbidden=False)


@given(header_values, st.floats(0, 300), st.booleans())
def test_reuse_follows_the_rfc(value: str, now: float, forbidden: bool) -> None:
    d = cp.request_directives(value, "all")
    ok = cp.reusable(d, fresh_until=100.0, born=40.0, now=now, stale_forbidden=forbidden)
    if d.no_cache or d.max_age == 0:
        assert not ok
    if ok and now >= 100.0:  # stale: only within max-stale, never when forbidden
        assert d.max_stale is not None and not forbidden and now - 100.0 <= d.max_stale
    if ok and d.max_age is not None:
        assert now - 40.0 <= d.max_age
    if ok and d.min_fresh is not None:
        assert 100.0 - now >= d.min_fresh
    if d == cp.NO_DIRECTIVES:
        assert ok == (now < 100.0)


def test_reuse_of_an_immutable_answer() -> None:
    d = cp.request_directives("min-fresh=1000000", "all")
    assert cp.reusable(d, fresh_until=None, born=None, now=1.0, stale_forbidden=True)
    assert not cp.reusable(cp.RequestDirectives(no_cache=True), fresh_until=None, born=None,
                           now=1.0, stale_forbidden=False)  # fmt: skip


# -- variants and purges --------------------------------------------------------------------


@given(params, st.lists(st.tuples(st.sampled_from(["foo", "bar"]), st.text("ab ,", max_size=3))))
def test_a_variant_key_stays_under_its_key_and_is_purged_with_it(ps: list, hs: list) -> None:
    key = cp.cache_key("show/seg.ts", query_of(ps), frozenset())
    headers = dict(hs)
    vkey = cp.variant_key(key, ("bar", "foo"), headers)
    assert cp.base_key(vkey) == key and cp.split_key(vkey) == cp.split_key(key)
    assert cp.variant_key(vkey, ("bar", "foo"), headers) == vkey  # made from the base
    assert any(vkey.startswith(p) for p in cp.purged_prefixes(key))
    path_key = cp.split_key(key)[0]
    assert key == path_key or any(key.startswith(p) for p in cp.purged_prefixes(path_key))
    assert not any(k.startswith(p) for p in cp.purged_prefixes(path_key)
                   for k in ("show/seg.tsx", "show/seg.ts/x"))  # fmt: skip


def test_variant_keys_differ_by_the_values_that_matter() -> None:
    one = cp.variant_key("k", ("foo",), {"foo": "1"})
    assert one == cp.variant_key("k", ("foo",), {"foo": " 1", "bar": "x"})
    assert one != cp.variant_key("k", ("foo",), {"foo": "2"})
    assert one != cp.variant_key("k", ("foo",), {})
