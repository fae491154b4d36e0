"""``edgefleet steer``: plugged into the ``edgefleet`` command through the
``edgefleet.commands`` entry point group (edge never imports steering)."""

from __future__ import annotations

import argparse
from typing import Any

from steering.config import add_steer_flags


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "steer",
        help="run the steering service: send players to the nearest healthy appliance",
        description="Run the steering service. 'edgefleet steer check --config FILE' "
        "checks a fleet instead (exit 0 sound, 1 with problems, 2 unreadable file).",
    )
    parser.add_argument(
        "action", nargs="?", choices=("check",), help="check the fleet configuration and exit"
    )
    add_steer_flags(parser)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    if args.action == "check":
        from steering.check import run as check

        return check(args)
    from steering.service import run

    return run(args)
