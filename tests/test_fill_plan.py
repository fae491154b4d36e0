"""The fill plan on its own: budgets, order, keep/add/defer/skip/evict, explain."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fill.plan import ADD, DEFER, KEEP, SKIP, Entry, Held, density, explain, make_plan

MiB = 1024 * 1024


def entries(*specs: tuple[str, int, float]) -> list[Entry]:
    return [Entry(k, size, score) for k, size, score in specs]


def test_highest_score_per_byte_first_and_smaller_ones_fill_the_gap() -> None:
    manifest = entries(
        ("small-hot", 100 * MiB, 1000),  # 10/MiB
        ("big", 4000 * MiB, 2000),  # 0.5/MiB
        ("mid", 500 * MiB, 1000),  # 2/MiB
        ("tiny", 10 * MiB, 1),  # 0.1/MiB
    )
    plan = make_plan(manifest, [], budget=700 * MiB)
    assert [d.entry.key for d in plan.decisions] == ["small-hot", "mid", "big", "tiny"]
    assert {d.entry.key: d.decision for d in plan.decisions} == {
        "small-hot": ADD,
        "mid": ADD,
        "big": SKIP,  # does not fit ...
        "tiny": ADD,  # ... but what comes after it still may
    }
    assert plan.cutoff == density(manifest[1])
    s = plan.summary()
    assert s["add"] == {"objects": 3, "bytes": 610 * MiB, "download_bytes": 610 * MiB}
    assert s["skip"] == {"objects": 1, "bytes": 4000 * MiB}


def test_held_objects_are_kept_and_partial_ones_only_cost_their_missing_bytes() -> None:
    manifest = [Entry("a", 10, 5.0, '"e1"'), Entry("b", 10, 4.0, '"e2"'), Entry("c", 10, 3.0)]
    held = [
        Held("a", 10, '"e1"', 10, True),  # same version, complete
        Held("b", 10, '"old"', 10, True),  # another version: download again
        Held("c", 10, '"x"', 4, False),  # in part (pull-through)
    ]
    plan = make_plan(manifest, held, budget=100)
    by = plan.by_key
    assert by["a"].decision == KEEP and by["a"].need == 0
    assert by["b"].decision == ADD and by["b"].need == 10
    assert by["c"].decision == ADD and by["c"].need == 6


def test_nightly_budget_defers_and_reserves_room() -> None:
    manifest = entries(("a", 40, 9), ("b", 40, 8), ("c", 40, 7), ("d", 10, 1))
    plan = make_plan(manifest, [Held("c", 40, "e", 40, True)], budget=130, nightly=50)
    decisions = {d.entry.key: d.decision for d in plan.decisions}
    # a fits tonight; b would pass 50 bytes tonight: deferred, its room kept;
    # c is held; d fits in the nightly budget that is left.
    assert decisions == {"a": ADD, "b": DEFER, "c": KEEP, "d": ADD}
    s = plan.summary()
    assert s["demand_covered"] < s["demand_covered_when_complete"] == 1.0


def test_checksums_decide_whether_a_held_object_is_kept() -> None:
    manifest = [Entry("v", 10, 1.0, None, "00000000000000aa")]
    unverified = make_plan(manifest, [Held("v", 10, "e", 10, True)], 100)
    assert unverified.by_key["v"].decision == KEEP and unverified.by_key["v"].verify
    good = make_plan(manifest, [Held("v", 10, "e", 10, True, digest="00000000000000aa")], 100)
    assert good.by_key["v"].decision == KEEP and not good.by_key["v"].verify
    bad = make_plan(manifest, [Held("v", 10, "e", 10, True, digest="00000000000000bb")], 100)
    assert bad.by_key["v"].decision == ADD and bad.by_key["v"].need == 10


def test_only_pinned_objects_that_fell_out_are_evicted() -> None:
    manifest = entries(("keep", 10, 5), ("out", 100, 1))
    held = [
        Held("keep", 10, "e", 10, True, pinned=True),
        Held("out", 100, "e", 100, True, pinned=True),  # in the manifest, but skipped
        Held("gone", 5, "e", 5, True, pinned=True),  # not in the manifest any more
        Held("pulled", 5, "e", 5, True, pinned=False),  # pull-through: not the plan's
    ]
    plan = make_plan(manifest, held, budget=50)
    assert sorted(h.key for h in plan.evict) == ["gone", "out"]


def test_explain_says_why_in_a_sentence() -> None:
    manifest = entries(("a", 60, 10), ("b", 60, 5), ("c", 10, 1))
    plan = make_plan(manifest, [Held("a", 60, "e", 60, True, pinned=True)], budget=100, nightly=5)
    assert "already held" in explain(plan, "a")
    text = explain(plan, "b")
    assert text.startswith("b: not planned: 30 B left in the budget") and "it needs 60 B" in text
    assert "rank 3 of 3" in text and "70 B planned before it" in text and "cut-off" in text
    assert "deferred" in explain(plan, "c")
    assert "not in the manifest" in explain(plan, "zzz")


sizes = st.integers(min_value=0, max_value=10_000)
scores = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@st.composite
def situations(draw):  # type: ignore[no-untyped-def]
    n = draw(st.integers(0, 40))
    keys = [f"k{i}" for i in range(n)]
    manifest = [Entry(k, draw(sizes), draw(scores)) for k in keys]
    held = []
    for e in manifest:
        if draw(st.booleans()):
            stored = draw(st.integers(0, e.size))
            held.append(Held(e.key, e.size, "e", stored, stored == e.size, draw(st.booleans())))
    held += [Held(f"old{i}", 100, "e", 100, True, True) for i in range(draw(st.integers(0, 3)))]
    budget = draw(st.integers(0, 200_000))
    nightly = draw(st.one_of(st.none(), st.integers(0, 100_000)))
    return manifest, held, budget, nightly


@settings(max_examples=300, deadline=None)
@given(situations())
def test_plan_never_exceeds_its_budgets(situation) -> None:  # type: ignore[no-untyped-def]
    manifest, held, budget, nightly = situation
    plan = make_plan(manifest, held, budget, nightly)
    planned = [d for d in plan.decisions if d.decision != SKIP]
    assert sum(d.entry.size for d in planned) <= budget
    if nightly is not None:
        assert sum(d.need for d in plan.of(ADD)) <= nightly
    # every manifest object gets exactly one decision, and it is deterministic
    assert sorted(d.entry.key for d in plan.decisions) == sorted(e.key for e in manifest)
    again = make_plan(list(reversed(manifest)), list(reversed(held)), budget, nightly)
    assert [(d.entry.key, d.decision) for d in again.decisions] == [
        (d.entry.key, d.decision) for d in plan.decisions
    ]
    # a skipped object really did not fit when its turn came
    for d in plan.of(SKIP):
        assert d.before + d.entry.size > budget
    # what is held complete and planned is never downloaded again
    complete = {h.key for h in held if h.complete}
    assert not any(d.entry.key in complete for d in plan.of(ADD))
    # only pinned objects outside the plan are evicted
    wanted = {d.entry.key for d in planned}
    assert all(h.pinned and h.key not in wanted for h in plan.evict)
