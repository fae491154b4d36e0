"""Origins: where an appliance gets what it does not hold.

Every origin answers two questions about a key: what is it (``head``: size,
ETag, Last-Modified, type, Cache-Control, or ``None`` when it does not exist)
and what are bytes ``start..start+length`` (``read``, an async iterator of
chunks that must add up to exactly ``length`` bytes). Errors are
``OriginError`` (a bad answer → 502), ``OriginTimeout`` (→ 504) and
``OriginRefused`` (a request the origin cannot be asked, → its 4xx). An origin
may also offer ``read_first(key, start, length)``: both at once, the metadata
learnt from the answer to a GET of the first bytes (the HTTP origin does), so a
cold miss needs one round trip, not two. Keys reach
an origin already validated by ``edge.core.keys``.

``open_origin`` maps a URL to its class: ``file:///dir`` here; the S3 and HTTP
origins slot in beside it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from edge.core.meta import ObjectMeta


class OriginError(Exception):
    """The origin gave a bad answer or none."""


class OriginTimeout(OriginError):
    """The origin did not answer in time."""


class OriginChanged(OriginError):
    """The object changed at the origin (its ETag no longer matches)."""


class OriginRefused(OriginError):
    """The request cannot be asked of the origin, through no fault of the
    origin's (a name too long for its file system): answered with ``status``
    (4xx), never retried, never counted against the origin."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class OriginSettings:
    """What every origin client takes from the configuration."""

    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_addressing_style: str = "auto"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    # (key id, secret): HTTP origins get signed requests (a parent or peer
    # appliance of the same fleet checks them; a plain web server ignores them)
    signing_key: tuple[str, bytes] | None = None
    ca_file: str | None = None  # verifies https:// origins, parents and peers (None: system)
    pool_size: int = 256  # connections to each HTTP origin, at most (edge.origin.client)


class Origin(Protocol):
    url: str

    async def head(self, key: str, current: ObjectMeta | None = None) -> ObjectMeta | None:
        """What ``key`` is; with ``current`` (a stale stored version), a
        revalidation: the same meta with renewed freshness when it still holds."""
        ...

    def read(self, key: str, meta: ObjectMeta, start: int, length: int) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


def check_origin_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError("a file origin is file:///absolute/dir")
        return
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError("an S3 origin is s3://bucket[/prefix]")
        return
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError("an HTTP origin is http(s)://host[:port][/prefix]")
        if parts.query or parts.fragment:
            raise ValueError("an HTTP origin URL takes no query or fragment")
        return
    raise ValueError(f"unknown origin scheme {parts.scheme!r} (file, s3, http, https)")


def open_origin(url: str, settings: OriginSettings | None = None) -> Origin:
    check_origin_url(url)
    settings = settings or OriginSettings()
    parts = urlsplit(url)
    if parts.scheme == "file":
        from edge.origin.file import FileOrigin

        return FileOrigin(parts.path)
    if parts.scheme == "s3":
        from edge.origin.s3 import S3Origin

        return S3Origin(url, settings)
    from edge.origin.http import HTTPOrigin

    return HTTPOrigin(url, settings)
