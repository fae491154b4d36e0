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
- ``recover()`` at start-up brings files and rows back into agreement.

The API is synchronous and thread-safe (one SQLite connection per thread);
the server calls it from a thread pool, the fill job and tests directly.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import xxhash

from edge.core.meta import ObjectMeta, slice_bounds, slice_count
from edge.core.policy import (
    DEFAULT_HALF_LIFE,
    Candidate,
    EvictionPolicy,
    PopularityPolicy,
    decayed,
    evict_batch,
    make_room,
)

log = logging.getLogger("edgefleet.store")

DEFAULT_SLICE_SIZE = 2 * 1024 * 1024
TEMP_MAX_AGE_SECONDS = 3600.0
METADATA_ONLY_MAX_AGE = 7 * 86400.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS roots (
    id INTEGER PRIMARY KEY,
    path TEXT UNIQUE NOT NULL,
    capacity INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY,
    gen TEXT NOT NULL,
    root INTEGER NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    last_modified INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    cache_control TEXT,
    fresh_until REAL,
    born REAL,
    stale_if_error REAL NOT NULL DEFAULT 0,
    must_revalidate INTEGER NOT NULL DEFAULT 0,
    digest TEXT,
    slice_size INTEGER NOT NULL,
    stored INTEGER NOT NULL DEFAULT 0,
    pinned INTEGER NOT NULL DEFAULT 0,
    score REAL NOT NULL DEFAULT 0,
    score_time REAL NOT NULL,
    last_access REAL NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_root ON objects(root);
CREATE TABLE IF NOT EXISTS slices (
    key TEXT NOT NULL,
    idx INTEGER NOT NULL,
    size INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    PRIMARY KEY (key, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


# The errors that mean the device is gone or broken. Anything else (no file
# descriptors, no memory, a full disk) is a condition of the moment, not a
# reason to drop a disk's content.
DEVICE_ERRORS = frozenset({errno.EIO, errno.EROFS, errno.ENODEV, errno.ENXIO, errno.EUCLEAN})


def is_device_error(exc: OSError) -> bool:
    return exc.errno in DEVICE_ERRORS


class StoreError(Exception):
    """The store cannot do what was asked; the message says why."""


class ChecksumMismatch(StoreError):
    pass


class NoUsableRoot(StoreError):
    pass


@dataclass(frozen=True)
class RootSpec:
    path: str
    capacity: int


@dataclass
class Root:
    id: int
    path: str
    capacity: int
    failed: bool = False
    reason: str = ""

    @property
    def tmp_dir(self) -> str:
        return os.path.join(self.path, "tmp")

    @property
    def slice_dir(self) -> str:
        return os.path.join(self.path, "slices")


@dataclass
class StoredObject:
    key: str
    gen: str
    root: Root
    meta: ObjectMeta
    slice_size: int
    slices: dict[int, int] = field(default_factory=dict)  # idx -> size
    pinned: bool = False
    score: float = 0.0
    last_access: float = 0.0

    @property
    def slice_count(self) -> int:
        return slice_count(self.meta.size, self.slice_size)

    @property
    def complete(self) -> bool:
        return len(self.slices) == self.slice_count

    @property
    def stored_bytes(self) -> int:
        return sum(self.slices.values())

    def slice_path(self, idx: int) -> str:
        return slice_path(self.root.path, self.key, self.gen, idx)


@dataclass(frozen=True)
class Holding:
    """What the store holds of one object, in brief (for the fill's plan)."""

    key: str
    size: int
    etag: str
    stored: int
    pinned: bool
    digest: str | None  # xxh3-64 of the whole object, once a fill verified it
    root: int

    @property
    def complete(self) -> bool:
        return self.stored == self.size


@dataclass(frozen=True)
class Staged:
    """A slice written and fsynced to a temp file, not yet in the store."""

    idx: int
    path: str
    size: int
    checksum: str


class StageFile:
    """One slice's temp file: written as its bytes arrive (short writes to the
    page cache, fine on an event loop) and checksummed; ``close`` checks its
    length. Write errors are counted (and a device error fails the root) here.
    ``put_slice`` closes it fsynced; the fill fsyncs an object's slices together
    (``Store.sync_staged``) before ``commit_object``."""

    def __init__(self, store: Store, obj: StoredObject, idx: int) -> None:
        self.store, self.obj, self.idx = store, obj, idx
        _, self.length = slice_bounds(idx, obj.meta.size, obj.slice_size)
        root = obj.root
        self.path = os.path.join(root.tmp_dir, f"{os.getpid()}.{secrets.token_hex(8)}.tmp")
        self.hash = xxhash.xxh3_64()
        self.n = 0
        try:
            os.makedirs(root.tmp_dir, exist_ok=True)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            store._count_write_error(exc, root)
            raise

    def write(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk)
        if self.n + len(view) > self.length:
            raise StoreError(f"slice {self.idx} of {self.obj.key!r} is {self.length} bytes")
        self.hash.update(view)
        self.n += len(view)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            self.abort()
            self.store._count_write_error(exc, self.obj.root)
            raise

    def close(self, *, sync: bool = False) -> Staged:
        """The staged slice; with ``sync``, fsynced first (else see ``sync_staged``)."""
        if sync:
            try:
                os.fsync(self.fd)
            except OSError as exc:
                self.abort()
                self.store._count_write_error(exc, self.obj.root)
                raise
        os.close(self.fd)
        self.fd = -1
        if self.n != self.length:
            self.abort()
            raise StoreError(
                f"slice {self.idx} of {self.obj.key!r} must be {self.length} bytes, got {self.n}"
            )
        return Staged(self.idx, self.path, self.n, self.hash.hexdigest())

    def abort(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self.path)


@dataclass(frozen=True)
class RootUsage:
    id: int
    path: str
    capacity: int
    used: int
    objects: int
    failed: bool


@dataclass
class RecoveryReport:
    temp_files_removed: int = 0
    rows_dropped: int = 0
    orphans_removed: int = 0
    failed_roots: list[str] = field(default_factory=list)


@dataclass
class ScrubReport:
    slices_checked: int = 0
    bytes_checked: int = 0
    failures: int = 0
    failed_keys: list[str] = field(default_factory=list)


def key_hash(key: str) -> str:
    return xxhash.xxh3_128_hexdigest(key.encode("utf-8"))


def slice_path(root_path: str, key: str, gen: str, idx: int) -> str:
    h = key_hash(key)
    return os.path.join(root_path, "slices", h[:2], h[2:4], f"{h}.{gen}.{idx}")


def checksum(data: bytes | memoryview) -> str:
    return xxhash.xxh3_64_hexdigest(data)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()

    # -- connections ---------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.index_path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            hl = self.half_life
            conn.create_function(
                "decayed", 3, lambda s, t, now: decayed(s, t, now, hl), deterministic=True
            )
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def close(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._conns.clear()
        self._local = threading.local()

    # -- opening and recovery ------------------------------------------------

    def open(self, *, recover: bool = True) -> RecoveryReport:
        """Create or open the index, probe the roots and (by default) recover."""
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.index_path)), exist_ok=True)
            conn = self._conn()
            conn.executescript(SCHEMA)
            have = {row[1] for row in conn.execute("PRAGMA table_info(objects)")}
            for column, decl in (
                ("fresh_until", "REAL"),
                ("born", "REAL"),
                ("stale_if_error", "REAL NOT NULL DEFAULT 0"),
                ("must_revalidate", "INTEGER NOT NULL DEFAULT 0"),
                ("digest", "TEXT"),
            ):
                if column not in have:  # an index made by an earlier version
                    conn.execute(f"ALTER TABLE objects ADD COLUMN {column} {decl}")
        except (OSError, sqlite3.Error) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise StoreError(f"cannot open the index {self.index_path}: {reason}") from None
        report = RecoveryReport()
        with self._write() as c:
            known = {row[1]: row[0] for row in c.execute("SELECT id, path FROM roots")}
            wanted = set()
            for spec in self.specs:
                path = os.path.abspath(spec.path)
                wanted.add(path)
                if path in known:
                    c.execute(
                        "UPDATE roots SET capacity=? WHERE id=?", (spec.capacity, known[path])
                    )
                else:
                    cur = c.execute(
                        "INSERT INTO roots(path, capacity) VALUES (?, ?)", (path, spec.capacity)
                    )
                    known[path] = int(cur.lastrowid or 0)
            for path, rid in known.items():
                if path not in wanted:  # a root taken out of the configuration
                    self._drop_root_rows(c, rid)
                    c.execute("DELETE FROM roots WHERE id=?", (rid,))
            failed_before = {
                rid for rid, failed in c.execute("SELECT id, failed FROM roots") if failed
            }
            for spec in self.specs:
                path = os.path.abspath(spec.path)
                root = Root(id=known[path], path=path, capacity=spec.capacity)
                if not recover and root.id in failed_before:
                    # failed in a running appliance: only its restart may say otherwise
                    root.failed, root.reason = True, "marked failed"
                    self.roots[root.id] = root
                    continue
                reason = self._probe(root)
                if reason:
                    root.failed, root.reason = True, reason
                    report.failed_roots.append(f"{path}: {reason}")
                    log.error(
                        "store root %s is unusable (%s); its content is dropped", path, reason
                    )
                    self._drop_root_rows(c, root.id)
                    c.execute("UPDATE roots SET failed=1, used=0 WHERE id=?", (root.id,))
                else:
                    c.execute("UPDATE roots SET failed=0 WHERE id=?", (root.id,))
                self.roots[root.id] = root
        if not self.usable_roots():
            raise NoUsableRoot("no usable store root: " + "; ".join(report.failed_roots))
        if recover:
            self._recover(report)
        return report

    @staticmethod
    def _probe(root: Root) -> str:
        try:
            os.makedirs(root.slice_dir, exist_ok=True)
            os.makedirs(root.tmp_dir, exist_ok=True)
            probe = os.path.join(root.tmp_dir, f"probe.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, b"edgefleet")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            return exc.strerror or str(exc)
        return ""

    def usable_roots(self) -> list[Root]:
        return [r for r in self.roots.values() if not r.failed]

    def _drop_root_rows(self, c: sqlite3.Connection, root_id: int) -> None:
        c.execute(
            "DELETE FROM slices WHERE key IN (SELECT key FROM objects WHERE root=?)", (root_id,)
        )
        c.execute("DELETE FROM objects WHERE root=?", (root_id,))
        c.execute("INSERT INTO changes(key, at) VALUES ('', ?)", (self.clock(),))

    def _recover(self, report: RecoveryReport) -> None:
        now = self.clock()
        for root in self.usable_roots():
            report.temp_files_removed += self._clean_temp(root, now)
        conn = self._conn()
        bad: list[tuple[str, int]] = []
        rows = conn.execute(
            "SELECT s.key, s.idx, s.size, o.gen, o.root FROM slices s JOIN objects o USING (key)"
        ).fetchall()
        for key, idx, size, gen, rid in rows:
            root = self.roots.get(rid)
            if root is None or root.failed:
                bad.append((key, idx))
                continue
            path = slice_path(root.path, key, gen, idx)
            try:
                st = os.stat(path)
            except OSError:
                bad.append((key, idx))
                continue
            if st.st_size != size:
                bad.append((key, idx))
        with self._write() as c:
            c.executemany("DELETE FROM slices WHERE key=? AND idx=?", bad)
            # slices whose object row is gone
            c.execute("DELETE FROM slices WHERE key NOT IN (SELECT key FROM objects)")
            c.execute(
                "UPDATE objects SET stored = "
                "(SELECT COALESCE(SUM(size), 0) FROM slices s WHERE s.key = objects.key)"
            )
            c.execute(
                "UPDATE roots SET used = "
                "(SELECT COALESCE(SUM(stored), 0) FROM objects o WHERE o.root = roots.id)"
            )
            c.execute(
                "DELETE FROM objects WHERE stored = 0 AND pinned = 0 AND last_access < ?",
                (now - METADATA_ONLY_MAX_AGE,),
            )
            c.execute("DELETE FROM changes")
            c.execute("INSERT INTO changes(key, at) VALUES ('', ?)", (now,))
        report.rows_dropped += len(bad)
        report.orphans_removed += self._remove_unindexed()
        if report.rows_dropped or report.orphans_removed or report.temp_files_removed:
            log.warning(
                "store recovery: %d temp files removed, %d slice rows dropped, %d orphans removed",
                report.temp_files_removed,
                report.rows_dropped,
                report.orphans_removed,
            )

    @staticmethod
    def _clean_temp(root: Root, now: float, mine: bool = True) -> int:
        removed = 0
        try:
            names = os.listdir(root.tmp_dir)
        except OSError:
            return 0
        for name in names:
            path = os.path.join(root.tmp_dir, name)
            try:
                pid = int(name.split(".", 1)[0])
            except ValueError:
                pid = -1
            try:
                old = now - os.stat(path).st_mtime > TEMP_MAX_AGE_SECONDS
            except OSError:
                continue
            if (mine and pid == os.getpid()) or pid <= 0 or old or not _pid_alive(pid):
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    removed += 1
        return removed

    @staticmethod
    def _remove_orphans(root: Root, expected: set[str]) -> int:
        removed = 0
        for dirpath, _dirs, files in os.walk(root.slice_dir):
            for name in files:
                if name not in expected:
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(dirpath, name))
                        removed += 1
        return removed

    # -- reading -------------------------------------------------------------

    def _object_from_row(
        self, row: tuple, slices: Iterable[tuple[int, int]]
    ) -> StoredObject | None:
        (
            key,
            gen,
            rid,
            size,
            etag,
            lm,
            ctype,
            cc,
            ss,
            pinned,
            score,
            last_access,
            fu,
            sie,
            mr,
            born,
        ) = row
        root = self.roots.get(rid)
        if root is None or root.failed:
            return None
        return StoredObject(
            key=key,
            gen=gen,
            root=root,
            meta=ObjectMeta(size, etag, lm, ctype, cc, fu, sie, bool(mr), born=born),
            slice_size=ss,
            slices=dict(slices),
            pinned=bool(pinned),
            score=score,
            last_access=last_access,
        )

    _OBJ_COLS = (
        "key, gen, root, size, etag, last_modified, content_type, cache_control, "
        "slice_size, pinned, score, last_access, fresh_until, stale_if_error, must_revalidate, "
        "born"
    )

    def lookup(self, key: str) -> StoredObject | None:
        conn = self._conn()
        row = conn.execute(f"SELECT {self._OBJ_COLS} FROM objects WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        slices = conn.execute("SELECT idx, size FROM slices WHERE key=?", (key,)).fetchall()
        return self._object_from_row(row, slices)

    def list_objects(self, prefix: str = "", *, complete_only: bool = False) -> list[StoredObject]:
        conn = self._conn()
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = conn.execute(
            f"SELECT {self._OBJ_COLS} FROM objects WHERE key LIKE ? ESCAPE '\\' ORDER BY key",
            (like,),
        ).fetchall()
        slices: dict[str, list[tuple[int, int]]] = {}
        for key, idx, size in conn.execute(
            "SELECT key, idx, size FROM slices WHERE key LIKE ? ESCAPE '\\'", (like,)
        ):
            slices.setdefault(key, []).append((idx, size))
        out = []
        for row in rows:
            obj = self._object_from_row(row, slices.get(row[0], []))
            if obj is not None and (obj.complete or not complete_only):
                out.append(obj)
        return out

    def usage(self) -> list[RootUsage]:
        conn = self._conn()
        counts = dict(
            conn.execute("SELECT root, COUNT(*) FROM objects WHERE stored > 0 GROUP BY root")
        )
        out = []
        for rid, path, cap, used, failed in conn.execute(
            "SELECT id, path, capacity, used, failed FROM roots ORDER BY id"
        ):
            failed = bool(failed) or (rid in self.roots and self.roots[rid].failed)
            out.append(RootUsage(rid, path, cap, used, counts.get(rid, 0), failed))
        return out

    def counters(self) -> dict[str, int]:
        return dict(self._conn().execute("SELECT name, value FROM counters"))

    def get_state(self, name: str, default: str = "") -> str:
        row = self._conn().execute("SELECT value FROM state WHERE name=?", (name,)).fetchone()
        return row[0] if row else default

    def set_state(self, name: str, value: str) -> None:
        with self._write() as c:
            c.execute(
                "INSERT INTO state(name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                (name, value),
            )

    def changes_since(self, seq: int) -> tuple[int, list[str]]:
        """New change sequence and the keys deleted since ``seq`` (``""``: all)."""
        conn = self._conn()
        rows = conn.execute("SELECT seq, key FROM changes WHERE seq > ? ORDER BY seq", (seq,))
        keys = []
        for s, key in rows:
            seq = s
            keys.append(key)
        return seq, keys

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

    # -- writing -------------------------------------------------------------

    def ensure_object(self, key: str, meta: ObjectMeta, *, pinned: bool = False) -> StoredObject:
        """The stored object for ``meta``; a different version is replaced."""
        now = self.clock()
        doomed: list[str] = []
        with self._write() as c:
            row = c.execute(f"SELECT {self._OBJ_COLS} FROM objects WHERE key=?", (key,)).fetchone()
            if row is not None:
                root = self.roots.get(row[2])
                same = row[4] == meta.etag and row[3] == meta.size
                if same and root is not None and not root.failed:
                    if pinned and not row[9]:
                        c.execute("UPDATE objects SET pinned=1 WHERE key=?", (key,))
                    self._renew(c, key, meta)
                    slices = c.execute("SELECT idx, size FROM slices WHERE key=?", (key,))
                    obj = self._object_from_row(row, slices.fetchall())
                    assert obj is not None
                    obj.pinned = obj.pinned or pinned
                    obj.meta = meta
                    return obj
                doomed = self._delete_object(c, key, now)
            root = self._choose_root(c)
            gen = secrets.token_hex(6)
            c.execute(
                "INSERT INTO objects(key, gen, root, size, etag, last_modified, content_type, "
                "cache_control, slice_size, pinned, score, score_time, last_access, created, "
                "fresh_until, stale_if_error, must_revalidate, born) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    gen,
                    root.id,
                    meta.size,
                    meta.etag,
                    meta.last_modified,
                    meta.content_type,
                    meta.cache_control,
                    self.slice_size,
                    int(pinned),
                    now,
                    now,
                    now,
                    meta.fresh_until,
                    meta.stale_if_error,
                    int(meta.must_revalidate),
                    meta.born,
                ),
            )
        self._unlink_all(doomed)
        return StoredObject(key, gen, root, meta, self.slice_size, {}, pinned, 0.0, now)

    @staticmethod
    def _renew(c: sqlite3.Connection, key: str, meta: ObjectMeta) -> None:
        c.execute(
            "UPDATE objects SET fresh_until=?, stale_if_error=?, must_revalidate=?, "
            "cache_control=?, content_type=?, last_modified=?, born=? WHERE key=?",
            (
                meta.fresh_until,
                meta.stale_if_error,
                int(meta.must_revalidate),
                meta.cache_control,
                meta.content_type,
                meta.last_modified,
                meta.born,
                key,
            ),
        )

    def renew(self, key: str, gen: str, meta: ObjectMeta) -> bool:
        """A revalidation (304) kept version ``gen``: store its new freshness."""
        with self._write() as c:
            row = c.execute("SELECT gen FROM objects WHERE key=?", (key,)).fetchone()
            if row is None or row[0] != gen:
                return False
            self._renew(c, key, meta)
            c.execute("INSERT INTO changes(key, at) VALUES (?, ?)", (key, self.clock()))
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
        c.execute("INSERT INTO changes(key, at) VALUES (?, ?)", (key, now))
        return files

    @staticmethod
    def _unlink_all(paths: Iterable[str]) -> None:
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)

    def _bump(self, c: sqlite3.Connection, name: str, by: int = 1) -> None:
        c.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

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
        freed = 0
        for v in victims:
            files += self._delete_object(c, v.key, now)
            freed += v.size
        if victims:
            self._bump(c, "evictions", len(victims))
            self._bump(c, "evicted_bytes", freed)
        return files

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
        try:
            sink = StageFile(self, obj, idx)
        except OSError:
            return False  # counted by the stage file
        try:
            for chunk in chunks:
                sink.write(chunk)
            staged = sink.close(sync=True)
        except OSError:
            return False  # counted, and the temp file removed
        except BaseException:
            sink.abort()
            raise
        tmp, n, digest = staged.path, staged.size, staged.checksum
        if expected_checksum is not None and digest != expected_checksum:
            os.unlink(tmp)
            with self._write() as c:
                self._bump(c, "checksum_failures")
            raise ChecksumMismatch(
                f"slice {idx} of {obj.key!r}: xxh3 {digest}, expected {expected_checksum}"
            )
        return self._commit_slice(obj, idx, tmp, n, digest)

    def _commit_slice(self, obj: StoredObject, idx: int, tmp: str, n: int, digest: str) -> bool:
        now = self.clock()
        final = obj.slice_path(idx)
        placed = tmp  # where the bytes are until the row is committed
        try:
            with self._write() as c:
                row = c.execute("SELECT gen FROM objects WHERE key=?", (obj.key,)).fetchone()
                if row is None or row[0] != obj.gen:
                    return False  # replaced or evicted meanwhile
                if c.execute(
                    "SELECT 1 FROM slices WHERE key=? AND idx=?", (obj.key, idx)
                ).fetchone():
                    return True  # another writer was first
                doomed = self._make_room(c, obj.root, n, obj.key, now)
                if doomed is None:
                    return False
                os.makedirs(os.path.dirname(final), exist_ok=True)
                os.rename(tmp, final)
                placed = final
                c.execute(
                    "INSERT INTO slices(key, idx, size, checksum) VALUES (?, ?, ?, ?)",
                    (obj.key, idx, n, digest),
                )
                c.execute("UPDATE objects SET stored = stored + ? WHERE key=?", (n, obj.key))
                c.execute("UPDATE roots SET used = used + ? WHERE id=?", (n, obj.root.id))
            placed = ""
        except OSError as exc:
            self._count_write_error(exc, obj.root)
            return False
        except sqlite3.Error as exc:
            log.error("index write for slice %d of %r failed: %s", idx, obj.key, exc)
            return False
        finally:
            if placed:
                with contextlib.suppress(OSError):
                    os.unlink(placed)
        obj.slices[idx] = n
        self._unlink_all(doomed)
        return True

    def _count_write_error(self, exc: OSError, root: Root) -> None:
        log.error("store write on %s failed: %s", root.path, exc)
        with contextlib.suppress(sqlite3.Error), self._write() as c:
            self._bump(c, "write_errors")
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
                self._bump(c, "checksum_failures")
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
        return StageFile(self, obj, idx)

    @staticmethod
    def sync_staged(staged: Iterable[Staged]) -> None:
        """fsync staged slices (together, once the whole object is there)."""
        for st in staged:
            fd = os.open(st.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    @staticmethod
    def discard(staged: Iterable[Staged]) -> None:
        for st in staged:
            with contextlib.suppress(OSError):
                os.unlink(st.path)

    def commit_object(
        self, obj: StoredObject, staged: list[Staged], digest: str, *, pinned: bool = True
    ) -> bool:
        """Make ``staged`` slices part of ``obj`` in one transaction (all of them
        or none), record the whole object's ``digest`` and pin it. False (and the
        staged files removed) when the object was replaced meanwhile or the
        room cannot be made; the caller decides what room to free first."""
        now = self.clock()
        renamed: list[tuple[str, str]] = []
        doomed: list[str] | None = []
        try:
            with self._write() as c:
                row = c.execute("SELECT gen FROM objects WHERE key=?", (obj.key,)).fetchone()
                if row is None or row[0] != obj.gen or obj.root.failed:
                    return False
                have = {
                    idx for (idx,) in c.execute("SELECT idx FROM slices WHERE key=?", (obj.key,))
                }
                fresh = [st for st in staged if st.idx not in have]
                total = sum(st.size for st in fresh)
                doomed = self._make_room(c, obj.root, total, obj.key, now)
                if doomed is None:
                    return False
                for st in fresh:
                    final = obj.slice_path(st.idx)
                    os.makedirs(os.path.dirname(final), exist_ok=True)
                    os.rename(st.path, final)
                    renamed.append((st.path, final))
                c.executemany(
                    "INSERT INTO slices(key, idx, size, checksum) VALUES (?, ?, ?, ?)",
                    [(obj.key, st.idx, st.size, st.checksum) for st in fresh],
                )
                c.execute(
                    "UPDATE objects SET stored = stored + ?, digest = ?, pinned = ? WHERE key=?",
                    (total, digest, int(pinned), obj.key),
                )
                c.execute("UPDATE roots SET used = used + ? WHERE id=?", (total, obj.root.id))
                c.execute("INSERT INTO changes(key, at) VALUES (?, ?)", (obj.key, now))
            renamed = []
        except OSError as exc:
            self._count_write_error(exc, obj.root)
            return False
        finally:
            if renamed:  # rolled back: the renamed files belong to no row
                self._unlink_all(final for _, final in renamed)
            self.discard(st for st in staged if os.path.exists(st.path))
        for st in staged:
            obj.slices.setdefault(st.idx, st.size)
        obj.pinned = pinned
        self._unlink_all(doomed or [])
        return True

    def set_digest(self, key: str, gen: str, digest: str) -> bool:
        """Record that version ``gen`` of ``key`` was read whole and hashes to ``digest``."""
        with self._write() as c:
            cur = c.execute("UPDATE objects SET digest=? WHERE key=? AND gen=?", (digest, key, gen))
            return cur.rowcount > 0

    def holdings(self) -> list[Holding]:
        """Every object on a usable root, in brief."""
        usable = [r.id for r in self.usable_roots()]
        if not usable:
            return []
        marks = ",".join("?" * len(usable))
        rows = self._conn().execute(
            "SELECT key, size, etag, stored, pinned, digest, root FROM objects "
            f"WHERE root IN ({marks})",
            usable,
        )
        return [Holding(k, sz, et, st, bool(p), d, r) for k, sz, et, st, p, d, r in rows]

    def tidy(self) -> tuple[int, int]:
        """Remove temp files of writers that died, and slice files no row names
        (a rename whose transaction never committed). Safe while others write:
        their temp files carry live pids, and renames happen under the write
        lock this holds. Returns (temp files, orphans) removed."""
        now = self.clock()
        temps = sum(self._clean_temp(r, now, mine=False) for r in self.usable_roots())
        return temps, self._remove_unindexed()

    def _remove_unindexed(self) -> int:
        """Remove every slice file that no row names; the count. Renames happen
        inside write transactions, so while this one holds the lock no file can be
        between its rename and its row: every file no row names is an orphan."""
        removed = 0
        with self._write() as c:
            names: dict[int, set[str]] = {r.id: set() for r in self.usable_roots()}
            for key, idx, gen, rid in c.execute(
                "SELECT s.key, s.idx, o.gen, o.root FROM slices s JOIN objects o USING (key)"
            ):
                if rid in names:
                    names[rid].add(f"{key_hash(key)}.{gen}.{idx}")
            for root in self.usable_roots():
                removed += self._remove_orphans(root, names[root.id])
        return removed

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
        self._unlink_all(files)
        return True

    def purge_prefix(self, prefix: str) -> int:
        keys = [o.key for o in self.list_objects(prefix)]
        files: list[str] = []
        now = self.clock()
        with self._write() as c:
            for key in keys:
                files += self._delete_object(c, key, now)
        self._unlink_all(files)
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

    def mark_root_failed(self, root_id: int, reason: str) -> None:
        root = self.roots.get(root_id)
        if root is None or root.failed:
            return
        log.error("store root %s failed (%s): its content is dropped", root.path, reason)
        root.failed, root.reason = True, reason
        with contextlib.suppress(sqlite3.Error), self._write() as c:
            self._drop_root_rows(c, root_id)
            c.execute("UPDATE roots SET failed=1, used=0 WHERE id=?", (root_id,))
            self._bump(c, "failed_roots")

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

    # -- scrub ---------------------------------------------------------------

    def scrub(self, progress: Callable[[int], None] | None = None) -> ScrubReport:
        """Reread every slice; drop and count the ones whose checksum fails."""
        report = ScrubReport()
        rows = (
            self._conn()
            .execute(
                "SELECT s.key, s.idx, s.size, s.checksum, o.gen, o.root "
                "FROM slices s JOIN objects o USING (key) ORDER BY o.root, s.key, s.idx"
            )
            .fetchall()
        )
        for key, idx, size, digest, gen, rid in rows:
            root = self.roots.get(rid)
            if root is None or root.failed:
                continue
            path = slice_path(root.path, key, gen, idx)
            try:
                with open(path, "rb") as f:
                    h = xxhash.xxh3_64()
                    n = 0
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                        n += len(chunk)
                ok = n == size and h.hexdigest() == digest
            except FileNotFoundError:
                ok = False
            except OSError as exc:
                self.mark_root_failed(rid, exc.strerror or str(exc))
                continue
            report.slices_checked += 1
            report.bytes_checked += size
            if progress:
                progress(size)
            if not ok:
                report.failures += 1
                report.failed_keys.append(key)
                self._drop_slice(key, idx, gen, path)
        return report

    def _drop_slice(self, key: str, idx: int, gen: str, path: str) -> None:
        log.error("slice %d of %r failed its checksum; dropped", idx, key)
        with self._write() as c:
            row = c.execute("SELECT size FROM slices WHERE key=? AND idx=?", (key, idx)).fetchone()
            g = c.execute("SELECT gen, root FROM objects WHERE key=?", (key,)).fetchone()
            if row is not None and g is not None and g[0] == gen:
                c.execute("DELETE FROM slices WHERE key=? AND idx=?", (key, idx))
                c.execute("UPDATE objects SET stored = stored - ? WHERE key=?", (row[0], key))
                c.execute("UPDATE roots SET used = used - ? WHERE id=?", (row[0], g[1]))
                c.execute("INSERT INTO changes(key, at) VALUES (?, ?)", (key, self.clock()))
            self._bump(c, "checksum_failures")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

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
