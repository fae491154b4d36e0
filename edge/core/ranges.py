"""Byte ranges (RFC 9110 §14): from a ``Range`` header to the bytes to send.

What it decides: given a ``Range`` header value and the representation's
length, whether to send the whole body, one range, several ranges, or 416.
Rules it keeps:
- only the ``bytes`` unit (case-insensitive) is understood; any other unit, a
  syntax error anywhere in the set, or a ``last-pos`` below its ``first-pos``
  makes the whole header invalid, and an invalid header is ignored (200);
- empty list elements are allowed, as for any ``#rule`` list;
- more than ``max_ranges`` specs is ignored too (the nginx/Apache answer to
  range floods), so the cost of a request stays bounded;
- ``first-`` and ``first-last`` are clipped to the end; ``-n`` is the last
  ``n`` bytes (all of it when shorter); a spec whose first byte is past the end,
  or ``-0``, is unsatisfiable and dropped; nothing left → 416;
- overlapping and adjacent ranges are merged, in ascending order;
- a zero-length representation satisfies no ``first-`` range; a suffix range on
  it gets the whole (empty) body.

Theory of operation: ``parse_range`` is syntax only (no length);
``resolve`` applies a length. Neither touches sockets, files or clocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

MAX_RANGES = 64

# A spec is (first, last) with last None for "first-", or (None, n) for "-n".
Spec = tuple[int | None, int | None]


@dataclass(frozen=True)
class Full:
    """Send the whole representation (no Range, or one to ignore)."""


@dataclass(frozen=True)
class Unsatisfiable:
    """416 with ``Content-Range: bytes */length``."""


class Partial(NamedTuple):
    """206 with these inclusive ``(start, end)`` ranges, sorted and disjoint."""

    ranges: tuple[tuple[int, int], ...]


RangeAnswer = Full | Unsatisfiable | Partial

FULL = Full()
UNSATISFIABLE = Unsatisfiable()


HUGE = 10**4000  # past any representation: clipped like any other position


def _is_digits(s: str) -> bool:
    return bool(s) and s.isascii() and s.isdigit()


def _int(s: str) -> int:
    """Digits as a position; absurdly long ones (Python refuses past 4,300
    digits) are simply past the end."""
    return int(s) if len(s) <= 4000 else HUGE


def parse_range(value: str, max_ranges: int = MAX_RANGES) -> list[Spec] | None:
    """Parse a ``Range`` value; ``None`` when it must be ignored."""
    unit, eq, rest = value.partition("=")
    if not eq or unit.lower() != "bytes":
        return None
    specs: list[Spec] = []
    for element in rest.split(","):
        element = element.strip(" \t")
        if not element:
            continue
        first, dash, last = element.partition("-")
        if not dash:
            return None
        if first == "":
            if not _is_digits(last):
                return None
            specs.append((None, _int(last)))
        else:
            if not _is_digits(first) or (last and not _is_digits(last)):
                return None
            f = _int(first)
            ln = _int(last) if last else None
            if ln is not None and ln < f:
                return None
            specs.append((f, ln))
        if len(specs) > max_ranges:
            return None
    if not specs:
        return None
    return specs


def resolve(specs: list[Spec] | None, length: int) -> RangeAnswer:
    """Apply parsed specs to a representation of ``length`` bytes."""
    if specs is None:
        return FULL
    ranges: list[tuple[int, int]] = []
    suffix_on_empty = False
    for first, last in specs:
        if first is None:
            n = last or 0
            if n == 0:
                continue
            if length == 0:
                suffix_on_empty = True
                continue
            ranges.append((max(0, length - n), length - 1))
        else:
            if first >= length:
                continue
            end = length - 1 if last is None else min(last, length - 1)
            ranges.append((first, end))
    if not ranges:
        return FULL if suffix_on_empty else UNSATISFIABLE
    return Partial(tuple(coalesce(ranges)))


def coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and merge overlapping or adjacent inclusive ranges."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + 1:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


# What players send nearly always: one range. Same rules, one regex.
_ONE_RANGE = re.compile(r"[Bb][Yy][Tt][Ee][Ss]=([0-9]*)-([0-9]*)")


def decide(value: str | None, length: int, max_ranges: int = MAX_RANGES) -> RangeAnswer:
    """The whole decision for a request's ``Range`` header (``None``: absent)."""
    if value is None:
        return FULL
    m = _ONE_RANGE.fullmatch(value)
    if m is not None:
        first, last = m.groups()
        if first:
            f = _int(first)
            if last:
                n = _int(last)
                if n < f:
                    return FULL  # invalid: ignored
                if f < length:
                    return Partial(((f, min(n, length - 1)),))
                return UNSATISFIABLE
            return Partial(((f, length - 1),)) if f < length else UNSATISFIABLE
        if last:  # suffix
            n = _int(last)
            if n == 0:
                return UNSATISFIABLE
            if length == 0:
                return FULL
            return Partial(((max(0, length - n), length - 1),))
        return FULL  # "bytes=-": invalid
    return resolve(parse_range(value, max_ranges), length)


def content_range(start: int, end: int, length: int) -> str:
    return f"bytes {start}-{end}/{length}"
