"""An HTTP origin (``http(s)://host[:port]/prefix``): a web server or a parent appliance.

A cold miss learns the metadata from the answer to the GET of its first slice
(``read_first``: Content-Range gives the size, the headers the rest), which
saves the round trip of a HEAD; otherwise metadata comes from ``HEAD`` (falling
back to ``GET`` with ``Range: bytes=0-0`` for servers that refuse HEAD). A
slice comes from ``GET`` with ``Range`` and a
precondition that pins the version: ``If-Match`` with the origin's strong ETag,
else ``If-Unmodified-Since`` with its Last-Modified. A 412 means the object
changed (``OriginChanged``). Freshness is evaluated per RFC 9111
(``edge.core.freshness``); a revalidation sends ``If-None-Match`` /
``If-Modified-Since`` and a 304 renews the stored object's freshness.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import AsyncIterator, Mapping
from urllib.parse import quote, urlsplit

import aiohttp

from edge.core import freshness
from edge.core.httpdate import format_http_date, parse_http_date
from edge.core.mediatypes import guess_type
from edge.core.meta import ObjectMeta
from edge.core.signing import token_param
from edge.http.response import SERVER
from edge.http.tls import client_context
from edge.origin import OriginChanged, OriginError, OriginSettings, OriginTimeout

SIGNED_FOR = 300  # seconds a request's token is valid
SYNTHETIC_ETAG = '"ef-'  # our own validator, for origins that send no strong ETag
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class HTTPOrigin:
    def __init__(self, url: str, settings: OriginSettings) -> None:
        self.url = url
        parts = urlsplit(url)
        self.base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self.signing_key = settings.signing_key  # replaced when the keys are reloaded
        self._key_prefix = parts.path.strip("/") + "/" if parts.path.strip("/") else ""

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=self.settings.connect_timeout,
                    sock_connect=self.settings.connect_timeout,
                    sock_read=self.settings.read_timeout,
                ),
                connector=aiohttp.TCPConnector(
                    limit=256,
                    ttl_dns_cache=300,
                    ssl=client_context(self.settings.ca_file) if self.settings.ca_file else True,
                ),
                auto_decompress=False,
                headers={"User-Agent": SERVER, "Accept-Encoding": "identity"},
            )
        return self._session

    def _target(self, key: str) -> str:
        url = self.base + "/" + quote(key, safe="/!$&'()*+,;=:@-._~")
        if self.signing_key is None:
            return url
        kid, secret = self.signing_key  # the key as the parent names it, prefix and all
        expires = int(time.time()) + SIGNED_FOR
        return url + "?" + token_param(self._key_prefix + key, kid, secret, expires)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # -- metadata --------------------------------------------------------------

    async def head(self, key: str, current: ObjectMeta | None = None) -> ObjectMeta | None:
        """What ``key`` is now; with ``current``, a revalidation of it."""
        headers = {}
        if current is not None:
            if not current.etag.startswith(SYNTHETIC_ETAG):
                headers["If-None-Match"] = current.etag
            headers["If-Modified-Since"] = format_http_date(current.last_modified)
        request_time = time.time()
        try:
            async with self._client().head(
                self._target(key), headers=headers, allow_redirects=True
            ) as resp:
                status = resp.status
                h = resp.headers
                if status in (405, 501):
                    return await self._head_by_get(key, request_time)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise OriginTimeout(f"{self.url}: HEAD {key!r} timed out") from None
        except aiohttp.ClientError as exc:
            raise OriginError(f"{self.url}: HEAD {key!r}: {exc}") from None
        response_time = time.time()
        if status in (404, 410):
            return None
        if status == 304 and current is not None:
            return self._renewed(current, h, request_time, response_time)
        if status != 200:
            raise OriginError(f"{self.url}: HEAD {key!r} answered {status}")
        length = h.get("Content-Length")
        if length is None or not length.isdigit():
            raise OriginError(f"{self.url}: HEAD {key!r} gave no Content-Length")
        return self._meta(key, int(length), h, request_time, response_time)

    async def _head_by_get(self, key: str, request_time: float) -> ObjectMeta | None:
        async with self._client().get(self._target(key), headers={"Range": "bytes=0-0"}) as resp:
            if resp.status in (404, 410):
                return None
            if resp.status == 206:
                m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
                if m is None or m.group(3) == "*":
                    raise OriginError(f"{self.url}: {key!r}: no usable Content-Range")
                size = int(m.group(3))
            elif resp.status == 200 and resp.headers.get("Content-Length", "").isdigit():
                size = int(resp.headers["Content-Length"])
            else:
                raise OriginError(f"{self.url}: GET {key!r} answered {resp.status}")
            return self._meta(key, size, resp.headers, request_time, time.time())

    def _meta(
        self,
        key: str,
        size: int,
        h: Mapping[str, str],
        request_time: float,
        response_time: float,
    ) -> ObjectMeta:
        origin_lm = parse_http_date(h.get("Last-Modified"))
        lm = origin_lm if origin_lm is not None else int(response_time)
        etag = h.get("ETag")
        if not etag or etag.startswith("W/") or not (etag.startswith('"') and etag.endswith('"')):
            # our own validator: stable for as long as the origin's Last-Modified is
            etag = f'{SYNTHETIC_ETAG}{origin_lm or 0:x}-{size:x}"'
        ctype = h.get("Content-Type") or guess_type(key)
        f = self._freshness(h, request_time, response_time)
        return ObjectMeta(
            size=size,
            etag=etag,
            last_modified=lm,
            content_type=ctype,
            cache_control=h.get("Cache-Control"),
            fresh_until=f.fresh_until,
            stale_if_error=f.stale_if_error,
            must_revalidate=f.must_revalidate,
            storable=f.storable,
            born=f.born,
        )

    @staticmethod
    def _freshness(
        h: Mapping[str, str | None], request_time: float, response_time: float
    ) -> freshness.Freshness:
        return freshness.evaluate(
            cache_control=h.get("Cache-Control"),
            expires=h.get("Expires"),
            date=h.get("Date"),
            age=h.get("Age"),
            last_modified=h.get("Last-Modified"),
            request_time=request_time,
            response_time=response_time,
        )

    def _renewed(
        self, current: ObjectMeta, h, request_time: float, response_time: float
    ) -> ObjectMeta:  # type: ignore[no-untyped-def]
        merged = {
            "Cache-Control": h.get("Cache-Control", current.cache_control),
            "Expires": h.get("Expires"),
            "Date": h.get("Date"),
            "Age": h.get("Age"),
            "Last-Modified": format_http_date(current.last_modified),
        }
        f = self._freshness(merged, request_time, response_time)
        return dataclasses.replace(
            current,
            cache_control=merged["Cache-Control"],
            fresh_until=f.fresh_until,
            stale_if_error=f.stale_if_error,
            must_revalidate=f.must_revalidate,
            storable=f.storable,
            born=f.born,
        )

    # -- bytes -----------------------------------------------------------------

    def _same_version(self, key: str, meta: ObjectMeta, h: Mapping[str, str]) -> None:
        """Not every origin honours If-Match: check the answer's validators too,
        so two versions never meet in one stored object."""
        etag = h.get("ETag")
        if meta.etag.startswith(SYNTHETIC_ETAG):
            lm = parse_http_date(h.get("Last-Modified"))
            if lm is not None and lm != meta.last_modified:
                raise OriginChanged(f"{self.url}: {key!r} changed at the origin (Last-Modified)")
        elif etag is not None and etag != meta.etag:
            raise OriginChanged(f"{self.url}: {key!r} changed at the origin (ETag {etag})")

    async def read_first(
        self, key: str, start: int, length: int
    ) -> AsyncIterator[ObjectMeta | bytes | None]:
        """Learn what ``key`` is from a GET of bytes ``start..start+length-1``
        instead of a HEAD first: yields the ``ObjectMeta`` (size from
        Content-Range), then the bytes of that range as they arrive (clipped to
        the object's end). Yields ``None`` alone when the origin has no such
        object; yields nothing when it cannot tell from a GET (a range past the
        end, 416): the caller asks ``head``. No precondition: whatever version
        answers is the one learnt, and later reads pin it with ``If-Match``."""
        request_time = time.time()
        try:
            async with self._client().get(
                self._target(key), headers={"Range": f"bytes={start}-{start + length - 1}"}
            ) as resp:
                status, h = resp.status, resp.headers
                if status in (404, 410):
                    yield None
                    return
                if status == 416:
                    return
                skip = 0
                if status == 206:
                    m = _CONTENT_RANGE.fullmatch(h.get("Content-Range", ""))
                    if m is None or m.group(3) == "*" or int(m.group(1)) != start:
                        raise OriginError(
                            f"{self.url}: {key!r}: no usable Content-Range "
                            f"({h.get('Content-Range')!r})"
                        )
                    size = int(m.group(3))
                    if int(m.group(2)) != min(start + length, size) - 1:
                        raise OriginError(
                            f"{self.url}: {key!r}: Content-Range {h.get('Content-Range')!r} "
                            f"is not bytes {start}-{min(start + length, size) - 1}/{size}"
                        )
                elif status == 200:
                    if resp.content_length is None:
                        return  # no size to learn from this answer
                    size = resp.content_length  # Range ignored: our part of the whole body
                    skip = start
                else:
                    raise OriginError(f"{self.url}: GET {key!r} answered {status}")
                yield self._meta(key, size, h, request_time, time.time())
                want = max(0, min(length, size - start))
                if want:
                    async for chunk in self._body(resp, key, want, skip, status == 206):
                        yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._get_error(exc, key) from None

    def _get_error(self, exc: BaseException, key: str) -> OriginError:
        """The ``OriginError`` for what a GET raised (timeouts first: aiohttp's
        ``ServerTimeoutError`` is also a ``ClientError``)."""
        if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
            return OriginTimeout(f"{self.url}: GET {key!r} timed out")
        if isinstance(exc, aiohttp.ClientPayloadError):
            return OriginError(f"{self.url}: {key!r}: the body broke off: {exc}")
        return OriginError(f"{self.url}: GET {key!r}: {exc}")

    async def _body(
        self, resp: aiohttp.ClientResponse, key: str, length: int, skip: int, exact: bool
    ) -> AsyncIterator[bytes]:
        """``length`` bytes of ``resp``'s body after the first ``skip``; ``exact``:
        the body must not hold more (a 206 of our range)."""
        left = length
        # whatever has arrived, as it was read from the socket: a player waiting
        # for its first byte should not wait for a buffer to fill, and buffered
        # reads are not joined into one new copy (``iter_any`` would)
        async for chunk, _ in resp.content.iter_chunks():
            if not chunk:
                continue
            if skip:
                if len(chunk) <= skip:
                    skip -= len(chunk)
                    continue
                chunk = chunk[skip:]
                skip = 0
            if len(chunk) > left:
                if exact:
                    raise OriginError(f"{self.url}: {key!r}: more bytes than asked")
                chunk = chunk[:left]
            left -= len(chunk)
            yield chunk
            if left == 0:
                break
        if left:
            raise OriginError(f"{self.url}: {key!r}: short read, {left} bytes missing")

    async def read(
        self, key: str, meta: ObjectMeta, start: int, length: int
    ) -> AsyncIterator[bytes]:
        if length <= 0:
            return
        end = start + length - 1
        headers = {"Range": f"bytes={start}-{end}"}
        if meta.etag.startswith(SYNTHETIC_ETAG):
            headers["If-Unmodified-Since"] = format_http_date(meta.last_modified)
        else:
            headers["If-Match"] = meta.etag
        try:
            async with self._client().get(self._target(key), headers=headers) as resp:
                skip = 0
                if resp.status == 412:
                    raise OriginChanged(f"{self.url}: {key!r} changed at the origin")
                if resp.status in (200, 206):
                    self._same_version(key, meta, resp.headers)
                if resp.status == 206:
                    m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
                    if (
                        m is None
                        or int(m.group(1)) != start
                        or int(m.group(2)) != end
                        or (m.group(3) != "*" and int(m.group(3)) != meta.size)
                    ):
                        raise OriginChanged(
                            f"{self.url}: {key!r}: Content-Range "
                            f"{resp.headers.get('Content-Range')!r} is not bytes "
                            f"{start}-{end}/{meta.size}"
                        )
                elif resp.status == 200:
                    # the origin ignored Range: take our part of the whole body
                    if resp.content_length not in (None, meta.size):
                        raise OriginChanged(f"{self.url}: {key!r} is no longer {meta.size} bytes")
                    skip = start
                elif resp.status in (404, 410):
                    raise OriginChanged(f"{self.url}: {key!r} is gone from the origin")
                else:
                    raise OriginError(f"{self.url}: GET {key!r} answered {resp.status}")
                async for chunk in self._body(resp, key, length, skip, resp.status == 206):
                    yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._get_error(exc, key) from None
