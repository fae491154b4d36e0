"""The store: slices as plain files under one or more roots, indexed in SQLite.

Rules it keeps (docs/appliance.md has the why):
- a slice becomes visible only after its bytes are fsynced, renamed into place
  and its row committed, all in one ``BEGIN IMMEDIATE`` transaction with the
  eviction that makes room for it; evicted files are unlinked after the commit;
- a root's committed bytes never exceed its capacity;
- an object lives on one root; a slice file's name carries the object's
  generation, so a replaced object never shares a file with its predecessor;
- every deletion (evict, purge, scrub, replace) appends the key to ``changes``
  so worker processes can drop their in-memory views (``""`` means all), and
  names its files in ``doomed`` in the same transaction;
- "stored" means durable: data fsynced, renamed, the directory fsynced, the row
  committed (``synchronous=FULL`` unless ``index_sync="normal"``);
- ``open()`` at start-up brings files and rows back into agreement (``upkeep``);
  full disks, damage and verification are ``health``'s.

The API is synchronous and thread-safe (one SQLite connection per thread);
the server calls it from a thread pool, the fill job and tests directly.
Reading is ``index.Reading``'s; this module holds the transactions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any

from edge.core.meta import ObjectMeta, slice_bounds
from edge.core.policy import (
    DEFAULT_HALF_LIFE,
    Candidate,
    EvictionPolicy,
    PopularityPolicy,
    evict_batch,
    make_room,
)
from edge.store import upkeep
from edge.store.direct import write_slice
from edge.store.files import (
    ChecksumMismatch,
    NoUsableRoot,
    Root,
    RootSpec,
    Staged,
    StageFile,
    StoreError,
    checksum,
    discard,
    place,
    sync_staged,
    unlink_all,
)
from edge.store.group import GroupCommit, Pending
from edge.store.health import Health
from edge.store.index import (
    INSERT_OBJECT_SQL,
    OBJ_COLS,
    Index,
    IndexBusy,
    Reading,
    StoredObject,
    bump,
    choose_root,
    delete_object,
    insert_slices,
    is_busy,
    keys_under,
    meta_values,
    new_gen,
    note_change,
    object_from_row,
)
from edge.store.upkeep import RecoveryReport, ScrubReport

log = logging.getLogger("edgefleet.store")

DEFAULT_SLICE_SIZE = 2 * 1024 * 1024

RENEW_SQL = (
    "UPDATE objects SET fresh_until=?, stale_if_error=?, must_revalidate=?, "
    "cache_control=?, content_type=?, last_modified=?, born=? WHERE key=?"
)


class Store(Reading):
    def __init__(
        self,
        roots: list[RootSpec],
        index_path: str | None = None,
        *,
        slice_size: int = DEFAULT_SLICE_SIZE,
        policy: EvictionPolicy | None = None,
        half_life: float = DEFAULT_HALF_LIFE,
        clock: Callable[[], float] = time.time,
        evict_batch_fraction: float = 0.01,
        evict_batch_max: int = 256 * 1024 * 1024,
        index_sync: str = "full",
    ) -> None:
        if not roots:
            raise StoreError("at least one store root is needed")
        self.specs = roots
        self.index_path = index_path or os.path.join(roots[0].path, "index.sqlite")
        self.slice_size = slice_size
        self.policy = policy or PopularityPolicy(half_life=half_life)
        self.half_life = getattr(self.policy, "half_life", half_life)
        self.clock = clock
        self.evict_batch_fraction = evict_batch_fraction
        self.evict_batch_max = evict_batch_max
        self.roots: dict[int, Root] = {}  # filled in place by ``open``: ``health`` shares it
        self.index = Index(self.index_path, self.half_life, index_sync)
        self._commits = GroupCommit(self._commit_slices)
        self.health = Health(self.index, self.roots, self.clock, self._evict_for_disk)

    # -- connections ---------------------------------------------------------

    def _write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self.index.write()

    def close(self) -> None:
        self.index.close()

    # -- opening (upkeep does the work) ----------------------------------------

    def open(self, *, recover: bool = True) -> RecoveryReport:
        """Create or open the index, probe the roots and (by default) recover."""
        self.index.create()
        report = RecoveryReport()
        try:
            found = upkeep.open_roots(self.index, self.specs, recover, report, self.clock())
            self.roots.clear()
            self.roots.update(found)
            if not self.usable_roots():
                raise NoUsableRoot("no usable store root: " + "; ".join(report.failed_roots))
            if recover:
                upkeep.recover(self.index, self.roots, report, self.clock())
            else:
                self.index.boot = int(self.get_state("boot", "0"))
        except sqlite3.OperationalError as exc:  # a full or read-only filesystem, mostly
            raise StoreError(
                f"cannot write the index {self.index_path}: {exc} (free space on its "
                "filesystem, or move it with --index / index)"
            ) from None
        return report

    def tidy(self) -> tuple[int, int]:
        """(temp files of dead writers removed, unindexed slice files adopted)."""
        return upkeep.tidy(self.index, self.usable_roots(), self.clock())

    def scrub(self, progress: Callable[[int], None] | None = None) -> ScrubReport:
        """Reread every slice; drop and count the ones whose checksum fails."""
        return self.health.check(upkeep.all_slices(self.index), progress)

    def scrub_step(self, budget: int) -> ScrubReport:
        """Reread about ``budget`` bytes of slices after the last step's (the
        background scrub: every process shares one cursor through the store)."""
        return self.health.check(upkeep.next_slices(self.index, budget))

    def verify(self, obj: StoredObject, idxs: Iterable[int]) -> set[int]:
        """Of slices ``idxs`` of ``obj``, those whose bytes check out: see ``Health.verify``."""
        return self.health.verify(obj, idxs)

    # -- objects ---------------------------------------------------------------

    def ensure_object(
        self, key: str, meta: ObjectMeta, *, pinned: bool = False, gen: str | None = None
    ) -> StoredObject:
        """The stored object for ``meta``; a different version is replaced. A new
        entry gets generation ``gen`` when given (one the caller already uses).
        An HTTP origin's answer head (``meta.headers``) is written in the same
        transaction: the object never exists without it."""
        now = self.clock()
        doomed: list[str] = []
        with self._write() as c:
            row = c.execute(f"SELECT {OBJ_COLS} FROM objects WHERE key=?", (key,)).fetchone()
            if row is not None:
                kept = self._keep(c, row, meta, pinned)
                if kept is not None:
                    put_http_head(c, key, kept.gen, meta)
                    return kept
                doomed = delete_object(c, key, now, self.roots)
            root = choose_root(c, self.roots)
            gen = gen or new_gen()
            c.execute(
                INSERT_OBJECT_SQL,
                (key, gen, root.id, meta.size, meta.etag, self.slice_size, int(pinned), now, now,
                 now, *meta_values(meta)),
            )  # fmt: skip
            put_http_head(c, key, gen, meta)
        self._unlink(doomed)
        return StoredObject(key, gen, root, meta, self.slice_size, {}, pinned, 0.0, now)

    def _keep(
        self, c: sqlite3.Connection, row: tuple, meta: ObjectMeta, pinned: bool
    ) -> StoredObject | None:
        """The object ``row`` describes when it is the version ``meta`` names
        (its freshness renewed, pinned if asked), else ``None``."""
        key = row[0]
        root = self.roots.get(row[2])
        if row[4] != meta.etag or row[3] != meta.size or root is None or root.failed:
            return None
        if pinned and not row[9]:
            c.execute("UPDATE objects SET pinned=1 WHERE key=?", (key,))
        c.execute(RENEW_SQL, (*meta_values(meta), key))
        rows = c.execute("SELECT idx, size, verified FROM slices WHERE key=?", (key,)).fetchall()
        obj = object_from_row(row, [(i, n) for i, n, _ in rows], self.roots)
        assert obj is not None
        obj.checked = {i for i, _, v in rows if v == self.index.boot}
        obj.pinned = obj.pinned or pinned
        obj.meta = meta
        return obj

    def renew(self, key: str, gen: str, meta: ObjectMeta) -> bool:
        """A revalidation (304) kept version ``gen``: store its new freshness."""
        with self._write() as c:
            row = c.execute("SELECT gen FROM objects WHERE key=?", (key,)).fetchone()
            if row is None or row[0] != gen:
                return False
            c.execute(RENEW_SQL, (*meta_values(meta), key))
            put_http_head(c, key, gen, meta)
            note_change(c, key, self.clock())
        return True

    def _unlink(self, doomed: list[str]) -> None:
        """Remove files a committed transaction doomed, then their ``doomed`` rows."""
        self.index.unlink(doomed)

    def _make_room(
        self,
        c: sqlite3.Connection,
        root: Root,
        size: int,
        keep: tuple[str, ...],
        now: float,
        capacity: int | None = None,
    ) -> list[str] | None:
        """Evict so ``size`` more bytes fit on ``root`` (in ``capacity``, when
        the disk has less than the configured one), never an object of
        ``keep``; ``None`` when they cannot."""
        cap, used = c.execute("SELECT capacity, used FROM roots WHERE id=?", (root.id,)).fetchone()
        cap = cap if capacity is None else capacity

        def candidates() -> list[Candidate]:
            return [
                Candidate(k, stored, score, st, la, bool(p))
                for k, stored, score, st, la, p in c.execute(
                    "SELECT key, stored, score, score_time, last_access, pinned FROM objects "
                    "WHERE root=? AND stored > 0",
                    (root.id,),
                )
                if k not in keep
            ]

        batch = evict_batch(
            min(cap, root.capacity), self.evict_batch_fraction, self.evict_batch_max
        )
        victims = make_room(
            self.policy, candidates, used=used, size=size, capacity=cap, batch=batch, now=now
        )
        if victims is None:
            return None
        files: list[str] = []
        for v in victims:
            files += delete_object(c, v.key, now, self.roots)
        if victims:
            bump(c, "evictions", len(victims))
            bump(c, "evicted_bytes", sum(v.size for v in victims))
        return files

    # -- slices, one at a time (the miss path) --------------------------------

    def put_slice(
        self,
        obj: StoredObject,
        idx: int,
        data: bytes | memoryview | list[bytes],
        *,
        expected_checksum: str | None = None,
    ) -> bool:
        """Store slice ``idx`` of ``obj`` (its bytes, or the chunks they came in).
        False when it was not stored (no room, or the object was replaced or
        evicted meanwhile); raises on bad data."""
        chunks = data if isinstance(data, list) else [data]
        size = sum(len(c) for c in chunks)
        _, length = slice_bounds(idx, obj.meta.size, obj.slice_size)
        if not 0 <= idx < obj.slice_count or size != length:
            raise StoreError(f"slice {idx} of {obj.key!r} must be {length} bytes, got {size}")
        if not self.health.writable(obj.root, size, obj.key):
            return False  # the miss is served without being stored
        staged = self._stage(obj, idx, chunks)
        if staged is None:
            return False
        if expected_checksum is not None and staged.checksum != expected_checksum:
            os.unlink(staged.path)
            with self._write() as c:
                bump(c, "checksum_failures")
            raise ChecksumMismatch(
                f"slice {idx} of {obj.key!r}: xxh3 {staged.checksum}, expected {expected_checksum}"
            )
        return self._commit_slice(obj, staged)

    def _stage(self, obj: StoredObject, idx: int, chunks: list[Any]) -> Staged | None:
        """``chunks`` in an fsynced temp file (past the page cache where the
        root's filesystem allows: ``direct``); ``None`` on a (counted) write error."""
        try:
            return write_slice(obj.root, obj.about(), idx, chunks, self._count_write_error)
        except OSError:
            return None  # counted, and the temp file removed

    def _commit_slice(self, obj: StoredObject, st: Staged) -> bool:
        """Commit a staged slice with whatever others are staged meanwhile (``group``)."""
        if self._commits.submit((obj, st)):
            obj.slices[st.idx] = st.size
            obj.checked.add(st.idx)
            return True
        return False

    def _commit_slices(self, batch: list[Pending[tuple[StoredObject, Staged]]]) -> None:
        """One transaction for the staged slices of ``batch`` (each one's
        ``stored`` set): renamed into place, their directories fsynced, their
        rows committed. A slice that is not stored (its object replaced or
        evicted meanwhile, no room, a write error on its root) has its file
        removed, as has one another writer stored first."""
        now = self.clock()
        placed = [p.item[1].path for p in batch]  # where each one's bytes are until committed
        rows: list[int] = []  # the slices whose rows the transaction inserts
        failed: list[tuple[OSError, Root, tuple[str, ...]]] = []  # (error, root, keys written)
        doomed: list[str] = []
        try:
            with self._write() as c:
                moving: dict[int, list[int]] = {}  # root -> slices of the batch
                seen: set[tuple[str, int]] = set()
                for n, p in enumerate(batch):
                    obj, st = p.item
                    row = c.execute("SELECT gen FROM objects WHERE key=?", (obj.key,)).fetchone()
                    if row is None or row[0] != obj.gen:
                        continue  # replaced or evicted meanwhile
                    if (obj.key, st.idx) in seen or c.execute(
                        "SELECT 1 FROM slices WHERE key=? AND idx=?", (obj.key, st.idx)
                    ).fetchone():
                        p.stored = True  # another writer was first
                        continue
                    room = self._make_room(c, obj.root, st.size, (obj.key,), now)
                    if room is None:
                        continue
                    seen.add((obj.key, st.idx))
                    doomed += room
                    moving.setdefault(obj.root.id, []).append(n)
                for ns in moving.values():
                    root = batch[ns[0]].item[0].root
                    moves = [(placed[n], batch[n].item[0].slice_path(batch[n].item[1].idx))
                             for n in ns]  # fmt: skip
                    try:
                        place(root, moves)
                    except OSError as exc:
                        failed.append((exc, root, tuple(batch[n].item[0].key for n in ns)))
                        unlink_all(final for _, final in moves)  # renamed or not: no row
                        continue
                    for n, (_, final) in zip(ns, moves, strict=True):
                        placed[n] = final
                        obj, st = batch[n].item
                        insert_slices(c, obj, [st], self.index.boot)
                        rows.append(n)
            for n in rows:
                batch[n].stored = True
                placed[n] = ""  # committed: the store's file now
        except (OSError, sqlite3.Error) as exc:  # rolled back: nothing evicted, nothing stored
            if isinstance(exc, OSError):  # on the index: every root of the batch keeps its own
                for root in {p.item[0].root.id: p.item[0].root for p in batch}.values():
                    keys = tuple(p.item[0].key for p in batch if p.item[0].root.id == root.id)
                    failed.append((exc, root, keys))
            else:
                log.error("index write for %d slice(s) failed: %s", len(batch), exc)
            doomed = []
            for p in batch:
                p.stored = False
        finally:
            for path in placed:
                if path:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        for exc, root, keys in failed:
            self.health.write_error(exc, root, keys)
        self._unlink(doomed)

    def _count_write_error(self, exc: OSError, root: Root, key: str) -> None:
        self.health.write_error(exc, root, (key,))

    def put(
        self,
        key: str,
        data: bytes,
        meta: ObjectMeta | None = None,
        *,
        pinned: bool = False,
        expected_checksum: str | None = None,
    ) -> StoredObject:
        """Store a whole object held in memory (tests, tools, small objects)."""
        if expected_checksum is not None and checksum(data) != expected_checksum:
            with self._write() as c:
                bump(c, "checksum_failures")
            raise ChecksumMismatch(f"{key!r}: bytes do not match checksum {expected_checksum}")
        if meta is None:
            from edge.core.mediatypes import guess_type

            meta = ObjectMeta(len(data), f'"{checksum(data)}"', int(self.clock()), guess_type(key))
        if meta.size != len(data):
            raise StoreError(f"{key!r}: metadata says {meta.size} bytes, data has {len(data)}")
        obj = self.ensure_object(key, meta, pinned=pinned)
        view = memoryview(data)
        for idx in range(obj.slice_count):
            if idx in obj.slices:
                continue
            start, length = slice_bounds(idx, meta.size, obj.slice_size)
            if not self.put_slice(obj, idx, view[start : start + length]):
                raise StoreError(f"{key!r}: no room for slice {idx} on {obj.root.path}")
        return obj

    # -- whole objects, verified before they appear (the fill) -------------------

    def open_stage(self, obj: StoredObject, idx: int) -> StageFile:
        """A temp file for slice ``idx`` of ``obj``, written as its bytes arrive,
        outside the index: nothing serves it until ``commit_object``."""
        if not 0 <= idx < obj.slice_count:
            raise StoreError(f"{obj.key!r} has no slice {idx}")
        return StageFile(obj.root, obj.about(), idx, self._count_write_error)

    sync_staged = staticmethod(sync_staged)
    discard = staticmethod(discard)

    def commit_object(
        self, obj: StoredObject, staged: list[Staged], digest: str, *, pinned: bool = True
    ) -> bool:
        """Make ``staged`` slices part of ``obj`` in one transaction (all of them
        or none), record the whole object's ``digest`` and pin it. False (and the
        staged files removed) when the object was replaced meanwhile or the
        room cannot be made; the caller decides what room to free first."""
        now = self.clock()
        renamed: list[str] = []
        doomed: list[str] | None = []
        try:
            with self._write() as c:
                row = c.execute("SELECT gen FROM objects WHERE key=?", (obj.key,)).fetchone()
                if row is None or row[0] != obj.gen or obj.root.failed:
                    return False
                have = {i for (i,) in c.execute("SELECT idx FROM slices WHERE key=?", (obj.key,))}
                fresh = [st for st in staged if st.idx not in have]
                size = sum(st.size for st in fresh)
                doomed = self._make_room(c, obj.root, size, (obj.key,), now)
                if doomed is None:
                    return False
                moves = [(st.path, obj.slice_path(st.idx)) for st in fresh]
                renamed = [final for _, final in moves]
                place(obj.root, moves)
                insert_slices(c, obj, fresh, self.index.boot)
                c.execute(
                    "UPDATE objects SET digest = ?, pinned = ? WHERE key=?",
                    (digest, int(pinned), obj.key),
                )
                note_change(c, obj.key, now)
            renamed = []
        except OSError as exc:
            self._count_write_error(exc, obj.root, obj.key)
            return False
        finally:
            unlink_all(renamed)  # rolled back: the renamed files belong to no row
            discard(st for st in staged if os.path.exists(st.path))
        for st in staged:
            obj.slices.setdefault(st.idx, st.size)
            obj.checked.add(st.idx)
        obj.pinned = pinned
        self._unlink(doomed or [])
        return True

    def set_digest(self, key: str, gen: str, digest: str) -> bool:
        """Record that version ``gen`` of ``key`` was read whole and hashes to ``digest``."""
        with self._write() as c:
            cur = c.execute("UPDATE objects SET digest=? WHERE key=? AND gen=?", (digest, key, gen))
            return cur.rowcount > 0

    # -- removal, pins, popularity ------------------------------------------------

    def pin(self, keys: Iterable[str], pinned: bool = True) -> int:
        with self._write() as c:
            cur = c.executemany(
                "UPDATE objects SET pinned=? WHERE key=?", [(int(pinned), k) for k in keys]
            )
            return cur.rowcount

    def remove(self, key: str, gen: str | None = None) -> bool:
        """Remove ``key`` (only its version ``gen``, when given)."""
        with self._write() as c:
            existed = c.execute("SELECT gen FROM objects WHERE key=?", (key,)).fetchone()
            if existed is None or (gen is not None and existed[0] != gen):
                return False
            files = delete_object(c, key, self.clock(), self.roots)
        self._unlink(files)
        return True

    def remove_with(self, key: str, prefixes: Iterable[str]) -> int:
        """Remove ``key`` and every object whose key starts with one of
        ``prefixes`` (its queries, its variants), in one transaction; the count."""
        return self._remove_listed(key, prefixes)

    def purge_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with ``prefix``; the count. The
        keys are listed inside the write transaction, so an object added under
        the prefix meanwhile is purged too."""
        return self._remove_listed(None, (prefix,))

    def _remove_listed(self, key: str | None, prefixes: Iterable[str]) -> int:
        files: list[str] = []
        now = self.clock()
        with self._write() as c:
            keys = []
            if (
                key is not None
                and c.execute("SELECT 1 FROM objects WHERE key=?", (key,)).fetchone()
            ):
                keys.append(key)
            for prefix in prefixes:
                keys += keys_under(c, prefix, self.roots)
            for k in keys:
                files += delete_object(c, k, now, self.roots)
        self._unlink(files)
        return len(keys)

    def record_hits(self, hits: dict[str, tuple[int, float]]) -> None:
        """Add request counts (``key -> (count, last_access)``) to popularity."""
        if not hits:
            return
        now = self.clock()
        with self._write() as c:
            c.executemany(
                "UPDATE objects SET score = decayed(score, score_time, ?) + ?, score_time = ?, "
                "last_access = MAX(last_access, ?) WHERE key=?",
                [(now, n, now, last, key) for key, (n, last) in hits.items()],
            )

    # -- roots: full disks, damage, failures (``health``) -------------------------

    def slice_damaged(
        self, key: str, gen: str, idx: int, exc: OSError | None = None, **kw: bool
    ) -> str:
        """A slice could not be served as its row says: see ``Health.slice_damaged``."""
        return self.health.slice_damaged(key, gen, idx, exc, **kw)

    def mark_root_failed(self, root_id: int, reason: str) -> None:
        self.health.mark_root_failed(root_id, reason)

    def refresh_roots(self) -> None:
        self.health.refresh_roots()

    def _evict_for_disk(self, root: Root, short: int, keep: tuple[str, ...]) -> None:
        """Evict objects other than ``keep`` from ``root`` to free ``short`` bytes
        of its disk (whatever the configured capacity says)."""
        now = self.clock()
        doomed: list[str] | None = None
        with contextlib.suppress(sqlite3.Error), self._write() as c:
            bump(c, "disk_full")
            (used,) = c.execute("SELECT used FROM roots WHERE id=?", (root.id,)).fetchone()
            doomed = self._make_room(c, root, 0, keep, now, capacity=max(0, used - short))
        self._unlink(doomed or [])

    # -- the response heads of objects from HTTP origins -----------------------
    # A table of its own (index.SCHEMA), one row per key: the status,
    # the end-to-end headers and the Vary selection of the stored version
    # ``gen``, as JSON, written with the object (``put_http_head``). A row
    # whose generation is not the object's is stale.

    def http_head(self, key: str, gen: str, quick: bool = False) -> tuple[int, str, str] | None:
        """(status, headers, vary) stored for version ``gen`` of ``key``."""
        conn = self.index.conn(quick)
        try:
            row = conn.execute(
                "SELECT status, headers, vary FROM http_heads WHERE key=? AND gen=?", (key, gen)
            ).fetchone()
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                raise IndexBusy(str(exc)) from exc
            raise
        return None if row is None else (int(row[0]), str(row[1]), str(row[2]))


def put_http_head(c: sqlite3.Connection, key: str, gen: str, meta: ObjectMeta) -> None:
    """In the caller's transaction: the HTTP origin's answer head of version
    ``gen`` (nothing for an object from S3 or files: ``meta.headers`` is None)."""
    if meta.headers is None:
        return
    c.execute(
        "INSERT INTO http_heads(key, gen, status, headers, vary) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT(key) DO UPDATE SET gen=excluded.gen, status=excluded.status, "
        "headers=excluded.headers, vary=excluded.vary",
        (key, gen, meta.status, json.dumps(meta.headers), json.dumps(meta.vary)),
    )
