"""``edgefleet steer check --config steer.toml``: is a fleet sound before it goes live?

It names every problem it finds, not only the first: ids used twice, sites
without coordinates, a prefix announced by appliances of different sites
(nested prefixes are fine), any option the service would refuse, and, for the
appliances that answer, signing keys they do not share with steering (each is
asked whether a URL signed with each of steering's keys would pass, through
``/_edge/verify``: no secret leaves either side). Exit status: 0 sound, 1 with
problems, 2 when the file cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import quote

from steering.config import (
    ConfigError,
    SteerConfig,
    fleet_problems,
    load_steer_config,
    parse_appliance,
    prefix_conflicts,
    read_file,
)

PROBE_KEY = "edgefleet-steer-check"
TIMEOUT = 3.0


def run(args: argparse.Namespace) -> int:
    path = getattr(args, "config", None)
    if not path:
        print("edgefleet steer check: give --config FILE", file=sys.stderr)
        return 2
    try:
        raw = read_file(path)
    except ConfigError as exc:
        print(f"edgefleet steer check: {exc}", file=sys.stderr)
        return 2
    problems, notes = [], []
    try:
        cfg = load_steer_config(args)
    except ConfigError as exc:
        problems = _all_appliance_problems(raw)
        if str(exc) not in problems:
            problems.insert(0, str(exc))
        cfg = None
    if cfg is not None:
        from steering.fleet import compile_fleet

        problems += prefix_conflicts(cfg.appliances)
        try:
            compile_fleet(cfg).close()
        except ConfigError as exc:
            problems.append(str(exc))
        key_problems, notes = asyncio.run(check_keys(cfg))
        problems += key_problems
    for note in notes:
        print(f"note: {note}")
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        print(f"{path}: {len(problems)} problem{'s' if len(problems) > 1 else ''}")
        return 1
    assert cfg is not None
    sites = len({a.site for a in cfg.appliances})
    print(f"{path}: sound ({len(cfg.appliances)} appliances in {sites} sites)")
    return 0


def _all_appliance_problems(raw: dict) -> list[str]:  # type: ignore[type-arg]
    items = raw.get("appliance", [])
    if not isinstance(items, list):
        return []
    problems, specs = [], []
    for i, item in enumerate(items):
        try:
            specs.append(parse_appliance(i, item))
        except ConfigError as exc:
            problems.append(str(exc))
    return problems + fleet_problems(specs) + prefix_conflicts(specs)


async def check_keys(cfg: SteerConfig) -> tuple[list[str], list[str]]:
    """(problems, notes) from asking every appliance, all at once, about
    steering's keys."""
    import aiohttp

    from edge.core.signing import token_param

    expires = int(time.time()) + 300
    probes = [(kid, token_param(PROBE_KEY, kid, secret, expires)) for kid, secret in
              cfg.url_signing_keys.items()] or [(None, "")]  # fmt: skip
    signing = cfg.signing_key()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        found = await asyncio.gather(
            *(_ask(session, a.id, a.url, probes, signing) for a in cfg.appliances)
        )
    return [p for ps, _ in found for p in ps], [n for _, ns in found for n in ns]


async def _ask(
    session: Any,
    name: str,
    url: str,
    probes: list[tuple[str | None, str]],
    signing: tuple[str, bytes] | None,
) -> tuple[list[str], list[str]]:
    """One appliance: would a URL signed with each of steering's keys pass?"""
    import aiohttp

    problems: list[str] = []
    notes: list[str] = []
    for kid, token in probes:
        query = f"key={quote(PROBE_KEY)}" + (f"&{token}" if token else "")
        try:
            async with session.get(f"{url}/_edge/verify?{query}") as resp:
                status = resp.status
                doc = json.loads(await resp.text()) if status in (200, 403) else {}
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            why = str(exc) or type(exc).__name__
            return problems, [f"appliance {name!r} ({url}) did not answer, keys not checked: {why}"]
        if status == 404:
            return problems, [
                f"appliance {name!r} answered 404 to /_edge/verify (an older version?): "
                "keys not checked"
            ]
        if kid is None:  # steering signs nothing: does the appliance want tokens?
            if doc.get("checked"):
                problems.append(
                    f"appliance {name!r} requires signed URLs but steering has no url_signing_keys"
                )
            break
        if not doc.get("checked"):
            notes.append(f"appliance {name!r} does not check signed URLs")
            break
        if not doc.get("valid"):
            what = f"key {kid!r} ({doc.get('reason', 'refused')})"
            if signing is not None and kid == signing[0]:
                problems.append(
                    f"appliance {name!r} does not accept steering's signing {what}: "
                    "give it the same url_signing_keys"
                )
            else:
                notes.append(f"appliance {name!r} does not accept {what}")
    return problems, notes
