"""The policies a replay compares, by name, built from the appliance's defaults.

``default`` is the appliance as deployed with its defaults: the eviction,
half-life and admission of ``edge.config.ServeConfig`` and the nightly fill
from its own logs with the defaults of ``fill.config.FillConfig`` (at
``night_hour``, 02:00 in deploy/edgefleet-fill.timer). The others change one
thing at a time; ``sieve`` and ``belady`` are replay-only references.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from bench.policy.reference import replay_belady, replay_oracle_fill, replay_sieve
from bench.policy.replay import Result, replay, replay_fill
from bench.policy.tracefile import Trace
from edge.config import ServeConfig
from edge.core.admission import make_admission
from edge.core.policy import make_policy
from fill.config import FillConfig

DEFAULT_NIGHT_HOUR = 2.0  # deploy/edgefleet-fill.timer


@dataclass(frozen=True)
class Setup:
    """What the appliance runs: its serve and fill options that matter here."""

    serve: ServeConfig
    fill: FillConfig
    night_hour: float = DEFAULT_NIGHT_HOUR

    def window(self, capacity: int) -> int:
        # the doorkeeper's window as edge/appliance/appliance.py sizes it
        return max(10_000, capacity // self.serve.slice_size)


def default_setup() -> Setup:
    return Setup(ServeConfig(), FillConfig())


def _pull(eviction: str | None, admission: str | None) -> Callable[[Trace, int, Setup], Result]:
    def run(trace: Trace, capacity: int, s: Setup) -> Result:
        ev = eviction or s.serve.eviction
        ad = admission or s.serve.admission
        return replay(
            trace,
            capacity,
            make_policy(ev, s.serve.half_life),
            make_admission(ad, s.window(capacity)),
            f"{ev}, admission {ad}",
        )

    return run


def _fill(eviction: str | None, admission: str | None) -> Callable[[Trace, int, Setup], Result]:
    def run(trace: Trace, capacity: int, s: Setup) -> Result:
        ev = eviction or s.serve.eviction
        ad = admission or s.serve.admission
        return replay_fill(
            trace,
            capacity,
            make_policy(ev, s.serve.half_life),
            make_admission(ad, s.window(capacity)),
            s.fill,
            s.night_hour,
            f"fill + {ev}, admission {ad}",
        )

    return run


def _ref(fn: Callable[[Trace, int], Result]) -> Callable[[Trace, int, Setup], Result]:
    return lambda trace, capacity, s: fn(trace, capacity)


RUNS: dict[str, Callable[[Trace, int, Setup], Result]] = {
    "default": _fill(None, None),
    "lru": _pull("lru", "off"),
    "lru+doorkeeper": _pull("lru", "doorkeeper"),
    "popularity": _pull("popularity", "off"),
    "popularity+doorkeeper": _pull("popularity", "doorkeeper"),
    "sieve": _ref(replay_sieve),
    "fill+lru": _fill("lru", "off"),
    "fill+popularity": _fill("popularity", "off"),
    "oracle-fill": lambda trace, capacity, s: replay_oracle_fill(
        trace,
        capacity,
        make_policy(s.serve.eviction, s.serve.half_life),
        make_admission(s.serve.admission, s.window(capacity)),
        s.fill,
        s.night_hour,
    ),
    "belady": _ref(replay_belady),
}


def run(name: str, trace: Trace, capacity: int, setup: Setup) -> Result:
    res = RUNS[name](trace, capacity, setup)
    if name == "default":
        res.policy = f"default ({res.policy})"
    return res


def with_options(s: Setup, **fill: object) -> Setup:
    """``s`` with fill options changed (headroom, log_half_life, ...)."""
    return replace(s, fill=replace(s.fill, **fill))  # type: ignore[arg-type]
