"""Appliance health as one steering replica sees it: hysteresis and candidacy.

What it decides: whether an appliance is up, and whether it may get new
players. Rules it keeps:
- a poll succeeds when the appliance answers with its health document,
  whatever the status code (a draining appliance answers 503 and is reachable);
- hysteresis: up goes down after ``fall`` consecutive failures, down comes back
  after ``rise`` consecutive successes; an appliance with no history yet
  (``unknown``) takes the state of its first poll;
- a candidate is up, reports ``status: ok`` (not draining, not failing), and
  sends at most ``max_utilization`` of its configured capacity;
- pure: the time is passed in; the poller (``steering.poller``) does the I/O.

Transitions (state, poll result) → state:

| state   | success                        | failure                        |
|---------|--------------------------------|--------------------------------|
| unknown | up                             | down                           |
| up      | up                             | down after ``fall`` in a row   |
| down    | up after ``rise`` in a row     | down                           |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge.core.inventory import KeyFilter

UNKNOWN, UP, DOWN = "unknown", "up", "down"


@dataclass
class Health:
    state: str = UNKNOWN
    ok_streak: int = 0
    fail_streak: int = 0
    changed_at: float | None = None
    checked_at: float | None = None
    transitions: int = 0
    last_error: str = ""
    status: str = ""  # the appliance's own: ok, draining, failing
    egress_bps: float = 0.0  # bits per second
    connections: int = 0

    def observe(self, ok: bool, now: float, rise: int, fall: int) -> str | None:
        """Record one poll; the new state when it changed, else ``None``."""
        self.checked_at = now
        if ok:
            self.ok_streak += 1
            self.fail_streak = 0
            flip = self.state == UNKNOWN or (self.state == DOWN and self.ok_streak >= rise)
            new = UP
        else:
            self.fail_streak += 1
            self.ok_streak = 0
            flip = self.state == UNKNOWN or (self.state == UP and self.fail_streak >= fall)
            new = DOWN
        if flip and self.state != new:
            self.state = new
            self.changed_at = now
            self.transitions += 1
            return new
        return None

    def report(self, doc: Any) -> None:
        """Take the fields steering uses from a ``/_edge/health`` document."""
        if not isinstance(doc, dict) or not isinstance(doc.get("status"), str):
            raise ValueError("not an edgefleet health document")
        status = doc["status"]
        if doc.get("draining") is True and status == "ok":
            status = "draining"
        self.status = status
        self.egress_bps = float(doc.get("egress_bytes_per_second") or 0) * 8
        self.connections = int(doc.get("connections") or 0)

    def utilization(self, capacity: float | None) -> float | None:
        return None if not capacity else self.egress_bps / capacity

    def shown(self) -> str:
        """One word for the logs, the metrics and the pages: the poll state, or,
        when up, the appliance's own (draining; failing, also for a status
        steering does not know)."""
        if self.state != UP or self.status == "ok":
            return self.state
        return "draining" if self.status == "draining" else "failing"

    def why_not(self, capacity: float | None, max_utilization: float) -> str:
        """``""`` when a candidate, else the reason: unknown, down, draining,
        failing, overloaded."""
        shown = self.shown()
        if shown != UP:
            return shown
        util = self.utilization(capacity)
        if util is not None and util > max_utilization:
            return "overloaded"
        return ""


@dataclass
class FleetState:
    """What the decision reads, by appliance index: candidate or not, and the
    inventory filter (``None``: not known)."""

    candidate: list[bool] = field(default_factory=list)
    filters: list[KeyFilter | None] = field(default_factory=list)

    @classmethod
    def sized(cls, n: int) -> FleetState:
        return cls([False] * n, [None] * n)
