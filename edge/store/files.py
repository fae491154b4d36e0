"""The store's files: roots, slice paths, staging, temp-file sweeps, probes.

Rules it keeps (docs/appliance.md, "What the store promises", has the why):
- a slice file is named by the xxh3-128 hash of its key (``slice_name``), the
  object's generation and the slice number, so no key ever becomes a path and
  a replaced object never shares a file with its predecessor;
- a slice file describes itself: its bytes, then a trailer (a JSON record of
  key, generation, slice, checksum and the object's metadata, its length, and
  ``TRAILER_MAGIC``), so the index can be rebuilt from the files;
- a root carries its identity (``ROOT/edgefleet-root.json``) and must exist:
  nothing here creates a root directory, only ``slices/`` and ``tmp/`` in it;
- bytes reach a slice path only through a temp file in ``ROOT/tmp/`` that was
  written whole (its length checked), checksummed and fsynced;
- a temp-file sweep removes only names this store writes (``<pid>.<hex>.tmp``
  and ``probe.<pid>.<hex>``) whose writer is gone.

Nothing here knows the index: write errors go to the ``on_error`` the caller gives.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import struct
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import xxhash

from edge.core.meta import slice_bounds

IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024
TEMP_MAX_AGE_SECONDS = 3600.0

# The errors that mean the device is gone or broken. Anything else (no file
# descriptors, no memory, a full disk) is a condition of the moment, not a
# reason to drop a disk's content.
DEVICE_ERRORS = frozenset({errno.EIO, errno.EROFS, errno.ENODEV, errno.ENXIO, errno.EUCLEAN})


# A full disk (or quota): the root stops taking writes until there is room.
FULL_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT})
IDENTITY = "edgefleet-root.json"
TRAILER_MAGIC = b"EFSLICE1"
_TRAILER_END = struct.Struct(">I8s")  # the record's length, the magic
RESERVE_MAX = 64 * 1024 * 1024  # kept free on a root's filesystem (or 2% of it)
INDEX_RESERVE = 16 * 1024 * 1024  # and this much more where the index lives (its WAL)
_TEMP_NAME = re.compile(r"(?:(\d+)\.[0-9a-f]{16}\.tmp|probe\.(\d+)\.[0-9a-f]{8})")


def is_device_error(exc: OSError) -> bool:
    return exc.errno in DEVICE_ERRORS


def is_full_error(exc: OSError) -> bool:
    return exc.errno in FULL_ERRORS


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
    uuid: str = ""
    full: bool = False  # out of room on its disk: no writes until there is
    full_checked: float = 0.0
    direct: bool | None = None  # takes O_DIRECT writes (None: not tried yet; edge.store.direct)
    device_errors: dict[str, float] = field(default_factory=dict)  # path -> when

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
    tail: int = 0  # the trailer's length: the file is ``size + tail`` bytes


def slice_name(key: str) -> str:
    """The name a key's slice files share on disk: its xxh3-128, in hex."""
    return xxhash.xxh3_128_hexdigest(key.encode("utf-8"))


def slice_path(root_path: str, key: str, gen: str, idx: int) -> str:
    h = slice_name(key)
    return os.path.join(root_path, "slices", h[:2], h[2:4], f"{h}.{gen}.{idx}")


def checksum(data: bytes | memoryview) -> str:
    return xxhash.xxh3_64_hexdigest(data)


WriteErrorHook = Callable[[OSError, Root, str], None]  # (error, root, key written)


class StageFile:
    """One slice's temp file: written as its bytes arrive (short writes to the
    page cache, fine on an event loop) and checksummed; ``close`` checks its
    length. Write errors go to ``on_error`` with the key written (it counts
    them, evicts other objects on a full disk, fails the root on a device
    error). ``put_slice`` closes it fsynced; the fill fsyncs an object's
    slices together (``sync_staged``) before ``commit_object``."""

    def __init__(
        self,
        root: Root,
        about: dict[str, Any],
        idx: int,
        on_error: WriteErrorHook,
        *,
        open_file: bool = True,
    ) -> None:
        """``open_file`` false: the caller opens ``path`` itself (and sets ``fd``)."""
        self.root, self.about, self.idx, self.on_error = root, about, idx, on_error
        self.key = about["key"]
        _, self.length = slice_bounds(idx, about["size"], about["slice_size"])
        self.path = os.path.join(root.tmp_dir, f"{os.getpid()}.{secrets.token_hex(8)}.tmp")
        self.hash = xxhash.xxh3_64()
        self.n = 0
        self.fd = -1
        try:
            os.makedirs(root.tmp_dir, exist_ok=True)
            if open_file:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            on_error(exc, root, self.key)
            raise

    def check_length(self, more: int) -> None:
        """Raise unless ``more`` bytes fit in the slice."""
        if self.n + more > self.length:
            raise StoreError(f"slice {self.idx} of {self.key!r} is {self.length} bytes")

    def write(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk)
        self.check_length(len(view))
        self.hash.update(view)
        self.n += len(view)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            self.abort()
            self.on_error(exc, self.root, self.key)
            raise

    def write_all(self, chunks: list[Any]) -> None:
        """``chunks`` in as few system calls as the kernel takes (``writev``)."""
        views = [memoryview(c) for c in chunks]
        size = sum(len(v) for v in views)
        self.check_length(size)
        for v in views:
            self.hash.update(v)
        self.n += size
        self.write_raw(views)

    def write_raw(self, views: list[memoryview]) -> None:
        """``views`` written at the file's position as they are (counted and
        hashed by the caller); on an error the file is removed."""
        views = list(views)
        i = 0
        try:
            while i < len(views):
                done = os.writev(self.fd, views[i : i + IOV_MAX])
                while i < len(views) and done >= len(views[i]):
                    done -= len(views[i])
                    i += 1
                if done:
                    views[i] = views[i][done:]
        except OSError as exc:
            self.abort()
            self.on_error(exc, self.root, self.key)
            raise

    def close(self, *, sync: bool = False) -> Staged:
        """The staged slice, its trailer written; with ``sync``, fsynced first
        (else see ``sync_staged``)."""
        if self.n != self.length:
            self.abort()
            raise StoreError(
                f"slice {self.idx} of {self.key!r} must be {self.length} bytes, got {self.n}"
            )
        digest = self.hash.hexdigest()
        tail = trailer({**self.about, "idx": self.idx, "length": self.n, "checksum": digest})
        try:
            view = memoryview(tail)
            while view:
                view = view[os.write(self.fd, view) :]
            if sync:
                os.fsync(self.fd)
        except OSError as exc:
            self.abort()
            self.on_error(exc, self.root, self.key)
            raise
        os.close(self.fd)
        self.fd = -1
        return Staged(self.idx, self.path, self.n, digest, len(tail))

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


def probe(root: Root) -> OSError | None:
    """What stops ``root`` being written to (``None``: nothing). Its directory
    must exist; ``slices/`` and ``tmp/`` are made in it."""
    try:
        if not os.path.isdir(root.path):
            return NotADirectoryError(errno.ENOTDIR, "not a directory", root.path)
        os.makedirs(root.slice_dir, exist_ok=True)
        os.makedirs(root.tmp_dir, exist_ok=True)
        path = os.path.join(root.tmp_dir, f"probe.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"edgefleet")
            os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
    except OSError as exc:
        return exc
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_temp(root: Root, now: float, mine: bool = True) -> int:
    """Remove this store's temp files (``<pid>.<hex>.tmp``, ``probe.<pid>.<hex>``)
    whose writer is gone or that are over an hour old (and, with ``mine``, this
    process's own: it is starting); nothing else in ``tmp/``. The count."""
    removed = 0
    try:
        names = os.listdir(root.tmp_dir)
    except OSError:
        return 0
    for name in names:
        m = _TEMP_NAME.fullmatch(name)
        if m is None:
            continue  # not a name this store writes
        pid = int(m.group(1) or m.group(2))
        path = os.path.join(root.tmp_dir, name)
        try:
            old = now - os.stat(path).st_mtime > TEMP_MAX_AGE_SECONDS
        except OSError:
            continue
        if (mine and pid == os.getpid()) or old or not pid_alive(pid):
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed += 1
    return removed


def slice_files(root: Root) -> Iterator[tuple[str, str]]:
    """Every file under ``ROOT/slices/``: (path, name)."""
    for dirpath, _dirs, files in os.walk(root.slice_dir):
        for name in files:
            yield os.path.join(dirpath, name), name


# -- self-describing slices ------------------------------------------------------


def trailer(record: dict[str, Any]) -> bytes:
    """What follows a slice's bytes in its file: ``record``, its length, the magic."""
    body = json.dumps(record, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return body + _TRAILER_END.pack(len(body), TRAILER_MAGIC)


def read_trailer(path: str) -> tuple[dict[str, Any], int] | None:
    """The record a slice file ends with and the trailer's length; ``None``
    when the file has no valid trailer (torn, foreign, or an older format)."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        if end < _TRAILER_END.size:
            return None
        f.seek(end - _TRAILER_END.size)
        length, magic = _TRAILER_END.unpack(f.read(_TRAILER_END.size))
        if magic != TRAILER_MAGIC or length > end - _TRAILER_END.size:
            return None
        f.seek(end - _TRAILER_END.size - length)
        try:
            record = json.loads(f.read(length))
        except ValueError:
            return None
    tail = length + _TRAILER_END.size
    if not isinstance(record, dict) or end - tail != record.get("length"):
        return None
    return record, tail


def read_checksum(path: str, size: int) -> str:
    """xxh3-64 of the first ``size`` bytes of ``path`` (``""``: the file is shorter)."""
    h = xxhash.xxh3_64()
    left = size
    with open(path, "rb", buffering=0) as f:
        while left:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                return ""
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


# -- roots: identity, room, directories ----------------------------------------


def read_identity(root_path: str) -> dict[str, str] | None:
    """What ``ROOT/edgefleet-root.json`` says (``root`` and ``store`` UUIDs)."""
    try:
        with open(os.path.join(root_path, IDENTITY), "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        return None
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def write_identity(root_path: str, store_id: str, root_id: str | None = None) -> str:
    """Give ``root_path`` its identity (durably); the root's UUID."""
    root_id = root_id or str(uuid.uuid4())
    body = json.dumps({"format": 1, "root": root_id, "store": store_id}, indent=1).encode()
    tmp = os.path.join(root_path, f".{IDENTITY}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(root_path, IDENTITY))
    fsync_dir(root_path)
    return root_id


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str, stop: str) -> None:
    """``os.makedirs(path)``, each directory it makes fsynced into its parent
    (up to ``stop``, which must exist)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if path != stop and parent != path:
        make_dirs(parent, stop)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path)
        fsync_dir(parent)


def room_on_disk(path: str, holds_index: bool) -> tuple[int, int]:
    """(free bytes on ``path``'s filesystem, the reserve to keep free there:
    ``min(RESERVE_MAX, 2%)``, plus ``INDEX_RESERVE`` when the index is there)."""
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    reserve = min(RESERVE_MAX, total // 50) + (INDEX_RESERVE if holds_index else 0)
    return st.f_bavail * st.f_frsize, reserve


def place(root: Root, moves: list[tuple[str, str]]) -> None:
    """Rename staged files into place, durably: each directory made and each
    directory renamed into is fsynced (before the caller's index commit)."""
    dirs = {os.path.dirname(final) for _, final in moves}
    for d in dirs:
        make_dirs(d, root.path)
    for tmp, final in moves:
        os.rename(tmp, final)
    for d in dirs:
        fsync_dir(d)
