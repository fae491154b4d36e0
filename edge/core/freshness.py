"""Freshness (RFC 9111): whether and how long a response may be served from store.

What it decides: from a response's ``Cache-Control``, ``Expires``, ``Date``,
``Age`` and ``Last-Modified`` and the times the request left and the response
came back, whether a shared cache may store it, until when it is fresh, how long
past that an origin error still allows serving it (``stale-if-error``), and
whether it must never be served stale. Rules it keeps:
- ``no-store`` and ``private`` are not stored (a shared cache);
- lifetime: ``s-maxage``, else ``max-age``, else ``Expires - Date``, else a
  heuristic 10% of ``Date - Last-Modified`` capped at a day for a
  heuristically cacheable status (RFC 9110 §15.1), else 0;
- an invalid ``max-age`` or ``Expires`` makes the response stale, as §4.2.1
  advises;
- age: the larger of ``Date``'s apparent age and ``Age`` plus the time in
  transit (§4.2.3);
- ``no-cache`` is a lifetime of 0: stored, revalidated before every use;
- ``must-revalidate``, ``proxy-revalidate`` and ``s-maxage`` forbid serving
  stale, even on error.

Pure: times are passed in (POSIX seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.core.httpdate import parse_http_date

# RFC 9110 §15.1: statuses a cache may give heuristic freshness to
HEURISTIC_STATUSES = frozenset((200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501))
HEURISTIC_FRACTION = 0.1
HEURISTIC_MAX = 86400.0


@dataclass(frozen=True)
class CacheControl:
    no_store: bool = False
    private: bool = False
    no_cache: bool = False
    max_age: int | None = None
    s_maxage: int | None = None
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    stale_if_error: int | None = None
    invalid_age: bool = False  # a max-age or s-maxage that is not delta-seconds


def _split_directives(value: str) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t,":
            i += 1
        start = i
        while i < n and value[i] not in "=,":
            i += 1
        name = value[start:i].strip().lower()
        arg: str | None = None
        if i < n and value[i] == "=":
            i += 1
            while i < n and value[i] in " \t":
                i += 1
            if i < n and value[i] == '"':
                end = i + 1
                chars = []
                while end < n and value[end] != '"':
                    if value[end] == "\\" and end + 1 < n:
                        end += 1
                    chars.append(value[end])
                    end += 1
                arg = "".join(chars)
                i = end + 1
            else:
                start = i
                while i < n and value[i] != ",":
                    i += 1
                arg = value[start:i].strip()
        if name:
            out.append((name, arg))
    return out


def _delta(arg: str | None) -> int | None:
    if arg is None or not arg.isascii() or not arg.isdigit():
        return None
    return min(int(arg), 2**31)


def parse_cache_control(value: str | None) -> CacheControl:
    if not value:
        return CacheControl()
    fields: dict[str, object] = {}
    invalid = False
    for name, arg in _split_directives(value):
        if name == "no-store":
            fields["no_store"] = True
        elif name == "private":
            fields["private"] = True
        elif name == "no-cache":
            fields["no_cache"] = True
        elif name in ("max-age", "s-maxage"):
            seconds = _delta(arg)
            if seconds is None:
                invalid = True
            else:
                fields["max_age" if name == "max-age" else "s_maxage"] = seconds
        elif name == "must-revalidate":
            fields["must_revalidate"] = True
        elif name == "proxy-revalidate":
            fields["proxy_revalidate"] = True
        elif name == "stale-if-error":
            seconds = _delta(arg)
            if seconds is not None:
                fields["stale_if_error"] = seconds
    return CacheControl(invalid_age=invalid, **fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Freshness:
    storable: bool
    fresh_until: float
    stale_if_error: float = 0.0
    must_revalidate: bool = False
    born: float = 0.0  # response time less its age: the Age header counts from here


def evaluate(
    *,
    cache_control: str | None,
    expires: str | None,
    date: str | None,
    age: str | None,
    last_modified: str | None,
    request_time: float,
    response_time: float,
    status: int = 200,
) -> Freshness:
    cc = parse_cache_control(cache_control)
    date_value = parse_http_date(date)
    if date_value is None:
        date_value = int(response_time)
    # §4.2.3: the age of the response when it arrived
    age_value = _delta(age.strip() if age else None) or 0
    apparent_age = max(0.0, response_time - date_value)
    corrected_age = age_value + (response_time - request_time)
    initial_age = max(apparent_age, corrected_age)
    # §4.2.1: the freshness lifetime
    lifetime: float
    if cc.invalid_age and cc.s_maxage is None and cc.max_age is None:
        lifetime = 0.0
    elif cc.s_maxage is not None:
        lifetime = cc.s_maxage
    elif cc.max_age is not None:
        lifetime = cc.max_age
    elif expires is not None:
        expires_value = parse_http_date(expires)
        lifetime = 0.0 if expires_value is None else max(0.0, expires_value - date_value)
    else:
        lm = parse_http_date(last_modified)
        if lm is not None and lm < date_value and status in HEURISTIC_STATUSES:
            lifetime = min(HEURISTIC_MAX, HEURISTIC_FRACTION * (date_value - lm))
        else:
            lifetime = 0.0
    if cc.no_cache:
        lifetime = 0.0
    return Freshness(
        storable=not (cc.no_store or cc.private),
        fresh_until=response_time - initial_age + lifetime,
        born=response_time - initial_age,
        stale_if_error=float(cc.stale_if_error or 0),
        must_revalidate=cc.must_revalidate or cc.proxy_revalidate or cc.s_maxage is not None,
    )


def is_fresh(fresh_until: float | None, now: float) -> bool:
    """``None``: fresh until purged (S3, files, filled content)."""
    return fresh_until is None or now < fresh_until


def may_serve_stale_on_error(
    fresh_until: float | None, stale_if_error: float, must_revalidate: bool, now: float
) -> bool:
    if fresh_until is None:
        return True
    return not must_revalidate and now <= fresh_until + stale_if_error
