"""The roots' health: full disks, damaged slices, device errors, verification.

Rules it keeps (docs/appliance.md, "What the store promises", has the why):
- a full disk is a condition of the moment: the root takes no writes while its
  filesystem has less than its reserve free (``files.room_on_disk``), objects
  are evicted there to make room, and it takes writes again once there is room
  (looked at again at most every ``full_recheck`` seconds); it is never failed
  for it;
- damage is contained: a missing, short, unreadable or corrupt slice drops that
  slice (the next request fetches it again);
- a root fails only when device errors hit ``DEVICE_ERROR_FILES`` different
  files on it within ``DEVICE_ERROR_WINDOW`` seconds; failing it keeps its rows
  and its files for a restart that finds it working;
- a slice is verified (reread, its xxh3-64 compared) the first time it is
  served after each start; what was written in this start counts as verified.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable

from edge.store import upkeep
from edge.store.files import Root, is_device_error, is_full_error, room_on_disk
from edge.store.index import Index, StoredObject, bump, doom, note_change
from edge.store.upkeep import ScrubReport, SliceRow

log = logging.getLogger("edgefleet.store")

DEVICE_ERROR_FILES = 3  # device errors on this many different files of a root...
DEVICE_ERROR_WINDOW = 600.0  # ...within this many seconds fail the root
FULL_RECHECK_SECONDS = 1.0  # how often a full root looks for room again

EvictForDisk = Callable[[Root, int, tuple[str, ...]], None]  # (root, bytes short, keys to keep)


class Health:
    """What the store knows of its roots' condition, and what it does about it."""

    def __init__(
        self,
        index: Index,
        roots: dict[int, Root],
        clock: Callable[[], float],
        evict_for_disk: EvictForDisk,
    ) -> None:
        self.index, self.roots, self.clock = index, roots, clock
        self.evict_for_disk = evict_for_disk
        self.full_recheck = FULL_RECHECK_SECONDS
        self._holds: dict[str, bool] = {}  # root path: the index is on its disk

    # -- full disks ------------------------------------------------------------------

    def writable(self, root: Root, size: int = 0, key: str = "") -> bool:
        """May ``size`` bytes (of ``key``) be written to ``root`` now? Not when it
        failed, nor while its disk is short of its reserve and eviction there
        cannot make the room."""
        if root.failed:
            return False
        now = time.monotonic()
        if root.full and now - root.full_checked < self.full_recheck:
            return False
        root.full_checked = now
        try:
            holds_index = self._holds_index(root)
            free, reserve = room_on_disk(root.path, holds_index)
            if free - size < reserve:  # short of room: evict there, and look again
                self.disk_full(root, reserve + size - free, (key,))
                free, reserve = room_on_disk(root.path, holds_index)
        except OSError:
            return not root.full
        if free - size < reserve:
            return False
        if root.full:
            log.warning("store root %s has room again: storing resumes", root.path)
        root.full = False
        return True

    def _holds_index(self, root: Root) -> bool:
        """Is the index on ``root``'s disk? Asked on every write; what a disk is
        does not change while the store runs, so each root is looked at once."""
        held = self._holds.get(root.path)
        if held is None:
            try:
                index_dir = os.path.dirname(os.path.abspath(self.index.path))
                held = os.stat(root.path).st_dev == os.stat(index_dir).st_dev
            except OSError:
                return False  # not known: asked again next time
            self._holds[root.path] = held
        return held

    def disk_full(self, root: Root, short: int = 1, keep: tuple[str, ...] = ()) -> None:
        """``root``'s disk is ``short`` bytes short of room: no writes there until
        it has room, and objects other than ``keep`` evicted there to make it."""
        if not root.full:
            log.warning("store root %s is short of room on its disk: evicting there", root.path)
        root.full, root.full_checked = True, time.monotonic()
        self.evict_for_disk(root, short, keep)

    def write_error(self, exc: OSError, root: Root, keys: tuple[str, ...]) -> None:
        """A write to ``root`` of the objects ``keys`` (one, or the several of a
        group commit) failed: a full disk, a device error, or neither. A full
        disk evicts other objects, never these: their slices already stored are
        what their players are being served (the room checked before the write
        was taken meanwhile, by another slice written at the same time or by
        something else on that disk)."""
        if is_full_error(exc):
            self.disk_full(root, 1, keys)
            return
        log.error("store write on %s failed: %s", root.path, exc)
        with contextlib.suppress(sqlite3.Error), self.index.write() as c:
            bump(c, "write_errors")
        if is_device_error(exc):
            self.device_error(root, exc.filename or f"a write at {self.clock()}", exc)

    # -- damaged slices and device errors ---------------------------------------------

    def slice_damaged(
        self,
        key: str,
        gen: str,
        idx: int,
        exc: OSError | None = None,
        *,
        checksum_failed: bool = False,
    ) -> str:
        """A slice could not be served as its row says: drop it (the next request
        fetches it again) and say why ("missing", "short", "corrupt",
        "unreadable", or "" when it was fine after all). A device error also
        counts towards failing its root."""
        obj = self.index.lookup(key, self.roots)
        if obj is None or obj.gen != gen or idx not in obj.slices:
            return ""
        path = obj.slice_path(idx)
        try:
            why = "short" if os.stat(path).st_size < obj.slices[idx] else ""
        except FileNotFoundError:
            why = "missing"
        except OSError as e:
            why, exc = "unreadable", e
        if not why and checksum_failed:
            why = "corrupt"
        elif not why and exc is not None and is_device_error(exc):
            why = "unreadable"
        if not why:
            return ""
        log.error("slice %d of %r is %s; dropped (it is fetched again)", idx, key, why)
        self.drop_slice(obj, idx, "checksum_failures" if why == "corrupt" else "damaged_slices")
        if why == "unreadable" and exc is not None and is_device_error(exc):
            self.device_error(obj.root, path, exc)
        return why

    def drop_slice(self, obj: StoredObject, idx: int, counter: str) -> None:
        files: list[str] = []
        with self.index.write() as c:
            g = c.execute("SELECT gen FROM objects WHERE key=?", (obj.key,)).fetchone()
            row = c.execute(
                "SELECT size FROM slices WHERE key=? AND idx=?", (obj.key, idx)
            ).fetchone()
            if row is not None and g is not None and g[0] == obj.gen:
                c.execute("DELETE FROM slices WHERE key=? AND idx=?", (obj.key, idx))
                c.execute("UPDATE objects SET stored = stored - ? WHERE key=?", (row[0], obj.key))
                c.execute("UPDATE roots SET used = used - ? WHERE id=?", (row[0], obj.root.id))
                note_change(c, obj.key, self.clock())
                files = doom(c, [obj.slice_path(idx)])
            bump(c, counter)
        obj.slices.pop(idx, None)
        self.index.unlink(files)

    def device_error(self, root: Root, path: str, exc: OSError) -> None:
        """Count a device error on ``root``; fail it when they hit
        ``DEVICE_ERROR_FILES`` different files within ``DEVICE_ERROR_WINDOW``."""
        now = time.monotonic()
        seen = root.device_errors
        for p, t in list(seen.items()):
            if now - t > DEVICE_ERROR_WINDOW:
                del seen[p]
        seen[path] = now
        with contextlib.suppress(sqlite3.Error), self.index.write() as c:
            bump(c, "device_errors")
        if len(seen) >= DEVICE_ERROR_FILES:
            self.mark_root_failed(
                root.id, f"{len(seen)} files failed with device errors, the last: {exc}"
            )

    def mark_root_failed(self, root_id: int, reason: str) -> None:
        """Stop using a root (no writes, nothing served from it); its rows and
        files are kept for a restart that finds it working."""
        root = self.roots.get(root_id)
        if root is None or root.failed:
            return
        log.error("store root %s failed (%s): not used until a restart finds it working",
                  root.path, reason)  # fmt: skip
        root.failed, root.reason = True, reason
        with contextlib.suppress(sqlite3.Error), self.index.write() as c:
            c.execute("UPDATE roots SET failed=1 WHERE id=?", (root_id,))
            note_change(c, "", self.clock())
            bump(c, "failed_roots")

    def refresh_roots(self) -> None:
        """Agree with the index on which roots have failed (another process may
        have marked one failed, or a restart's recovery found it working again)."""
        for rid, failed in self.index.conn().execute("SELECT id, failed FROM roots"):
            root = self.roots.get(rid)
            if root is None:
                continue
            if failed and not root.failed:
                root.failed, root.reason = True, "marked failed by another process"
            elif not failed and root.failed:
                root.failed, root.reason = False, ""

    # -- verification -------------------------------------------------------------------

    def verify(self, obj: StoredObject, idxs: Iterable[int]) -> set[int]:
        """Of slices ``idxs`` of ``obj``, those whose bytes check out (each read
        once per start: ``StoredObject.checked``); the others are dropped."""
        idxs = list(idxs)
        want = [i for i in idxs if i in obj.slices and i not in obj.checked]
        if want:
            marks = ",".join("?" * len(want))
            rows = self.index.conn().execute(
                f"SELECT key, idx, size, checksum FROM slices WHERE key=? AND idx IN ({marks})",
                (obj.key, *want),
            )
            self.check([(k, i, n, d, obj.gen, obj.root.id) for k, i, n, d in rows])
            fresh = self.index.lookup(obj.key, self.roots)
            kept = fresh.checked if fresh is not None and fresh.gen == obj.gen else set()
            for idx in want:
                if idx in kept:
                    obj.checked.add(idx)
                else:
                    obj.slices.pop(idx, None)
        return {i for i in idxs if i in obj.checked}

    def check(
        self, rows: list[SliceRow], progress: Callable[[int], None] | None = None
    ) -> ScrubReport:
        """Reread ``rows``' slices: drop what fails, mark the rest verified."""

        def bad(row: SliceRow, exc: OSError | None) -> None:
            key, idx, _, _, gen, _ = row
            self.slice_damaged(key, gen, idx, exc, checksum_failed=exc is None)

        report, good = upkeep.check(rows, self.roots, bad, progress)
        upkeep.mark_verified(self.index, good)
        return report
