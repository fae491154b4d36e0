"""Requests from access logs: what the fill's forecast counts.

``requests`` reads the lines; ``fill.forecast`` makes the manifest's scores
from them. Rules it keeps: pure (lines in, ``(time, key)`` pairs out); each
``GET`` of a content key answered 200 or 206 counts once; lines that are not
edgefleet access-log JSON, operational endpoints (``_edge/``) and errors are
skipped and counted, never fatal, since logs are rotated and cut mid-line."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from edge.core.keys import BadKey, check_key, is_reserved


@dataclass
class Popularity:
    """What ``requests`` read: lines, those counted and those skipped."""

    lines: int = 0
    counted: int = 0
    skipped: int = 0


def _when(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def requests(lines: Iterable[str], into: Popularity | None = None) -> Iterator[tuple[float, str]]:
    """``(time, key)`` of each content ``GET`` answered 200/206 in JSON access-log
    lines; ``into`` counts the lines read, counted and skipped."""
    pop = into if into is not None else Popularity()
    for line in lines:
        pop.lines += 1
        try:
            rec = json.loads(line)
            if rec.get("method") != "GET" or rec.get("status") not in (200, 206):
                pop.skipped += 1
                continue
            key = rec["key"]
            check_key(key)
            if is_reserved(key):
                pop.skipped += 1
                continue
            when = _when(rec["time"])
        except (ValueError, KeyError, TypeError, AttributeError, BadKey):
            pop.skipped += 1
            continue
        pop.counted += 1
        yield when, key
