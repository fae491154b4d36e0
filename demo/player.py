"""A video player's bookkeeping: playback buffer, startup, stalls, failover.

Rules it keeps (pure: the clock is passed in, no I/O):
- the buffer holds media seconds; while playing it drains at ``speed`` media
  seconds per wall second; playback starts once ``start_after`` seconds are
  buffered (the first segment by default) and startup is the wall time from
  the session's start to that moment;
- an empty buffer after startup is a rebuffer: the stall starts at the instant
  the buffer ran dry (not when the player noticed) and ends when a segment
  arrives; ``rebuffer_ratio`` is stalled time over stalled plus played time;
- the player asks for the next segment only while the buffer is below
  ``buffer_target``; ``wait`` says how long to sleep before asking; a title
  is buffered at most a third ahead (``buffer_for``);
- steering's URLs are tried in order: ``fail`` moves to the next one and says
  where to go, or None when every URL has failed; ``rebase`` rewrites a URL
  under the current appliance (relative playlist URLs keep working on another
  appliance because every appliance serves the same keys).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

DEFAULT_BUFFER_TARGET = 30.0  # seconds ahead, as hls.js keeps by default
BUFFER_SHARE = 1 / 3  # of a title at most: a short title is streamed, not fetched at once


def buffer_for(target: float, title_seconds: float) -> float:
    """The buffer a player keeps for a title: ``target``, but at most a third
    of the title (and at least nothing), so a session asks for segments through
    most of its playback instead of all of them in its first seconds."""
    return max(0.0, min(target, title_seconds * BUFFER_SHARE))


def base_of(url: str, key: str) -> str:
    """``http://host:port/titles/1/master.m3u8`` and its key → ``http://host:port/``."""
    parts = urlsplit(url)
    path = parts.path
    key = key.lstrip("/")
    if not path.endswith("/" + key):
        raise ValueError(f"{url!r} does not end with the key {key!r}")
    return urlunsplit((parts.scheme, parts.netloc, path[: len(path) - len(key)], "", ""))


@dataclass
class Player:
    bases: Sequence[str]  # appliance bases from steering, best first
    started: float  # wall clock at the session's start (before asking steering)
    buffer_target: float = DEFAULT_BUFFER_TARGET
    start_after: float = 0.0  # media seconds buffered before playback starts (0: first segment)
    speed: float = 1.0
    current: int = 0
    buffered: float = 0.0
    playing: bool = False
    startup: float | None = None  # wall seconds to the first frame
    played: float = 0.0  # wall seconds of playback
    stalled: float = 0.0  # wall seconds of rebuffering (after startup)
    rebuffers: int = 0
    failovers: int = 0
    segments: int = 0
    stall_started: float | None = None
    stall_durations: list[float] = field(default_factory=list)
    ended: bool = False
    _last: float = 0.0

    def __post_init__(self) -> None:
        if not self.bases:
            raise ValueError("a player needs at least one URL")
        self._last = self.started

    @property
    def base(self) -> str:
        return self.bases[self.current]

    def rebase(self, url: str) -> str:
        """``url`` under any of the bases, moved under the current one."""
        for b in self.bases:
            if url.startswith(b):
                return self.base + url[len(b) :]
        return url

    def fail(self) -> str | None:
        """The request to the current URL failed: the next base, or None if none is left."""
        if self.current + 1 >= len(self.bases):
            return None
        self.current += 1
        self.failovers += 1
        return self.base

    def advance(self, now: float) -> None:
        """Play from the last update to ``now``."""
        elapsed = max(0.0, now - self._last)
        self._last = max(self._last, now)
        if elapsed == 0.0 or self.startup is None or self.ended:
            return  # before the first frame nothing plays or stalls: that is startup
        if not self.playing:
            self.stalled += elapsed
            return
        media = elapsed * self.speed
        if media <= self.buffered + 1e-9:  # emptied exactly now is not yet a stall
            self.buffered = max(0.0, self.buffered - media)
            self.played += elapsed
            return
        # ran dry part-way: play what there was, stall for the rest
        dry_after = self.buffered / self.speed
        self.played += dry_after
        self.buffered = 0.0
        self.playing = False
        self.rebuffers += 1
        self.stall_started = now - (elapsed - dry_after)
        self.stalled += elapsed - dry_after

    def arrived(self, now: float, seconds: float) -> float | None:
        """A segment of ``seconds`` arrived at ``now``; returns a stall that ended, in seconds."""
        self.advance(now)
        self.buffered += seconds
        self.segments += 1
        ended = None
        threshold = self.start_after if self.start_after > 0 else seconds
        if self.startup is None:
            if self.buffered >= threshold - 1e-9:
                self.startup = now - self.started
                self.playing = True
        elif not self.playing:
            self.playing = True
            if self.stall_started is not None:
                ended = now - self.stall_started
                self.stall_durations.append(ended)
                self.stall_started = None
        return ended

    def wait(self, now: float, next_seconds: float) -> float:
        """Wall seconds to sleep before asking for a segment of ``next_seconds``."""
        self.advance(now)
        if not self.playing:
            return 0.0
        over = self.buffered + next_seconds - self.buffer_target
        return max(0.0, over / self.speed)

    def remaining(self, now: float) -> float:
        """Wall seconds of playback left in the buffer (what the player plays
        out after the last segment before it is done)."""
        self.advance(now)
        return self.buffered / self.speed if self.playing else 0.0

    def finish(self, now: float) -> None:
        """The last segment is in: what is buffered plays out (counted, not waited for)."""
        self.advance(now)
        if self.playing:
            self.played += self.buffered / self.speed
            self.buffered = 0.0
        self.ended = True

    @property
    def rebuffer_ratio(self) -> float:
        total = self.played + self.stalled
        return self.stalled / total if total > 0 else 0.0
