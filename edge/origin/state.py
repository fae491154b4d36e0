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
- the state is this process's; the time is passed in. With several worker
  processes, ``SharedOriginStates`` writes each process's states to a file in
  a directory they share (at most once a second, and at every change of state)
  and reads them all back: the most recent event for an origin wins, so every
  worker's health page tells the same;
- an origin URL is shown without its ``user:password@``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
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


class SharedOriginStates(OriginStates):
    """``OriginStates`` shared by the worker processes through small JSON files
    in ``directory`` (one per process, replaced atomically)."""

    WRITE_EVERY = 1.0

    def __init__(
        self,
        urls: Iterable[str],
        problems: Mapping[str, str],
        now: float,
        directory: str,
        name: str,
    ) -> None:
        self.path = os.path.join(directory, f"origins-{name}.json")
        self.written = float("-inf")
        super().__init__(urls, problems, now)
        self._write(now)

    def answered(self, url: str, now: float) -> None:
        before = self.states[url].state if url in self.states else OK
        super().answered(url, now)
        self._maybe_write(now, changed=before != OK)

    def failed(self, url: str, error: str, now: float) -> None:
        before = self.states[url].state if url in self.states else FAILING
        super().failed(url, error, now)
        self._maybe_write(now, changed=before != FAILING)

    def _maybe_write(self, now: float, changed: bool) -> None:
        if changed or now - self.written >= self.WRITE_EVERY:
            self._write(now)

    def _write(self, now: float) -> None:
        self.written = now
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with contextlib.suppress(OSError):
            with open(tmp, "w") as f:
                json.dump([asdict(s) for s in self.states.values()], f)
            os.replace(tmp, self.path)

    def as_json(self) -> list[dict[str, Any]]:
        """Every process's view merged: per origin, the most recent event's."""
        latest = dict(self.states)
        pattern = os.path.join(os.path.dirname(self.path), "origins-*.json")
        for path in glob.glob(pattern):
            try:
                with open(path) as f:
                    records = [OriginState(**r) for r in json.load(f)]
            except (OSError, ValueError, TypeError):
                continue  # being replaced, or not ours
            for r in records:
                mine = latest.get(r.url)
                if mine is not None and _last_event(r) > _last_event(mine):
                    latest[r.url] = r
        return [latest[url].as_json() for url in self.states]


def _last_event(s: OriginState) -> float:
    return max(s.last_error_at or 0.0, s.last_ok_at or 0.0)
