"""Request traces: CSV ``time,key,size``, one request a line, sorted by time.

Rules it keeps: the header is exactly ``time,key,size``; ``time`` is seconds
as a float from any origin, ``key`` the object's key (no comma, quote or line
break), ``size`` the object's size in whole bytes; times never go backwards; a
line that breaks a rule is a ``TraceError`` naming the file and line. Writing
then reading gives back the same requests (times to the microsecond).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

HEADER = "time,key,size"


class TraceError(ValueError):
    """The trace cannot be read; the message names the file and line."""


@dataclass
class Trace:
    """A trace held as three columns (lists are faster to replay than records)."""

    name: str
    times: list[float] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def append(self, when: float, key: str, size: int) -> None:
        self.times.append(when)
        self.keys.append(key)
        self.sizes.append(size)

    def objects(self) -> dict[str, int]:
        """Each distinct key and its size (the last one asked)."""
        return dict(zip(self.keys, self.sizes, strict=True))

    def catalogue_bytes(self) -> int:
        """Bytes of the distinct objects asked for: what capacities are a share of."""
        return sum(self.objects().values())


def parse_lines(lines: Iterable[str], source: str = "trace") -> Iterator[tuple[float, str, int]]:
    """``(time, key, size)`` per request line, checking the rules above."""
    it = iter(lines)
    head = next(it, "").strip().lstrip("\ufeff")
    if head != HEADER:
        raise TraceError(f"{source}:1: the header must be {HEADER!r}, got {head[:60]!r}")
    last = float("-inf")
    for n, line in enumerate(it, 2):
        line = line.strip()
        if not line:
            continue
        parts = line.split(",")
        if len(parts) != 3:
            raise TraceError(f"{source}:{n}: expected time,key,size, got {line[:80]!r}")
        t_text, key, s_text = parts
        try:
            when = float(t_text)
            size = int(s_text)
        except ValueError:
            raise TraceError(f"{source}:{n}: time must be a number and size whole bytes") from None
        if when != when or size < 0 or not key or '"' in key:  # NaN, negative, empty, quoted
            raise TraceError(f"{source}:{n}: bad request {line[:80]!r}")
        if when < last:
            raise TraceError(f"{source}:{n}: time {when} is before the line above ({last})")
        last = when
        yield when, key, size


def read(path: str) -> Trace:
    trace = Trace(path)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for when, key, size in parse_lines(f, path):
                trace.append(when, key, size)
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not UTF-8 text") from None
    return trace


def write_to(f: TextIO, trace: Trace) -> None:
    f.write(HEADER + "\n")
    for when, key, size in zip(trace.times, trace.keys, trace.sizes, strict=True):
        if any(ch in key for ch in ',"\r\n') or not key:
            raise TraceError(f"key {key!r} cannot be written to a trace (comma, quote or newline)")
        f.write(f"{when:.6f},{key},{size}\n")


def write(path: str, trace: Trace) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        write_to(f, trace)
