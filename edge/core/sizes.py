"""Sizes and durations as people write them, and back.

Rules it keeps: binary units are powers of 1024 (``KiB``, ``MiB``, ``GiB``,
``TiB``; the single letters ``k``, ``m``, ``g``, ``t`` too), decimal ones
powers of 1000 (``kB``, ``MB``, ``GB``, ``TB``); units are case-insensitive;
a bare number is bytes (seconds for a duration); negative values and booleans
are refused. ``format_size`` prints the largest binary unit that divides the
value exactly; ``human_size`` rounds to one decimal for reports.
"""

from __future__ import annotations

import re
from typing import Any

KIB = 1024
MIB = 1024**2
GIB = 1024**3
TIB = 1024**4

_UNITS = {
    "": 1, "b": 1,
    "k": KIB, "kb": 1000, "kib": KIB,
    "m": MIB, "mb": 1000**2, "mib": MIB,
    "g": GIB, "gb": 1000**3, "gib": GIB,
    "t": TIB, "tb": 1000**4, "tib": TIB,
}  # fmt: skip
_DURATIONS = {"": 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")
_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|)\s*")


def parse_size(value: Any) -> int:
    """``2MiB``, ``50GiB``, ``1.5TB``, ``4096`` → bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 2MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    m = _SIZE.fullmatch(str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{value!r} is not a size (like 2MiB, 50GiB, 1TB or bytes)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_duration(value: Any) -> float:
    """``30s``, ``1d``, ``250ms``, ``75`` → seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    m = _DURATION.fullmatch(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration (like 250ms, 30s, 5m, 1d)")
    return float(m.group(1)) * _DURATIONS[m.group(2)]


def format_size(n: int) -> str:
    """The largest binary unit that divides ``n`` exactly: ``8 MiB``, ``1536 KiB``."""
    for unit, size in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def human_size(n: float) -> str:
    """Rounded for a report: ``512 B``, ``1.5 MiB``, ``2.0 TiB``."""
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            break
        n /= 1024
    return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
