"""The shared cache's decisions for HTTP origins (RFC 9111, RFC 9211): pure.

What it decides, each as one function of its inputs:

    question                                  function            rule
    ----------------------------------------  ------------------  ------------------------------
    under which key is a response stored?     cache_key           path, then the query minus the
                                                                  operator's ignored parameters
    which request headers select it?          parse_vary          Vary's names, lower-cased and
                                                                  sorted; ``*``: never stored
    may a stored variant answer a request?    vary_matches        every named header has the same
                                                                  (normalised) value, or is absent
                                                                  in both
    where is another variant stored?          variant_key         the key, VARIANT_MARK, a digest
                                                                  of the request's values for the
                                                                  names the first variant's Vary
                                                                  lists; at most MAX_VARIANTS more
    what does a purge of a key remove?        purged_prefixes     the key, its queries, its variants
    is a 404 left to the cache's own TTL?     explicitly_fresh    no max-age, s-maxage, Expires,
                                                                  no-cache or Last-Modified
    may this response be stored?              storable            a final status, not 206 or 304,
                                                                  no no-store/private, and either
                                                                  a heuristically cacheable status
                                                                  or explicit freshness; asked with
                                                                  Authorization: only if public,
                                                                  s-maxage or must-revalidate
    which response headers are stored?        end_to_end          all but hop-by-hop ones, those
                                                                  Connection names, and the framing
                                                                  the appliance writes itself
    what does a 304 change?                   updated_by_304      every stored header the 304
                                                                  repeats, except the ones that
                                                                  describe the stored body
    which client headers go to the origin?    forwarded           end-to-end ones, not Range, the
                                                                  validators, Host or hop-by-hop
    does an origin answer count against it?   origin_failed       transport failures, timeouts and
                                                                  5xx; any other status is an answer
    which request directives count?           request_directives  by the operator's mode (below)
    may a stored answer serve this request    reusable            fresh enough for max-age and
    without asking the origin?                                    min-fresh, not no-cache; stale
                                                                  only within max-stale, and never
                                                                  when the response forbids it
    what does Cache-Status say?               cache_status        RFC 9211: hit, or fwd=... with
                                                                  stored / fwd-status / detail

Request directives (RFC 9111 §5.2.1; a cache need not honour them, and a
player that could send every request to the origin would turn the CDN into
a relay). The operator chooses (``request_cache_control``):

    mode     honoured                                   ignored
    -------  -----------------------------------------  ----------------------------------
    ignore   none (nginx's behaviour)                   all
    safe     only-if-cached, max-stale: they can only   no-cache, max-age, min-fresh,
             spare the origin                           no-store
    all      all of them                                -

``no-transform`` changes nothing (the appliance transforms nothing); Pragma
is not read (deprecated, §5.4).

Keys: the query is joined to the path with ``QUERY_MARK``, a control character
no key can hold (``edge.core.keys`` refuses them), so a path containing a
decoded ``?`` never meets a query; a variant's digest follows ``VARIANT_MARK``,
another such character, so a variant's key never meets another object's. A
variant found under its key still answers only a request it matches
(``vary_matches``): the digest finds it, never vouches for it. Nothing here
touches a socket, a file, the index or the clock.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from edge.core.freshness import HEURISTIC_STATUSES, CacheControl, parse_cache_control

QUERY_MARK = "\x1f"  # between a key's path and its query: no key contains it
VARIANT_MARK = "\x1e"  # between a key and its variant's digest: no key contains it
MAX_VARIANTS = 8  # stored variants of one key, its first included

# RFC 9110 §7.6.1 and the ones every proxy treats as such
HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authentication-info",
        "proxy-authorization",
    )
)
# written by the appliance for each answer, never replayed from store
FRAMING = frozenset(("content-length", "date", "age", "server", "cache-status"))
# RFC 9111 §3.2: a 304 does not change what describes the stored body
KEPT_ON_304 = frozenset(
    ("content-length", "content-range", "content-encoding", "content-md5", "etag")
)
# request headers a miss does not forward: the appliance sets its own
NOT_FORWARDED = frozenset(
    (
        "host",
        "range",
        "if-range",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "accept-encoding",
        "content-length",
        "expect",
    )
)

_WS = re.compile(r"[ \t]+")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


# -- keys ----------------------------------------------------------------------------


def cache_key(key: str, query: str, ignored: frozenset[str]) -> str:
    """``key`` with the query's parameters (in their order and spelling) but
    those named in ``ignored``; just ``key`` when none is left."""
    if not query:
        return key
    kept = [p for p in query.split("&") if p and p.partition("=")[0] not in ignored]
    return key + QUERY_MARK + "&".join(kept) if kept else key


def split_key(key: str) -> tuple[str, str]:
    """(path key, query) of a key made by ``cache_key`` (or ``variant_key``)."""
    path, _, query = base_key(key).partition(QUERY_MARK)
    return path, query


def base_key(key: str) -> str:
    """The key a variant's key was made from (``key`` itself otherwise)."""
    return key.partition(VARIANT_MARK)[0]


def variant_key(key: str, names: Iterable[str], headers: Mapping[str, str]) -> str:
    """Where the variant a request with ``headers`` selects is stored, when
    the key's first variant is another: ``names`` are the request headers
    that variant's Vary lists."""
    values = vary_values(names, headers)
    digest = hashlib.sha256(json.dumps(values).encode()).hexdigest()[:24]
    return base_key(key) + VARIANT_MARK + digest


def purged_prefixes(key: str) -> tuple[str, str]:
    """Besides ``key`` itself, the key prefixes a purge of ``key`` removes:
    its queries (a path's purge reaches ``?a`` and ``?b``) and its variants."""
    return key + QUERY_MARK, key + VARIANT_MARK


# -- Vary ----------------------------------------------------------------------------


def parse_vary(value: str | None) -> tuple[str, ...] | None:
    """The request header names ``Vary`` lists, lower-cased, sorted, once
    each; ``None`` for ``*`` (or a name that is not a token): never stored."""
    if not value:
        return ()
    names = set()
    for item in value.split(","):
        name = item.strip().lower()
        if not name:
            continue
        if name == "*" or not _TOKEN.match(name):
            return None
        names.add(name)
    return tuple(sorted(names))


def _normalise(value: str | None) -> str | None:
    if value is None:
        return None
    return ",".join(_WS.sub(" ", part.strip()) for part in value.split(","))


def vary_values(
    names: Iterable[str], headers: Mapping[str, str]
) -> tuple[tuple[str, str | None], ...]:
    """What a request says for each of ``names`` (``None``: it does not send it)."""
    return tuple((name, _normalise(headers.get(name))) for name in names)


def vary_matches(stored: tuple[tuple[str, str | None], ...], headers: Mapping[str, str]) -> bool:
    """May the variant stored for ``stored`` answer a request with ``headers``?"""
    return all(_normalise(headers.get(name)) == value for name, value in stored)


# -- storing -------------------------------------------------------------------------


def storable(
    status: int,
    cc: CacheControl,
    has_expires: bool,
    public: bool = False,
    authorized: bool = False,
) -> bool:
    """RFC 9111 §3: may a shared cache store a response to a GET? A request
    that carried ``Authorization`` only when the response says ``public``,
    ``s-maxage`` or ``must-revalidate`` (§3.5)."""
    if status < 200 or status in (206, 304):
        return False
    if cc.no_store or cc.private:
        return False
    if authorized and not (public or cc.must_revalidate or cc.s_maxage is not None):
        return False
    explicit = cc.max_age is not None or cc.s_maxage is not None or has_expires
    return explicit or public or status in HEURISTIC_STATUSES


def explicitly_fresh(cache_control: str | None, headers: Iterable[tuple[str, str]]) -> bool:
    """Did the origin say how long the answer is fresh (max-age, s-maxage,
    Expires), or give what heuristic freshness counts from (Last-Modified)?"""
    cc = parse_cache_control(cache_control)
    if cc.max_age is not None or cc.s_maxage is not None or cc.no_cache:
        return True
    return any(n.lower() in ("expires", "last-modified") for n, _ in headers)


def has_directive(value: str | None, name: str) -> bool:
    """Does a Cache-Control value hold directive ``name`` (any case)?"""
    return bool(value) and any(
        d.split("=", 1)[0].strip().lower() == name
        for d in value.split(",")  # type: ignore[union-attr]
    )


def end_to_end(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The response headers a cache stores and replays, in their order."""
    pairs = list(headers)
    listed = set()
    for name, value in pairs:
        if name.lower() == "connection":
            listed.update(v.strip().lower() for v in value.split(","))
    return tuple(
        (name, value)
        for name, value in pairs
        if (low := name.lower()) not in HOP_BY_HOP and low not in FRAMING and low not in listed
    )


def updated_by_304(
    stored: tuple[tuple[str, str], ...], fresh: Iterable[tuple[str, str]]
) -> tuple[tuple[str, str], ...]:
    """The stored headers after a 304: each header the 304 sends replaces the
    stored ones of its name, but for those that describe the stored body."""
    new = [(n, v) for n, v in end_to_end(fresh) if n.lower() not in KEPT_ON_304]
    replaced = {n.lower() for n, _ in new}
    return tuple((n, v) for n, v in stored if n.lower() not in replaced) + tuple(new)


def forwarded(headers: Mapping[str, str]) -> dict[str, str]:
    """The request's headers a miss sends on to the origin."""
    listed = {v.strip().lower() for v in headers.get("connection", "").split(",")}
    return {
        name: value
        for name, value in headers.items()
        if name not in NOT_FORWARDED and name not in HOP_BY_HOP and name not in listed
    }


# -- the origin's health ---------------------------------------------------------------


def origin_failed(status: int | None) -> bool:
    """Does this answer count against the origin (retry, breaker)? ``None``:
    no answer at all (a transport failure or a timeout)."""
    return status is None or status >= 500


# -- request directives (RFC 9111 §5.2.1) ------------------------------------------------

REQUEST_CC_MODES = ("ignore", "safe", "all")
SAFE = frozenset(("only-if-cached", "max-stale"))


@dataclass(frozen=True)
class RequestDirectives:
    no_store: bool = False
    no_cache: bool = False
    max_age: int | None = None
    max_stale: float | None = None  # inf: stale of any age (``max-stale`` with no value)
    min_fresh: int | None = None
    only_if_cached: bool = False


NO_DIRECTIVES = RequestDirectives()


def _seconds(arg: str | None) -> int | None:
    arg = (arg or "").strip().strip('"')
    return int(arg) if arg.isdigit() else None


def request_directives(value: str | None, mode: str) -> RequestDirectives:
    """What a request's ``Cache-Control`` asks, of what ``mode`` honours. A
    directive with an invalid argument is ignored (max-stale's alone means
    any staleness)."""
    if not value or mode == "ignore":
        return NO_DIRECTIVES
    found: dict[str, object] = {}
    for item in value.split(","):
        name, eq, arg = item.partition("=")
        name = name.strip().lower()
        if mode != "all" and name not in SAFE:
            continue
        if name in ("no-store", "no-cache", "only-if-cached"):
            found[name.replace("-", "_")] = True
        elif name == "max-stale":
            n = _seconds(arg)
            if n is not None or not eq:
                found["max_stale"] = math.inf if n is None else float(n)
        elif name in ("max-age", "min-fresh"):
            n = _seconds(arg)
            if n is not None:
                found[name.replace("-", "_")] = n
    return RequestDirectives(**found) if found else NO_DIRECTIVES  # type: ignore[arg-type]


def reusable(
    d: RequestDirectives,
    *,
    fresh_until: float | None,
    born: float | None,
    now: float,
    stale_forbidden: bool,
) -> bool:
    """May a stored answer serve a request with directives ``d`` without
    asking the origin? ``fresh_until`` ``None``: fresh for ever (immutable);
    ``born``: when the origin made it (its age counts from there);
    ``stale_forbidden``: the response said must-revalidate,
    proxy-revalidate, s-maxage or no-cache."""
    if d.no_cache or d.max_age == 0:
        return False
    if d.max_age is not None and born is not None and now - born > d.max_age:
        return False
    left = math.inf if fresh_until is None else fresh_until - now
    if left > 0:
        return d.min_fresh is None or left >= d.min_fresh
    # a stale answer is never fresh for min-fresh more seconds, whatever max-stale allows
    return (
        d.max_stale is not None
        and d.min_fresh is None
        and not stale_forbidden
        and -left <= d.max_stale
    )


# -- Cache-Status (RFC 9211) -------------------------------------------------------------


def cache_status(
    name: str,
    *,
    hit: bool = False,
    fwd: str | None = None,
    fwd_status: int | None = None,
    stored: bool = False,
    detail: str | None = None,
) -> str:
    """One Cache-Status member: ``edgefleet; hit`` or ``edgefleet; fwd=miss; stored``."""
    params = []
    if hit:
        params.append("hit")
    if fwd is not None:
        params.append(f"fwd={fwd}")
    if fwd_status is not None:
        params.append(f"fwd-status={fwd_status}")
    if stored:
        params.append("stored")
    if detail is not None:
        params.append(f"detail={detail}")
    return "; ".join([name, *params])
