"""``edgefleet fill``: plan and run a fill; ``edgefleet fill explain KEY``.

Registered through the ``edgefleet.commands`` entry point. Exit status: 0 done
(or nothing to do, or the window closed), 1 when an object failed or the run
was interrupted, 2 for a configuration problem.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import uvloop

from edge.config import FILL_READS, ConfigError, add_serve_flags, load_serve_config
from fill.config import add_fill_flags, load_fill_config


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "fill",
        help="fill the store from a manifest: plan, download, verify, pin (nightly)",
        description="Fill an appliance's store with what its viewers will watch. "
        "'edgefleet fill explain KEY' says why KEY is or is not planned.",
    )
    parser.add_argument(
        "words", nargs="*", metavar="explain KEY", help="explain one object's place in the plan"
    )
    add_serve_flags(parser, only=FILL_READS)
    add_fill_flags(parser)
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from fill.plan import explain
    from fill.run import FillRun

    explain_key = None
    if args.words:
        if len(args.words) != 2 or args.words[0] != "explain":
            print("edgefleet fill: expected 'explain KEY' or no words at all", file=sys.stderr)
            return 2
        explain_key = args.words[1]
    try:
        serve = load_serve_config(args)
        cfg = load_fill_config(args)
    except ConfigError as exc:
        print(f"edgefleet fill: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, serve.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
    dry = args.dry_run or explain_key is not None
    run = FillRun(serve, cfg, ignore_window=args.now or dry, dry_run=dry,
                  out=sys.stdout if explain_key is None else _Null())  # fmt: skip
    try:
        # uvloop, as the appliance: its transport receives with less CPU than
        # asyncio's, and the event loop is what bounds the fill's rate (docs/fill.md)
        report, code = uvloop.run(run.run())
    except ConfigError as exc:
        print(f"edgefleet fill: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a manifest or origin problem before anything ran
        from fill.manifest import ManifestError

        if isinstance(exc, ManifestError):
            print(f"edgefleet fill: manifest: {exc}", file=sys.stderr)
            return 2
        raise
    if explain_key is not None:
        assert run.plan is not None
        print(explain(run.plan, explain_key))
        return 0
    text = json.dumps(report, indent=1)
    if cfg.report:
        try:
            with open(cfg.report, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        except OSError as exc:
            print(f"edgefleet fill: --report: cannot write {cfg.report}: {exc}", file=sys.stderr)
            code = code or 1
    if not args.dry_run:
        print(text)
    return code


class _Null:
    def write(self, text: str) -> int:
        return len(text)
