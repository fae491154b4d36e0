"""edge.core.admission: store a missed object only from its second ask (doorkeeper)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.core.admission import AdmitAll, Doorkeeper, bloom_size, make_admission

# A rate so low that a false positive never happens in these small tests: with
# it the filter behaves like an exact set and can be compared with one.
EXACT = 1e-9


def test_first_ask_is_refused_second_admitted() -> None:
    d = Doorkeeper(1000)
    assert d.admit("titles/1/seg_00001.m4s") is False
    assert d.admit("titles/1/seg_00001.m4s") is True
    assert d.admit("titles/1/seg_00001.m4s") is True
    assert d.admit("titles/1/seg_00002.m4s") is False
    assert d.count == 2


def test_contains_records_nothing() -> None:
    d = Doorkeeper(1000)
    assert "a" not in d
    assert d.admit("a") is False
    assert "a" in d
    assert d.count == 1


def test_admit_all_and_factory() -> None:
    assert AdmitAll().admit("anything") is True
    off = make_admission("off")
    assert off.name == "off" and off.admit("k") is True
    door = make_admission("doorkeeper", expected_keys=500)
    assert isinstance(door, Doorkeeper)
    assert door.expected_keys == 500
    assert door.admit("k") is False and door.admit("k") is True
    with pytest.raises(ValueError, match="unknown admission"):
        make_admission("tinylfu")


def test_bloom_size() -> None:
    # the textbook figures: 9.59 bits and 7 hash functions per key at 1%
    assert bloom_size(100_000, 0.01) == (958_506, 7)
    bits, hashes = bloom_size(1000, 0.001)
    assert bits == math.ceil(-1000 * math.log(0.001) / math.log(2) ** 2)
    assert hashes == 10
    for bad in ((0, 0.01), (10, 0.0), (10, 1.0)):
        with pytest.raises(ValueError):
            bloom_size(*bad)


@pytest.mark.parametrize(("n", "rate"), [(1000, 0.01), (20_000, 0.01), (5000, 0.001)])
def test_false_positive_rate_near_target_when_full(n: int, rate: float) -> None:
    d = Doorkeeper(n, rate)
    i = 0
    while d.count < n:  # fill to the design load (a false positive records nothing)
        d.admit(f"seen/{i}")
        i += 1
    assert d.resets == 0
    probes = 200_000
    false_positives = sum(f"unseen/{i}" in d for i in range(probes))
    observed = false_positives / probes
    # the filter is at its design load: the rate is the target, give or take
    # the rounding of bits and hashes and the sampling noise
    assert 0.6 * rate <= observed <= 1.4 * rate, observed


def test_lightly_loaded_filter_has_fewer_false_positives() -> None:
    d = Doorkeeper(10_000)
    for i in range(1000):
        d.admit(f"seen/{i}")
    assert sum(f"unseen/{i}" in d for i in range(100_000)) < 10  # ~1e-9 expected


def test_window_resets_after_expected_keys() -> None:
    d = Doorkeeper(100, EXACT)
    keys = [f"k{i}" for i in range(100)]
    for k in keys:
        assert d.admit(k) is False
    assert all(d.admit(k) for k in keys)  # second asks: no new key, no reset
    assert d.count == 100 and d.resets == 0
    assert d.admit("new") is False  # the 101st key opens a new window ...
    assert d.resets == 1 and d.count == 1
    assert d.admit("new") is True  # ... that holds it
    assert not any(k in d for k in keys)  # and forgot the old one
    assert d.admit("k0") is False


def test_seed_changes_positions_not_behaviour() -> None:
    a, b = Doorkeeper(1000, seed=1), Doorkeeper(1000, seed=2)
    assert a._positions("k") != b._positions("k")
    assert a.admit("k") is b.admit("k") is False
    assert a.admit("k") is b.admit("k") is True


keys = st.text(min_size=0, max_size=12)


@given(st.integers(1, 20), st.lists(st.sampled_from("abcdefg") | keys, max_size=200))
@settings(max_examples=300)
def test_matches_an_exact_windowed_set(window: int, asks: list[str]) -> None:
    """Admitted iff asked before in the current window; a window is ``window`` new keys."""
    d = Doorkeeper(window, EXACT)
    model: set[str] = set()
    for key in asks:
        expected = key in model
        if not expected:
            if len(model) >= window:
                model.clear()
            model.add(key)
        assert d.admit(key) is expected, (key, model)
    assert d.count == len(model)


@given(st.lists(keys, max_size=300), st.integers(1, 50))
def test_never_a_false_negative(asks: list[str], window: int) -> None:
    """At the default rate a key asked before in the window is always admitted."""
    d = Doorkeeper(window)
    window_keys: set[str] = set()
    resets = 0
    for key in asks:
        admitted = d.admit(key)
        if d.resets != resets:  # this ask opened a new window
            resets = d.resets
            window_keys = set()
        if key in window_keys:
            assert admitted
        window_keys.add(key)
        assert d.admit(key) is True  # an immediate second ask is admitted
        assert d.count <= window


@given(st.sets(keys, min_size=1, max_size=100))
def test_first_sight_refused_in_a_fresh_window(distinct: set[str]) -> None:
    d = Doorkeeper(len(distinct), EXACT)
    assert not any(d.admit(k) for k in sorted(distinct))
    assert all(d.admit(k) for k in sorted(distinct))
    assert d.resets == 0
