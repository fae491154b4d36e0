"""Conditional requests (RFC 9110 §13): what a precondition makes of a request.

What it decides: given the request's validator headers and the stored
representation's ETag and Last-Modified, whether to answer normally, 304 or
412, and whether a Range still applies (If-Range). Rules it keeps:
- evaluation order is §13.2.2: If-Match, else If-Unmodified-Since; then
  If-None-Match, else If-Modified-Since; then If-Range;
- If-Match and If-Range use the strong comparison, If-None-Match the weak one;
- a date that does not parse is as if the header were absent;
- If-Modified-Since and If-Range only count for GET/HEAD;
- If-Range with a date applies only when it equals Last-Modified exactly.

Theory of operation: ``evaluate`` returns one of the ``Outcome`` values; the
connection turns them into responses. No sockets, files or clocks here.
"""

from __future__ import annotations

from enum import Enum

from edge.core.httpdate import parse_http_date


class Outcome(Enum):
    PROCEED = "proceed"  # answer normally, honouring Range
    PROCEED_IGNORE_RANGE = "proceed-ignore-range"  # If-Range failed: whole body
    NOT_MODIFIED = "304"
    PRECONDITION_FAILED = "412"


def parse_etags(value: str) -> list[tuple[bool, str]] | None:
    """Parse ``#entity-tag`` into ``[(weak, opaque)]``; ``None`` if malformed.

    ``opaque`` keeps its quotes. The caller handles ``*`` before calling this.
    """
    out: list[tuple[bool, str]] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t,":
            i += 1
        if i >= n:
            break
        weak = False
        if value.startswith("W/", i):
            weak = True
            i += 2
        if i >= n or value[i] != '"':
            return None
        end = value.find('"', i + 1)
        if end < 0:
            return None
        tag = value[i : end + 1]
        for ch in tag[1:-1]:
            o = ord(ch)
            if o < 0x21 or o == 0x7F:
                return None
        out.append((weak, tag))
        i = end + 1
        while i < n and value[i] in " \t":
            i += 1
        if i < n and value[i] != ",":
            return None
    return out


def _strong_match(header: str, etag: str) -> bool:
    if header.strip() == "*":
        return True
    tags = parse_etags(header)
    if not tags or etag.startswith("W/"):
        return False
    return any(not weak and tag == etag for weak, tag in tags)


def _weak_match(header: str, etag: str) -> bool:
    if header.strip() == "*":
        return True
    tags = parse_etags(header)
    if not tags:
        return False
    mine = etag[2:] if etag.startswith("W/") else etag
    return any(tag == mine for _, tag in tags)


def evaluate(
    method: str,
    etag: str,
    last_modified: int,
    *,
    if_match: str | None = None,
    if_none_match: str | None = None,
    if_modified_since: str | None = None,
    if_unmodified_since: str | None = None,
    if_range: str | None = None,
    has_range: bool = False,
) -> Outcome:
    """Evaluate preconditions for a representation that exists."""
    get_or_head = method in ("GET", "HEAD")
    # 1-2: If-Match, else If-Unmodified-Since.
    if if_match is not None:
        if not _strong_match(if_match, etag):
            return Outcome.PRECONDITION_FAILED
    elif if_unmodified_since is not None:
        date = parse_http_date(if_unmodified_since)
        if date is not None and last_modified > date:
            return Outcome.PRECONDITION_FAILED
    # 3-4: If-None-Match, else If-Modified-Since.
    if if_none_match is not None:
        if _weak_match(if_none_match, etag):
            return Outcome.NOT_MODIFIED if get_or_head else Outcome.PRECONDITION_FAILED
    elif if_modified_since is not None and get_or_head:
        date = parse_http_date(if_modified_since)
        if date is not None and last_modified <= date:
            return Outcome.NOT_MODIFIED
    # 5: If-Range.
    if (
        if_range is not None
        and has_range
        and method == "GET"
        and not if_range_holds(if_range, etag, last_modified)
    ):
        return Outcome.PROCEED_IGNORE_RANGE
    return Outcome.PROCEED


def if_range_holds(value: str, etag: str, last_modified: int) -> bool:
    v = value.strip()
    if v.startswith('"') or v.startswith("W/"):
        tags = parse_etags(v)
        if not tags or len(tags) != 1:
            return False
        weak, tag = tags[0]
        return not weak and not etag.startswith("W/") and tag == etag
    date = parse_http_date(v)
    return date is not None and date == last_modified
