"""The I/O around ``steering.health``: poll every appliance, keep the state current.

Every appliance gets a health loop (``/_edge/health`` every
``health_interval``, with ``health_timeout``) and an inventory loop
(``/_edge/inventory?format=bloom`` every ``inventory_interval``, with
``If-None-Match``). What a poll learns goes through ``Health`` (pure) into the
``FleetState`` the decision reads, in place: one list slot per change, on the
event loop, so a decision never sees a half-made update.

A reload (``swap``) keeps the records of appliances whose id and URL did not
change, polls the new ones once, then swaps fleet and state in one assignment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from edge.core.inventory import KeyFilter
from edge.http.tls import client_context
from steering.config import ApplianceSpec, SteerConfig
from steering.fleet import Fleet
from steering.health import DOWN, UNKNOWN, UP, FleetState, Health
from steering.metrics import SteerMetrics

log = logging.getLogger("edgefleet.steer")


@dataclass
class Record:
    spec: ApplianceSpec
    idx: int
    health: Health = field(default_factory=Health)
    filter: KeyFilter | None = None
    etag: str | None = None
    inventory_at: float | None = None
    inventory_error: str = ""
    told: str = ""  # the state last logged: up, down, draining, failing
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text[:200]


class Poller:
    def __init__(self, fleet: Fleet, metrics: SteerMetrics) -> None:
        self.fleet = fleet
        self.state = FleetState.sized(len(fleet.specs))
        self.metrics = metrics
        self.records: dict[str, Record] = {a.id: Record(a, i) for i, a in enumerate(fleet.specs)}
        self.session: aiohttp.ClientSession | None = None
        self._tls: tuple[str | None, ssl.SSLContext] | None = None  # (ca_file, context)
        self.background: set[asyncio.Future[None]] = set()

    @property
    def current(self) -> tuple[Fleet, FleetState]:
        return self.fleet, self.state

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=300),
            headers={"User-Agent": "edgefleet-steer"},
        )
        await self._first_round(list(self.records.values()))
        for rec in self.records.values():
            self._spawn(rec)

    async def stop(self) -> None:
        tasks = [t for rec in self.records.values() for t in rec.tasks]
        tasks += list(self.background)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.session is not None:
            await self.session.close()
        self.fleet.close()

    async def _first_round(self, recs: list[Record], cfg: SteerConfig | None = None) -> None:
        """One health poll of each, then one inventory fetch of those up."""
        await asyncio.gather(*(self.poll_health(r, cfg) for r in recs))
        await asyncio.gather(*(self.poll_inventory(r, cfg) for r in recs if r.health.state == UP))

    def _spawn(self, rec: Record) -> None:
        cfg = self.fleet.cfg
        rec.tasks = [
            asyncio.ensure_future(self._every(cfg.health_interval, self.poll_health, rec)),
            asyncio.ensure_future(self._every(cfg.inventory_interval, self.poll_inventory, rec)),
        ]

    async def _every(self, interval: float, poll: Any, rec: Record) -> None:
        # spread the polls over the interval, so a big fleet is not polled in bursts
        await asyncio.sleep(random.uniform(0, interval))
        while True:
            start = time.monotonic()
            with contextlib.suppress(Exception):
                await poll(rec)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - start)))

    def _publish(self, rec: Record) -> None:
        if self.records.get(rec.spec.id) is not rec:
            return  # dropped by a reload
        cfg = self.fleet.cfg
        reason = rec.health.why_not(rec.spec.capacity, cfg.max_utilization)
        self.state.candidate[rec.idx] = reason == ""
        self.state.filters[rec.idx] = rec.filter

    def tls_for(self, cfg: SteerConfig) -> ssl.SSLContext:
        """What https:// appliances are verified with: ``ca_file`` or the system store."""
        if self._tls is None or self._tls[0] != cfg.ca_file:
            self._tls = (cfg.ca_file, client_context(cfg.ca_file))
        return self._tls[1]

    async def poll_health(self, rec: Record, cfg: SteerConfig | None = None) -> None:
        assert self.session is not None
        cfg = cfg or self.fleet.cfg
        ok = False
        try:
            async with self.session.get(
                rec.spec.url + "/_edge/health",
                ssl=self.tls_for(cfg),
                timeout=aiohttp.ClientTimeout(total=cfg.health_timeout),
            ) as resp:
                doc = await resp.json(content_type=None)
            rec.health.report(doc)
            ok = True
        except (TimeoutError, aiohttp.ClientError, ValueError, OSError) as exc:
            rec.health.last_error = _describe(exc)
        self.metrics.poll("health", "ok" if ok else "error")
        changed = rec.health.observe(ok, time.time(), cfg.rise, cfg.fall)
        if changed == DOWN:
            # whatever it held may be gone (a disk, a wiped store): ask again when it is back
            rec.filter = None
            rec.etag = None
        elif changed is not None and rec.health.transitions > 1:  # back: what does it hold now?
            task = asyncio.ensure_future(self.poll_inventory(rec))
            self.background.add(task)
            task.add_done_callback(self.background.discard)
        self._tell(rec)
        self._publish(rec)

    def _tell(self, rec: Record) -> None:
        """Log an appliance's state once each time it changes (up, down,
        draining, failing), at INFO: what an operator greps for, not an alarm
        (alerts come from the metrics); and count it."""
        h = rec.health
        told = h.shown()
        if told == UNKNOWN or told == rec.told:
            return
        rec.told = told
        self.metrics.transition(rec.spec.id, told)
        why = f": {h.last_error}" if told == DOWN and h.last_error else ""
        spec = rec.spec
        log.info("appliance %s (%s, site %s) is %s%s", spec.id, spec.url, spec.site, told, why)

    async def poll_inventory(self, rec: Record, cfg: SteerConfig | None = None) -> None:
        if rec.health.state != UP:
            return
        assert self.session is not None
        cfg = cfg or self.fleet.cfg
        headers = {"If-None-Match": rec.etag} if rec.etag else {}
        try:
            async with self.session.get(
                rec.spec.url + "/_edge/inventory?format=bloom",
                headers=headers,
                ssl=self.tls_for(cfg),
                timeout=aiohttp.ClientTimeout(total=max(5.0, cfg.health_timeout)),
            ) as resp:
                if resp.status == 304:
                    result = "not_modified"
                elif resp.status == 200:
                    body = await resp.read()
                    rec.filter = KeyFilter.from_bytes(body)
                    rec.etag = resp.headers.get("ETag")
                    result = "ok"
                else:
                    raise ValueError(f"inventory answered {resp.status}")
            rec.inventory_at = time.time()
            rec.inventory_error = ""
        except (TimeoutError, aiohttp.ClientError, ValueError, OSError) as exc:
            rec.inventory_error = _describe(exc)
            result = "error"
        self.metrics.poll("inventory", result)
        self._publish(rec)

    async def swap(self, fleet: Fleet) -> None:
        """Take a new fleet: keep what is known of unchanged appliances, poll the
        new ones once, then switch in one step."""
        old = self.records
        records: dict[str, Record] = {}
        fresh: list[Record] = []
        for i, a in enumerate(fleet.specs):
            rec = old.get(a.id)
            if rec is None or rec.spec.url != a.url:
                rec = Record(a, i)
                fresh.append(rec)
            records[a.id] = rec
        # polled before anyone is sent to them; not published (not ours yet)
        await self._first_round(fresh, fleet.cfg)
        state = FleetState.sized(len(fleet.specs))
        for i, a in enumerate(fleet.specs):
            rec = records[a.id]
            rec.spec, rec.idx = a, i
            reason = rec.health.why_not(a.capacity, fleet.cfg.max_utilization)
            state.candidate[i] = reason == ""
            state.filters[i] = rec.filter
        old_fleet = self.fleet
        # the switch: plain assignments, no await in between
        self.fleet, self.state, self.records = fleet, state, records
        respawn = (
            old_fleet.cfg.health_interval != fleet.cfg.health_interval
            or old_fleet.cfg.inventory_interval != fleet.cfg.inventory_interval
        )
        for rec in old.values():
            if records.get(rec.spec.id) is not rec:
                for t in rec.tasks:
                    t.cancel()
        for rec in records.values():
            if respawn or rec in fresh:
                for t in rec.tasks:
                    t.cancel()
                self._spawn(rec)
        old_fleet.close()

    def view(self) -> list[dict[str, Any]]:
        """Every appliance as this replica sees it, for ``/_steer/fleet``."""
        cfg = self.fleet.cfg
        out = []
        for rec in self.records.values():
            h = rec.health
            util = h.utilization(rec.spec.capacity)
            reason = h.why_not(rec.spec.capacity, cfg.max_utilization)
            inventory = None
            if rec.filter is not None:
                inventory = {
                    "keys": rec.filter.count,
                    "etag": rec.etag,
                    "fetched_at": rec.inventory_at,
                }
            out.append(
                {
                    "id": rec.spec.id,
                    "url": rec.spec.url,
                    "site": rec.spec.site,
                    "state": h.state,
                    "candidate": reason == "",
                    "reason": reason or None,
                    "status": h.status or None,
                    "ok_streak": h.ok_streak,
                    "fail_streak": h.fail_streak,
                    "transitions": h.transitions,
                    "changed_at": h.changed_at,
                    "checked_at": h.checked_at,
                    "last_error": h.last_error or None,
                    "connections": h.connections,
                    "egress_bits_per_second": round(h.egress_bps),
                    "utilization": None if util is None else round(util, 4),
                    "inventory": inventory,
                    "inventory_error": rec.inventory_error or None,
                }
            )
        return out
