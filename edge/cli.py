"""The ``edgefleet`` command: ``serve`` an appliance, ``scrub`` its store.

The other parts of the fleet add their own subcommands (``fill``, ``steer``,
``demo``) through the ``edgefleet.commands`` entry point group, so edge never
imports them: each entry point is a function ``register(subparsers)`` that adds
its parser and sets ``run`` (a function of the parsed arguments returning the
exit status) as a default. A configuration problem exits with status 2 and one
line naming the option.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import entry_points

from edge import __version__
from edge.config import ConfigError, add_serve_flags, load_serve_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefleet", description="edgefleet: a self-hosted edge CDN for video"
    )
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run an appliance: serve video objects from a disk store")
    add_serve_flags(serve)
    scrub = sub.add_parser(
        "scrub", help="reread every stored slice; drop and count those whose checksum fails"
    )
    add_serve_flags(scrub)
    for ep in sorted(entry_points(group="edgefleet.commands"), key=lambda ep: ep.name):
        ep.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "run", None)
    if run is not None:
        return int(run(args))
    try:
        cfg = load_serve_config(args)
    except ConfigError as exc:
        print(f"edgefleet {args.command}: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from edge.serve import run

        return run(cfg)
    if args.command == "scrub":
        return scrub(cfg)
    parser.error(f"unknown command {args.command}")
    return 2


def scrub(cfg) -> int:  # type: ignore[no-untyped-def]
    from edge.serve import make_store
    from edge.store import StoreError

    store = make_store(cfg)
    try:
        # no recovery: the appliance may be serving from this store right now
        store.open(recover=False)
    except StoreError as exc:
        print(f"edgefleet scrub: store: {exc}", file=sys.stderr)
        return 2
    report = store.scrub()
    store.close()
    print(
        json.dumps(
            {
                "slices_checked": report.slices_checked,
                "bytes_checked": report.bytes_checked,
                "failures": report.failures,
                "failed_keys": sorted(set(report.failed_keys)),
            }
        )
    )
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
