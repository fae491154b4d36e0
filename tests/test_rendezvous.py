"""steering.rendezvous: objects concentrate, and removing a box moves only its objects."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from steering.rendezvous import score, seed_for


def owner(key: bytes, boxes: list[str], weights: dict[str, float]) -> str:
    return max(boxes, key=lambda b: score(key, seed_for(b), weights.get(b, 1.0)))


@given(
    st.lists(st.text(min_size=1, max_size=8), min_size=2, max_size=8, unique=True),
    st.lists(st.binary(min_size=1, max_size=30), min_size=1, max_size=50),
    st.data(),
)
def test_removing_one_moves_only_its_keys(boxes: list[str], keys: list[bytes], data) -> None:  # type: ignore[no-untyped-def]
    weights = {b: data.draw(st.sampled_from([0.5, 1.0, 2.0])) for b in boxes}
    gone = data.draw(st.sampled_from(boxes))
    rest = [b for b in boxes if b != gone]
    for key in keys:
        before = owner(key, boxes, weights)
        after = owner(key, rest, weights)
        if before != gone:
            assert after == before
        # adding a box back only takes keys to it
        assert owner(key, boxes, weights) == before


def test_spread_and_weight() -> None:
    boxes = ["a", "b", "c", "d"]
    counts = dict.fromkeys(boxes, 0)
    for i in range(8000):
        counts[owner(f"titles/{i}/seg.m4s".encode(), boxes, {})] += 1
    assert all(1600 < n < 2400 for n in counts.values()), counts
    heavy = dict.fromkeys(boxes, 0)
    for i in range(8000):
        heavy[owner(f"titles/{i}/seg.m4s".encode(), boxes, {"a": 2.0})] += 1
    # weight 2 of a total of 5: about 40%
    assert 2800 < heavy["a"] < 3600, heavy


@given(
    st.lists(st.text(min_size=1, max_size=8), min_size=2, max_size=8, unique=True),
    st.binary(min_size=1, max_size=30),
    st.sampled_from([0.5, 1.0, 3.0]),
)
def test_equal_weights_rank_by_the_raw_hash_in_the_same_order(
    boxes: list[str], key: bytes, weight: float
) -> None:
    weighted = sorted(boxes, key=lambda b: score(key, seed_for(b), weight), reverse=True)
    raw = sorted(boxes, key=lambda b: score(key, seed_for(b)), reverse=True)
    assert weighted == raw
