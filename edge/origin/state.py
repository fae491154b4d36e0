"""Each origin's state, as an operator asks for it: ok or failing, the last
error, and when.

Rules it keeps:
- an origin is ``ok`` until it fails, ``failing`` from a failed request (a
  transport error, a timeout, a 5xx, or a problem found at start:
  ``edge.origin.preflight``) until it next answers;
- an answer that says something about the object (404, 304, a changed ETag)
  is an answer: the origin is ok;
- it records, it decides nothing: the circuit breaker (``edge.core.breaker``)
  decides whether an origin is asked; what the store holds is served whatever
  the state says;
- the state is this process's; the time is passed in;
- an origin URL is shown without its ``user:password@``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

OK, FAILING = "ok", "failing"
ERROR_CHARS = 300


@dataclass(slots=True)
class OriginState:
    url: str
    state: str = OK
    since: float | None = None  # when it entered this state (None: never changed)
    last_error: str | None = None
    last_error_at: float | None = None
    last_ok_at: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "url": shown_url(self.url),
            "state": self.state,
            "since": self.since,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_ok_at": self.last_ok_at,
        }


def shown_url(url: str) -> str:
    """``url`` without credentials (``http://user:secret@host/`` → ``http://host/``)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class OriginStates:
    """Origin URL → ``OriginState``; ``answered`` and ``failed`` are the two hooks."""

    def __init__(self, urls: Iterable[str], problems: Mapping[str, str], now: float) -> None:
        self.states = {url: OriginState(url) for url in urls}
        for url, problem in problems.items():
            if url in self.states:
                self.failed(url, f"at start: {problem}", now)

    def answered(self, url: str, now: float) -> None:
        s = self.states.get(url)
        if s is None:
            return
        if s.state != OK:
            s.state, s.since = OK, now
        s.last_ok_at = now

    def failed(self, url: str, error: str, now: float) -> None:
        s = self.states.get(url)
        if s is None:
            return
        if s.state != FAILING:
            s.state, s.since = FAILING, now
        s.last_error = error[:ERROR_CHARS]
        s.last_error_at = now

    def failing(self) -> list[str]:
        return [url for url, s in self.states.items() if s.state == FAILING]

    def as_json(self) -> list[dict[str, Any]]:
        return [s.as_json() for s in self.states.values()]
