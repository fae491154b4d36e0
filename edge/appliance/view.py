"""What the hot path knows of a stored object: a ``View``.

Header lines are built once per object version, slice files are kept open
(``OpenFile``; closed when the last response using them is done), and a small
complete object is kept in memory so its hit is one ``sendmsg``. A view never
mixes versions: it belongs to one generation of the object, and the appliance
drops it when the index says that generation changed.
"""

from __future__ import annotations

import os

from edge.core.httpdate import format_http_date
from edge.http.response import cors_lines
from edge.http.wire import OpenFile
from edge.store import StoredObject

CACHE_NAME = "edgefleet"  # how Cache-Status (RFC 9211) names this cache
HIT_STATUS = f"Cache-Status: {CACHE_NAME}; hit\r\n".encode()
SMALL_OBJECT_MAX = 32 * 1024  # objects this small are answered from memory
SMALL_BUDGET = 64 * 1024 * 1024  # per worker
# a whole 200's head for one Date line and Age, it joined to the body, the body
HotHead = tuple[bytes, int | None, bytes, bytes | None, bytes | None]


class View:
    """A stored object as the hot path needs it: header lines built once, slice
    files kept open, and the bytes themselves when the object is small."""

    __slots__ = (
        "born",
        "common",
        "ctype",
        "etag",
        "files",
        "fresh_until",
        "full",
        "hot",
        "key",
        "last_modified",
        "obj",
        "paths",
        "size",
        "slice_size",
        "small",
        "status",
        "typed",
        "unverified",
    )
    small_bytes = 0  # bytes held in ``small`` by all views of this process

    def __init__(self, obj: StoredObject, cors: str) -> None:
        meta = obj.meta
        self.obj = obj
        self.key = obj.key
        self.size = meta.size
        self.etag = meta.etag
        self.last_modified = meta.last_modified
        self.slice_size = obj.slice_size
        self.ctype = meta.content_type
        self.fresh_until = meta.fresh_until
        self.born = meta.born
        # a stored slice is served from its file once it was verified in this
        # start (the store checks its bytes the first time; see MissPath.verified)
        self.paths: list[str | None] = [
            obj.slice_path(i) if i in obj.checked else None for i in range(obj.slice_count)
        ]
        self.unverified = set(obj.slices) - obj.checked
        self.files: list[OpenFile | None] = [None] * len(self.paths)
        self.small: bytes | None = None
        # the last whole 200's head on keep-alive HTTP/1.1 (Appliance.whole_hot)
        self.hot: HotHead | None = None
        self.status = meta.status
        if meta.headers is None:
            lines = [
                "Accept-Ranges: bytes",
                f"ETag: {meta.etag}",
                f"Last-Modified: {format_http_date(meta.last_modified)}",
            ]
            if meta.cache_control:
                lines.append(f"Cache-Control: {meta.cache_control}")
            own_range = ""
        else:
            # from an HTTP origin: its own end-to-end headers, as it sent them
            lines = ["Accept-Ranges: bytes"] if meta.status == 200 else []
            lines += [
                f"{n}: {v}"
                for n, v in meta.headers
                if n.lower() not in ("content-type", "content-range", "accept-ranges")
                # the appliance's own CORS lines replace an origin's (one value each)
                and not (cors and n.lower().startswith("access-control-"))
            ]
            own_range = "".join(
                f"{n}: {v}\r\n" for n, v in meta.headers if n.lower() == "content-range"
            )
        self.common = "\r\n".join([*lines, ""]).encode("latin-1", "replace") + cors_lines(cors)
        self.typed = self.common + f"Content-Type: {meta.content_type}\r\n".encode(
            "latin-1", "replace"
        )
        length = "" if meta.status in (204, 304) else f"Content-Length: {meta.size}\r\n"
        self.full = self.typed + (own_range + length).encode("latin-1")

    def file(self, idx: int) -> OpenFile:
        """Slice ``idx``'s file, opened once per view. The open runs on the event
        loop, on the hit path: it is a metadata lookup on a local disk (a few
        microseconds once the directory is cached), made once per slice and view,
        cheaper than the hop to a thread it would otherwise cost every first
        hit. ``load`` opens the first slice in a thread ahead of time."""
        f = self.files[idx]
        if f is None:
            path = self.paths[idx]
            assert path is not None
            f = self.files[idx] = OpenFile(path)
        return f

    def add_slices(self, obj: StoredObject) -> None:
        """Slices of the same version stored since the view was made."""
        for idx in obj.slices:
            if self.paths[idx] is None:
                if idx in obj.checked:
                    self.paths[idx] = obj.slice_path(idx)
                else:
                    self.unverified.add(idx)

    def keep_small(self, data: bytes) -> None:
        """Hold the bytes of a small single-slice object just stored."""
        if (
            self.small is None
            and len(self.paths) == 1
            and len(data) == self.size <= SMALL_OBJECT_MAX
            and View.small_bytes + self.size <= SMALL_BUDGET
        ):
            self.small = data
            View.small_bytes += self.size

    def load(self) -> None:
        """Open the first slice file, and read a small complete object (in a thread)."""
        if not self.paths or self.paths[0] is None:
            return
        f = self.file(0)
        if len(self.paths) == 1 and self.size <= SMALL_OBJECT_MAX:
            self.keep_small(os.pread(f.fd, self.size, 0))

    def __del__(self) -> None:
        if self.small is not None:
            View.small_bytes -= len(self.small)
