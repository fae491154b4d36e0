"""edge.store.direct: whole slices written past the page cache (O_DIRECT), the
same bytes and trailer as through it, and the page cache where a filesystem
refuses O_DIRECT."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import random
import sys
import time
from pathlib import Path

import pytest
from conftest import resident

from edge.core.meta import ObjectMeta
from edge.store import RootSpec, Store, checksum
from edge.store.direct import DIRECT_ALIGN, O_DIRECT
from edge.store.files import read_trailer

SLICE = 64 * 1024

pytestmark = pytest.mark.skipif(not O_DIRECT, reason="no O_DIRECT on this platform")


def open_store(tmp: Path) -> Store:
    (tmp / "root0").mkdir()
    store = Store([RootSpec(str(tmp / "root0"), 64 * SLICE)], str(tmp / "index.sqlite"),
                  slice_size=SLICE)  # fmt: skip
    store.open()
    return store


def takes_direct(path: Path) -> bool:
    try:
        fd = os.open(path / "probe", os.O_WRONLY | os.O_CREAT | O_DIRECT, 0o644)
    except OSError:
        return False
    os.close(fd)
    os.unlink(path / "probe")
    return True


class Opens:
    """``os.open`` watched: the paths opened with O_DIRECT; ``refuse`` makes
    such opens fail with EINVAL (a filesystem without direct I/O)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, refuse: bool = False) -> None:
        self.direct: list[str] = []
        self.refuse = refuse
        real = os.open

        def watched(path, flags, *args, **kw):  # type: ignore[no-untyped-def]
            if flags & O_DIRECT:
                self.direct.append(str(path))
                if self.refuse:
                    raise OSError(errno.EINVAL, "Invalid argument", str(path))
            return real(path, flags, *args, **kw)

        monkeypatch.setattr(os, "open", watched)


def check_files(store: Store, key: str, data: bytes) -> None:
    """Every slice file of ``key``: its bytes, then a trailer that describes them."""
    assert store.read(key) == data
    obj = store.lookup(key)
    assert obj is not None and obj.complete
    for idx, size in obj.slices.items():
        path = obj.slice_path(idx)
        found = read_trailer(path)
        assert found is not None
        record, tail = found
        assert os.path.getsize(path) == size + tail
        with open(path, "rb") as f:
            body = f.read(size)
        assert record["checksum"] == checksum(body) and record["idx"] == idx


def test_whole_slices_are_written_past_the_page_cache(tmp_path: Path, monkeypatch) -> None:
    if not takes_direct(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT")
    store = open_store(tmp_path)
    opens = Opens(monkeypatch)
    rng = random.Random(3)
    # two full slices and a last one of a block and a bit; then a slice under a block
    data = rng.randbytes(2 * SLICE + DIRECT_ALIGN + 904)
    store.put("v/a.m4s", data)
    small = rng.randbytes(DIRECT_ALIGN - 1)
    store.put("v/b.m4s", small)
    assert len(opens.direct) == 3  # the slices of at least one whole block
    assert all("/tmp/" in p for p in opens.direct)
    assert store.roots[1].direct is True
    check_files(store, "v/a.m4s", data)
    check_files(store, "v/b.m4s", small)
    # slices given as several chunks that do not end on block boundaries
    parts = rng.randbytes(SLICE)
    obj = store.ensure_object("v/c.m4s", ObjectMeta(SLICE, '"c"', 0, "video/mp4"))
    chunks = [parts[:1000], memoryview(parts)[1000:50001], bytearray(parts[50001:])]
    assert store.put_slice(obj, 0, chunks)
    check_files(store, "v/c.m4s", parts)
    # a slice in a writable buffer, as the origin client's body buffers are:
    # copied by a foreign call, which lets go of the GIL (the real memmove, counted)
    copies: list[int] = []
    real = ctypes.memmove

    def counted(dst, src, n):  # type: ignore[no-untyped-def]
        copies.append(n)
        return real(dst, src, n)

    monkeypatch.setattr(ctypes, "memmove", counted)
    pooled = mmap.mmap(-1, 2 * SLICE)
    pooled[SLICE:] = rng.randbytes(SLICE)
    obj = store.ensure_object("v/d.m4s", ObjectMeta(SLICE, '"d"', 0, "video/mp4"))
    assert store.put_slice(obj, 0, [memoryview(pooled)[SLICE:]])
    assert copies == [SLICE]
    check_files(store, "v/d.m4s", pooled[SLICE:])
    pooled.close()  # nothing refers to it any more
    assert os.listdir(store.roots[1].tmp_dir) == []


def in_page_cache(path: str) -> bool:
    """Is every page of ``path`` in the page cache? ``mincore`` on a mapping of
    it, which reads nothing (a read that may not wait, ``RWF_NOWAIT``, would
    start the very readahead it looks for)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    try:
        return all(resident(mapped))
    finally:
        mapped.close()


@pytest.mark.skipif(sys.platform != "linux", reason="mincore and readahead as Linux has them")
def test_a_slice_written_past_the_page_cache_is_read_back_into_it(tmp_path: Path) -> None:
    """A slice just missed is what the next players ask for: its pages come
    back into the page cache in the background, so the next hit's sendfile
    does not read the disk on the event loop."""
    if not takes_direct(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT")
    store = open_store(tmp_path)
    data = random.Random(4).randbytes(2 * SLICE)
    store.put("v/d.m4s", data)
    obj = store.lookup("v/d.m4s")
    assert obj is not None and store.roots[1].direct is True
    deadline = time.monotonic() + 10
    while not all(in_page_cache(obj.slice_path(i)) for i in (0, 1)):
        assert time.monotonic() < deadline, "the slices were not read back into the page cache"
        time.sleep(0.05)
    check_files(store, "v/d.m4s", data)


def test_a_filesystem_that_refuses_direct_io_gets_the_page_cache(
    tmp_path: Path, monkeypatch
) -> None:
    store = open_store(tmp_path)
    opens = Opens(monkeypatch, refuse=True)
    data = random.Random(4).randbytes(3 * SLICE)
    store.put("v/a.m4s", data)
    assert len(opens.direct) == 1  # tried once: the root remembers
    assert store.roots[1].direct is False
    check_files(store, "v/a.m4s", data)
    assert os.listdir(store.roots[1].tmp_dir) == []


def test_a_refused_direct_write_is_written_again_through_the_page_cache(
    tmp_path: Path, monkeypatch
) -> None:
    """Some filesystems open with O_DIRECT and refuse the write itself."""
    store = open_store(tmp_path)
    real_write = os.write
    refused: list[int] = []

    def write(fd: int, data) -> int:  # type: ignore[no-untyped-def]
        if fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    data = random.Random(5).randbytes(2 * SLICE)
    store.put("v/a.m4s", data)
    assert len(refused) == 1 and store.roots[1].direct is False
    check_files(store, "v/a.m4s", data)
    assert os.listdir(store.roots[1].tmp_dir) == []
    assert store.counters().get("write_errors", 0) == 0  # not a disk error
