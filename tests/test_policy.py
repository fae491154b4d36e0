"""edge.core.policy: eviction order by decayed popularity, LRU tie-break, pinned last."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge.core.policy import (
    Candidate,
    LRUPolicy,
    PopularityPolicy,
    choose_victims,
    decayed,
    make_policy,
)

DAY = 86400.0


def test_decay_halves_every_half_life() -> None:
    assert decayed(8.0, 0.0, DAY, DAY) == 4.0
    assert decayed(8.0, 0.0, 3 * DAY, DAY) == 1.0
    assert decayed(8.0, 10.0, 5.0, DAY) == 8.0  # no decay backwards


def test_popular_survives_recent_one_hit_wonder() -> None:
    now = 10 * DAY
    popular = Candidate("popular", 100, score=500.0, score_time=now - DAY, last_access=now - DAY)
    wonder = Candidate("wonder", 100, score=1.0, score_time=now, last_access=now)
    order = PopularityPolicy(half_life=DAY).order([popular, wonder], now)
    assert [c.key for c in order] == ["wonder", "popular"]
    # LRU would have done the opposite
    assert [c.key for c in LRUPolicy().order([popular, wonder], now)] == ["popular", "wonder"]


def test_lru_breaks_ties_and_pinned_go_last() -> None:
    a = Candidate("a", 1, 0.0, 0.0, last_access=5.0)
    b = Candidate("b", 1, 0.0, 0.0, last_access=1.0)
    p = Candidate("p", 1, 0.0, 0.0, last_access=0.0, pinned=True)
    assert [c.key for c in PopularityPolicy().order([a, p, b], 10.0)] == ["b", "a", "p"]


def test_choose_victims_takes_the_shortest_prefix() -> None:
    cs = [Candidate(f"k{i}", 10, float(i), 0.0, 0.0) for i in range(5)]
    victims = choose_victims(PopularityPolicy(), cs, 25, 0.0)
    assert [v.key for v in victims] == ["k0", "k1", "k2"]
    assert choose_victims(PopularityPolicy(), cs, 0, 0.0) == []
    assert len(choose_victims(PopularityPolicy(), cs, 10_000, 0.0)) == 5


def test_make_policy() -> None:
    assert make_policy("lru").name == "lru"
    assert make_policy("popularity", 60).half_life == 60  # type: ignore[attr-defined]


candidates = st.lists(
    st.builds(
        Candidate,
        key=st.text(min_size=1, max_size=5),
        size=st.integers(1, 1000),
        score=st.floats(0, 1000),
        score_time=st.floats(0, 1e6),
        last_access=st.floats(0, 1e6),
        pinned=st.booleans(),
    ),
    max_size=30,
)


@given(candidates, st.integers(0, 20_000), st.floats(1e6, 2e6))
def test_victims_cover_need_and_respect_pins(cs: list, need: int, now: float) -> None:
    victims = choose_victims(PopularityPolicy(), cs, need, now)
    freed = sum(v.size for v in victims)
    total = sum(c.size for c in cs)
    assert freed >= min(need, total)
    if victims:
        # minimal: without the last victim the need is not met
        assert freed - victims[-1].size < need
    # a pinned victim only when every unpinned candidate is a victim too
    if any(v.pinned for v in victims):
        unpinned = {id(c) for c in cs if not c.pinned}
        assert unpinned <= {id(v) for v in victims}
