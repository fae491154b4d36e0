"""The fill's own options: flags, or a ``[fill]`` table in the appliance's file.

Rules it keeps: the store, index and origins come from the appliance's
configuration (``edge.config``: the same file and flags), so a fill can never
fill a store the appliance does not read; the fill's options are validated at
start with an error naming the option both ways (``--rate`` / ``rate``).
"""

from __future__ import annotations

import argparse
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from edge.config import (
    METAVARS,
    NAMED_METAVARS,
    ConfigError,
    Options,
    add_option_flags,
    apply_options,
    positive_int,
)
from edge.core.sizes import parse_duration, parse_size
from fill.budget import Window, parse_rate
from fill.forecast import DEFAULT_TITLE_PATTERN


@dataclass
class FillConfig:
    manifest: str | None = None
    from_logs: list[str] = field(default_factory=list)
    write_manifest: str | None = None
    headroom: tuple[str, float] = ("fraction", 0.30)  # ("fraction", f) or ("bytes", n)
    bytes_per_night: int | None = None
    window: Window | None = None
    rate: float | None = None  # bytes per second
    concurrency: int = 8
    peers: list[str] = field(default_factory=list)
    log_half_life: float = 86400.0
    title_pattern: str = DEFAULT_TITLE_PATTERN
    report: str | None = None
    metrics_file: str | None = None

    def budget(self, capacity: int) -> int:
        kind, value = self.headroom
        room = capacity * value if kind == "fraction" else value
        return max(0, int(capacity - room))


def _headroom(value: Any) -> tuple[str, float]:
    text = str(value).strip()
    if text.endswith("%"):
        pct = float(text[:-1])
        if not 0 <= pct < 100:
            raise ValueError("a percentage from 0 up to (not including) 100")
        return ("fraction", pct / 100)
    return ("bytes", float(parse_size(value)))


def _urls(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        url = str(item).rstrip("/")
        if not re.match(r"^https?://[^/]+$", url):
            raise ValueError(f"{item!r} is not a peer appliance address like http://10.0.0.2:8080")
        out.append(url)
    return out


def _title_pattern(value: Any) -> str:
    text = str(value)
    try:
        groups = re.compile(text).groups
    except re.error as exc:
        raise ValueError(f"{text!r} is not a regular expression: {exc}") from None
    if groups > 1:
        raise ValueError(f"{text!r} has {groups} groups: give at most one (the title)")
    return text


def _paths(value: Any) -> list[str]:
    return [str(v) for v in (value if isinstance(value, list) else [value])]


# readable placeholders in --help for the fill's own values
METAVARS.update(
    {_paths: "LOG", _headroom: "SHARE|SIZE", Window.parse: "HH:MM-HH:MM", parse_rate: "BITRATE"}
)
NAMED_METAVARS.update(
    {
        "manifest": "PATH|URL",
        "write_manifest": "PATH",
        "report": "PATH",
        "metrics_file": "PATH",
    }
)
METAVARS[_urls] = "URL"
METAVARS[_title_pattern] = "REGEX"

FILL_OPTIONS: Options = {
    "manifest": ("--manifest", str, "the manifest: a path, an http(s) URL or s3://bucket/key"),
    "from_logs": ("--from-logs", _paths, "build the manifest from these access logs (repeat)"),
    "write_manifest": ("--write-manifest", str, "save the manifest used (JSON lines) here"),
    "headroom": ("--headroom", _headroom, "capacity kept for pull-through: 10%% or a size"),
    "bytes_per_night": ("--bytes-per-night", parse_size, "most bytes to download in one run"),
    "window": ("--window", Window.parse, "fill window, local time, e.g. 02:00-06:00"),
    "rate": ("--rate", parse_rate, "bandwidth cap for all downloads, e.g. 500Mbit"),
    "concurrency": ("--concurrency", positive_int, "objects downloaded at once (default 8)"),
    "peers": ("--peer", _urls, "a peer appliance to fill from first (repeat)"),
    "log_half_life": ("--log-half-life", parse_duration, "age that halves a logged request"),
    "title_pattern": (
        "--title-pattern",
        _title_pattern,
        "--from-logs: regex whose group, matched at a key's start, names its title",
    ),
    "report": ("--report", str, "also write the final JSON report to this file"),
    "metrics_file": ("--metrics-file", str, "write progress in Prometheus text format here"),
}
_REPEATABLE = {"from_logs", "peers"}


def add_fill_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fill")
    add_option_flags(group, FILL_OPTIONS, _REPEATABLE, dest_prefix="fill_")
    group.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    group.add_argument("--now", action="store_true", help="run now, whatever the window says")


def load_fill_config(args: argparse.Namespace) -> FillConfig:
    raw: dict[str, Any] = {}
    if getattr(args, "config", None):
        try:
            with open(args.config, "rb") as f:
                doc = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError):
            doc = {}  # the appliance's loader has already reported it
        section = doc.get("fill", {})
        if not isinstance(section, dict):
            raise ConfigError(f"{args.config}: [fill] must be a table")
        unknown = sorted(set(section) - set(FILL_OPTIONS))
        if unknown:
            raise ConfigError(
                f"{args.config}: unknown option {unknown[0]!r} in [fill] "
                f"(known: {', '.join(sorted(FILL_OPTIONS))})"
            )
        raw.update(section)
    cfg = FillConfig()
    apply_options(cfg, FILL_OPTIONS, raw, args, dest_prefix="fill_")
    if cfg.manifest and cfg.from_logs:
        raise ConfigError("give --manifest / manifest or --from-logs / from_logs, not both")
    return cfg
