"""Origins: where an appliance gets what it does not hold.

Every origin answers two questions about a key: what is it (``head``: size,
ETag, Last-Modified, type, Cache-Control, or ``None`` when it does not exist)
and what are bytes ``start..start+length`` (``read``, an async iterator of
chunks that must add up to exactly ``length`` bytes). Errors are
``OriginError`` (a bad answer → 502) and ``OriginTimeout`` (→ 504). Keys reach
an origin already validated by ``edge.keys``.

``open_origin`` maps a URL to its class: ``file:///dir`` here; the S3 and HTTP
origins slot in beside it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol
from urllib.parse import urlsplit

from edge.meta import ObjectMeta


class OriginError(Exception):
    """The origin gave a bad answer or none."""


class OriginTimeout(OriginError):
    """The origin did not answer in time."""


class Origin(Protocol):
    url: str

    async def head(self, key: str) -> ObjectMeta | None: ...

    def read(self, key: str, meta: ObjectMeta, start: int, length: int) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


def check_origin_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError("a file origin is file:///absolute/dir")
        return
    if parts.scheme in ("s3", "http", "https"):
        raise ValueError(f"{parts.scheme}:// origins are not available in this version")
    raise ValueError(f"unknown origin scheme {parts.scheme!r}")


def open_origin(url: str) -> Origin:
    check_origin_url(url)
    parts = urlsplit(url)
    if parts.scheme == "file":
        from edge.origin.file import FileOrigin

        return FileOrigin(parts.path)
    raise ValueError(f"unsupported origin {url!r}")
