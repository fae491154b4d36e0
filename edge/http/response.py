"""Response heads and bodies for the content port: pure byte building.

Rules it keeps: every response has ``Date`` and ``Server`` (the ``Date`` line
is built once a second, by ``DateCache``); every content
response carries the CORS headers; ``Connection: close`` when the connection
ends after it; error bodies are one short plain-text line naming the problem.
"""

from __future__ import annotations

import functools
import time
from http import HTTPStatus

from edge import __version__
from edge.core.httpdate import format_http_date

SERVER = f"edgefleet/{__version__}"
SERVER_LINE = f"Server: {SERVER}\r\n".encode()
EXPOSED = "Content-Range, Content-Length, Accept-Ranges, ETag, Last-Modified"
ALLOWED_REQUEST_HEADERS = (
    "Range, If-Range, If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since, "
    "Authorization"
)
ALLOW = "GET, HEAD, OPTIONS"

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}


class DateCache:
    """The ``Date:`` line of the current second, built when the second changes;
    ``with_server`` is it followed by the ``Server:`` line."""

    __slots__ = ("_sec", "line", "with_server")

    def __init__(self) -> None:
        self._sec = -1
        self.line = b""
        self.with_server = b""
        self.refresh()

    def refresh(self, now: float | None = None) -> bytes:
        """The ``Date:`` line for ``now`` (default: the clock)."""
        sec = int(time.time() if now is None else now)
        if sec != self._sec:
            self._sec = sec
            self.line = f"Date: {format_http_date(sec)}\r\n".encode()
            self.with_server = self.line + SERVER_LINE
        return self.line


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else f"HTTP/1.1 {status} Unknown\r\n".encode()


@functools.lru_cache(maxsize=16)
def cors_lines(origin: str) -> bytes:
    """The CORS lines for ``origin`` (built once per value: steering asks per answer)."""
    if not origin:
        return b""
    return (
        f"Access-Control-Allow-Origin: {origin}\r\nAccess-Control-Expose-Headers: {EXPOSED}\r\n"
    ).encode()


def connection_line(keep_alive: bool, http10: bool) -> bytes:
    if not keep_alive:
        return b"Connection: close\r\n"
    return b"Connection: keep-alive\r\n" if http10 else b""


def build_head(
    status: int,
    date_line: bytes,
    headers: list[tuple[str, str]] | bytes,
    *,
    keep_alive: bool = True,
    http10: bool = False,
) -> bytes:
    if isinstance(headers, bytes):
        lines = headers
    else:
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers).encode("latin-1")
    return (
        status_line(status)
        + date_line
        + SERVER_LINE
        + lines
        + connection_line(keep_alive, http10)
        + b"\r\n"
    )


def text_body(status: int, message: str) -> bytes:
    phrase = HTTPStatus(status).phrase if status in _STATUS_LINES else "Error"
    return f"{status} {phrase}: {message}\n".encode()
