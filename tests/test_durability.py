"""What the store promises (docs/appliance.md, "What the store promises").

Real stores on disk; tmpfs mounts where a full disk is the point (skipped
with the reason when mounting is not allowed). Each test asserts nothing
lost and nothing wrong served.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ballast, mount_tmpfs

from edge.core.meta import ObjectMeta
from edge.store import RootSpec, Store, StoreError
from edge.store.direct import write_slice
from edge.store.files import IDENTITY, Staged
from edge.store.group import Pending
from edge.store.index import StoredObject

SLICE = 64 * 1024


def make_store(tmp: Path, roots=("root0",), index="index.sqlite", cap=64 * SLICE) -> Store:
    specs = []
    for name in roots:
        (tmp / name).mkdir(exist_ok=True)
        specs.append(RootSpec(str(tmp / name), cap))
    store = Store(specs, str(tmp / index), slice_size=SLICE)
    store.open()
    return store


def fill(store: Store, n: int = 6, seed: int = 1) -> dict[str, bytes]:
    rng = random.Random(seed)
    out = {}
    for i in range(n):
        data = rng.randbytes(rng.randint(1, 3) * SLICE - rng.randint(0, 999))
        key = f"titles/{i}/seg.m4s"
        store.put(key, data)
        out[key] = data
    return out


def slice_files(tmp: Path) -> set[Path]:
    return {p for p in tmp.rglob("slices/**/*") if p.is_file()}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a disk that fills up."""
    yield from mount_tmpfs(tmp_path / "disk", "2m")


@pytest.fixture
def index_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs that holds a root and the index."""
    yield from mount_tmpfs(tmp_path / "disk", "24m")


@pytest.fixture
def few_inodes_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs with room for 64 files and directories: a disk that runs
    out of inodes before bytes."""
    yield from mount_tmpfs(tmp_path / "disk", "2m,nr_inodes=64")


# -- case 1: losing the index loses nothing --------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "elsewhere"])
def test_lost_index_is_rebuilt_from_the_roots(tmp_path: Path, how: str) -> None:
    store = make_store(tmp_path, roots=("root0", "root1"))
    held = fill(store)
    store.close()
    files = slice_files(tmp_path)
    if how == "deleted":
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"index.sqlite{suffix}").unlink(missing_ok=True)
    index = tmp_path / ("index.sqlite" if how == "deleted" else "new.sqlite")
    store = Store(store.specs, str(index), slice_size=SLICE)
    report = store.open()
    assert report.adopted == len(files) and report.unaccounted == 0
    assert slice_files(tmp_path) == files  # nothing deleted
    for key, data in held.items():
        assert store.read(key) == data
    assert sum(u.used for u in store.usage()) == sum(len(d) for d in held.values())


def test_rebuild_index_command(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    held = fill(store)
    store.close()
    files = slice_files(tmp_path)
    argv = [sys.executable, "-m", "edge.cli", "store", "rebuild-index",
            "--store", f"{tmp_path / 'root0'}=64MiB", "--index", str(tmp_path / "index.sqlite"),
            "--slice-size", "64KiB"]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["slice_files_adopted"] == len(files)
    assert list(tmp_path.glob("index.sqlite.replaced-*"))  # the old one is kept aside
    store = Store(store.specs, str(tmp_path / "index.sqlite"), slice_size=SLICE)
    store.open()
    assert {k: store.read(k) for k in held} == held
    assert slice_files(tmp_path) == files


def test_an_index_of_another_store_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    a = make_store(tmp_path / "a")
    fill(a, 2)
    a.close()
    (tmp_path / "b").mkdir()
    b = make_store(tmp_path / "b")
    b.close()
    files = slice_files(tmp_path / "a")
    other = Store(a.specs, str(tmp_path / "b" / "index.sqlite"), slice_size=SLICE)
    with pytest.raises(StoreError, match="rebuild-index"):
        other.open()
    assert slice_files(tmp_path / "a") == files


def test_an_unmounted_disk_is_failed_not_written_to(tmp_path: Path) -> None:
    store = make_store(tmp_path, roots=("root0", "root1"))
    held = fill(store)
    store.close()
    # root1's disk is not mounted: its mount point is an empty directory
    (tmp_path / "root1").rename(tmp_path / "disk1")
    (tmp_path / "root1").mkdir()
    store = Store(store.specs, str(tmp_path / "index.sqlite"), slice_size=SLICE)
    report = store.open()
    assert len(report.failed_roots) == 1 and "mounted" in report.failed_roots[0]
    for i in range(4):
        assert store.put(f"new/{i}", b"n" * 100).root.path.endswith("root0")
    assert list((tmp_path / "root1").iterdir()) == []  # nothing written on the system disk
    store.close()
    # mounted again: everything it held is served again
    (tmp_path / "root1").rmdir()
    (tmp_path / "disk1").rename(tmp_path / "root1")
    store = Store(store.specs, str(tmp_path / "index.sqlite"), slice_size=SLICE)
    assert store.open().failed_roots == []
    assert {k: store.read(k) for k in held} == held


def test_an_evicted_file_does_not_come_back_after_a_crash(tmp_path: Path, monkeypatch) -> None:
    store = make_store(tmp_path)
    held = fill(store, 2)
    gone = next(iter(held))
    monkeypatch.setattr(Store, "_unlink", lambda self, paths: None)  # dies before unlinking
    assert store.remove(gone)
    monkeypatch.undo()
    store.close()
    store = Store(store.specs, str(tmp_path / "index.sqlite"), slice_size=SLICE)
    report = store.open()
    assert report.doomed_removed > 0 and report.adopted == 0
    assert store.lookup(gone) is None


# -- case 8: cleanup touches only this store's own temp files ------------------------------


def test_cleanup_leaves_a_live_probe_alone(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    tmp = Path(next(iter(store.roots.values())).tmp_dir)
    live_probe = tmp / f"probe.{os.getppid()}.0123abcd"  # another process probing now
    dead_probe = tmp / "probe.999999999.0123abcd"
    foreign = tmp / "notes.txt"
    for p in (live_probe, dead_probe, foreign):
        p.write_bytes(b"x")
    assert store.tidy()[0] == 1
    assert live_probe.exists() and foreign.exists() and not dead_probe.exists()
    store.close()
    store.open()  # recovery at start-up keeps to the same names
    assert live_probe.exists() and foreign.exists()


# -- case 2: a full disk is a condition of the moment --------------------------------------


def test_full_disk_at_start_keeps_the_root(tmp_path: Path, small_disk: Path) -> None:
    index = str(tmp_path / "index.sqlite")
    store = Store([RootSpec(str(small_disk), 64 * SLICE)], index, slice_size=SLICE)
    store.open()
    held = fill(store, 4)
    store.close()
    ballast(small_disk)  # something else filled the disk while it was down
    store = Store(store.specs, index, slice_size=SLICE)
    report = store.open()
    assert report.failed_roots == [] and report.full_roots == [str(small_disk)]
    assert {k: store.read(k) for k in held} == held  # serves what it holds
    # a write evicts to make room on the disk, and is stored
    obj = store.ensure_object("new", ObjectMeta(SLICE, '"n"', 0, "video/mp4"))
    assert store.put_slice(obj, 0, b"n" * SLICE)
    assert store.counters()["evictions"] > 0 and store.read("new") == b"n" * SLICE
    for key in held:  # evicted, or still what was stored
        obj = store.lookup(key)
        assert obj is None or store.read(key) == held[key]


def test_full_disk_stores_nothing_until_there_is_room(tmp_path: Path, small_disk: Path) -> None:
    index = str(tmp_path / "index.sqlite")
    store = Store([RootSpec(str(small_disk), 64 * SLICE)], index, slice_size=SLICE)
    store.open()
    weight = ballast(small_disk)
    obj = store.ensure_object("new", ObjectMeta(SLICE, '"n"', 0, "video/mp4"))
    assert not store.put_slice(obj, 0, b"n" * SLICE)  # nothing to evict: served unstored
    assert not any(r.failed for r in store.roots.values())
    assert list((small_disk / "tmp").iterdir()) == []
    weight.unlink()
    store.health.full_recheck = 0
    assert store.put_slice(obj, 0, b"n" * SLICE)  # room again: stored
    assert store.read("new") == b"n" * SLICE


def test_a_write_that_finds_the_disk_full_keeps_its_own_object(
    tmp_path: Path, small_disk: Path
) -> None:
    """A slice write fails with ENOSPC although room was there when it was
    checked (two slices of a miss written at once, or something else writing on
    that disk): eviction makes room with other objects, never with the one
    being written, whose slices already stored stay served."""
    index = str(tmp_path / "index.sqlite")
    store = Store([RootSpec(str(small_disk), 64 * SLICE)], index, slice_size=SLICE)
    store.open()
    data = random.Random(5).randbytes(3 * SLICE)
    obj = store.ensure_object("movie", ObjectMeta(len(data), '"m"', 0, "video/mp4"))
    for idx in (0, 1):
        assert store.put_slice(obj, idx, data[idx * SLICE : (idx + 1) * SLICE])
    ballast(small_disk)  # the room is gone between the check and the write
    sink = store.open_stage(obj, 2)  # the write put_slice makes after its check
    with pytest.raises(OSError) as failed:
        sink.write_all([data[2 * SLICE :]])
    assert failed.value.errno == errno.ENOSPC
    assert store.counters()["disk_full"] > 0
    assert not any(r.failed for r in store.roots.values())
    kept = store.lookup("movie")
    assert kept is not None and kept.gen == obj.gen and set(kept.slices) == {0, 1}
    assert store.read_slice("movie", 0) + store.read_slice("movie", 1) == data[: 2 * SLICE]
    assert list((small_disk / "tmp").iterdir()) == []


def test_a_full_disk_in_a_group_commit_keeps_every_object_of_the_batch(
    tmp_path: Path, few_inodes_disk: Path
) -> None:
    """Slices of two objects committed together; placing them finds the disk
    full (no inode left for a new slice directory). Eviction makes room with
    other objects, never with one of the batch: the object whose earlier slice
    is stored keeps it, whichever of the two came first in the batch."""
    disk = few_inodes_disk
    index = str(tmp_path / "index.sqlite")
    store = Store([RootSpec(str(disk), 64 * SLICE)], index, slice_size=SLICE)
    store.open()
    data = random.Random(6).randbytes(2 * SLICE)
    playing = store.ensure_object("playing", ObjectMeta(len(data), '"p"', 0, "video/mp4"))
    assert store.put_slice(playing, 0, data[:SLICE])
    new = store.ensure_object("new", ObjectMeta(len(data), '"n"', 0, "video/mp4"))

    def staged(obj: StoredObject, idx: int) -> Pending[tuple[StoredObject, Staged]]:
        part, hook = data[idx * SLICE : (idx + 1) * SLICE], store._count_write_error
        return Pending((obj, write_slice(obj.root, obj.about(), idx, [part], hook)))

    batch = [staged(new, 0), staged(playing, 1)]  # the new object first
    n = 0
    with contextlib.suppress(OSError):  # every inode taken: no directory can be made
        while True:
            (disk / f"ballast{n}").touch()
            n += 1
    store._commit_slices(batch)
    assert [p.stored for p in batch] == [False, False]
    assert store.counters()["disk_full"] > 0
    kept = store.lookup("playing")
    assert kept is not None and kept.gen == playing.gen and set(kept.slices) == {0}
    assert store.read_slice("playing", 0) == data[:SLICE]
    assert store.lookup("new") is not None  # its entry too: its writer goes on
    assert list((disk / "tmp").iterdir()) == []


def test_full_disk_writes_resume_after_room(tmp_path: Path, index_disk: Path) -> None:
    """The index on the small disk too, and a configured capacity larger than
    the disk: the store stops short of the disk's end and keeps the index's
    headroom, evicting to make room; a restart works."""
    index = str(index_disk / "index.sqlite")
    store = Store([RootSpec(str(index_disk), 1 << 30)], index, slice_size=SLICE)
    store.open()
    store.health.full_recheck = 0
    rng = random.Random(3)
    stored = {}
    for i in range(48):  # 48 x 512 KiB: the disk's size
        data = rng.randbytes(8 * SLICE)
        obj = store.ensure_object(f"k{i}", ObjectMeta(len(data), f'"{i}"', 0, "video/mp4"))
        if all(store.put_slice(obj, n, data[n * SLICE : (n + 1) * SLICE]) for n in range(8)):
            stored[f"k{i}"] = data
    assert store.counters().get("disk_full", 0) > 0
    assert not any(r.failed for r in store.roots.values())
    store.close()
    store = Store(store.specs, index, slice_size=SLICE)
    report = store.open()  # the index could write: start-up works
    assert report.failed_roots == []
    kept = {o.key for o in store.list_objects(complete_only=True)}
    assert kept and "k47" in kept
    for key in kept:
        assert store.read(key) == stored[key]


# -- case 3 and 5: damage is contained -------------------------------------------------------


def test_short_slice_drops_only_that_slice(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    held = fill(store)
    victim = next(k for k, d in held.items() if len(d) > SLICE)
    obj = store.lookup(victim)
    with open(obj.slice_path(0), "r+b") as f:
        f.truncate(1000)
    # what the connection reports when sendfile finds the file short
    why = store.slice_damaged(victim, obj.gen, 0, OSError(errno.EIO, "slice file shorter"))
    assert why == "short"
    assert not any(r.failed for r in store.roots.values())
    again = store.lookup(victim)
    assert 0 not in again.slices and set(again.slices) == set(obj.slices) - {0}
    for key, data in held.items():
        if key != victim:
            assert store.read(key) == data
    assert store.counters()["damaged_slices"] == 1
    # the slice fetched again is stored again
    assert store.put_slice(again, 0, held[victim][:SLICE])
    assert store.read(victim) == held[victim]
    store.close()
    report = Store(store.specs, str(tmp_path / "index.sqlite"), slice_size=SLICE).open()
    assert report.unaccounted == 0 and report.rows_dropped == 0


def test_missing_slice_is_dropped_and_stored_again(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    held = fill(store, 2)
    key = next(iter(held))
    obj = store.lookup(key)
    os.unlink(obj.slice_path(0))
    assert (
        store.slice_damaged(key, obj.gen, 0, FileNotFoundError(errno.ENOENT, "gone")) == "missing"
    )
    assert store.put_slice(store.lookup(key), 0, held[key][:SLICE])
    assert store.read(key) == held[key]


def test_device_errors_fail_a_root_only_when_repeated(tmp_path: Path) -> None:
    store = make_store(tmp_path, roots=("root0", "root1"))
    held = fill(store, 8)
    root = next(iter(store.roots.values()))
    on_it = [o for o in store.list_objects() if o.root.id == root.id]
    assert len(on_it) >= 3
    eio = OSError(errno.EIO, "Input/output error")
    files = slice_files(tmp_path)
    for n, obj in enumerate(on_it[:3], 1):
        assert store.slice_damaged(obj.key, obj.gen, 0, eio) == "unreadable"
        assert root.failed == (n == 3)  # one or two bad files cost their slices only
    for obj in on_it[3:]:
        assert store.lookup(obj.key) is None  # not served from a failed root
    assert all(p.exists() for p in files if not any(o.slice_path(0) == str(p) for o in on_it[:3]))
    store.close()
    # a restart finds the disk working: what it held is served again
    store = Store(store.specs, str(tmp_path / "index.sqlite"), slice_size=SLICE)
    assert store.open().failed_roots == []
    for obj in on_it[3:]:
        assert store.read(obj.key) == held[obj.key]


# -- case 4: wrong bytes are never served ------------------------------------------------------


def flip(path: str, at: int = 100) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(16)
        f.seek(at)
        f.write(bytes(x ^ 0xFF for x in b))


def test_corrupt_slice_is_caught_before_it_is_served(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    held = fill(store)
    key = next(k for k, d in held.items() if len(d) > SLICE)
    obj = store.lookup(key)
    assert obj.checked == set(obj.slices)  # written in this start: verified
    store.close()
    flip(obj.slice_path(1))
    store = Store(store.specs, str(tmp_path / "index.sqlite"), slice_size=SLICE)
    store.open()  # recovery checks sizes only: the flip is not seen here
    again = store.lookup(key)
    assert again.checked == set()  # a new start: nothing verified yet
    good = store.verify(again, range(again.slice_count))
    assert 1 not in good and good == set(again.slices)
    assert store.counters()["checksum_failures"] == 1
    assert 1 not in store.lookup(key).slices
    # a worker process sees what this start verified
    worker = Store(store.specs, str(tmp_path / "index.sqlite"), slice_size=SLICE)
    worker.open(recover=False)
    assert worker.lookup(key).checked == good
    for k, data in held.items():
        if k != key:
            o = store.lookup(k)
            assert store.verify(o, range(o.slice_count)) == set(o.slices)
            assert store.read(k) == data


def test_scrub_step_walks_the_store(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    held = fill(store, 8)
    bad = next(iter(held))
    flip(store.lookup(bad).slice_path(0))
    checked = failures = 0
    total = sum(len(store.lookup(k).slices) for k in held)
    while checked < total:
        report = store.scrub_step(2 * SLICE)
        assert report.slices_checked > 0
        checked += report.slices_checked
        failures += report.failures
    assert failures == 1 and 0 not in store.lookup(bad).slices
    assert store.counters()["checksum_failures"] == 1
    assert store.scrub_step(10 * SLICE).slices_checked > 0  # starts over


# -- case 6: a root must exist ------------------------------------------------------------------


def test_missing_root_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "mnt" / "disk9" / "edgefleet"
    store = Store([RootSpec(str(missing), 10 * SLICE)], str(tmp_path / "index.sqlite"))
    with pytest.raises(StoreError, match=str(missing)):
        store.open()
    argv = [sys.executable, "-m", "edge.cli", "serve", "--store", f"{missing}=10MiB",
            "--index", str(tmp_path / "index.sqlite"), "--listen", "127.0.0.1:0"]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and str(missing) in out.stderr and "does not exist" in out.stderr
    assert not (tmp_path / "mnt").exists()


def test_a_new_root_gets_its_identity(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    ident = json.loads((tmp_path / "root0" / IDENTITY).read_text())
    assert ident["store"] == store.get_state("store_id") and ident["root"]


# -- case 7: durable when it says stored ---------------------------------------------------------


def test_stored_means_synced(tmp_path: Path, monkeypatch) -> None:
    store = make_store(tmp_path)
    assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src: str, dst: str) -> None:
        events.append(("rename", dst))
        real_rename(src, dst)

    store._conn().set_trace_callback(
        lambda sql: events.append(("sql", sql)) if sql == "COMMIT" else None
    )
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    obj = store.ensure_object("seg.m4s", ObjectMeta(SLICE, '"e"', 0, "video/mp4"))
    events.clear()
    assert store.put_slice(obj, 0, b"s" * SLICE)
    final = obj.slice_path(0)
    order = [e for e in events if e[0] != "fsync" or e[1] != final]
    kinds = [(k, v) for k, v in order]
    i_data = next(i for i, (k, v) in enumerate(kinds) if k == "fsync" and "/tmp/" in v)
    i_rename = kinds.index(("rename", final))
    i_dir = kinds.index(("fsync", os.path.dirname(final)))
    i_commit = next(i for i, (k, _) in enumerate(kinds) if k == "sql" and i > i_rename)
    assert i_data < i_rename < i_dir < i_commit


def test_slices_staged_together_share_a_commit_each_synced_first(
    tmp_path: Path, monkeypatch
) -> None:
    """Group commit: slices staged while another commit holds the index's
    write lock are committed together, in one transaction, and none is said
    stored before its bytes were fsynced, renamed, its directory fsynced and
    the commit made, in that order."""
    store = make_store(tmp_path)
    holder = Store(store.specs, str(tmp_path / "index.sqlite"), slice_size=SLICE)
    holder.open(recover=False)
    objs = [
        store.ensure_object(f"t/{i}.m4s", ObjectMeta(SLICE, f'"{i}"', 0, "video/mp4"))
        for i in range(8)
    ]
    events: list[tuple[str, str]] = []
    lock = threading.Lock()

    def note(kind: str, what: str) -> None:
        with lock:
            events.append((kind, what))

    real_fsync, real_rename, real_connect = os.fsync, os.rename, sqlite3.connect

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        real_fsync(fd)
        note("fsync", path)

    def rename(src: str, dst: str) -> None:
        real_rename(src, dst)
        note("rename", f"{src} {dst}")

    def connect(*args, **kw):  # type: ignore[no-untyped-def]
        conn = real_connect(*args, **kw)
        conn.set_trace_callback(lambda sql: note("sql", sql) if sql == "COMMIT" else None)
        return conn

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(sqlite3, "connect", connect)
    holder._conn().execute("BEGIN IMMEDIATE")  # a commit under way elsewhere
    results: dict[int, bool] = {}

    def put(i: int) -> None:
        ok = store.put_slice(objs[i], 0, bytes([i]) * SLICE)
        results[i] = ok
        note("stored", objs[i].slice_path(0))

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while sum(1 for k, v in events if k == "fsync" and "/tmp/" in v) < 8:
        assert time.monotonic() < deadline, events
        time.sleep(0.01)
    holder._conn().execute("COMMIT")
    for t in threads:
        t.join(20)
    assert results == dict.fromkeys(range(8), True)
    commits = [n for n, (k, _) in enumerate(events) if k == "sql"]
    assert len(commits) <= 2  # the first to come, then the seven that waited for it
    for obj in objs:
        final = obj.slice_path(0)
        i_rename, src = next((n, v.split()[0]) for n, (k, v) in enumerate(events)
                             if k == "rename" and v.endswith(" " + final))  # fmt: skip
        i_data = events.index(("fsync", src))
        i_dir = next(n for n in range(i_rename, len(events))
                     if events[n] == ("fsync", os.path.dirname(final)))  # fmt: skip
        i_commit = next(n for n in commits if n > i_dir)
        assert i_data < i_rename < i_dir < i_commit < events.index(("stored", final))
    for obj, i in zip(objs, range(8), strict=True):
        assert store.read_slice(obj.key, 0) == bytes([i]) * SLICE


def test_a_group_commit_answers_each_slice_for_itself(tmp_path: Path) -> None:
    """In one group: the same slice twice (stored once, both told stored), a
    slice of an object removed meanwhile (not stored, its file removed) and
    one of another object (stored); no temp file is left."""
    store = make_store(tmp_path)
    holder = Store(store.specs, str(tmp_path / "index.sqlite"), slice_size=SLICE)
    holder.open(recover=False)
    meta = ObjectMeta(SLICE, '"e"', 0, "video/mp4")
    a, gone, b = (store.ensure_object(k, meta) for k in ("t/a", "t/gone", "t/b"))
    holder._conn().execute("BEGIN IMMEDIATE")
    holder._conn().execute("DELETE FROM objects WHERE key='t/gone'")
    jobs = [(a, b"a"), (a, b"a"), (gone, b"g"), (b, b"b")]
    results: dict[int, bool] = {}
    threads = [
        threading.Thread(target=lambda n=n, o=o, c=c: results.__setitem__(
            n, store.put_slice(o, 0, c * SLICE)))
        for n, (o, c) in enumerate(jobs)
    ]  # fmt: skip
    for t in threads:
        t.start()
    tmp = Path(store.roots[1].tmp_dir)
    deadline = time.monotonic() + 20
    while len(list(tmp.iterdir())) < 4:  # all four staged, waiting for the lock
        assert time.monotonic() < deadline
        time.sleep(0.01)
    holder._conn().execute("COMMIT")
    for t in threads:
        t.join(20)
    assert results == {0: True, 1: True, 2: False, 3: True}
    assert store.read_slice("t/a", 0) == b"a" * SLICE
    assert store.read_slice("t/b", 0) == b"b" * SLICE
    assert store.lookup("t/gone") is None
    assert list(tmp.iterdir()) == []
    assert {p.name.split(".")[1] for p in slice_files(tmp_path)} == {a.gen, b.gen}
    assert store.usage()[0].used == 2 * SLICE


# -- the purge that lists inside its transaction ---------------------------------------------------


def test_purge_prefix_takes_what_arrives_meanwhile(tmp_path: Path) -> None:
    a = make_store(tmp_path)
    a.put("t/1", b"1")
    b = Store(a.specs, str(tmp_path / "index.sqlite"), slice_size=SLICE)
    b.open(recover=False)
    holder = b._conn()
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock...
    purged: list[int] = []
    t = threading.Thread(target=lambda: purged.append(a.purge_prefix("t/")))
    t.start()
    time.sleep(0.3)  # ...while the purge waits for it
    holder.execute(
        "INSERT INTO objects(key, gen, root, size, etag, last_modified, content_type, "
        "slice_size, score_time, last_access, created) "
        "VALUES ('t/2', 'g', ?, 0, '\"e\"', 0, 'video/mp4', ?, 0, 0, 0)",
        (next(iter(b.roots)), SLICE),
    )
    holder.execute("COMMIT")
    t.join(10)
    assert purged == [2] and a.lookup("t/2") is None


def test_store_roots_kept_on_disk_when_taken_out(tmp_path: Path) -> None:
    store = make_store(tmp_path, roots=("root0", "root1"))
    fill(store)
    store.close()
    files = slice_files(tmp_path)
    only = Store(store.specs[:1], str(tmp_path / "index.sqlite"), slice_size=SLICE)
    only.open()
    assert slice_files(tmp_path) == files


def test_an_index_that_cannot_be_written_is_a_clear_error(tmp_path: Path, small_disk: Path) -> None:
    """Something else filled the index's filesystem to the last byte (the
    reserve protects it only from the store's own writes): start-up says which
    file cannot be written and what to do, and deletes nothing."""
    (tmp_path / "root0").mkdir()
    spec = RootSpec(str(tmp_path / "root0"), 64 * SLICE)
    store = Store([spec], str(small_disk / "index.sqlite"), slice_size=SLICE)
    store.open()
    held = fill(store, 2)
    store.close()
    files = slice_files(tmp_path / "root0")
    weight = ballast(small_disk)
    store = Store([spec], str(small_disk / "index.sqlite"), slice_size=SLICE)
    with pytest.raises(StoreError, match=r"the index .*--index"):
        store.open()
    store.close()
    assert slice_files(tmp_path / "root0") == files
    weight.unlink()
    store = Store([spec], str(small_disk / "index.sqlite"), slice_size=SLICE)
    store.open()
    assert {k: store.read(k) for k in held} == held
