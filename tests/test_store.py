"""edge.store: crash-safe slices and index, capacity, eviction, recovery, scrub."""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.core.meta import ObjectMeta
from edge.store import ChecksumMismatch, NoUsableRoot, RootSpec, Store, checksum
from edge.store.files import read_trailer
from edge.store.index import Index, IndexBusy

SLICE = 64 * 1024


def open_store(tmp: Path, caps=(10 * SLICE,), **kw) -> Store:
    roots = [RootSpec(str(tmp / f"root{i}"), cap) for i, cap in enumerate(caps)]
    for spec in roots:
        os.makedirs(spec.path, exist_ok=True)
    store = Store(roots, str(tmp / "index.sqlite"), slice_size=SLICE, **kw)
    store.open()
    return store


def files_on_disk(store: Store) -> dict[str, int]:
    """Each slice file and the slice bytes it holds (before its trailer)."""
    out = {}
    for root in store.roots.values():
        for dirpath, _, names in os.walk(root.slice_dir):
            for n in names:
                p = os.path.join(dirpath, n)
                found = read_trailer(p)
                assert found is not None, p
                out[p] = os.path.getsize(p) - found[1]
    return out


def test_put_lookup_read(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    data = random.randbytes(SLICE * 2 + 5)
    obj = store.put("titles/1/seg.m4s", data)
    assert obj.slice_count == 3 and obj.complete
    again = store.lookup("titles/1/seg.m4s")
    assert again is not None and again.complete and again.meta.size == len(data)
    assert again.meta.content_type == "video/iso.segment"
    assert store.read("titles/1/seg.m4s") == data
    assert store.lookup("nope") is None
    assert [o.key for o in store.list_objects("titles/")] == ["titles/1/seg.m4s"]
    assert store.usage()[0].used == len(data)
    store.close()


def test_a_slice_in_many_pieces_is_stored_whole(tmp_path: Path) -> None:
    # a slice arrives as the origin's reads cut it: more pieces than one
    # writev takes, pieces of every size, empty ones too
    store = open_store(tmp_path)
    data = random.randbytes(SLICE)
    cuts = [0, *sorted(random.sample(range(SLICE), 3000)), SLICE, SLICE]
    pieces = [data[a:b] for a, b in itertools.pairwise(cuts)]
    meta = ObjectMeta(size=SLICE, etag='"e"', last_modified=0, content_type="video/mp4")
    obj = store.ensure_object("k", meta)
    assert store.put_slice(obj, 0, pieces)
    assert store.read("k") == data
    assert store.verify(store.lookup("k"), [0]) == {0}  # the checksum covers every piece
    store.close()


def test_empty_object(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    obj = store.put("empty.ts", b"")
    assert obj.slice_count == 0 and obj.complete
    assert store.read("empty.ts") == b""


def test_capacity_evicts_least_popular_first(tmp_path: Path) -> None:
    clock = [1000.0]
    store = open_store(tmp_path, caps=(4 * SLICE,), clock=lambda: clock[0])
    for name in ("a", "b", "c", "d"):
        store.put(name, random.randbytes(SLICE))
        clock[0] += 1
    store.record_hits({"a": (50, clock[0])})  # a is old but popular
    store.put("e", random.randbytes(SLICE))
    keys = {o.key for o in store.list_objects()}
    assert "a" in keys and "b" not in keys and "e" in keys
    assert store.usage()[0].used <= 4 * SLICE
    assert store.counters()["evictions"] >= 1


def test_pinned_content_goes_last(tmp_path: Path) -> None:
    clock = [1000.0]
    store = open_store(tmp_path, caps=(3 * SLICE,), clock=lambda: clock[0])
    store.put("pinned", random.randbytes(SLICE), pinned=True)
    clock[0] += 1
    store.put("x", random.randbytes(SLICE))
    clock[0] += 1
    store.put("y", random.randbytes(SLICE))
    clock[0] += 1
    store.put("z", random.randbytes(SLICE))
    assert "pinned" in {o.key for o in store.list_objects()}


def test_object_larger_than_capacity_is_not_stored(tmp_path: Path) -> None:
    store = open_store(tmp_path, caps=(2 * SLICE,))
    obj = store.ensure_object("big", ObjectMeta(3 * SLICE, '"e"', 0, "video/mp4"))
    assert store.put_slice(obj, 0, b"x" * SLICE)
    assert store.put_slice(obj, 1, b"x" * SLICE)
    assert not store.put_slice(obj, 2, b"x" * SLICE)  # would need to evict itself
    assert store.usage()[0].used == 2 * SLICE


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(
        st.tuples(st.integers(0, 12), st.integers(0, 3 * SLICE), st.integers(0, 3)), max_size=30
    )
)
def test_capacity_is_never_exceeded_and_index_matches_disk(tmp_path_factory, ops) -> None:
    tmp = tmp_path_factory.mktemp("cap")
    store = open_store(tmp, caps=(5 * SLICE, 3 * SLICE))
    now = 0.0
    for key_no, size, hits in ops:
        key = f"k{key_no}"
        store.put(key, random.randbytes(size)) if size <= 3 * SLICE else None
        if hits:
            now += 1
            store.record_hits({key: (hits, now)})
        for u in store.usage():
            assert u.used <= u.capacity
    disk = files_on_disk(store)
    indexed = {}
    for obj in store.list_objects():
        for idx, size in obj.slices.items():
            indexed[obj.slice_path(idx)] = size
    assert disk == indexed
    assert sum(u.used for u in store.usage()) == sum(disk.values())
    store.close()


def test_replacing_an_object_drops_old_slices(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    seq = store.last_change()
    store.put("k", b"a" * (SLICE + 1))
    old_files = set(files_on_disk(store))
    store.put("k", b"b" * 10)  # different content: different ETag
    assert store.read("k") == b"b" * 10
    assert not (old_files & set(files_on_disk(store)))
    _, changed = store.changes_since(seq)
    assert "k" in changed


def test_checksum_mismatch_is_rejected(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    with pytest.raises(ChecksumMismatch):
        store.put("k", b"data", expected_checksum=checksum(b"other"))
    assert store.lookup("k") is None
    obj = store.ensure_object("j", ObjectMeta(4, '"x"', 0, "text/plain"))
    with pytest.raises(ChecksumMismatch):
        store.put_slice(obj, 0, b"data", expected_checksum="0" * 16)
    assert store.lookup("j").slices == {}
    assert store.counters()["checksum_failures"] == 2
    assert files_on_disk(store) == {}


def test_recovery_restores_agreement(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.put("keep", b"k" * (SLICE + 3))
    store.put("missing", b"m" * 100)
    store.put("short", b"s" * 100)
    root = next(iter(store.roots.values()))
    os.unlink(store.lookup("missing").slice_path(0))
    short_path = store.lookup("short").slice_path(0)
    with open(short_path, "r+b") as f:
        f.truncate(50)
    orphan = Path(root.slice_dir) / "ab" / "cd" / "deadbeef.0.0"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"orphan")
    dead_tmp = Path(root.tmp_dir) / "999999999.0123456789abcdef.tmp"  # no such pid
    dead_tmp.write_bytes(b"partial")
    live_tmp = Path(root.tmp_dir) / f"{os.getppid()}.0123456789abcdef.tmp"  # a live writer's
    live_tmp.write_bytes(b"in progress")
    store.close()

    store = Store(
        [RootSpec(root.path, 10 * SLICE)], str(tmp_path / "index.sqlite"), slice_size=SLICE
    )
    report = store.open()
    assert report.rows_dropped == 2
    # the torn slice whose row was dropped goes; a file the store cannot
    # account for (no trailer) is left where it is, and counted
    assert not os.path.exists(short_path)
    assert report.unaccounted == 1 and orphan.exists()
    assert not dead_tmp.exists() and live_tmp.exists()
    assert store.read("keep") == b"k" * (SLICE + 3)
    assert not store.lookup("missing").complete
    assert not store.lookup("short").complete
    assert store.usage()[0].used == SLICE + 3


def test_scrub_drops_and_counts_corrupt_slices(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.put("good", b"g" * 1000)
    store.put("bad", b"b" * (SLICE + 10))
    with open(store.lookup("bad").slice_path(1), "r+b") as f:
        f.write(b"X")
    report = store.scrub()
    assert report.slices_checked == 3 and report.failures == 1
    assert report.failed_keys == ["bad"]
    bad = store.lookup("bad")
    assert set(bad.slices) == {0} and not bad.complete
    assert store.counters()["checksum_failures"] == 1
    assert store.scrub().failures == 0
    assert store.usage()[0].used == 1000 + SLICE


def test_a_failed_root_is_dropped_not_served(tmp_path: Path) -> None:
    store = open_store(tmp_path, caps=(10 * SLICE, 10 * SLICE))
    for i in range(6):
        store.put(f"k{i}", b"x" * 100)
    on_root1 = [o.key for o in store.list_objects() if o.root.path.endswith("root1")]
    assert on_root1
    store.close()
    # the second disk is gone: its mount point is now a plain file
    import shutil

    shutil.rmtree(tmp_path / "root1")
    (tmp_path / "root1").write_text("not a directory")
    store = Store(
        [
            RootSpec(str(tmp_path / "root0"), 10 * SLICE),
            RootSpec(str(tmp_path / "root1"), 10 * SLICE),
        ],
        str(tmp_path / "index.sqlite"),
        slice_size=SLICE,
    )
    report = store.open()
    assert len(report.failed_roots) == 1
    for key in on_root1:
        assert store.lookup(key) is None
    obj = store.put("new", b"n" * 10)
    assert obj.root.path.endswith("root0")
    assert [u.failed for u in store.usage()] == [False, True]


def test_no_usable_root(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    store = Store([RootSpec(str(tmp_path / "file"), SLICE)], str(tmp_path / "i.sqlite"))
    with pytest.raises(NoUsableRoot):
        store.open()


def test_processes_share_the_index(tmp_path: Path) -> None:
    a = open_store(tmp_path)
    b = Store(
        [RootSpec(str(tmp_path / "root0"), 10 * SLICE)],
        str(tmp_path / "index.sqlite"),
        slice_size=SLICE,
    )
    b.open(recover=False)
    a.put("shared", b"s" * 10)
    assert b.read("shared") == b"s" * 10
    seq = b.last_change()
    assert a.remove("shared")
    assert b.lookup("shared") is None
    assert b.changes_since(seq)[1] == ["shared"]


def test_scrub_command(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    store = open_store(tmp_path)
    store.put("a", b"a" * 100)
    store.put("b", b"b" * 100)
    with open(store.lookup("b").slice_path(0), "r+b") as f:
        f.write(b"X")
    store.close()
    argv = [sys.executable, "-m", "edge.cli", "scrub", "--store", f"{tmp_path / 'root0'}=1GiB",
            "--index", str(tmp_path / "index.sqlite")]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["failures"] == 1 and report["failed_keys"] == ["b"]
    again = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and json.loads(again.stdout)["slices_checked"] == 1


def test_a_failed_root_stays_failed_for_other_processes(tmp_path: Path) -> None:
    a = open_store(tmp_path, caps=(10 * SLICE, 10 * SLICE))
    r1 = next(r for r in a.roots.values() if r.path.endswith("root1"))
    a.mark_root_failed(r1.id, "I/O error")
    b = Store(
        [
            RootSpec(str(tmp_path / "root0"), 10 * SLICE),
            RootSpec(str(tmp_path / "root1"), 10 * SLICE),
        ],
        str(tmp_path / "index.sqlite"),
        slice_size=SLICE,
    )
    b.open(recover=False)  # a worker or the fill job, while the appliance runs
    assert [r.failed for r in sorted(b.roots.values(), key=lambda r: r.id)] == [False, True]
    obj = b.put("seg.ts", b"s" * 10)
    assert obj.root.path.endswith("root0")
    assert a.lookup("seg.ts") is not None
    # a restart's recovery probes the disk again and may bring it back
    c = Store(b.specs, str(tmp_path / "index.sqlite"), slice_size=SLICE)
    c.open()
    assert not any(r.failed for r in c.roots.values())
    a.refresh_roots()
    assert not r1.failed


def _stage_all(store: Store, obj, data: bytes) -> list:  # type: ignore[no-untyped-def]
    staged = []
    for idx in range(obj.slice_count):
        sink = store.open_stage(obj, idx)
        sink.write(data[idx * SLICE : (idx + 1) * SLICE])
        staged.append(sink.close())
    store.sync_staged(staged)
    return staged


def test_a_staged_object_appears_whole_in_one_commit(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    data = random.randbytes(SLICE * 2 + 100)
    meta = ObjectMeta(len(data), '"v1"', 0, "video/mp4")
    obj = store.ensure_object("t/a.mp4", meta)
    staged = _stage_all(store, obj, data)
    assert store.lookup("t/a.mp4").slices == {}  # type: ignore[union-attr]  # staged: invisible
    assert store.commit_object(obj, staged, "00000000000000aa")
    assert store.read("t/a.mp4") == data
    held = {h.key: h for h in store.holdings()}["t/a.mp4"]
    assert held.complete and held.pinned and held.digest == "00000000000000aa"
    assert os.listdir(os.path.join(obj.root.path, "tmp")) == []
    # a sink that gets the wrong number of bytes never becomes a staged slice
    other = store.ensure_object("t/b.mp4", ObjectMeta(10, '"b"', 0, "video/mp4"))
    sink = store.open_stage(other, 0)
    sink.write(b"12345")
    with pytest.raises(Exception, match="must be 10 bytes"):
        sink.close()
    assert os.listdir(os.path.join(obj.root.path, "tmp")) == []
    store.close()


def test_a_replaced_object_is_not_committed_and_tidy_clears_what_dead_writers_left(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path)
    data = random.randbytes(SLICE + 1)
    obj = store.ensure_object("t/a.mp4", ObjectMeta(len(data), '"v1"', 0, "video/mp4"))
    staged = _stage_all(store, obj, data)
    store.ensure_object("t/a.mp4", ObjectMeta(len(data), '"v2"', 0, "video/mp4"))  # replaced
    assert not store.commit_object(obj, staged, "00000000000000aa")
    tmp = os.path.join(obj.root.path, "tmp")
    assert os.listdir(tmp) == []  # the staged files went with it
    # a killed writer's temp file (a pid that is not alive) and an orphan slice
    open(os.path.join(tmp, "999999999.0123456789abcdef.tmp"), "wb").close()
    orphan = os.path.join(obj.root.path, "slices", "ab", "cd", "deadbeef.0.0")
    os.makedirs(os.path.dirname(orphan))
    open(orphan, "wb").close()
    assert store.tidy() == (1, 0)  # the temp file goes; the unknown file stays
    assert os.path.exists(orphan) and os.listdir(tmp) == []
    store.close()


def test_an_http_answer_head_is_written_with_its_object_or_not_at_all(tmp_path: Path) -> None:
    """The object's row and its HTTP answer head are one transaction: when
    writing the head fails (here a trigger refuses it, as a full disk or a
    crash would stop it), no object is left to be served with plain headers."""
    store = open_store(tmp_path)
    meta = ObjectMeta(4, '"x"', 0, "text/plain", status=200,
                      headers=(("X-From", "origin"),), vary=(("foo", "1"),))  # fmt: skip
    obj = store.ensure_object("h.txt", meta)
    assert store.http_head("h.txt", obj.gen) == (200, '[["X-From", "origin"]]', '[["foo", "1"]]')
    renewed = dataclasses.replace(meta, headers=(("X-From", "304"),))
    assert store.renew("h.txt", obj.gen, renewed)
    assert store.http_head("h.txt", obj.gen)[1] == '[["X-From", "304"]]'
    store._conn().execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON http_heads "
        "BEGIN SELECT RAISE(ABORT, 'no room'); END"
    )
    with pytest.raises(sqlite3.IntegrityError):
        store.ensure_object("other.txt", meta)
    assert store.lookup("other.txt") is None


def test_a_quick_lookup_on_a_locked_index_says_so_at_once(tmp_path: Path) -> None:
    # The miss path reads the index on the event loop: an index another process
    # holds exclusively makes that read give up quickly (IndexBusy, and the
    # caller asks a thread), where a thread's read would wait for it.
    store = open_store(tmp_path)
    store.put("k", b"x" * 10)
    store.close()
    holder = sqlite3.connect(tmp_path / "index.sqlite", isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        index = Index(str(tmp_path / "index.sqlite"), 3600.0)
        started = time.monotonic()
        with pytest.raises(IndexBusy):
            index.lookup("k", {}, quick=True)
        assert time.monotonic() - started < 10  # not the 30 s a thread's read waits
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    again = open_store(tmp_path)
    assert again.lookup("k", quick=True) is not None
    again.close()
