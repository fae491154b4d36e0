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
    )
    add_steer_flags(parser)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from steering.service import run

    return run(args)
