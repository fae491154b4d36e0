"""One fill run: plan, then download, verify, commit and evict inside the budgets.

Theory of operation: the run opens the appliance's store (no recovery: the
appliance may be serving from it), tidies what a killed run left, reads the
manifest, plans (``fill.plan``, pure) and works through the plan with
``concurrency`` workers: objects to verify first (local reads), then adds in
plan order. A verified object is committed whole, pinned; room for it is made
by removing objects of the plan's evict list on its root, least demand first,
just before the commit that needs it. A watchdog ends the run when the fill
window closes (or on SIGTERM/SIGINT): downloads in flight are cancelled and
their staged slices removed; what was committed stays. Figures go to the index
(the appliance's ``/_edge/metrics``), to ``--metrics-file``, to a progress bar
on a terminal and to the final JSON report.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from edge.config import ConfigError, ServeConfig
from edge.core.meta import same_version
from edge.core.sizes import human_size
from edge.origin import OriginChanged, OriginError
from edge.serve import make_store
from edge.store import Holding, StoredObject, StoreError
from fill import manifest as manifests
from fill.config import FillConfig
from fill.download import Fetched, Sources, Throttle, fetch_object
from fill.forecast import ForecastRules, Logbook, sized, to_size
from fill.logs import Popularity, requests
from fill.plan import ADD, KEEP, Entry, Held, Placement, Plan, density, make_plan
from fill.stage import StagePools

log = logging.getLogger("edgefleet.fill")

PUBLISH_EVERY = 2.0


@dataclass
class Tally:
    added: int = 0
    added_bytes: int = 0
    downloaded: dict[str, int] = field(default_factory=dict)
    kept: int = 0
    verified: int = 0
    evicted: int = 0
    evicted_bytes: int = 0
    unpinned: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    mismatches: list[dict[str, str]] = field(default_factory=list)
    done_bytes: int = 0  # bytes received, for the rate and the bar


class FillRun:
    def __init__(
        self,
        serve: ServeConfig,
        fill: FillConfig,
        *,
        ignore_window: bool = False,
        dry_run: bool = False,
        out: TextIO = sys.stdout,
        err: TextIO = sys.stderr,
    ) -> None:
        self.serve, self.cfg = serve, fill
        self.ignore_window, self.dry_run = ignore_window, dry_run
        self.out, self.err = out, err
        self.tally = Tally()
        self.status = "running"
        self.retries = serve.origin_retries
        self.room = asyncio.Lock()
        self.started = time.time()
        self.plan: Plan | None = None
        self.holdings: dict[str, Holding] = {}
        self.evict_queue: list[Held] = []
        self.ended: set[str] = set()  # keys whose add succeeded or failed

    # -- the whole run -----------------------------------------------------------

    async def run(self) -> tuple[dict[str, Any], int]:
        if not self.serve.origin and not self.cfg.peers:
            raise ConfigError("a fill needs an origin: give --origin / origin")
        self.store = make_store(self.serve)
        try:
            self.store.open(recover=False)
        except StoreError as exc:
            raise ConfigError(f"store: {exc}") from None
        settings = self.serve.origin_settings()
        self.sources = Sources.open(
            self.serve.origin,
            self.cfg.peers,
            settings,
            retries=self.retries,
            breaker_failures=self.serve.breaker_failures,
            breaker_cooldown=self.serve.breaker_cooldown,
        )
        try:
            return await self._run(settings)
        finally:
            await self.sources.close()
            self.store.close()

    async def _run(self, settings: Any) -> tuple[dict[str, Any], int]:
        report: dict[str, Any] = {"started": _iso(self.started)}
        if not self.dry_run:
            temps, adopted = await asyncio.to_thread(self.store.tidy)
            report["tidied"] = {"temp_files": temps, "slice_files_adopted": adopted}
        entries = await self._manifest(settings)
        left: float | None = None
        closes = 0.0
        window = self.cfg.window
        if window is not None and not self.ignore_window:
            left = window.left(datetime.now())
            closes = time.monotonic() + left  # planning and peers take from the window too
            if left <= 0:
                opens = window.opens_in(datetime.now())
                self.status = "outside-window"
                report.update(
                    status=self.status,
                    message=f"outside the fill window {window}: it opens in {_hm(opens)}; "
                    "--now runs anyway",
                )
                return self._finish(report), 0
        nightly = self.cfg.bytes_per_night
        if self.cfg.rate and left is not None:
            by_rate = int(self.cfg.rate * left)
            nightly = by_rate if nightly is None else min(nightly, by_rate)
        capacity = sum(u.capacity for u in self.store.usage() if not u.failed)
        holdings = await asyncio.to_thread(self.store.holdings)
        self.holdings = {h.key: h for h in holdings}
        held = [
            Held(h.key, h.size, h.etag, h.stored, h.complete, h.pinned, h.digest) for h in holdings
        ]
        plan = make_plan(entries, held, self.cfg.budget(capacity), nightly)
        self.plan = plan
        report["plan"] = plan.summary()
        report["plan"]["capacity_bytes"] = capacity
        if self.dry_run:
            self.status = "dry-run"
            report["status"] = self.status
            self._print_plan(plan)
            return report, 0
        if self.cfg.peers:
            report["peers_left_out"] = await self.sources.learn_peers(settings)
        await self._execute(plan, None if left is None else max(0.0, closes - time.monotonic()))
        report["status"] = self.status
        return self._finish(report), 1 if self.tally.failed or self.status == "interrupted" else 0

    async def _manifest(self, settings: Any) -> list[Entry]:
        if self.cfg.manifest:
            entries = await manifests.load(self.cfg.manifest, settings)
        elif self.cfg.from_logs:
            entries = await self._from_logs()
        else:
            raise ConfigError("no manifest: give --manifest / manifest, or --from-logs PATH")
        if self.cfg.write_manifest:
            try:
                with open(self.cfg.write_manifest, "w", encoding="utf-8") as f:
                    f.write(manifests.dump(entries))
            except OSError as exc:
                raise ConfigError(
                    f"--write-manifest: cannot write {self.cfg.write_manifest}: "
                    f"{exc.strerror or exc}"
                ) from None
        return entries

    async def _from_logs(self) -> list[Entry]:
        """The manifest ``fill.forecast`` predicts from the access logs: keys the
        logs name and the positions of their titles not asked yet; sizes from
        the index, else the origin (only for keys a plan may take)."""
        stats = Popularity()
        now = time.time()
        book = Logbook(ForecastRules(self.cfg.log_half_life, self.cfg.title_pattern))
        for path in self.cfg.from_logs:
            opener = gzip.open if path.endswith(".gz") else open
            try:
                with opener(path, "rt", encoding="utf-8", errors="replace") as f:  # type: ignore[operator]
                    book.add_all(requests(f, stats))
            except OSError as exc:
                raise ConfigError(
                    f"--from-logs: cannot read {path}: {exc.strerror or exc}"
                ) from None
        scores = book.forecast(now)
        held = {h.key: h for h in await asyncio.to_thread(self.store.holdings)}
        sizes = {k: h.size for k, h in held.items() if h.complete}
        etags = {k: h.etag for k, h in held.items() if h.complete}
        budget = self.cfg.budget(sum(u.capacity for u in self.store.usage() if not u.failed))
        sem = asyncio.Semaphore(32)

        async def head(key: str) -> None:
            async with sem:
                try:
                    meta = await self.sources.head(key)
                except OriginError as exc:
                    log.warning("fill: --from-logs: %r left out: %s", key, exc)
                    meta = None
            if meta is None:
                del scores[key]
            else:
                sizes[key], etags[key] = meta.size, meta.etag

        asked = 0
        for ask in to_size(book, scores, sizes, budget):
            asked += len(ask)
            await asyncio.gather(*(head(k) for k in ask))
        keys = sized(book, scores, sizes, budget)
        log.info(
            "fill: %d log lines, %d requests counted, %d skipped; %d keys forecast, "
            "%d asked at the origin, %d in the manifest",
            stats.lines, stats.counted, stats.skipped, len(scores), asked, len(keys),
        )  # fmt: skip
        return [Entry(k, sizes[k], scores[k], etags[k]) for k in keys]

    # -- working through the plan ------------------------------------------------

    async def _execute(self, plan: Plan, left: float | None) -> None:
        keep = [d.entry.key for d in plan.of(KEEP) if not d.verify]
        if keep:
            await asyncio.to_thread(self.store.pin, keep)
        self.tally.kept = len(keep)
        # least demand first: not in the manifest at all, then by score per byte
        per_byte = {d.entry.key: density(d.entry) for d in plan.decisions}
        self.evict_queue = sorted(plan.evict, key=lambda h: (per_byte.get(h.key, -1.0), h.key))
        work: asyncio.Queue[Placement] = asyncio.Queue()
        for d in [d for d in plan.decisions if d.verify] + plan.of(ADD):
            work.put_nowait(d)
        self.throttle = Throttle(self.cfg.rate)
        self.pools = StagePools(self.cfg.concurrency)
        self.bar = _bar(sum(d.need for d in plan.of(ADD)), self.err)
        workers = [asyncio.ensure_future(self._worker(work)) for _ in range(self.cfg.concurrency)]
        publisher = asyncio.ensure_future(self._publish_loop())
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, lambda: (self._set("interrupted"), stop.set()))
        waiters = [
            asyncio.ensure_future(asyncio.gather(*workers)),
            asyncio.ensure_future(stop.wait()),
        ]
        try:
            done, _ = await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                self._set("window-closed")
            if self.status != "running":
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
            else:
                self.status = "complete"
                await self._release_rest()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            for w in waiters:
                w.cancel()
            publisher.cancel()
            self.pools.shutdown()
            self.bar.close()
            await asyncio.to_thread(self._publish)

    def _set(self, status: str) -> None:
        if self.status == "running":
            self.status = status
            log.warning("fill: stopping: %s", status)

    async def _worker(self, work: asyncio.Queue[Placement]) -> None:
        while not work.empty():
            d = work.get_nowait()
            try:
                if d.verify:
                    await self._verify(d)
                else:
                    await self._add(d)
            except (OriginError, OSError, StoreError) as exc:
                self._fail(d.entry.key, str(exc) or type(exc).__name__)
            except Exception as exc:  # one object's surprise must not end the night
                log.exception("fill: %s: unexpected error", d.entry.key)
                self._fail(d.entry.key, f"unexpected error: {exc!r}")
            self.ended.add(d.entry.key)

    def _fail(self, key: str, why: str) -> None:
        log.error("fill: %s: %s", key, why)
        self.tally.failed.append({"key": key, "error": why})

    async def _verify(self, d: Placement) -> None:
        """A held object the manifest gives a checksum for: reread it from disk."""
        e = d.entry
        obj = await asyncio.to_thread(self.store.lookup, e.key)
        if obj is not None and obj.complete and obj.meta.size == e.size:
            fetched = await fetch_object(
                self.store, obj, [], 0, self.throttle, lambda n: None, self.pools
            )
            if fetched.digest == e.xxh3:
                await asyncio.to_thread(self.store.set_digest, e.key, obj.gen, fetched.digest)
                await asyncio.to_thread(self.store.pin, [e.key])
                self.tally.verified += 1
                self.tally.kept += 1
                return
            self._mismatch(e, fetched.digest, "held")
        await self._add(d, fresh=True)

    def _mismatch(self, e: Entry, digest: str, where: str) -> None:
        log.error("fill: %s: xxh3 %s (%s), the manifest says %s", e.key, digest, where, e.xxh3)
        self.tally.mismatches.append(
            {"key": e.key, "xxh3": digest, "expected": e.xxh3 or "", "from": where}
        )

    async def _add(self, d: Placement, fresh: bool = False) -> None:
        e = d.entry
        for attempt in (1, 2):
            meta = await self.sources.head(e.key)
            if meta is None:
                return self._fail(e.key, "not found at the origin")
            if not meta.storable:  # as the miss path: an HTTP origin's no-store, private
                return self._fail(e.key, "the origin says not to store it")
            if not same_version(meta, e):
                return self._fail(
                    e.key,
                    f"the origin holds another version ({meta.size} bytes, ETag {meta.etag}) "
                    f"than the manifest ({e.size} bytes, ETag {e.etag})",
                )
            obj = await asyncio.to_thread(self.store.ensure_object, e.key, meta)
            if fresh or attempt == 2:  # start from nothing: held bytes may be the bad ones
                await asyncio.to_thread(self.store.remove, e.key, obj.gen)
                obj = await asyncio.to_thread(self.store.ensure_object, e.key, meta)
            try:
                fetched = await fetch_object(
                    self.store,
                    obj,
                    self.sources.for_object(e.key, meta),
                    self.retries,
                    self.throttle,
                    self._progress,
                    self.pools,
                )
            except OriginChanged as exc:
                if attempt == 2:
                    raise
                log.warning("fill: %s changed while filling (%s); once more", e.key, exc)
                continue
            if e.xxh3 is not None and fetched.digest != e.xxh3:
                self.store.discard(fetched.staged)
                self._mismatch(e, fetched.digest, ", ".join(fetched.downloaded) or "held")
                if attempt == 1:
                    continue
                return self._fail(
                    e.key, f"checksum mismatch twice: xxh3 {fetched.digest}, manifest {e.xxh3}"
                )
            committing = asyncio.ensure_future(self._commit(obj, fetched))
            try:
                ok = await asyncio.shield(committing)
            except asyncio.CancelledError:
                # a commit under way finishes (it is one transaction): count it
                if await committing:
                    self._added(e, fetched)
                raise
            if not ok:
                return self._fail(e.key, "not committed: no room on its store root, or replaced")
            self._added(e, fetched)
            return None

    def _added(self, e: Entry, fetched: Fetched) -> None:
        self.tally.added += 1
        self.tally.added_bytes += e.size
        for name, n in fetched.downloaded.items():
            self.tally.downloaded[name] = self.tally.downloaded.get(name, 0) + n

    async def _commit(self, obj: StoredObject, fetched: Fetched) -> bool:
        if not self.evict_queue:  # nothing of the old plan to remove first
            return await asyncio.to_thread(
                self.store.commit_object, obj, fetched.staged, fetched.digest
            )
        async with self.room:
            need = sum(st.size for st in fetched.staged)
            usage = {u.id: u for u in await asyncio.to_thread(self.store.usage)}
            u = usage.get(obj.root.id)
            free = (u.capacity - u.used) if u is not None else 0
            for h in list(self.evict_queue):
                if free >= need:
                    break
                holding = self.holdings.get(h.key)
                if holding is None or holding.root != obj.root.id:
                    continue
                self.evict_queue.remove(h)
                if await asyncio.to_thread(self.store.remove, h.key):
                    free += h.stored
                    self.tally.evicted += 1
                    self.tally.evicted_bytes += h.stored
            return await asyncio.to_thread(
                self.store.commit_object, obj, fetched.staged, fetched.digest
            )

    async def _release_rest(self) -> None:
        """The evict list no add needed room from: unpinned, left to the store's policy."""
        keys = [h.key for h in self.evict_queue]
        if keys:
            self.tally.unpinned = await asyncio.to_thread(self.store.pin, keys, False)
        self.evict_queue = []

    def _progress(self, n: int) -> None:
        self.tally.done_bytes += n
        self.bar.update(n)

    # -- figures -------------------------------------------------------------------

    def figures(self) -> dict[str, float]:
        t = self.tally
        plan = self.plan
        adds = plan.of(ADD) if plan is not None else []
        elapsed = max(time.time() - self.started, 1e-6)
        return {
            "running": float(self.status == "running"),
            "objects_planned": float(len(adds)),
            "bytes_planned": float(sum(d.need for d in adds)),
            "objects_added": float(t.added),
            "bytes_downloaded": float(t.done_bytes),
            "bytes_per_second": t.done_bytes / elapsed,
            "objects_verified": float(t.verified),
            "objects_evicted": float(t.evicted),
            "errors": float(len(t.failed)),
            "checksum_mismatches": float(len(t.mismatches)),
            "last_update_timestamp_seconds": time.time(),
        }

    async def _publish_loop(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_EVERY)
            await asyncio.to_thread(self._publish)

    def _publish(self) -> None:
        figures = self.figures()
        if self.status != "running":
            figures["last_run_success"] = float(self.status == "complete" and not self.tally.failed)
        try:
            self.store.set_state("fill", json.dumps(figures))
        except Exception as exc:  # figures must never stop a fill
            log.warning("fill: cannot publish figures to the index: %s", exc)
        if self.cfg.metrics_file:
            _write_textfile(self.cfg.metrics_file, figures)

    def _finish(self, report: dict[str, Any]) -> dict[str, Any]:
        t = self.tally
        finished = time.time()
        plan = self.plan
        remaining = [
            d for d in (plan.of(ADD) if plan is not None else []) if d.entry.key not in self.ended
        ]
        report.update(
            finished=_iso(finished),
            duration_seconds=round(finished - self.started, 3),
            added={"objects": t.added, "bytes": t.added_bytes, "from": t.downloaded},
            kept={"objects": t.kept, "verified_from_disk": t.verified},
            evicted={"objects": t.evicted, "bytes": t.evicted_bytes, "unpinned": t.unpinned},
            failed=t.failed,
            checksum_mismatches=t.mismatches,
            not_done={"objects": len(remaining), "bytes": sum(d.need for d in remaining)},
            rate_bytes_per_second=round(t.done_bytes / max(finished - self.started, 1e-6)),
        )
        return report

    def _print_plan(self, plan: Plan) -> None:
        s = plan.summary()
        w = self.out.write
        w(f"budget {human_size(plan.budget)}")
        w(f", tonight's downloads at most {human_size(plan.nightly)}\n" if plan.nightly else "\n")
        for name in ("keep", "add", "defer", "skip", "evict"):
            part = s[name]
            assert isinstance(part, dict)
            w(f"{name:6} {part['objects']:>8} objects {human_size(part['bytes']):>12}\n")
        w(
            f"covers {float(s['demand_covered']):.1%} of tomorrow's predicted demand "
            f"(byte-weighted); {float(s['demand_covered_when_complete']):.1%} once deferred "
            "adds are in\n"
        )
        if plan.of(ADD):
            w("\nto download (+ key bytes), in plan order:\n")
        for d in plan.of(ADD):
            w(f"+ {d.entry.key} {d.need}\n")
        if plan.evict:
            w("\nto evict as room is needed (- key bytes):\n")
        for h in plan.evict:
            w(f"- {h.key} {h.stored}\n")


def _bar(total: int, err: TextIO) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="fill",
        file=err,
        disable=not err.isatty(),
    )


def _write_textfile(path: str, figures: dict[str, float]) -> None:
    """The figures in Prometheus' text format, replaced atomically (node_exporter's
    textfile collector must never read half a file)."""
    lines = [f"edgefleet_fill_{name} {value!r}\n" for name, value in sorted(figures.items())]
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("fill: cannot write %s: %s", path, exc)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


def _hm(seconds: float) -> str:
    m = int(seconds // 60)
    return f"{m // 60}h{m % 60:02d}m"
