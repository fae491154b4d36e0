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
import contextlib
import dataclasses
import json
import os
import sqlite3
import sys
from importlib.metadata import entry_points

from edge import __version__
from edge.config import (
    SCRUB_READS,
    ConfigError,
    ServeConfig,
    StoreRootConfig,
    add_serve_flags,
    load_serve_config,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefleet", description="edgefleet: a self-hosted edge CDN for video"
    )
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run an appliance: serve video objects from a disk store")
    add_serve_flags(serve)
    scrub = sub.add_parser(
        "scrub",
        help="reread every stored slice; drop and count those whose checksum fails",
        description="Reread every slice of an appliance's store and drop those whose "
        "checksum fails. The store is the one the index records: --store DIR names "
        "one of its roots (the index is DIR/index.sqlite unless --index says otherwise).",
    )
    add_serve_flags(scrub, only=SCRUB_READS)
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
        cfg = load_serve_config(args, need_capacity=args.command == "serve")
    except ConfigError as exc:
        print(f"edgefleet {args.command}: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from edge.serve import run

        return run(cfg, lambda: load_serve_config(args))
    if args.command == "scrub":
        return scrub(cfg)
    parser.error(f"unknown command {args.command}")
    return 2


def scrub(cfg) -> int:  # type: ignore[no-untyped-def]
    from edge.serve import make_store
    from edge.store import StoreError

    try:
        cfg = scrub_config(cfg)
    except ConfigError as exc:
        print(f"edgefleet scrub: {exc}", file=sys.stderr)
        return 2
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


def scrub_config(cfg: ServeConfig) -> ServeConfig:
    """The store as its index records it. A scrub checks what an appliance
    stored: an index that is not there is an error (opening it would make an
    empty one and check nothing), the roots and their capacities are the
    index's (``--store DIR`` alone needs no capacity, and a root left off the
    command line is not dropped from the index), and every root named must be
    one of them."""
    index = cfg.index or os.path.join(cfg.store[0].path, "index.sqlite")
    if not os.path.isfile(index):
        raise ConfigError(
            f"no index at {index}: nothing was stored with this store, or its index is "
            "elsewhere (give --index / index)"
        )
    try:
        with contextlib.closing(sqlite3.connect(f"file:{index}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT path, capacity FROM roots ORDER BY id").fetchall()
    except sqlite3.Error as exc:
        raise ConfigError(f"--index / index: cannot read {index}: {exc}") from None
    known = {os.path.abspath(path): int(cap) for path, cap in rows}
    for root in cfg.store:
        if os.path.abspath(root.path) not in known:
            raise ConfigError(
                f"--store / store: {root.path} is not a root of the store indexed at {index} "
                f"(its roots: {', '.join(known) or 'none'})"
            )
    return dataclasses.replace(
        cfg,
        index=index,
        capacity=None,
        store=[StoreRootConfig(path, cap) for path, cap in known.items()],
    )


if __name__ == "__main__":
    sys.exit(main())
