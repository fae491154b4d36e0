"""Wire types of the lean HTTP/1.1 server: what a handler gets and gives back.

A ``Request`` is what llhttp parsed; a ``Response`` is a head (bytes) and body
parts: bytes, memoryviews, or ``FileSpan``s that go out with ``os.sendfile``
from an ``OpenFile`` shared by every response that sends from it. A streamed
response (a miss) yields parts from an async iterator.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol


class OpenFile:
    """A file descriptor shared by the responses that send from it; closed when
    the last of them, and whoever handed it out, let go of it."""

    __slots__ = ("fd",)
    count = 0  # open right now, in this process

    def __init__(self, path: str) -> None:
        self.fd = -1
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        OpenFile.count += 1

    def __del__(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            OpenFile.count -= 1


class FileSpan:
    """``count`` bytes of a file from ``offset``: of an ``OpenFile``, or of
    ``path``, opened when first sent."""

    __slots__ = ("count", "fd", "file", "offset", "on_error", "path", "warm")

    def __init__(
        self,
        path: str,
        offset: int,
        count: int,
        file: OpenFile | None = None,
        on_error: Callable[[OSError], None] | None = None,
    ) -> None:
        self.path = path
        self.offset = offset
        self.count = count
        self.file = file
        self.fd = file.fd if file is not None else -1
        self.on_error = on_error
        # in the page cache? None: not asked yet (edge.http.outbox.resident)
        self.warm: bool | None = None

    def close(self) -> None:
        if self.file is not None:
            self.file = None
        elif self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


Part = bytes | memoryview | FileSpan


class Request:
    __slots__ = (
        "body",
        "client",
        "headers",
        "keep_alive",
        "method",
        "sni",
        "started",
        "target",
        "tls",
        "version",
    )

    def __init__(self, client: str, started: float) -> None:
        self.body = b""  # kept up to the handler's ``max_request_body``, else 413
        self.client = client
        self.started = started
        self.method = ""
        self.target = b""
        self.version = "1.1"
        self.keep_alive = True
        self.headers: dict[bytes, bytes] = {}  # lower-case names, raw values
        self.tls: str | None = None  # the TLS version ("TLSv1.3"), None on plain HTTP
        self.sni: str | None = None  # the name the client asked for in its TLS hello


class Response:
    """A head and a body. ``body`` parts are sent first, then ``stream``'s."""

    __slots__ = (
        "body",
        "body_length",
        "cache",
        "close",
        "head",
        "key",
        "note",
        "range",
        "status",
        "stream",
        "wire",
    )

    def __init__(
        self,
        status: int,
        head: bytes,
        body: list[Part] | None = None,
        *,
        body_length: int = 0,
        cache: str = "none",
        key: str = "",
        range_: str | None = None,
        stream: AsyncIterator[Part] | None = None,
        close: bool = False,
    ) -> None:
        self.status = status
        self.head = head
        self.body = body or []
        self.body_length = body_length
        self.cache = cache
        self.key = key
        self.range = range_
        self.stream = stream
        self.close = close
        self.note: Any = None  # what the handler wants to log about it
        # the head and a one-part body joined, when the handler has them so
        # (a hit's, built once per second): sent as it is when nothing is queued
        self.wire: bytes | None = None


class Host(Protocol):
    """What a connection needs of the server that accepted it."""

    loop: Any  # the running event loop
    handler: Handler
    stopping: bool
    handshake_timeout: float  # seconds a TLS handshake may take
    header_timeout: float  # seconds a request's headers may take
    keepalive_timeout: float  # seconds idle between requests (0: no keep-alive)
    ktls_seen: bool  # set once a connection got kernel TLS
    on_disk_wait: Callable[[], None] | None  # a send waits for a thread to read its file

    def forget(self, conn: Any) -> None: ...


class Handler(Protocol):
    def handle(self, req: Request) -> Response | Awaitable[Response]: ...

    def error(self, req: Request | None, status: int, message: str) -> Response: ...

    def finished(self, req: Request, resp: Response, sent: int, now: float) -> None: ...
