"""Circuit breaker: when to stop sending requests to an origin that fails.

What it decides: whether a request may go to an origin now. Rules it keeps:
- closed: requests go; ``failures`` consecutive failures open it;
- open: nothing goes until ``cooldown`` seconds have passed since it opened;
- half-open: one probe goes (others are refused); its success closes the
  breaker, its failure opens it for another cooldown;
- any success resets the failure count.

Pure: time is passed in. Table of transitions:

    state      event      → state
    closed     success      closed (count = 0)
    closed     failure      closed (count + 1), open when count reaches failures
    open       allow()      half-open once cooldown has passed (that call is the probe)
    half-open  success      closed
    half-open  failure      open (cooldown restarts)
"""

from __future__ import annotations

from dataclasses import dataclass, field

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


@dataclass
class Breaker:
    failures: int = 5
    cooldown: float = 10.0
    state: str = CLOSED
    count: int = 0
    opened_at: float = field(default=0.0)
    probing: bool = False

    def allow(self, now: float) -> bool:
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if now - self.opened_at >= self.cooldown:
                self.state = HALF_OPEN
                self.probing = True
                return True
            return False
        # half-open: only the probe is in flight
        if not self.probing:
            self.probing = True
            return True
        return False

    def success(self) -> None:
        self.state = CLOSED
        self.count = 0
        self.probing = False

    def failure(self, now: float) -> None:
        self.probing = False
        if self.state == HALF_OPEN:
            self._open(now)
            return
        self.count += 1
        if self.count >= self.failures:
            self._open(now)

    def _open(self, now: float) -> None:
        self.state = OPEN
        self.opened_at = now
        self.count = 0
