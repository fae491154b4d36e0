"""The store's files: roots, slice paths, staging, temp-file sweeps, probes.

Rules it keeps (docs/appliance.md has the why):
- a slice file is named by the xxh3-128 hash of its key (``slice_name``), the
  object's generation and the slice number, so no key ever becomes a path and
  a replaced object never shares a file with its predecessor;
- bytes reach a slice path only through a temp file in ``ROOT/tmp/`` that was
  written whole (its length checked) and checksummed;
- a temp-file sweep removes only names this store writes (``<pid>.<hex>.tmp``
  and ``probe.<pid>.<hex>``) whose writer is gone.

Nothing here knows the index: write errors go to the ``on_error`` the caller gives.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import xxhash

from edge.core.meta import slice_bounds

TEMP_MAX_AGE_SECONDS = 3600.0

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


@dataclass(frozen=True)
class Staged:
    """A slice written and fsynced to a temp file, not yet in the store."""

    idx: int
    path: str
    size: int
    checksum: str


def slice_name(key: str) -> str:
    """The name a key's slice files share on disk: its xxh3-128, in hex."""
    return xxhash.xxh3_128_hexdigest(key.encode("utf-8"))


def slice_path(root_path: str, key: str, gen: str, idx: int) -> str:
    h = slice_name(key)
    return os.path.join(root_path, "slices", h[:2], h[2:4], f"{h}.{gen}.{idx}")


def checksum(data: bytes | memoryview) -> str:
    return xxhash.xxh3_64_hexdigest(data)


WriteErrorHook = Callable[[OSError, Root], None]


class StageFile:
    """One slice's temp file: written as its bytes arrive (short writes to the
    page cache, fine on an event loop) and checksummed; ``close`` checks its
    length. Write errors go to ``on_error`` (which counts them, and fails the
    root on a device error). ``put_slice`` closes it fsynced; the fill fsyncs an
    object's slices together (``sync_staged``) before ``commit_object``."""

    def __init__(
        self, root: Root, key: str, size: int, slice_size: int, idx: int, on_error: WriteErrorHook
    ) -> None:
        self.root, self.key, self.idx, self.on_error = root, key, idx, on_error
        _, self.length = slice_bounds(idx, size, slice_size)
        self.path = os.path.join(root.tmp_dir, f"{os.getpid()}.{secrets.token_hex(8)}.tmp")
        self.hash = xxhash.xxh3_64()
        self.n = 0
        try:
            os.makedirs(root.tmp_dir, exist_ok=True)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            on_error(exc, root)
            raise

    def write(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk)
        if self.n + len(view) > self.length:
            raise StoreError(f"slice {self.idx} of {self.key!r} is {self.length} bytes")
        self.hash.update(view)
        self.n += len(view)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            self.abort()
            self.on_error(exc, self.root)
            raise

    def close(self, *, sync: bool = False) -> Staged:
        """The staged slice; with ``sync``, fsynced first (else see ``sync_staged``)."""
        if sync:
            try:
                os.fsync(self.fd)
            except OSError as exc:
                self.abort()
                self.on_error(exc, self.root)
                raise
        os.close(self.fd)
        self.fd = -1
        if self.n != self.length:
            self.abort()
            raise StoreError(
                f"slice {self.idx} of {self.key!r} must be {self.length} bytes, got {self.n}"
            )
        return Staged(self.idx, self.path, self.n, self.hash.hexdigest())

    def abort(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def sync_staged(staged: Iterable[Staged]) -> None:
    """fsync staged slices (together, once the whole object is there)."""
    for st in staged:
        fd = os.open(st.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def discard(staged: Iterable[Staged]) -> None:
    for st in staged:
        with contextlib.suppress(OSError):
            os.unlink(st.path)


def unlink_all(paths: Iterable[str]) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def probe(root: Root) -> str:
    """Why ``root`` cannot be written to, or ``""``."""
    try:
        os.makedirs(root.slice_dir, exist_ok=True)
        os.makedirs(root.tmp_dir, exist_ok=True)
        path = os.path.join(root.tmp_dir, f"probe.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"edgefleet")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_temp(root: Root, now: float, mine: bool = True) -> int:
    """Remove temp files of writers that died (and, with ``mine``, this
    process's own: it is starting); the count."""
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
        if (mine and pid == os.getpid()) or pid <= 0 or old or not pid_alive(pid):
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed += 1
    return removed


def remove_orphans(root: Root, expected: set[str]) -> int:
    removed = 0
    for dirpath, _dirs, files in os.walk(root.slice_dir):
        for name in files:
            if name not in expected:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
    return removed
