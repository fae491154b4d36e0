"""Writing a whole slice at once (the miss path's ``put_slice``), past the page cache.

Why: on the appliance's miss path a slice's bytes are all in memory when it is
stored, and copying them into fresh page-cache pages was most of the store's
CPU (docs/miss-path.md, "How fast a miss is": 2.4-3.0 ms of system CPU per MB
on a VM, against 0.2-0.35 ms per 2 MiB slice written with ``O_DIRECT``).

Rules it keeps:
- the bytes reach the temp file, whole, checksummed and fsynced, exactly as
  ``StageFile`` leaves them (its bytes, then the trailer): ``O_DIRECT`` changes
  how they get there, not what "stored" means (the fsync still follows);
- ``O_DIRECT`` writes only whole ``DIRECT_ALIGN`` blocks from an aligned buffer:
  the slice's bytes are copied into this thread's reused, page-aligned buffer
  (a copy into pages already mapped costs a tenth of a fresh page-cache
  page's), the aligned part written direct, and the rest (the last partial
  block and the trailer) written through the page cache on the same file;
- that copy lets go of the GIL (``ctypes.memmove``, a foreign call) for a
  chunk of ``UNLOCKED_COPY`` bytes or more that can be addressed (a
  writable buffer: the origin client's body buffers): copied under the GIL,
  2 MiB held the event loop up for 0.1-0.2 ms, in the way of the next
  miss's first byte; a read-only chunk (``bytes``) is copied as before;
- a slice written past the page cache is read back into it in the background
  (``POSIX_FADV_WILLNEED``) once written, so the next hit does not read the
  disk on the event loop;
- a filesystem that refuses ``O_DIRECT`` (``EINVAL``: older tmpfs, some network
  and FUSE filesystems) gets the page cache for that root from then on
  (``Root.direct`` false), and the slice is written again that way.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import threading
from typing import Any

from edge.store.files import Root, Staged, StageFile, WriteErrorHook

DIRECT_ALIGN = 4096  # covers devices with 512-byte and 4 KiB logical blocks
O_DIRECT = getattr(os, "O_DIRECT", 0)
_GROW = 1024 * 1024  # the thread's buffer grows in steps of this
UNLOCKED_COPY = 64 * 1024  # chunks this large are copied without the GIL


class _Bounce(threading.local):
    buf: mmap.mmap | None = None

    def get(self, size: int) -> memoryview:
        """This thread's page-aligned buffer, at least ``size`` bytes."""
        if self.buf is None or len(self.buf) < size:
            if self.buf is not None:
                self.buf.close()
            self.buf = mmap.mmap(-1, -(-size // _GROW) * _GROW)
        return memoryview(self.buf)


_bounce = _Bounce()


def write_slice(
    root: Root, about: dict[str, Any], idx: int, chunks: list[Any], on_error: WriteErrorHook
) -> Staged:
    """Slice ``idx`` (its bytes: ``chunks``) in an fsynced temp file on ``root``,
    its trailer after them. Raises ``StoreError`` when the length is wrong and
    ``OSError`` (counted by ``on_error``, the temp file removed) when writing fails."""
    views = [memoryview(c).cast("B") for c in chunks]
    size = sum(len(v) for v in views)
    if root.direct is not False and O_DIRECT and size >= DIRECT_ALIGN:
        staged = _write_direct(root, about, idx, views, size, on_error)
        if staged is not None:
            return staged
    sink = StageFile(root, about, idx, on_error)
    try:
        sink.write_all(views)
        return sink.close(sync=True)
    except BaseException:
        sink.abort()
        raise


def _write_direct(
    root: Root,
    about: dict[str, Any],
    idx: int,
    views: list[memoryview],
    size: int,
    on_error: WriteErrorHook,
) -> Staged | None:
    """``write_slice`` with ``O_DIRECT``; ``None`` when the filesystem refuses it
    (nothing left behind: the caller writes the slice through the page cache)."""
    sink = StageFile(root, about, idx, on_error, open_file=False)
    sink.check_length(size)
    aligned = size - size % DIRECT_ALIGN
    buf = _bounce.get(aligned)
    pos = 0
    for v in views:
        end = min(pos + len(v), aligned)
        if end > pos:
            _copy(buf[pos:end], v[: end - pos])
        sink.hash.update(v)
        pos += len(v)
    rest = _tail_of(views, aligned)
    sink.n = size
    try:
        fd = os.open(sink.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_DIRECT, 0o644)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            root.direct = False
            return None
        on_error(exc, root, sink.key)
        raise
    sink.fd = fd
    try:
        done = 0
        while done < aligned:
            done += os.write(fd, buf[done:aligned])
    except OSError as exc:
        sink.abort()
        if exc.errno == errno.EINVAL and done == 0:
            root.direct = False
            return None
        on_error(exc, root, sink.key)
        raise
    root.direct = True
    try:  # the last partial block and the trailer: through the page cache
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~O_DIRECT)
    except OSError as exc:
        sink.abort()
        on_error(exc, root, sink.key)
        raise
    sink.write_raw(rest)
    _warm(fd, aligned)
    return sink.close(sync=True)


def _copy(dst: memoryview, src: memoryview) -> None:
    """``dst[:] = src``, without the GIL when ``src`` is large and writable
    (``ctypes`` can only address a writable buffer; ``dst`` is this
    thread's ``mmap``). Both views are held for the whole call."""
    if len(src) < UNLOCKED_COPY or src.readonly or not src.c_contiguous:
        dst[:] = src
        return
    to = ctypes.c_char.from_buffer(dst)
    frm = ctypes.c_char.from_buffer(src)
    try:
        ctypes.memmove(ctypes.addressof(to), ctypes.addressof(frm), len(src))
    finally:
        del to, frm  # their exports of the views end here


def _warm(fd: int, size: int) -> None:
    """Ask the kernel to read the first ``size`` bytes just written back into
    the page cache, in the background (readahead: the device copies them, no
    CPU does): a slice just missed is what the next players ask for, and a hit
    on pages not in the page cache reads the disk inside ``sendfile``, on the
    event loop. Advice only: a kernel that ignores it, or an error, changes
    nothing stored."""
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)


def _tail_of(views: list[memoryview], start: int) -> list[memoryview]:
    """The bytes of ``views`` (taken as one run) from ``start`` on."""
    out: list[memoryview] = []
    pos = 0
    for v in views:
        end = pos + len(v)
        if end > start:
            out.append(v[max(0, start - pos) :])
        pos = end
    return out
