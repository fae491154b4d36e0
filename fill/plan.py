"""The fill plan: which manifest objects this appliance should hold tomorrow.

Rules it keeps (docs/fill.md has the why):
- pure: the manifest, what the store holds and the budgets in; decisions out.
  No files, sockets or clocks; the same inputs give the same plan;
- objects are taken by score per byte, highest first (ties: higher score, then
  key); one that fits in what is left of the budget is planned, one that does
  not is skipped, and smaller ones after it may still fit;
- planned bytes never exceed ``budget``; bytes downloaded tonight never exceed
  ``nightly``: planned adds past it are deferred, their room still reserved;
- a planned object held complete in the same version is kept, never
  downloaded again; held in part, only its missing bytes count as tonight's;
- only objects pinned by an earlier plan are evicted by a plan: what
  pull-through brought in is left to the store's eviction policy.

Decisions:

    ======== ============================================== ===============
    decision the object                                      tonight
    ======== ============================================== ===============
    keep     planned, held complete in this version          nothing (or reread
                                                             to verify: ``verify``)
    add      planned, missing or held in part or in another  download the rest
             version, within the nightly budget
    defer    planned, past the nightly budget                nothing; next night
    skip     not planned: did not fit in the budget          nothing
    evict    (store only) pinned by an earlier plan, not in  removed as adds need
             this one                                        room, else unpinned
    ======== ============================================== ===============
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from edge.core.meta import same_version
from edge.core.sizes import human_size

KEEP, ADD, DEFER, SKIP = "keep", "add", "defer", "skip"


@dataclass(frozen=True)
class Entry:
    """One manifest object."""

    key: str
    size: int
    score: float
    etag: str | None = None
    xxh3: str | None = None


@dataclass(frozen=True)
class Held:
    """What the store holds of one object."""

    key: str
    size: int
    etag: str
    stored: int  # bytes held
    complete: bool
    pinned: bool = False
    digest: str | None = None  # xxh3-64 of the whole object, once verified


@dataclass(frozen=True)
class Placement:
    """What the plan does with one manifest object tonight (``decision``)."""

    entry: Entry
    decision: str
    rank: int  # 1-based, by score per byte
    before: int  # planned bytes before this object's turn
    held: int  # bytes already held (same version)
    verify: bool = False  # keep, but reread from disk to check the manifest's xxh3

    @property
    def need(self) -> int:
        """Bytes to download for it."""
        return self.entry.size - self.held if self.decision == ADD else 0


@dataclass
class Plan:
    decisions: list[Placement]
    evict: list[Held]
    budget: int
    nightly: int | None
    cutoff: float | None  # score per byte of the first object that did not fit
    by_key: dict[str, Placement] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_key = {d.entry.key: d for d in self.decisions}

    def of(self, decision: str) -> list[Placement]:
        return [d for d in self.decisions if d.decision == decision]

    def summary(self) -> dict[str, object]:
        """The plan's figures, as the dry run and the report print them."""
        out: dict[str, object] = {"budget_bytes": self.budget, "nightly_bytes": self.nightly}
        for name in (KEEP, ADD, DEFER, SKIP):
            ds = self.of(name)
            out[name] = {"objects": len(ds), "bytes": sum(d.entry.size for d in ds)}
        adds = self.of(ADD)
        out[ADD]["download_bytes"] = sum(d.need for d in adds)  # type: ignore[index]
        out["verify"] = {"objects": sum(1 for d in self.decisions if d.verify)}
        out["evict"] = {"objects": len(self.evict), "bytes": sum(h.stored for h in self.evict)}
        out["cutoff_score_per_byte"] = self.cutoff
        total = sum(demand(d.entry) for d in self.decisions)
        tonight = sum(demand(d.entry) for d in self.decisions if d.decision in (KEEP, ADD))
        planned = tonight + sum(demand(d.entry) for d in self.of(DEFER))
        out["demand_covered"] = round(tonight / total, 6) if total else 0.0
        out["demand_covered_when_complete"] = round(planned / total, 6) if total else 0.0
        return out


def density(e: Entry) -> float:
    """Score per byte (an empty object costs one byte)."""
    return e.score / max(e.size, 1)


def demand(e: Entry) -> float:
    """Predicted bytes asked for: score times size."""
    return e.score * e.size


def order(entries: Iterable[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: (-density(e), -e.score, e.key))


def make_plan(
    entries: Iterable[Entry],
    held: Iterable[Held],
    budget: int,
    nightly: int | None = None,
) -> Plan:
    """The plan for ``entries`` given what is ``held``, ``budget`` bytes to
    plan into and ``nightly`` bytes to download tonight (``None``: no limit)."""
    holding = {h.key: h for h in held}
    decisions: list[Placement] = []
    planned = 0
    tonight = 0
    cutoff: float | None = None
    for rank, e in enumerate(order(entries), 1):
        if planned + e.size > budget:
            if cutoff is None:
                cutoff = density(e)
            decisions.append(Placement(e, SKIP, rank, planned, 0))
            continue
        h = holding.get(e.key)
        have = h.stored if h is not None and same_version(e, h) else 0
        before = planned
        planned += e.size
        if h is not None and have == e.size and h.complete:
            if e.xxh3 is None or h.digest == e.xxh3:
                decisions.append(Placement(e, KEEP, rank, before, have))
                continue
            if h.digest is None:  # held, not yet checked against the manifest
                decisions.append(Placement(e, KEEP, rank, before, have, verify=True))
                continue
            have = 0  # verified once, and it is not what the manifest says
        need = e.size - have
        if nightly is not None and tonight + need > nightly:
            decisions.append(Placement(e, DEFER, rank, before, have))
            continue
        tonight += need
        decisions.append(Placement(e, ADD, rank, before, have))
    wanted = {d.entry.key for d in decisions if d.decision != SKIP}
    evict = [h for h in holding.values() if h.pinned and h.key not in wanted]
    evict.sort(key=lambda h: (h.stored == 0, h.key))
    return Plan(decisions, evict, budget, nightly, cutoff)


def explain(plan: Plan, key: str) -> str:
    """One object's line of the plan, in a sentence an operator can act on."""
    d = plan.by_key.get(key)
    if d is None:
        if any(h.key == key for h in plan.evict):
            return (
                f"{key}: not in the manifest, but pinned by an earlier plan: evicted as "
                "tonight's adds need its room, else unpinned at the end of the run"
            )
        return f"{key}: not in the manifest, so not planned (pull-through only)"
    e = d.entry
    facts = (
        f"score {e.score:g}, size {human_size(e.size)}, score per byte {density(e):.3g}, "
        f"rank {d.rank} of {len(plan.decisions)} by score per byte; "
        f"{human_size(d.before)} planned before it, budget {human_size(plan.budget)}"
    )
    if plan.cutoff is not None:
        facts += f", cut-off {plan.cutoff:.3g} per byte"
    if d.decision == SKIP:
        left = plan.budget - d.before
        why = (
            f"not planned: {human_size(left)} left in the budget when its turn came, "
            f"it needs {human_size(e.size)}"
        )
    elif d.decision == KEEP:
        why = "planned and already held in this version: kept, pinned"
        if d.verify:
            why += " (reread from disk tonight to check the manifest's xxh3)"
    elif d.decision == ADD:
        why = f"planned: {human_size(d.need)} to download tonight"
        if d.held:
            why += f" ({human_size(d.held)} already held)"
    else:
        why = (
            f"planned, but deferred: tonight's download budget ({human_size(plan.nightly or 0)}) "
            "is spent by objects ranked above it; its room is reserved for the next night"
        )
    return f"{key}: {why}. ({facts})"
