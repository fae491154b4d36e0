"""The store's upkeep: roots at open, recovery, tidying, checking slices.

Rules it keeps (docs/appliance.md, "What the store promises", has the why):
- a root must exist and is known by the identity it carries; a root of another
  store is refused; a root the index knows that lost its identity (an empty
  mount point) is failed; a full root is not failed;
- failing a root keeps its rows and files: a later start probes it again;
- recovery removes only the store's own temp files and the files the index
  doomed; rows whose file is missing or of the wrong size go (and so do those
  files); a slice file no row names is adopted from its trailer as capacity
  allows, or left where it is and counted, never deleted;
- each recovering open is a new start (``boot``): slices are verified again
  the first time they are served after it;
- a check (scrub, first serve) rereads a slice's bytes and compares their
  xxh3-64 with the row's; the caller drops what fails.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from edge.store.files import (
    Root,
    RootSpec,
    StoreError,
    clean_temp,
    is_full_error,
    probe,
    read_checksum,
    read_identity,
    read_trailer,
    slice_files,
    slice_name,
    unlink_all,
    write_identity,
)
from edge.store.files import slice_path as file_path
from edge.store.index import INSERT_OBJECT_SQL, Index, drop_root_rows, note_change

log = logging.getLogger("edgefleet.store")

METADATA_ONLY_MAX_AGE = 7 * 86400.0


@dataclass
class RecoveryReport:
    temp_files_removed: int = 0
    rows_dropped: int = 0
    doomed_removed: int = 0
    adopted: int = 0  # slice files the index did not know, indexed from their trailers
    unaccounted: int = 0  # slice files left alone: no valid trailer, or no room
    failed_roots: list[str] = field(default_factory=list)
    full_roots: list[str] = field(default_factory=list)


@dataclass
class ScrubReport:
    slices_checked: int = 0
    bytes_checked: int = 0
    failures: int = 0
    failed_keys: list[str] = field(default_factory=list)


# a slice to check: (key, idx, size, checksum, gen, root id)
SliceRow = tuple[str, int, int, str, str, int]


# -- roots at open ---------------------------------------------------------------


def open_roots(
    index: Index, specs: list[RootSpec], recover: bool, report: RecoveryReport, now: float
) -> dict[int, Root]:
    """A ``Root`` per configured root, known by its identity and probed (unless
    it failed in a running appliance and this is not a start: only a restart
    may say otherwise)."""
    for spec in specs:
        if not os.path.lexists(spec.path):
            raise StoreError(
                f"store root {spec.path} does not exist: create the directory (on the "
                "mounted disk it is meant for) first; edgefleet never creates a root"
            )
    idents = {os.path.abspath(s.path): _identity(s.path) for s in specs}
    roots: dict[int, Root] = {}
    with index.write() as c:
        store_id = _store_id(c, idents)
        wanted = set()
        for spec in specs:
            path = os.path.abspath(spec.path)
            root = _claim(c, path, spec.capacity, idents[path], store_id)
            roots[root.id] = root
            wanted.add(root.id)
        for (rid,) in c.execute("SELECT id FROM roots").fetchall():
            if rid not in wanted:  # taken out of the configuration: its files stay
                drop_root_rows(c, rid, now)
                c.execute("DELETE FROM roots WHERE id=?", (rid,))
        failed_before = {rid for rid, f in c.execute("SELECT id, failed FROM roots") if f}
        for root in roots.values():
            if not recover and root.id in failed_before and not root.failed:
                root.failed, root.reason = True, "marked failed"
            elif not root.failed:
                _probe(root, report)
            if root.failed and root.reason != "marked failed":
                report.failed_roots.append(f"{root.path}: {root.reason}")
                log.error("store root %s is not used (%s)", root.path, root.reason)
            c.execute("UPDATE roots SET failed=? WHERE id=?", (int(root.failed), root.id))
    return roots


def _identity(path: str) -> dict[str, str] | None:
    try:
        return read_identity(path)
    except OSError:
        return None  # not a directory, or unreadable: the probe says which


def _store_id(c: sqlite3.Connection, idents: dict[str, dict[str, str] | None]) -> str:
    """The store's UUID: the index's, else the one its roots name, else a new one."""
    row = c.execute("SELECT value FROM state WHERE name='store_id'").fetchone()
    named = {i["store"] for i in idents.values() if i and i.get("store")}
    if row is not None:
        return str(row[0])
    if len(named) > 1:
        raise StoreError(
            "the store roots belong to different stores: "
            + ", ".join(f"{p} ({i['store']})" for p, i in idents.items() if i and i.get("store"))
        )
    store_id = named.pop() if named else str(uuid.uuid4())
    c.execute("INSERT INTO state(name, value) VALUES ('store_id', ?)", (store_id,))
    return store_id


def _claim(
    c: sqlite3.Connection, path: str, capacity: int, ident: dict[str, str] | None, store_id: str
) -> Root:
    """The index's row for the root at ``path`` (found by its identity, made
    when new) as a ``Root``; failed when it is not the disk the index knows."""
    by_path = c.execute("SELECT id, uuid FROM roots WHERE path=?", (path,)).fetchone()
    if ident is None:
        if by_path is not None and by_path[1]:
            root = Root(by_path[0], path, capacity, uuid=by_path[1])
            root.failed = True
            root.reason = "its edgefleet-root.json is missing: is its disk mounted?"
            return root
        ident = {}
        if os.path.isdir(path):
            try:
                ident = {"root": write_identity(path, store_id), "store": store_id}
            except OSError as exc:
                ident = {"error": exc.strerror or str(exc)}
    if ident.get("store") and ident["store"] != store_id:
        raise StoreError(
            f"store root {path} belongs to store {ident['store']}, but the index "
            f"belongs to store {store_id}: point --index at that store's index, or "
            "rebuild this one from the roots with `edgefleet store rebuild-index`"
        )
    rid = _root_row(c, path, capacity, ident.get("root"), by_path)
    root = Root(rid, path, capacity, uuid=ident.get("root", ""))
    if not ident.get("root") and os.path.isdir(path):
        root.failed = True
        root.reason = ident.get("error") or "its edgefleet-root.json is unreadable"
    return root


def _root_row(
    c: sqlite3.Connection, path: str, capacity: int, uid: str | None, by_path: tuple | None
) -> int:
    found = c.execute("SELECT id FROM roots WHERE uuid=?", (uid,)).fetchone() if uid else None
    if found is not None:  # the disk the index knows, wherever it is mounted now
        c.execute(
            "UPDATE roots SET path = path || '#' || id WHERE path=? AND id!=?", (path, found[0])
        )
        c.execute("UPDATE roots SET path=?, capacity=? WHERE id=?", (path, capacity, found[0]))
        return int(found[0])
    if by_path is not None:
        c.execute("UPDATE roots SET uuid=?, capacity=? WHERE id=?", (uid, capacity, by_path[0]))
        return int(by_path[0])
    cur = c.execute(
        "INSERT INTO roots(path, capacity, uuid) VALUES (?, ?, ?)", (path, capacity, uid)
    )
    return int(cur.lastrowid or 0)


def _probe(root: Root, report: RecoveryReport) -> None:
    exc = probe(root)
    if exc is None:
        return
    if is_full_error(exc):
        root.full = True
        report.full_roots.append(root.path)
        log.warning("store root %s is full: serving what it holds, storing nothing", root.path)
    else:
        root.failed, root.reason = True, exc.strerror or str(exc)


# -- recovery ----------------------------------------------------------------------


def recover(index: Index, roots: dict[int, Root], report: RecoveryReport, now: float) -> None:
    usable = [r for r in roots.values() if not r.failed]
    for root in usable:
        report.temp_files_removed += clean_temp(root, now)
    report.doomed_removed += remove_doomed(index)
    bad = _rows_without_their_file(index, roots)
    with index.write() as c:
        c.executemany("DELETE FROM slices WHERE key=? AND idx=?", [b[:2] for b in bad])
        c.execute("DELETE FROM slices WHERE key NOT IN (SELECT key FROM objects)")
        recount(c)
        c.execute(
            "DELETE FROM objects WHERE stored = 0 AND pinned = 0 AND last_access < ?",
            (now - METADATA_ONLY_MAX_AGE,),
        )
        c.execute("DELETE FROM changes")
        note_change(c, "", now)
        boot = c.execute("SELECT value FROM state WHERE name='boot'").fetchone()
        index.boot = int(boot[0]) + 1 if boot else 1
        c.execute("INSERT OR REPLACE INTO state(name, value) VALUES ('boot', ?)", (index.boot,))
    unlink_all(b[2] for b in bad if b[2])  # damaged: the wrong size
    report.rows_dropped += len(bad)
    adopt(index, usable, report, now)
    if report.rows_dropped or report.adopted or report.unaccounted or report.temp_files_removed:
        log.warning(
            "store recovery: %d temp files removed, %d slice rows dropped, %d slice files "
            "adopted, %d left unaccounted (not deleted)",
            report.temp_files_removed,
            report.rows_dropped,
            report.adopted,
            report.unaccounted,
        )


def recount(c: sqlite3.Connection) -> None:
    """Stored and used bytes, from the slice rows."""
    c.execute(
        "UPDATE objects SET stored = "
        "(SELECT COALESCE(SUM(size), 0) FROM slices s WHERE s.key = objects.key)"
    )
    c.execute(
        "UPDATE roots SET used = "
        "(SELECT COALESCE(SUM(stored), 0) FROM objects o WHERE o.root = roots.id)"
    )


def remove_doomed(index: Index) -> int:
    """Unlink the files the index doomed (a deletion interrupted after its commit)."""
    paths = [p for (p,) in index.conn().execute("SELECT path FROM doomed")]
    index.unlink(paths)
    return len(paths)


def _rows_without_their_file(index: Index, roots: dict[int, Root]) -> list[tuple[str, int, str]]:
    """Slice rows on usable roots whose file is missing or of another size:
    (key, idx, the file's path when it exists)."""
    bad: list[tuple[str, int, str]] = []
    rows = index.conn().execute(
        "SELECT s.key, s.idx, s.size + s.tail, o.gen, o.root "
        "FROM slices s JOIN objects o USING (key)"
    )
    for key, idx, size, gen, rid in rows.fetchall():
        root = roots.get(rid)
        if root is None or root.failed:
            continue  # kept: the disk may come back
        path = file_path(root.path, key, gen, idx)
        try:
            if os.stat(path).st_size != size:
                bad.append((key, idx, path))
        except OSError:
            bad.append((key, idx, ""))
    return bad


def adopt(index: Index, roots: list[Root], report: RecoveryReport, now: float) -> None:
    """Index the slice files no row names, from their trailers, as capacity
    allows; count the rest. Under the write lock: renames happen inside write
    transactions, so no writer is between its rename and its row meanwhile."""
    with index.write() as c:
        names: dict[int, set[str]] = {r.id: set() for r in roots}
        for key, idx, gen, rid in c.execute(
            "SELECT s.key, s.idx, o.gen, o.root FROM slices s JOIN objects o USING (key)"
        ):
            if rid in names:
                names[rid].add(f"{slice_name(key)}.{gen}.{idx}")
        for root in roots:
            for path, name in slice_files(root):
                if name in names[root.id]:
                    continue
                if adopt_file(c, root, path, name, now):
                    report.adopted += 1
                else:
                    report.unaccounted += 1
                    log.warning("slice file %s is not in the index; left alone", path)


def adopt_file(c: sqlite3.Connection, root: Root, path: str, name: str, now: float) -> bool:
    try:
        found = read_trailer(path)
    except OSError:
        return False
    if found is None:
        return False
    rec, tail = found
    try:
        key, gen, idx, length = rec["key"], rec["gen"], rec["idx"], rec["length"]
        if name != f"{slice_name(key)}.{gen}.{idx}":
            return False
        row = c.execute("SELECT gen, root FROM objects WHERE key=?", (key,)).fetchone()
        if row is not None and tuple(row) != (gen, root.id):
            return False  # another version of the object is held
        cap, used = c.execute("SELECT capacity, used FROM roots WHERE id=?", (root.id,)).fetchone()
        if used + length > cap:
            return False
        if row is None:
            c.execute(INSERT_OBJECT_SQL, _object_values(rec, root.id, now))
        c.execute(
            "INSERT INTO slices(key, idx, size, checksum, tail) VALUES (?, ?, ?, ?, ?)",
            (key, idx, length, rec["checksum"], tail),
        )
    except (KeyError, TypeError, sqlite3.IntegrityError):
        return False
    c.execute("UPDATE objects SET stored = stored + ? WHERE key=?", (length, key))
    c.execute("UPDATE roots SET used = used + ? WHERE id=?", (length, root.id))
    return True


def _object_values(rec: dict, root_id: int, now: float) -> tuple:
    """``INSERT_OBJECT_SQL``'s values for the object a trailer describes."""
    return (
        rec["key"], rec["gen"], root_id, rec["size"], rec["etag"], rec["slice_size"], 0,
        now, now, now, rec.get("fresh_until"), rec.get("stale_if_error") or 0,
        int(bool(rec.get("must_revalidate"))), rec.get("cache_control"),
        rec["content_type"], rec["last_modified"], rec.get("born"),
    )  # fmt: skip


def tidy(index: Index, roots: list[Root], now: float) -> tuple[int, int]:
    """Remove temp files of writers that died and files the index doomed, and
    adopt slice files no row names. Safe while others write: their temp files
    carry live pids, and renames happen under the write lock adoption holds.
    Returns (temp files removed, slice files adopted)."""
    temps = sum(clean_temp(r, now, mine=False) for r in roots)
    remove_doomed(index)
    report = RecoveryReport()
    adopt(index, roots, report, now)
    return temps, report.adopted


# -- checking slices -----------------------------------------------------------------


def all_slices(index: Index) -> list[SliceRow]:
    return (
        index.conn()
        .execute(
            "SELECT s.key, s.idx, s.size, s.checksum, o.gen, o.root "
            "FROM slices s JOIN objects o USING (key) ORDER BY o.root, s.key, s.idx"
        )
        .fetchall()
    )


def next_slices(index: Index, budget: int) -> list[SliceRow]:
    """The slices after the scrub's cursor, about ``budget`` bytes of them; the
    cursor moves past them (shared by every process: each slice is claimed once
    per pass) and starts over at the end."""
    with index.write() as c:
        cur = c.execute("SELECT value FROM state WHERE name='scrub_cursor'").fetchone()
        after_key, _, after_idx = (cur[0] if cur else "").rpartition("\0")
        out = _slices_after(c, after_key, int(after_idx or -1), budget)
        if not out and after_key:  # the end of a pass: start over
            out = _slices_after(c, "", -1, budget)
        cursor = f"{out[-1][0]}\0{out[-1][1]}" if out else ""
        c.execute("INSERT OR REPLACE INTO state(name, value) VALUES ('scrub_cursor', ?)", (cursor,))
    return out


def _slices_after(c: sqlite3.Connection, key: str, idx: int, budget: int) -> list[SliceRow]:
    rows = c.execute(
        "SELECT s.key, s.idx, s.size, s.checksum, o.gen, o.root "
        "FROM slices s JOIN objects o USING (key) WHERE (s.key, s.idx) > (?, ?) "
        "ORDER BY s.key, s.idx LIMIT ?",
        (key, idx, min(10_000, max(16, budget // 4096))),
    ).fetchall()
    out, total = [], 0
    for row in rows:
        out.append(row)
        total += row[2]
        if total >= budget:
            break
    return out


def check(
    rows: list[SliceRow],
    roots: dict[int, Root],
    on_bad: Callable[[SliceRow, OSError | None], None],
    progress: Callable[[int], None] | None = None,
) -> tuple[ScrubReport, list[SliceRow]]:
    """Reread ``rows``' slices; ``on_bad`` each that fails (with the error when
    it could not be read). The report and the rows that passed."""
    report = ScrubReport()
    good: list[SliceRow] = []
    for row in rows:
        key, idx, size, digest, gen, rid = row
        root = roots.get(rid)
        if root is None or root.failed:
            continue
        try:
            ok = read_checksum(file_path(root.path, key, gen, idx), size) == digest
            exc = None
        except OSError as e:
            ok, exc = False, e
        report.slices_checked += 1
        report.bytes_checked += size
        if progress:
            progress(size)
        if ok:
            good.append(row)
        else:
            report.failures += 1
            report.failed_keys.append(key)
            on_bad(row, exc)
    return report, good


def mark_verified(index: Index, rows: list[SliceRow]) -> None:
    """``rows`` passed a check in this start."""
    if rows:
        with index.write() as c:
            c.executemany(
                "UPDATE slices SET verified=? WHERE key=? AND idx=?",
                [(index.boot, r[0], r[1]) for r in rows],
            )
