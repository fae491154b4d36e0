"""The fill's budgets in time and bandwidth: the fill window and the rate cap.

Rules it keeps: pure (times and clocks are passed in); a window is local
wall-clock ``HH:MM-HH:MM`` (``HH:MM:SS`` allowed) and may wrap midnight
(``22:00-04:00``); a window whose start equals its end is the whole day; the
rate is one token bucket for all downloads together, so ``--rate`` bounds
their sum, and its burst is a tenth of a second of rate (at least 64 KiB) so
the average holds over any second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

DAY = 86400

_RATE_UNITS = {
    "bit": 1 / 8, "kbit": 1000 / 8, "mbit": 1000**2 / 8, "gbit": 1000**3 / 8,
    "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}  # fmt: skip


def parse_rate(value: object) -> float:
    """``500Mbit``, ``1Gbit``, ``50MB``, ``20MiB/s`` → bytes per second."""
    text = str(value).strip()
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]+)?(?:/s|ps)?", text)
    unit = (m.group(2) or "b").lower() if m else ""
    if not m or unit not in _RATE_UNITS:
        raise ValueError(f"{value!r} is not a rate (like 500Mbit, 1Gbit, 50MB or 20MiB per second)")
    rate = float(m.group(1)) * _RATE_UNITS[unit]
    if rate <= 0:
        raise ValueError("a rate must be above zero")
    return rate


@dataclass(frozen=True)
class Window:
    """A daily span of local time, in seconds after midnight."""

    start: int
    end: int

    @classmethod
    def parse(cls, text: str) -> Window:
        part = r"(\d{1,2}):(\d{2})(?::(\d{2}))?"
        m = re.fullmatch(rf"\s*{part}\s*-\s*{part}\s*", str(text))
        if not m:
            raise ValueError(f"{text!r} is not a window like 02:00-06:00")
        h1, m1, s1, h2, m2, s2 = (int(g or 0) for g in m.groups())
        if h1 > 23 or h2 > 24 or max(m1, m2, s1, s2) > 59 or (h2 == 24 and (m2 or s2)):
            raise ValueError(f"{text!r}: hours 00-23 (or 24:00 as an end), minutes 00-59")
        return cls(h1 * 3600 + m1 * 60 + s1, h2 * 3600 + m2 * 60 + s2)

    def __str__(self) -> str:
        def hm(t: int) -> str:
            text = f"{t // 3600:02d}:{t % 3600 // 60:02d}"
            return text + (f":{t % 60:02d}" if t % 60 else "")

        return f"{hm(self.start)}-{hm(self.end)}"

    def _length(self) -> int:
        return (self.end - self.start) % DAY or DAY

    def left(self, now: datetime) -> float:
        """Seconds until the window closes, 0 when ``now`` is outside it."""
        since_start = (now - self._opened(now)).total_seconds()
        return max(0.0, self._length() - since_start)

    def opens_in(self, now: datetime) -> float:
        """Seconds until the window next opens (0 when it is open)."""
        if self.left(now) > 0:
            return 0.0
        opened = self._opened(now)
        return (opened + timedelta(days=1) - now).total_seconds()

    def _opened(self, now: datetime) -> datetime:
        """The latest start of the window at or before ``now``."""
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        start = midnight + timedelta(seconds=self.start)
        if start > now:
            start -= timedelta(days=1)
        return start


class TokenBucket:
    """Bytes per second with a short burst; ``delay`` says how long to wait."""

    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(rate / 10, 64 * 1024)
        self.tokens = self.burst
        self.at = now

    def delay(self, n: int, now: float) -> float:
        """Take ``n`` bytes; the seconds to wait before sending them (0: now)."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
