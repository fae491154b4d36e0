"""Staging one object's bytes as slice temp files, off the event loop.

Theory of operation: the fill downloads an object with one GET (one per run of
slices the store does not hold) and cuts the stream into slice temp files
itself as it arrives. The event loop only receives: ``feed`` gathers chunks
into batches of about ``BATCH`` bytes and hands each batch to a thread in one
call, which writes it into the current slice's temp file (opening the next one
at each slice boundary), and passes every byte once through the slice's
checksum and once through the whole object's hash. A slice that is full is
closed and its write-back started (``sync_file_range``), so the one fsync of
the object's files at the end (``sync``, one thread call) finds little left to
write. Slices the store already holds are reread by the same thread into the
same hash, in their place in the object. Rules it keeps:

- one job of an object in a thread at a time, in the object's byte order: the
  hash sees the bytes in order, and the event loop never touches the stager's
  state while a job runs; while a thread writes batch k the loop receives k+1;
- a slice is staged only whole: ``rewind`` after a broken download writes
  what arrived, drops the partial slice and rolls the hash back to that
  slice's start, so a retry resumes at a slice boundary;
- nothing is removed while a thread may still be writing to it (``discard``
  waits for the job first).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Any

import xxhash

from edge.store import Staged, StageFile, Store, StoredObject, StoreError

BATCH = 1024 * 1024  # bytes gathered on the event loop before a thread writes them
WRITERS = 2  # threads that write and hash, for all of a run's downloads together
READ_BLOCK = 1024 * 1024  # held slices are reread in blocks of this size

_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start write-back of dirty pages, do not wait


def _find_sync_file_range() -> Callable[[int], None] | None:
    """Linux's ``sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)`` (the os module
    has no binding for it); ``None`` elsewhere: the fsync then does all the work."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int

    def start_writeback(fd: int) -> None:
        fn(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # advice only: an error is the fsync's to find

    return start_writeback


start_writeback = _find_sync_file_range()


class StagePools:
    """The threads that stage: writers (page-cache writes and hashing, quick) and
    syncers (fsync, which waits for the disk); apart, so that no write waits
    behind another object's fsync."""

    def __init__(self, concurrency: int, writers: int = WRITERS) -> None:
        self.write = concurrent.futures.ThreadPoolExecutor(writers, "fill-write")
        self.sync = concurrent.futures.ThreadPoolExecutor(concurrency, "fill-sync")

    def shutdown(self) -> None:
        self.write.shutdown(wait=True)
        self.sync.shutdown(wait=True)


class ObjectStager:
    """The temp files of one object's missing slices, and its hash so far."""

    def __init__(self, store: Store, obj: StoredObject, pools: StagePools) -> None:
        self.store, self.obj, self.pools = store, obj, pools
        self.hasher = xxhash.xxh3_64()
        self.staged: list[Staged] = []
        self.idx = 0  # the slice the next byte belongs to
        self._sink: StageFile | None = None
        self._mark: Any = None  # the object's hash at the start of the open slice
        self._pending: list[bytes] = []
        self._pending_n = 0
        self._job: concurrent.futures.Future[None] | None = None

    # -- on the event loop ---------------------------------------------------------

    def seek(self, idx: int) -> None:
        """The next bytes fed are slice ``idx``'s (no slice may be half written)."""
        assert self._sink is None and not self._pending
        self.idx = idx

    async def feed(self, chunk: bytes) -> None:
        self._pending.append(chunk)
        self._pending_n += len(chunk)
        if self._pending_n >= BATCH:
            await self._submit()

    async def flush(self) -> None:
        """Everything fed is written (whole slices are staged)."""
        await self._submit()
        await self._wait()

    async def rewind(self) -> int:
        """After a broken download: what arrived is written, the partial slice is
        dropped and the hash set back to its start. Returns the slice to resume at."""
        await self.flush()
        if self._sink is not None:
            self._sink.abort()
            self._sink = None
            self.hasher = self._mark
        return self.idx

    async def hash_held(self, idx: int, length: int) -> None:
        """Slice ``idx``, held by the store, reread into the object's hash in its place."""
        await self.flush()
        self._job = self.pools.write.submit(self._hash_file, self.obj.slice_path(idx), idx, length)
        self.idx = idx + 1
        await self._wait()

    async def sync(self) -> None:
        """fsync every staged file, in one thread call."""
        await self.flush()
        if self.staged:
            self._job = self.pools.sync.submit(Store.sync_staged, list(self.staged))
            await self._wait()

    async def discard(self) -> None:
        """Remove every temp file of this object, once no thread writes to them."""
        await _settle(self._job)
        self._pending, self._pending_n = [], 0
        if self._sink is not None:
            self._sink.abort()
            self._sink = None
        Store.discard(self.staged)
        self.staged = []

    def digest(self) -> str:
        assert self._job is None or self._job.done()
        return self.hasher.hexdigest()

    async def _submit(self) -> None:
        if not self._pending:
            return
        await self._wait()  # one job at a time: the bytes stay in order
        batch, self._pending, self._pending_n = self._pending, [], 0
        self._job = self.pools.write.submit(self._write, batch)

    async def _wait(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            try:
                await asyncio.wrap_future(job)
            except asyncio.CancelledError:
                self._job = job  # still running: ``discard`` waits for it
                raise

    # -- in a thread -----------------------------------------------------------------

    def _write(self, batch: list[bytes]) -> None:
        for chunk in batch:
            view = memoryview(chunk)
            while view:
                sink = self._sink
                if sink is None:
                    sink = self._sink = self.store.open_stage(self.obj, self.idx)
                    self._mark = self.hasher.copy()
                part = view[: sink.length - sink.n]
                view = view[len(part) :]
                try:
                    sink.write(part)  # the slice's checksum, and the file
                except BaseException:
                    self._sink = None  # the sink removed its file
                    raise
                self.hasher.update(part)
                if sink.n == sink.length:
                    if start_writeback is not None:
                        start_writeback(sink.fd)
                    self._sink = None
                    self.staged.append(sink.close())
                    self.idx += 1

    def _hash_file(self, path: str, idx: int, length: int) -> None:
        n = 0
        with open(path, "rb", buffering=0) as f:
            while block := f.read(READ_BLOCK):
                self.hasher.update(block)
                n += len(block)
        if n != length:
            raise StoreError(f"{self.obj.key!r}: stored slice {idx} has the wrong size")


async def _settle(job: concurrent.futures.Future[None] | None) -> None:
    """Wait until ``job`` has ended, whatever it raised; a cancellation meanwhile is
    raised once it has."""
    if job is None:
        return
    cancelled = False
    while not job.done():
        try:
            await asyncio.wait([asyncio.wrap_future(job)])
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


def runs(obj: StoredObject) -> list[tuple[bool, int, int]]:
    """The object's slices in order, as runs ``(held, first, end)`` of slices
    ``first..end-1`` the store holds or does not: a missing run is one download."""
    out: list[tuple[bool, int, int]] = []
    for idx in range(obj.slice_count):
        held = idx in obj.slices
        if out and out[-1][0] == held:
            out[-1] = (held, out[-1][1], idx + 1)
        else:
            out.append((held, idx, idx + 1))
    return out
