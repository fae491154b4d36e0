"""edge.core.breaker: the circuit breaker's transitions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge.core.breaker import CLOSED, HALF_OPEN, OPEN, Breaker


def test_opens_after_consecutive_failures() -> None:
    b = Breaker(failures=3, cooldown=10)
    for _ in range(2):
        assert b.allow(0)
        b.failure(0)
    b.success()  # a success resets the count
    for _ in range(3):
        assert b.allow(1)
        b.failure(1)
    assert b.state == OPEN and not b.allow(5)


def test_half_open_probe() -> None:
    b = Breaker(failures=1, cooldown=10)
    b.failure(0)
    assert not b.allow(9.9)
    assert b.allow(10) and b.state == HALF_OPEN
    assert not b.allow(10)  # one probe at a time
    b.failure(11)
    assert b.state == OPEN and not b.allow(20)
    assert b.allow(21)
    b.success()
    assert b.state == CLOSED and b.allow(21) and b.allow(21)


@given(st.lists(st.tuples(st.sampled_from(["ok", "fail", "ask"]), st.floats(0, 5)), max_size=60))
def test_never_lets_requests_through_while_open(events) -> None:
    b = Breaker(failures=3, cooldown=10)
    now = 0.0
    for kind, dt in events:
        now += dt
        if kind == "ask":
            was_open = b.state == OPEN and now - b.opened_at < b.cooldown
            allowed = b.allow(now)
            if was_open:
                assert not allowed
        elif kind == "ok":
            b.success()
        else:
            b.failure(now)
        assert b.state in (CLOSED, OPEN, HALF_OPEN)
        assert b.count < b.failures
