"""The store's upkeep: roots at open, recovery, tidying, scrubbing.

Rules it keeps (docs/appliance.md has the why):
- at open, every configured root gets a row, a root taken out of the
  configuration loses its rows, and a root that cannot be written is failed;
- recovery brings files and rows back into agreement: temp files of dead
  writers go, rows whose file is missing or of the wrong size go, slice files
  no row names go (under the write lock, so no writer is between its rename
  and its row), used bytes are recounted;
- a scrub rereads every slice and drops (and counts) the ones that fail.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import xxhash

from edge.store.files import (
    Root,
    RootSpec,
    clean_temp,
    probe,
    remove_orphans,
    slice_name,
    unlink_all,
)
from edge.store.files import slice_path as file_path
from edge.store.index import Index, bump, drop_root_rows, note_change

log = logging.getLogger("edgefleet.store")

METADATA_ONLY_MAX_AGE = 7 * 86400.0


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


def open_roots(
    index: Index, specs: list[RootSpec], recover: bool, report: RecoveryReport, now: float
) -> dict[int, Root]:
    """A ``Root`` per configured root, probed (unless it failed in a running
    appliance and this is not a start-up: only a restart may say otherwise)."""
    roots: dict[int, Root] = {}
    with index.write() as c:
        known = {row[1]: row[0] for row in c.execute("SELECT id, path FROM roots")}
        wanted = set()
        for spec in specs:
            path = os.path.abspath(spec.path)
            wanted.add(path)
            if path in known:
                c.execute("UPDATE roots SET capacity=? WHERE id=?", (spec.capacity, known[path]))
            else:
                cur = c.execute(
                    "INSERT INTO roots(path, capacity) VALUES (?, ?)", (path, spec.capacity)
                )
                known[path] = int(cur.lastrowid or 0)
        for path, rid in known.items():
            if path not in wanted:  # a root taken out of the configuration
                drop_root_rows(c, rid, now)
                c.execute("DELETE FROM roots WHERE id=?", (rid,))
        failed_before = {rid for rid, failed in c.execute("SELECT id, failed FROM roots") if failed}
        for spec in specs:
            path = os.path.abspath(spec.path)
            root = roots[known[path]] = Root(id=known[path], path=path, capacity=spec.capacity)
            if not recover and root.id in failed_before:
                root.failed, root.reason = True, "marked failed"
                continue
            reason = probe(root)
            if reason:
                root.failed, root.reason = True, reason
                report.failed_roots.append(f"{path}: {reason}")
                log.error("store root %s is unusable (%s); its content is dropped", path, reason)
                drop_root_rows(c, root.id, now)
                c.execute("UPDATE roots SET failed=1, used=0 WHERE id=?", (root.id,))
            else:
                c.execute("UPDATE roots SET failed=0 WHERE id=?", (root.id,))
    return roots


def recover(index: Index, roots: dict[int, Root], report: RecoveryReport, now: float) -> None:
    usable = [r for r in roots.values() if not r.failed]
    for root in usable:
        report.temp_files_removed += clean_temp(root, now)
    bad = _rows_without_their_file(index, roots)
    with index.write() as c:
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
        note_change(c, "", now)
    report.rows_dropped += len(bad)
    report.orphans_removed += remove_unindexed(index, usable)
    if report.rows_dropped or report.orphans_removed or report.temp_files_removed:
        log.warning(
            "store recovery: %d temp files removed, %d slice rows dropped, %d orphans removed",
            report.temp_files_removed,
            report.rows_dropped,
            report.orphans_removed,
        )


def _rows_without_their_file(index: Index, roots: dict[int, Root]) -> list[tuple[str, int]]:
    """Slice rows whose file is missing or of another size (or on a failed root)."""
    bad: list[tuple[str, int]] = []
    rows = (
        index.conn()
        .execute(
            "SELECT s.key, s.idx, s.size, o.gen, o.root FROM slices s JOIN objects o USING (key)"
        )
        .fetchall()
    )
    for key, idx, size, gen, rid in rows:
        root = roots.get(rid)
        if root is None or root.failed:
            bad.append((key, idx))
            continue
        try:
            st = os.stat(file_path(root.path, key, gen, idx))
        except OSError:
            bad.append((key, idx))
            continue
        if st.st_size != size:
            bad.append((key, idx))
    return bad


def tidy(index: Index, roots: list[Root], now: float) -> tuple[int, int]:
    """Remove temp files of writers that died, and slice files no row names
    (a rename whose transaction never committed). Safe while others write:
    their temp files carry live pids, and renames happen under the write
    lock this holds. Returns (temp files, orphans) removed."""
    temps = sum(clean_temp(r, now, mine=False) for r in roots)
    return temps, remove_unindexed(index, roots)


def remove_unindexed(index: Index, roots: list[Root]) -> int:
    """Remove every slice file that no row names; the count. Renames happen
    inside write transactions, so while this one holds the lock no file can be
    between its rename and its row: every file no row names is an orphan."""
    removed = 0
    with index.write() as c:
        names: dict[int, set[str]] = {r.id: set() for r in roots}
        for key, idx, gen, rid in c.execute(
            "SELECT s.key, s.idx, o.gen, o.root FROM slices s JOIN objects o USING (key)"
        ):
            if rid in names:
                names[rid].add(f"{slice_name(key)}.{gen}.{idx}")
        for root in roots:
            removed += remove_orphans(root, names[root.id])
    return removed


def scrub(
    index: Index,
    roots: dict[int, Root],
    clock: Callable[[], float],
    fail_root: Callable[[int, str], None],
    progress: Callable[[int], None] | None = None,
) -> ScrubReport:
    """Reread every slice; drop and count the ones whose checksum fails."""
    report = ScrubReport()
    rows = (
        index.conn()
        .execute(
            "SELECT s.key, s.idx, s.size, s.checksum, o.gen, o.root "
            "FROM slices s JOIN objects o USING (key) ORDER BY o.root, s.key, s.idx"
        )
        .fetchall()
    )
    for key, idx, size, digest, gen, rid in rows:
        root = roots.get(rid)
        if root is None or root.failed:
            continue
        path = file_path(root.path, key, gen, idx)
        try:
            ok = _file_checksum(path) == (size, digest)
        except FileNotFoundError:
            ok = False
        except OSError as exc:
            fail_root(rid, exc.strerror or str(exc))
            continue
        report.slices_checked += 1
        report.bytes_checked += size
        if progress:
            progress(size)
        if not ok:
            report.failures += 1
            report.failed_keys.append(key)
            drop_slice(index, key, idx, gen, path, clock())
    return report


def _file_checksum(path: str) -> tuple[int, str]:
    with open(path, "rb") as f:
        h = xxhash.xxh3_64()
        n = 0
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def drop_slice(index: Index, key: str, idx: int, gen: str, path: str, now: float) -> None:
    log.error("slice %d of %r failed its checksum; dropped", idx, key)
    with index.write() as c:
        row = c.execute("SELECT size FROM slices WHERE key=? AND idx=?", (key, idx)).fetchone()
        g = c.execute("SELECT gen, root FROM objects WHERE key=?", (key,)).fetchone()
        if row is not None and g is not None and g[0] == gen:
            c.execute("DELETE FROM slices WHERE key=? AND idx=?", (key, idx))
            c.execute("UPDATE objects SET stored = stored - ? WHERE key=?", (row[0], key))
            c.execute("UPDATE roots SET used = used - ? WHERE id=?", (row[0], g[1]))
            note_change(c, key, now)
        bump(c, "checksum_failures")
    unlink_all([path])
