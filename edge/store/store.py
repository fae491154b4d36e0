"""The store: slices as plain files under one or more roots, indexed in SQLite.

Rules it keeps (docs/appliance.md has the why):
- a slice becomes visible only after its bytes are fsynced, renamed into place
  and its row committed, all in one ``BEGIN IMMEDIATE`` transaction with the
  eviction that makes room for it; evicted files are unlinked after the commit;
- a root's committed bytes never exceed its capacity;
- an object lives on one root; a slice file's name carries the object's
  generation, so a replaced object never shares a file with its predecessor;
- every deletion (evict, purge, scrub, replace) appends the key to ``changes``
  so worker processes can drop their in-memory views (``""`` means all);
- ``open()`` at start-up brings files and rows back into agreement (``upkeep``).

The API is synchronous and thread-safe (one SQLite connection per thread);
the server calls it from a thread pool, the fill job and tests directly.
The parts: ``index`` (schema, connections, rows), ``files`` (roots, slice
paths, staging), ``upkeep`` (recovery, tidy, scrub); this module holds the
transactions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
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
    is_device_error,
    slice_path,
    sync_staged,
    unlink_all,
)
from edge.store.index import (
    OBJ_COLS,
    Holding,
    Index,
    RootUsage,
    StoredObject,
    bump,
    drop_root_rows,
    meta_values,
    note_change,
    object_from_row,
    objects,
)
from edge.store.upkeep import RecoveryReport, ScrubReport

log = logging.getLogger("edgefleet.store")

DEFAULT_SLICE_SIZE = 2 * 1024 * 1024

RENEW_SQL = (
    "UPDATE objects SET fresh_until=?, stale_if_error=?, must_revalidate=?, "
    "cache_control=?, content_type=?, last_modified=?, born=? WHERE key=?"
)
INSERT_OBJECT_SQL = (
    "INSERT INTO objects(key, gen, root, size, etag, slice_size, pinned, score, score_time, "
    "last_access, created, fresh_until, stale_if_error, must_revalidate, cache_control, "
    "content_type, last_modified, born) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class Store:
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
        self.roots: dict[int, Root] = {}
        self.index = Index(self.index_path, self.half_life)

    # -- connections ---------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        return self.index.conn()

    def _write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self.index.write()

    def close(self) -> None:
        self.index.close()

    # -- opening (upkeep does the work) ----------------------------------------

    def open(self, *, recover: bool = True) -> RecoveryReport:
        """Create or open the index, probe the roots and (by default) recover."""
        self.index.create()
        report = RecoveryReport()
        self.roots = upkeep.open_roots(self.index, self.specs, recover, report, self.clock())
        if not self.usable_roots():
            raise NoUsableRoot("no usable store root: " + "; ".join(report.failed_roots))
        if recover:
            upkeep.recover(self.index, self.roots, report, self.clock())
        return report

    def tidy(self) -> tuple[int, int]:
        """Temp files of dead writers and unindexed slice files removed (``upkeep.tidy``)."""
        return upkeep.tidy(self.index, self.usable_roots(), self.clock())

    def scrub(self, progress: Callable[[int], None] | None = None) -> ScrubReport:
        """Reread every slice; drop and count the ones whose checksum fails."""
        return upkeep.scrub(self.index, self.roots, self.clock, self.mark_root_failed, progress)

    def usable_roots(self) -> list[Root]:
        return [r for r in self.roots.values() if not r.failed]

    # -- reading -------------------------------------------------------------

    def lookup(self, key: str) -> StoredObject | None:
        return self.index.lookup(key, self.roots)

    def list_objects(self, prefix: str = "", *, complete_only: bool = False) -> list[StoredObject]:
        return list(objects(self._conn(), prefix, self.roots, complete_only))

    def usage(self) -> list[RootUsage]:
        return self.index.usage(self.roots)

    def counters(self) -> dict[str, int]:
        return dict(self._conn().execute("SELECT name, value FROM counters"))

    def get_state(self, name: str, default: str = "") -> str:
        return self.index.get_state(name, default)

    def set_state(self, name: str, value: str) -> None:
        self.index.set_state(name, value)

    def changes_since(self, seq: int) -> tuple[int, list[str]]:
        """New change sequence and the keys deleted since ``seq`` (``""``: all)."""
        return self.index.changes_since(seq)

    def last_change(self) -> int:
        row = self._conn().execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()
        return int(row[0])

    def read_slice(self, key: str, idx: int) -> bytes:
        obj = self.lookup(key)
        if obj is None or idx not in obj.slices:
            raise KeyError((key, idx))
        with open(obj.slice_path(idx), "rb") as f:
            return f.read()

    def read(self, key: str) -> bytes:
        """The whole object, for tests and tools (not the serving path)."""
        obj = self.lookup(key)
        if obj is None or not obj.complete:
            raise KeyError(key)
        return b"".join(self.read_slice(key, i) for i in range(obj.slice_count))

    def holdings(self) -> list[Holding]:
        """Every object on a usable root, in brief."""
        return self.index.holdings([r.id for r in self.usable_roots()])

    # -- objects ---------------------------------------------------------------

    def ensure_object(self, key: str, meta: ObjectMeta, *, pinned: bool = False) -> StoredObject:
        """The stored object for ``meta``; a different version is replaced."""
        now = self.clock()
        doomed: list[str] = []
        with self._write() as c:
            row = c.execute(f"SELECT {OBJ_COLS} FROM objects WHERE key=?", (key,)).fetchone()
            if row is not None:
                kept = self._keep(c, row, meta, pinned)
                if kept is not None:
                    return kept
                doomed = self._delete_object(c, key, now)
            root = self._choose_root(c)
            gen = secrets.token_hex(6)
            c.execute(
                INSERT_OBJECT_SQL,
                (key, gen, root.id, meta.size, meta.etag, self.slice_size, int(pinned), now, now,
                 now, *meta_values(meta)),
            )  # fmt: skip
        unlink_all(doomed)
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
        slices = c.execute("SELECT idx, size FROM slices WHERE key=?", (key,))
        obj = object_from_row(row, slices.fetchall(), self.roots)
        assert obj is not None
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
            note_change(c, key, self.clock())
        return True

    def _choose_root(self, c: sqlite3.Connection) -> Root:
        best, best_free = None, None
        for rid, cap, used, failed in c.execute("SELECT id, capacity, used, failed FROM roots"):
            root = self.roots.get(rid)
            if root is None or root.failed or failed:
                continue
            free = cap - used
            if best_free is None or free > best_free:
                best, best_free = root, free
        if best is None:
            raise NoUsableRoot("no usable store root")
        return best

    def _delete_object(self, c: sqlite3.Connection, key: str, now: float) -> list[str]:
        """Delete an object's rows inside a write transaction; return its files."""
        row = c.execute("SELECT gen, root, stored FROM objects WHERE key=?", (key,)).fetchone()
        if row is None:
            return []
        gen, rid, stored = row
        root = self.roots.get(rid)
        files = []
        if root is not None:
            files = [
                slice_path(root.path, key, gen, idx)
                for (idx,) in c.execute("SELECT idx FROM slices WHERE key=?", (key,))
            ]
        c.execute("DELETE FROM slices WHERE key=?", (key,))
        c.execute("DELETE FROM objects WHERE key=?", (key,))
        c.execute("UPDATE roots SET used = used - ? WHERE id=?", (stored, rid))
        note_change(c, key, now)
        return files

    def _make_room(
        self, c: sqlite3.Connection, root: Root, size: int, exclude: str, now: float
    ) -> list[str] | None:
        """Evict so ``size`` more bytes fit on ``root``; ``None`` when they cannot."""
        cap, used = c.execute("SELECT capacity, used FROM roots WHERE id=?", (root.id,)).fetchone()

        def candidates() -> list[Candidate]:
            return [
                Candidate(k, stored, score, st, la, bool(p))
                for k, stored, score, st, la, p in c.execute(
                    "SELECT key, stored, score, score_time, last_access, pinned FROM objects "
                    "WHERE root=? AND stored > 0 AND key != ?",
                    (root.id, exclude),
                )
            ]

        batch = evict_batch(cap, self.evict_batch_fraction, self.evict_batch_max)
        victims = make_room(
            self.policy, candidates, used=used, size=size, capacity=cap, batch=batch, now=now
        )
        if victims is None:
            return None
        files: list[str] = []
        for v in victims:
            files += self._delete_object(c, v.key, now)
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
        if obj.root.failed:
            return False
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
        """``chunks`` in an fsynced temp file; ``None`` on a (counted) write error."""
        try:
            sink = self.open_stage(obj, idx)
        except OSError:
            return None  # counted by the stage file
        try:
            for chunk in chunks:
                sink.write(chunk)
            return sink.close(sync=True)
        except OSError:
            return None  # counted, and the temp file removed
        except BaseException:
            sink.abort()
            raise

    def _commit_slice(self, obj: StoredObject, st: Staged) -> bool:
        now = self.clock()
        final = obj.slice_path(st.idx)
        placed = st.path  # where the bytes are until the row is committed
        try:
            with self._write() as c:
                row = c.execute("SELECT gen FROM objects WHERE key=?", (obj.key,)).fetchone()
                if row is None or row[0] != obj.gen:
                    return False  # replaced or evicted meanwhile
                if c.execute(
                    "SELECT 1 FROM slices WHERE key=? AND idx=?", (obj.key, st.idx)
                ).fetchone():
                    return True  # another writer was first
                doomed = self._make_room(c, obj.root, st.size, obj.key, now)
                if doomed is None:
                    return False
                os.makedirs(os.path.dirname(final), exist_ok=True)
                os.rename(st.path, final)
                placed = final
                self._insert_slices(c, obj, [st])
            placed = ""
        except OSError as exc:
            self._count_write_error(exc, obj.root)
            return False
        except sqlite3.Error as exc:
            log.error("index write for slice %d of %r failed: %s", st.idx, obj.key, exc)
            return False
        finally:
            if placed:
                with contextlib.suppress(OSError):
                    os.unlink(placed)
        obj.slices[st.idx] = st.size
        unlink_all(doomed)
        return True

    @staticmethod
    def _insert_slices(c: sqlite3.Connection, obj: StoredObject, staged: list[Staged]) -> int:
        """Rows for ``staged`` slices of ``obj`` and the bytes they add; the bytes."""
        c.executemany(
            "INSERT INTO slices(key, idx, size, checksum) VALUES (?, ?, ?, ?)",
            [(obj.key, st.idx, st.size, st.checksum) for st in staged],
        )
        total = sum(st.size for st in staged)
        c.execute("UPDATE objects SET stored = stored + ? WHERE key=?", (total, obj.key))
        c.execute("UPDATE roots SET used = used + ? WHERE id=?", (total, obj.root.id))
        return total

    def _count_write_error(self, exc: OSError, root: Root) -> None:
        log.error("store write on %s failed: %s", root.path, exc)
        with contextlib.suppress(sqlite3.Error), self._write() as c:
            bump(c, "write_errors")
        if is_device_error(exc):
            self.mark_root_failed(root.id, exc.strerror or str(exc))

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
        return StageFile(
            obj.root, obj.key, obj.meta.size, obj.slice_size, idx, self._count_write_error
        )

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
                doomed = self._make_room(c, obj.root, sum(st.size for st in fresh), obj.key, now)
                if doomed is None:
                    return False
                for st in fresh:
                    final = obj.slice_path(st.idx)
                    os.makedirs(os.path.dirname(final), exist_ok=True)
                    os.rename(st.path, final)
                    renamed.append(final)
                self._insert_slices(c, obj, fresh)
                c.execute(
                    "UPDATE objects SET digest = ?, pinned = ? WHERE key=?",
                    (digest, int(pinned), obj.key),
                )
                note_change(c, obj.key, now)
            renamed = []
        except OSError as exc:
            self._count_write_error(exc, obj.root)
            return False
        finally:
            unlink_all(renamed)  # rolled back: the renamed files belong to no row
            discard(st for st in staged if os.path.exists(st.path))
        for st in staged:
            obj.slices.setdefault(st.idx, st.size)
        obj.pinned = pinned
        unlink_all(doomed or [])
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
            files = self._delete_object(c, key, self.clock())
        unlink_all(files)
        return True

    def purge_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with ``prefix``; the count. The
        keys are listed inside the write transaction, so an object added under
        the prefix meanwhile is purged too."""
        files: list[str] = []
        now = self.clock()
        with self._write() as c:
            keys = [obj.key for obj in objects(c, prefix, self.roots)]
            for key in keys:
                files += self._delete_object(c, key, now)
        unlink_all(files)
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

    # -- roots ---------------------------------------------------------------

    def mark_root_failed(self, root_id: int, reason: str) -> None:
        root = self.roots.get(root_id)
        if root is None or root.failed:
            return
        log.error("store root %s failed (%s): its content is dropped", root.path, reason)
        root.failed, root.reason = True, reason
        with contextlib.suppress(sqlite3.Error), self._write() as c:
            drop_root_rows(c, root_id, self.clock())
            c.execute("UPDATE roots SET failed=1, used=0 WHERE id=?", (root_id,))
            bump(c, "failed_roots")

    def refresh_roots(self) -> None:
        """Agree with the index on which roots have failed (another process may
        have marked one failed, or a restart's recovery found it working again)."""
        for rid, failed in self._conn().execute("SELECT id, failed FROM roots"):
            root = self.roots.get(rid)
            if root is None:
                continue
            if failed and not root.failed:
                root.failed, root.reason = True, "marked failed by another process"
            elif not failed and root.failed:
                root.failed, root.reason = False, ""

    # -- the response heads of objects from HTTP origins -----------------------
    # A table of its own (created on first use), one row per key: the status,
    # the end-to-end headers and the Vary selection of the stored version
    # ``gen``, as JSON. A row whose generation is not the object's is stale.

    def put_http_head(self, key: str, gen: str, status: int, headers: str, vary: str) -> None:
        with self._write() as c:
            c.execute(HTTP_HEADS_SCHEMA)
            c.execute(
                "INSERT INTO http_heads(key, gen, status, headers, vary) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET gen=excluded.gen, status=excluded.status, "
                "headers=excluded.headers, vary=excluded.vary",
                (key, gen, status, headers, vary),
            )

    def http_head(self, key: str, gen: str) -> tuple[int, str, str] | None:
        """(status, headers, vary) stored for version ``gen`` of ``key``."""
        conn = self._conn()
        try:
            row = conn.execute(
                "SELECT status, headers, vary FROM http_heads WHERE key=? AND gen=?", (key, gen)
            ).fetchone()
        except sqlite3.OperationalError:  # no such table yet: nothing stored
            return None
        return None if row is None else (int(row[0]), str(row[1]), str(row[2]))


HTTP_HEADS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS http_heads (key TEXT PRIMARY KEY, gen TEXT NOT NULL, "
    "status INTEGER NOT NULL, headers TEXT NOT NULL, vary TEXT NOT NULL)"
)
