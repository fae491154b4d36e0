"""The answer planner: what a GET or HEAD of a stored object is answered with.

What it decides: from the method, the request's headers, what is known of the
stored representation (length and validators) and the limit on ranges, one of

    plan                 status   body
    ------------------   ------   ---------------------------------------------
    NotModified          304      none
    PreconditionFailed   412      none (the caller's short error text)
    Unsatisfiable        416      none; ``Content-Range: bytes */length``
    Whole                200      the whole representation (none for HEAD)
    Partial              206      one range, or several as multipart/byteranges

Rules it keeps:
- preconditions come first, in RFC 9110 §13.2.2's order
  (``conditional.evaluate``): If-Match, If-Unmodified-Since, If-None-Match,
  If-Modified-Since, then If-Range; a failed If-Range drops the Range header,
  it never fails the request;
- Range applies to GET only (RFC 9110 §14.2); an invalid Range, another unit
  or more than ``max_ranges`` specs are ignored (200) as ``ranges.decide``
  states; ranges are merged and sorted;
- a HEAD is planned like its GET (same status and headers), without a body;
- the multipart framing of several ranges is planned here too
  (``multipart``): the boundary is handed in, as the clock is everywhere in
  core/, so the plan is a pure function of its inputs.

The connection carries out what the plan says; nothing here touches a socket,
a file, the index or the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from edge.core import conditional, ranges

CONDITIONAL_HEADERS = frozenset(
    (b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since")
)
CRLF = "\r\n"
# a GET with none of these headers is planned ``Whole`` (the hit path's shortcut)
WHOLE_UNLESS = CONDITIONAL_HEADERS | {b"range", b"if-range"}
# a GET with a Range and none of these is planned by ``ranges.decide`` alone
RANGE_ALONE_UNLESS = CONDITIONAL_HEADERS | {b"if-range"}


class NotModified(NamedTuple):
    pass


class PreconditionFailed(NamedTuple):
    pass


class Unsatisfiable(NamedTuple):
    range_value: str


class Whole(NamedTuple):
    head_only: bool


class Partial(NamedTuple):
    ranges: tuple[tuple[int, int], ...]  # inclusive, sorted, disjoint
    range_value: str
    head_only: bool


Plan = NotModified | PreconditionFailed | Unsatisfiable | Whole | Partial

NOT_MODIFIED = NotModified()
PRECONDITION_FAILED = PreconditionFailed()
WHOLE_GET = Whole(head_only=False)
WHOLE_HEAD = Whole(head_only=True)


def _text(headers: Mapping[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return None if value is None else value.decode("latin-1")


def plan(
    method: str,
    headers: Mapping[bytes, bytes],
    size: int,
    etag: str,
    last_modified: int,
    max_ranges: int = ranges.MAX_RANGES,
) -> Plan:
    """The answer to a ``method`` (GET or HEAD) request with ``headers``
    (lower-case names, raw values) for a stored representation of ``size``
    bytes with validators ``etag`` and ``last_modified``."""
    head_only = method == "HEAD"
    raw_range = headers.get(b"range") if not head_only else None
    if not headers.keys().isdisjoint(CONDITIONAL_HEADERS) or (
        raw_range is not None and b"if-range" in headers
    ):
        outcome = conditional.evaluate(
            method,
            etag,
            last_modified,
            if_match=_text(headers, b"if-match"),
            if_none_match=_text(headers, b"if-none-match"),
            if_modified_since=_text(headers, b"if-modified-since"),
            if_unmodified_since=_text(headers, b"if-unmodified-since"),
            if_range=_text(headers, b"if-range"),
            has_range=raw_range is not None,
        )
        if outcome is conditional.Outcome.NOT_MODIFIED:
            return NOT_MODIFIED
        if outcome is conditional.Outcome.PRECONDITION_FAILED:
            return PRECONDITION_FAILED
        if outcome is conditional.Outcome.PROCEED_IGNORE_RANGE:
            raw_range = None
    if raw_range is None:
        return WHOLE_HEAD if head_only else WHOLE_GET
    range_value = raw_range.decode("latin-1")
    outcome_ranges = ranges.decide(range_value, size, max_ranges)
    if type(outcome_ranges) is ranges.Partial:
        return Partial(outcome_ranges.ranges, range_value, head_only)
    if type(outcome_ranges) is ranges.Unsatisfiable:
        return Unsatisfiable(range_value)
    return WHOLE_GET


def multipart(
    spans: tuple[tuple[int, int], ...], size: int, content_type: str, boundary: str
) -> tuple[list[bytes | tuple[int, int]], int]:
    """The body of a multipart/byteranges answer (RFC 9110 §14.6): framing as
    bytes between the ``(start, end)`` spans of the representation, and the
    body's whole length."""
    segments: list[bytes | tuple[int, int]] = []
    length = 0
    for n, (a, b) in enumerate(spans):
        part_head = (
            f"{'' if n == 0 else CRLF}--{boundary}\r\nContent-Type: {content_type}\r\n"
            f"Content-Range: bytes {a}-{b}/{size}\r\n\r\n"
        ).encode("latin-1")
        segments.append(part_head)
        segments.append((a, b))
        length += len(part_head) + b - a + 1
    tail = f"\r\n--{boundary}--\r\n".encode()
    segments.append(tail)
    return segments, length + len(tail)


def slice_pieces(
    segments: list[bytes | tuple[int, int]], slice_size: int
) -> list[bytes | tuple[int, int, int]]:
    """Cut the ``(start, end)`` spans of a body into per-slice pieces
    ``(slice index, offset in the slice, count)``; framing bytes stay as they are."""
    pieces: list[bytes | tuple[int, int, int]] = []
    for seg in segments:
        if type(seg) is bytes:
            pieces.append(seg)
            continue
        a, b = seg  # type: ignore[misc]
        for idx in range(a // slice_size, b // slice_size + 1):
            base = idx * slice_size
            lo = max(a, base) - base
            hi = min(b, base + slice_size - 1) - base
            pieces.append((idx, lo, hi - lo + 1))
    return pieces
