"""HTTP-date (RFC 9110 §5.6.7): format IMF-fixdate, parse all three forms.

Recipients must accept IMF-fixdate, the obsolete RFC 850 form and asctime();
anything else is "not a date" (``None``), which callers treat as an absent
header, as the RFC requires for If-Modified-Since and friends. Pure: no clock.
"""

from __future__ import annotations

import calendar
import time

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUM = {m: i + 1 for i, m in enumerate(_MONTHS)}


def format_http_date(ts: float) -> str:
    """IMF-fixdate for a POSIX timestamp, e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    y, mo, d, h, mi, s, wd, _, _ = time.gmtime(int(ts))
    return f"{_DAYS[wd]}, {d:02d} {_MONTHS[mo - 1]} {y:04d} {h:02d}:{mi:02d}:{s:02d} GMT"


def _hms(text: str) -> tuple[int, int, int] | None:
    parts = text.split(":")
    if len(parts) != 3 or not all(len(p) == 2 and p.isdigit() for p in parts):
        return None
    h, m, s = (int(p) for p in parts)
    if h > 23 or m > 59 or s > 60:
        return None
    return h, m, s


def _build(y: int, mo: int, d: int, hms: tuple[int, int, int]) -> int | None:
    if not 1 <= d <= 31:
        return None
    if d > calendar.monthrange(y, mo)[1]:
        return None
    return calendar.timegm((y, mo, d, *hms, 0, 0, 0))


def parse_http_date(text: str | None) -> int | None:
    """POSIX seconds for a valid HTTP-date, else ``None``."""
    if not text:
        return None
    t = text.strip()
    try:
        if len(t) == 29 and t[3:5] == ", " and t.endswith(" GMT"):
            # IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
            if t[:3] not in _DAYS:
                return None
            d, mon, y, hms = t[5:7], t[8:11], t[12:16], _hms(t[17:25])
            if t[7] != " " or t[11] != " " or t[16] != " " or hms is None:
                return None
            if not (d.isdigit() and y.isdigit()) or mon not in _MONTH_NUM:
                return None
            return _build(int(y), _MONTH_NUM[mon], int(d), hms)
        if ", " in t and t.endswith(" GMT"):
            # RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
            day, rest = t.split(", ", 1)
            if day not in _LONG_DAYS:
                return None
            parts = rest[:-4].split(" ")
            if len(parts) != 2:
                return None
            dmy = parts[0].split("-")
            hms = _hms(parts[1])
            if len(dmy) != 3 or hms is None:
                return None
            d, mon, yy = dmy
            if not (len(d) == 2 and d.isdigit() and len(yy) == 2 and yy.isdigit()):
                return None
            if mon not in _MONTH_NUM:
                return None
            # RFC 9110: a two-digit year more than 50 years in the future is in
            # the past century; without a clock here, use the usual 1970 pivot.
            y = int(yy) + (1900 if int(yy) >= 70 else 2000)
            return _build(y, _MONTH_NUM[mon], int(d), hms)
        # asctime: Sun Nov  6 08:49:37 1994
        if len(t) == 24 and t[:3] in _DAYS and t[3] == " " and t[7] == " ":
            mon = t[4:7]
            d = t[8:10].lstrip(" ")
            hms = _hms(t[11:19])
            y = t[20:24]
            if mon not in _MONTH_NUM or not d.isdigit() or hms is None or not y.isdigit():
                return None
            if t[10] != " " or t[19] != " ":
                return None
            return _build(int(y), _MONTH_NUM[mon], int(d), hms)
    except (ValueError, OverflowError):
        return None
    return None
