"""The store's index: the SQLite schema, its connections, rows <-> objects.

Rules it keeps:
- one connection per thread, in WAL mode, so worker processes, the fill job and
  the appliance's threads read while one of them writes;
- every write is one ``BEGIN IMMEDIATE`` transaction (``Index.write``), so a
  reader never sees half of a change;
- an index made by an earlier version is brought up to date in place
  (``migrate``: columns added, never dropped);
- ``synchronous=FULL`` by default: a commit is on disk when it returns (``NORMAL``
  may lose the last commits on power loss, never tear them);
- a file the index decides to delete is named in ``doomed`` in the same
  transaction, and the row goes once the file is gone, so a crash between the
  commit and the unlink never brings the file back as content.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from edge.core.meta import ObjectMeta, slice_count
from edge.core.policy import decayed
from edge.store.files import NoUsableRoot, Root, Staged, StoreError, slice_path, unlink_all

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
CREATE TABLE IF NOT EXISTS doomed (path TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- an HTTP origin's answer head of version gen (JSON), written with the object
CREATE TABLE IF NOT EXISTS http_heads (
    key TEXT PRIMARY KEY,
    gen TEXT NOT NULL,
    status INTEGER NOT NULL,
    headers TEXT NOT NULL,
    vary TEXT NOT NULL
);
"""

# columns added since the first version: (table, column, declaration)
ADDED_COLUMNS = (
    ("objects", "fresh_until", "REAL"),
    ("objects", "born", "REAL"),
    ("objects", "stale_if_error", "REAL NOT NULL DEFAULT 0"),
    ("objects", "must_revalidate", "INTEGER NOT NULL DEFAULT 0"),
    ("objects", "digest", "TEXT"),
    ("roots", "uuid", "TEXT"),
    ("slices", "tail", "INTEGER NOT NULL DEFAULT 0"),  # 0: a file without a trailer
    ("slices", "verified", "INTEGER NOT NULL DEFAULT 0"),  # the start it was last checked in
)
SYNC_MODES = ("full", "normal")

INSERT_OBJECT_SQL = (
    "INSERT INTO objects(key, gen, root, size, etag, slice_size, pinned, score, score_time, "
    "last_access, created, fresh_until, stale_if_error, must_revalidate, cache_control, "
    "content_type, last_modified, born) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

OBJ_COLS = (
    "key, gen, root, size, etag, last_modified, content_type, cache_control, "
    "slice_size, pinned, score, last_access, fresh_until, stale_if_error, must_revalidate, "
    "born"
)


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
    checked: set[int] = field(default_factory=set)  # slices verified since this start

    @property
    def slice_count(self) -> int:
        return slice_count(self.meta.size, self.slice_size)

    @property
    def complete(self) -> bool:
        return len(self.slices) == self.slice_count

    def slice_path(self, idx: int) -> str:
        return slice_path(self.root.path, self.key, self.gen, idx)

    def about(self) -> dict[str, Any]:
        """What each of its slice files says of the object (their trailer)."""
        m = self.meta
        return {
            "key": self.key, "gen": self.gen, "size": m.size, "etag": m.etag,
            "last_modified": m.last_modified, "content_type": m.content_type,
            "cache_control": m.cache_control, "fresh_until": m.fresh_until,
            "stale_if_error": m.stale_if_error, "must_revalidate": m.must_revalidate,
            "born": m.born, "slice_size": self.slice_size,
        }  # fmt: skip


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
class RootUsage:
    id: int
    path: str
    capacity: int
    used: int
    objects: int
    failed: bool


def object_from_row(
    row: tuple, slices: Iterable[tuple[int, int]], roots: dict[int, Root]
) -> StoredObject | None:
    """The object a row of ``OBJ_COLS`` describes; ``None`` on a failed root."""
    key, gen, rid, size, etag, lm, ctype, cc, ss, pinned, score, last_access = row[:12]
    fu, sie, mr, born = row[12:]
    root = roots.get(rid)
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


def meta_values(meta: ObjectMeta) -> tuple:
    """The freshness columns an ``UPDATE ... WHERE key=?`` renews, in ``renew`` order."""
    return (
        meta.fresh_until,
        meta.stale_if_error,
        int(meta.must_revalidate),
        meta.cache_control,
        meta.content_type,
        meta.last_modified,
        meta.born,
    )


def doom(c: sqlite3.Connection, paths: list[str]) -> list[str]:
    """Name ``paths`` for deletion in this transaction (``forget_doomed`` once gone)."""
    c.executemany("INSERT OR IGNORE INTO doomed(path) VALUES (?)", [(p,) for p in paths])
    return paths


def bump(c: sqlite3.Connection, name: str, by: int = 1) -> None:
    c.execute(
        "INSERT INTO counters(name, value) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
        (name, by),
    )


def note_change(c: sqlite3.Connection, key: str, now: float) -> None:
    """Tell worker processes ``key`` changed (``""``: everything did)."""
    c.execute("INSERT INTO changes(key, at) VALUES (?, ?)", (key, now))


LOOP_BUSY_MS = 20


class IndexBusy(Exception):
    """The index could not be read at once (another writer's exclusive lock)."""


class Index:
    """The SQLite index: a connection per thread, write transactions."""

    def __init__(self, path: str, half_life: float, sync: str = "full") -> None:
        self.path = path
        self.half_life = half_life
        self.sync = sync
        self.boot = 0  # this start's number (``Store.open``)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        # this process's writers queue here, woken as soon as the one before
        # commits: SQLite's own busy handler polls with sleeps of up to 100 ms
        # (it still arbitrates between the processes sharing the index)
        self._writing = threading.RLock()

    def conn(self, quick: bool = False) -> sqlite3.Connection:
        """This thread's connection; ``quick``: one that waits for a busy index
        only ``LOOP_BUSY_MS`` (for reads on the event loop, whose caller then
        asks a thread: ``IndexBusy``)."""
        name = "quick" if quick else "conn"
        conn = getattr(self._local, name, None)
        if conn is None:
            wait = LOOP_BUSY_MS / 1000 if quick else 30.0
            conn = sqlite3.connect(
                self.path, timeout=wait, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if self.sync == 'full' else 'NORMAL'}")
            conn.execute(f"PRAGMA busy_timeout={LOOP_BUSY_MS if quick else 30000}")
            # the WAL shrinks back after a checkpoint (files.INDEX_RESERVE keeps its room)
            conn.execute("PRAGMA journal_size_limit=4194304")
            hl = self.half_life
            conn.create_function(
                "decayed", 3, lambda s, t, now: decayed(s, t, now, hl), deterministic=True
            )
            setattr(self._local, name, conn)
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn()
        with self._writing:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    def create(self) -> None:
        """Create the index (or bring an older one up to date)."""
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            conn = self.conn()
            conn.executescript(SCHEMA)
            migrate(conn)
        except (OSError, sqlite3.Error) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise StoreError(
                f"cannot open the index {self.path}: {reason} (is its filesystem full or "
                "read-only? free space there, or move it with --index / index)"
            ) from None

    # -- reading -------------------------------------------------------------

    def lookup(self, key: str, roots: dict[int, Root], quick: bool = False) -> StoredObject | None:
        try:
            conn = self.conn(quick)
            row = conn.execute(f"SELECT {OBJ_COLS} FROM objects WHERE key=?", (key,)).fetchone()
            if row is None:
                return None
            slices = conn.execute(
                "SELECT idx, size, verified FROM slices WHERE key=?", (key,)
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                raise IndexBusy(str(exc)) from exc
            raise
        obj = object_from_row(row, [(i, n) for i, n, _ in slices], roots)
        if obj is not None:
            obj.checked = {i for i, _, v in slices if v == self.boot}
        return obj

    def usage(self, roots: dict[int, Root]) -> list[RootUsage]:
        conn = self.conn()
        counts = dict(
            conn.execute("SELECT root, COUNT(*) FROM objects WHERE stored > 0 GROUP BY root")
        )
        out = []
        for rid, path, cap, used, failed in conn.execute(
            "SELECT id, path, capacity, used, failed FROM roots ORDER BY id"
        ):
            failed = bool(failed) or (rid in roots and roots[rid].failed)
            out.append(RootUsage(rid, path, cap, used, counts.get(rid, 0), failed))
        return out

    def holdings(self, root_ids: list[int]) -> list[Holding]:
        if not root_ids:
            return []
        marks = ",".join("?" * len(root_ids))
        rows = self.conn().execute(
            "SELECT key, size, etag, stored, pinned, digest, root FROM objects "
            f"WHERE root IN ({marks})",
            root_ids,
        )
        return [Holding(k, sz, et, st, bool(p), d, r) for k, sz, et, st, p, d, r in rows]

    def get_state(self, name: str, default: str = "") -> str:
        row = self.conn().execute("SELECT value FROM state WHERE name=?", (name,)).fetchone()
        return row[0] if row else default

    def set_state(self, name: str, value: str) -> None:
        with self.write() as c:
            c.execute(
                "INSERT INTO state(name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                (name, value),
            )

    def changes_since(self, seq: int) -> tuple[int, list[str]]:
        rows = self.conn().execute(
            "SELECT seq, key FROM changes WHERE seq > ? ORDER BY seq", (seq,)
        )
        keys = []
        for s, key in rows:
            seq = s
            keys.append(key)
        return seq, keys

    def unlink(self, doomed: list[str]) -> None:
        """Remove files a committed transaction doomed, then their ``doomed`` rows."""
        if doomed:
            unlink_all(doomed)
            self.forget_doomed(doomed)

    def forget_doomed(self, paths: list[str]) -> None:
        """The doomed ``paths`` are gone: their rows may go."""
        if paths:
            with contextlib.suppress(sqlite3.Error), self.write() as c:
                c.executemany("DELETE FROM doomed WHERE path=?", [(p,) for p in paths])

    def close(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._conns.clear()
        self._local = threading.local()


def migrate(conn: sqlite3.Connection) -> None:
    for table, column, decl in ADDED_COLUMNS:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:  # an index made by an earlier version
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")


def drop_root_rows(c: sqlite3.Connection, root_id: int, now: float) -> None:
    """Forget what a root holds (its files are left where they are)."""
    c.execute("DELETE FROM slices WHERE key IN (SELECT key FROM objects WHERE root=?)", (root_id,))
    c.execute("DELETE FROM objects WHERE root=?", (root_id,))
    note_change(c, "", now)


def _like(prefix: str) -> str:
    """A LIKE pattern (ESCAPE '\\') for the keys that start with ``prefix``."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def keys_under(conn: sqlite3.Connection, prefix: str, roots: dict[int, Root]) -> list[str]:
    """The keys of the objects whose key starts with ``prefix``, on usable roots
    (what ``objects`` lists, without reading their rows and slices)."""
    usable = {rid for rid, root in roots.items() if not root.failed}
    rows = conn.execute(
        "SELECT key, root FROM objects WHERE key LIKE ? ESCAPE '\\' ORDER BY key", (_like(prefix),)
    )
    return [key for key, rid in rows if rid in usable]


def objects(
    conn: sqlite3.Connection, prefix: str, roots: dict[int, Root], complete_only: bool = False
) -> Iterator[StoredObject]:
    """The objects whose key starts with ``prefix``, on usable roots, by key."""
    like = _like(prefix)
    rows = conn.execute(
        f"SELECT {OBJ_COLS} FROM objects WHERE key LIKE ? ESCAPE '\\' ORDER BY key", (like,)
    ).fetchall()
    slices: dict[str, list[tuple[int, int]]] = {}
    for key, idx, size in conn.execute(
        "SELECT key, idx, size FROM slices WHERE key LIKE ? ESCAPE '\\'", (like,)
    ):
        slices.setdefault(key, []).append((idx, size))
    for row in rows:
        obj = object_from_row(row, slices.get(row[0], []), roots)
        if obj is not None and (obj.complete or not complete_only):
            yield obj


class Reading:
    """What a store answers from its index (``Store`` is one): ``index`` and
    ``roots`` are the store's."""

    index: Index
    roots: dict[int, Root]

    def _conn(self) -> sqlite3.Connection:
        return self.index.conn()

    def usable_roots(self) -> list[Root]:
        return [r for r in self.roots.values() if not r.failed]

    def lookup(self, key: str, quick: bool = False) -> StoredObject | None:
        """``quick``: on the event loop, ``IndexBusy`` rather than a wait."""
        return self.index.lookup(key, self.roots, quick)

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
            return f.read(obj.slices[idx])

    def read(self, key: str) -> bytes:
        """The whole object, for tests and tools (not the serving path)."""
        obj = self.lookup(key)
        if obj is None or not obj.complete:
            raise KeyError(key)
        return b"".join(self.read_slice(key, i) for i in range(obj.slice_count))

    def holdings(self) -> list[Holding]:
        """Every object on a usable root, in brief."""
        return self.index.holdings([r.id for r in self.usable_roots()])


# -- rows a write transaction changes ------------------------------------------------


def is_busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def new_gen() -> str:
    """A fresh generation: names one version of an object's files."""
    return secrets.token_hex(6)


def choose_root(c: sqlite3.Connection, roots: dict[int, Root]) -> Root:
    """Where a new object goes: the usable root with room on its disk and the
    most free capacity."""
    best, best_free = None, None
    for rid, cap, used, failed in c.execute("SELECT id, capacity, used, failed FROM roots"):
        root = roots.get(rid)
        if root is None or root.failed or failed:
            continue
        free = (not root.full, cap - used)
        if best_free is None or free > best_free:
            best, best_free = root, free
    if best is None:
        raise NoUsableRoot("no usable store root")
    return best


def delete_object(c: sqlite3.Connection, key: str, now: float, roots: dict[int, Root]) -> list[str]:
    """Delete an object's rows inside a write transaction; return its files
    (doomed in the same transaction; none on a failed root: it is left alone)."""
    row = c.execute("SELECT gen, root, stored FROM objects WHERE key=?", (key,)).fetchone()
    if row is None:
        return []
    gen, rid, stored = row
    root = roots.get(rid)
    files = []
    if root is not None and not root.failed:
        files = [
            slice_path(root.path, key, gen, idx)
            for (idx,) in c.execute("SELECT idx FROM slices WHERE key=?", (key,))
        ]
    c.execute("DELETE FROM slices WHERE key=?", (key,))
    c.execute("DELETE FROM objects WHERE key=?", (key,))
    c.execute("DELETE FROM http_heads WHERE key=?", (key,))  # an HTTP origin's answer head
    c.execute("UPDATE roots SET used = used - ? WHERE id=?", (stored, rid))
    note_change(c, key, now)
    return doom(c, files)


def insert_slices(c: sqlite3.Connection, obj: StoredObject, staged: list[Staged], boot: int) -> int:
    """Rows for ``staged`` slices of ``obj`` (verified in start ``boot``: just
    written) and the bytes they add to it and its root; the bytes."""
    c.executemany(
        "INSERT INTO slices(key, idx, size, checksum, tail, verified) VALUES (?, ?, ?, ?, ?, ?)",
        [(obj.key, st.idx, st.size, st.checksum, st.tail, boot) for st in staged],
    )
    total = sum(st.size for st in staged)
    c.execute("UPDATE objects SET stored = stored + ? WHERE key=?", (total, obj.key))
    c.execute("UPDATE roots SET used = used + ? WHERE id=?", (total, obj.root.id))
    return total
