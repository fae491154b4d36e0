"""The pictures benchmarks end with: a players' timeline and a bar chart of ratios.

matplotlib (the ``bench`` extra) draws them with its Agg backend into PNG
files: no display is needed, so they are drawn on a headless box or in CI
alike. Each function takes plain figures, so a benchmark keeps its own
measuring and this module only draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


@dataclass
class Timeline:
    """One run of players, second by second from its start."""

    name: str
    seconds: list[float] = field(default_factory=list)
    segments_per_s: list[float] = field(default_factory=list)
    failovers: list[float] = field(default_factory=list)  # per second
    rebuffers: list[float] = field(default_factory=list)  # per second
    event_at: float | None = None  # the failure, seconds from the start
    event: str = ""


def timeline_png(path: Path, runs: Sequence[Timeline], title: str) -> None:
    """Segments/s of every run over time, with each run's failovers and rebuffers
    per second below, and a line at the moment of each run's failure."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(10, 7.5), sharex=True, height_ratios=(3, 1.3, 1.3))
    colors = ("tab:blue", "tab:red", "tab:green", "tab:purple")
    panels = (
        ("segments_per_s", "segments/s"),
        ("failovers", "failovers/s"),
        ("rebuffers", "rebuffers/s"),
    )
    for run, color in zip(runs, colors, strict=False):
        for ax, (attr, _) in zip(axes, panels, strict=True):
            values = getattr(run, attr)
            if attr == "segments_per_s":
                ax.plot(run.seconds, values, color=color, label=run.name, linewidth=1.6)
            else:
                ax.step(run.seconds, values, where="mid", color=color, label=run.name)
        if run.event_at is not None:
            for ax in axes:
                ax.axvline(run.event_at, color=color, linestyle="--", linewidth=1.2)
            axes[0].annotate(
                run.event,
                xy=(run.event_at, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(4, -14),
                textcoords="offset points",
                color=color,
            )
    for ax, (_, label) in zip(axes, panels, strict=True):
        ax.set_ylabel(label)
        ax.set_ylim(0, max(1.0, ax.get_ylim()[1]))  # counts: a quiet panel still reads 0..1
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="lower left")
    axes[-1].set_xlabel("seconds since the players started")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ratio_bars_png(
    path: Path,
    groups: Mapping[str, Mapping[str, float]],
    targets: Mapping[str, Mapping[str, float]],
    title: str,
    ylabel: str,
) -> None:
    """One group of bars per scenario (``groups[scenario][measure] = ratio``), a
    line at 1.0x (parity) and a short mark at each bar's target, if it has one."""
    plt = _pyplot()
    measures = list(dict.fromkeys(m for g in groups.values() for m in g))
    width = 0.8 / max(1, len(measures))
    fig, ax = plt.subplots(figsize=(10, 5))
    for i, measure in enumerate(measures):
        xs = [g + (i - (len(measures) - 1) / 2) * width for g in range(len(groups))]
        ys = [groups[s].get(measure, float("nan")) for s in groups]
        bars = ax.bar(xs, ys, width * 0.9, label=measure)
        ax.bar_label(bars, fmt="%.2fx", fontsize=8, padding=2)
        for x, scenario in zip(xs, groups, strict=True):
            target = targets.get(scenario, {}).get(measure)
            if target is not None:
                ax.hlines(target, x - width / 2, x + width / 2, colors="black", linewidth=2)
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.text(0.01, 0.01, "black marks: targets; dotted line: parity (1.0x)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
