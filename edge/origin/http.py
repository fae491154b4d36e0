"""An HTTP origin (``http(s)://host[:port]/prefix``): a web server or a parent appliance.

Here the appliance is a shared HTTP cache (RFC 9111; the decisions are
``edge.core.cachepolicy`` and ``edge.core.freshness``). A miss learns the
object from the answer to the GET of the slice the request starts with
(``read_first``: Content-Range gives the size, the headers the rest), sent
with the player's end-to-end request headers, so the origin picks the
representation it would for the player. Every status is an answer: its status,
end-to-end headers, Vary selection and freshness go into the ``ObjectMeta``,
and its body is the object's bytes. Only transport failures, timeouts and
5xx count against the origin (the chain retries and counts them). No
validator is invented: a slice is pinned to the learnt version with
``If-Match`` where the origin gave a strong ETag, else ``If-Unmodified-Since``
where it gave a Last-Modified, and each answer's own validators and length
are checked too; a 412 or another version means the object changed
(``OriginChanged``). A revalidation is a conditional GET of the first slice
(``If-None-Match`` / ``If-Modified-Since``): a 304 renews the stored
answer's headers and freshness, anything else replaces it. ``forward``
carries an unsafe method (POST, PUT, …) to the origin and its answer back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from edge.core import cachepolicy, freshness
from edge.core.httpdate import format_http_date, parse_http_date
from edge.core.mediatypes import guess_type
from edge.core.meta import ObjectMeta
from edge.core.signing import token_param
from edge.http.response import SERVER
from edge.http.tls import client_context
from edge.origin import OriginChanged, OriginError, OriginSettings, OriginTimeout
from edge.origin.client import Answer, ClientError, Pool, Timeout
from edge.origin.state import shown_url

SIGNED_FOR = 300  # seconds a request's token is valid
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
UNSIZED_MAX = 16 * 1024 * 1024  # an answer without a length is read whole, up to this
FORWARDED_MAX = 64 * 1024 * 1024  # an unsafe method's answer, read whole, up to this


@dataclasses.dataclass
class Forwarded:
    """The origin's answer to a forwarded unsafe method."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def _joined(h: Any, name: str) -> str | None:
    """All of a header's field lines as one list (RFC 9110 §5.3)."""
    values = h.getall(name, [])
    return ", ".join(values) if values else None


def is_strong(etag: str) -> bool:
    return len(etag) >= 2 and etag.startswith('"') and etag.endswith('"')


class HTTPOrigin:
    shared_cache = True  # the chain forwards the player's request headers to it

    def __init__(self, url: str, settings: OriginSettings) -> None:
        self.url = url
        self.shown = shown_url(url)  # for messages: never the credentials
        parts = urlsplit(url)
        self.base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._path = parts.path.rstrip("/")
        self.settings = settings
        self._pool: Pool | None = None
        self.signing_key = settings.signing_key  # replaced when the keys are reloaded
        self._key_prefix = parts.path.strip("/") + "/" if parts.path.strip("/") else ""

    def _client(self) -> Pool:
        """The origin's connections (``edge.origin.client``), made at first use."""
        if self._pool is None:
            ca = self.settings.ca_file
            self._pool = Pool(
                self.base,
                shown=self.shown,
                user_agent=SERVER,
                connect_timeout=self.settings.connect_timeout,
                read_timeout=self.settings.read_timeout,
                size=self.settings.pool_size,
                ssl_context=client_context(ca) if ca else None,
            )
        return self._pool

    def _target(self, key: str) -> str:
        """The request target (path and query) for ``key``."""
        path, query = cachepolicy.split_key(key)
        url = self._path + "/" + quote(path, safe="/!$&'()*+,;=:@-._~")
        if self.signing_key is not None:
            kid, secret = self.signing_key  # the key as the parent names it, prefix and all
            expires = int(time.time()) + SIGNED_FOR
            token = token_param(self._key_prefix + path, kid, secret, expires)
            query = f"{query}&{token}" if query else token
        return url + "?" + query if query else url

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    @contextlib.asynccontextmanager
    async def _get(self, key: str, headers: dict[str, str]) -> AsyncIterator[Answer]:
        """The answer to a GET, released after (its connection back to the
        pool when its body was read to its end, else closed)."""
        resp = await self._client().request("GET", self._target(key), headers)
        try:
            yield resp
        finally:
            resp.release()

    # -- metadata --------------------------------------------------------------

    async def head(
        self,
        key: str,
        current: ObjectMeta | None = None,
        *,
        request_headers: Mapping[str, str] | None = None,
    ) -> ObjectMeta | None:
        """What ``key`` is now (with ``current``: a revalidation of it), from
        the answer to a GET of its first byte: no HEAD, whose answer may not
        say the length."""
        stream = self.read_first(key, 0, 1, current=current, request_headers=request_headers)
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            return None
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        return first if isinstance(first, ObjectMeta) else None

    def _meta(
        self,
        key: str,
        status: int,
        size: int,
        h: Any,
        request_time: float,
        response_time: float,
        request_headers: Mapping[str, str],
    ) -> ObjectMeta:
        lm = parse_http_date(h.get("Last-Modified"))
        etag = h.get("ETag") or ""
        pairs = [
            (k, v) for k, v in h.items() if not (status == 206 and k.lower() == "content-range")
        ]
        stored = cachepolicy.end_to_end(pairs)
        names = cachepolicy.parse_vary(", ".join(h.getall("Vary", [])))
        # the appliance always asks for identity: Accept-Encoding selects nothing here
        vary = () if names is None else tuple(n for n in names if n != "accept-encoding")
        f = freshness.evaluate(
            cache_control=_joined(h, "Cache-Control"),
            expires=h.get("Expires"),
            date=h.get("Date"),
            age=h.get("Age"),
            last_modified=h.get("Last-Modified"),
            request_time=request_time,
            response_time=response_time,
            status=200 if status == 206 else status,
        )
        cc = freshness.parse_cache_control(_joined(h, "Cache-Control"))
        storable = (
            f.storable
            and names is not None
            and cachepolicy.storable(
                200 if status == 206 else status,
                cc,
                "Expires" in h,
                public=cachepolicy.has_directive(_joined(h, "Cache-Control"), "public"),
                authorized="authorization" in request_headers,
            )
        )
        return ObjectMeta(
            size=size,
            etag=etag,
            last_modified=lm or 0,
            content_type=h.get("Content-Type") or guess_type(cachepolicy.split_key(key)[0]),
            cache_control=_joined(h, "Cache-Control"),
            fresh_until=f.fresh_until,
            stale_if_error=f.stale_if_error,
            must_revalidate=f.must_revalidate,
            storable=storable,
            born=f.born,
            status=200 if status == 206 else status,
            headers=stored,
            vary=cachepolicy.vary_values(vary, request_headers),
        )

    def _renewed(
        self, current: ObjectMeta, h: Any, request_time: float, response_time: float
    ) -> ObjectMeta:
        """``current`` after a 304: its headers updated, its freshness renewed."""
        headers = cachepolicy.updated_by_304(current.headers or (), h.items())
        lower = {k.lower(): v for k, v in headers}
        f = freshness.evaluate(
            cache_control=lower.get("cache-control"),
            expires=lower.get("expires"),
            date=h.get("Date"),
            age=h.get("Age"),
            last_modified=lower.get("last-modified"),
            request_time=request_time,
            response_time=response_time,
            status=current.status,
        )
        return dataclasses.replace(
            current,
            cache_control=lower.get("cache-control"),
            headers=headers,
            fresh_until=f.fresh_until,
            stale_if_error=f.stale_if_error,
            must_revalidate=f.must_revalidate,
            storable=current.storable and f.storable,
            born=f.born,
        )

    # -- bytes -----------------------------------------------------------------

    def _same_version(self, key: str, meta: ObjectMeta, h: Mapping[str, str]) -> None:
        """Not every origin honours If-Match: check the answer's validators too,
        so two versions never meet in one stored object."""
        etag = h.get("ETag")
        if meta.etag:
            if etag is not None and etag != meta.etag:
                raise OriginChanged(f"{self.shown}: {key!r} changed at the origin (ETag {etag})")
        elif meta.last_modified:
            lm = parse_http_date(h.get("Last-Modified"))
            if lm is not None and lm != meta.last_modified:
                raise OriginChanged(f"{self.shown}: {key!r} changed at the origin (Last-Modified)")

    def _request_headers(
        self, request_headers: Mapping[str, str] | None, meta: ObjectMeta | None
    ) -> dict[str, str]:
        """The player's headers to forward; for a slice of a stored variant,
        the values it was selected by."""
        out = cachepolicy.forwarded(request_headers) if request_headers else {}
        if meta is not None:
            for name, value in meta.vary:
                if value is None:
                    out.pop(name, None)
                else:
                    out[name] = value
        return out

    async def read_first(
        self,
        key: str,
        start: int,
        length: int,
        *,
        request_headers: Mapping[str, str] | None = None,
        current: ObjectMeta | None = None,
        ranged: bool = True,
    ) -> AsyncIterator[ObjectMeta | bytes | None]:
        """Learn what ``key`` is from a GET of bytes ``start..start+length-1``:
        yields the ``ObjectMeta`` (size from Content-Range, or the answer's
        length), then the bytes of that range as they arrive (clipped to the
        object's end). Yields nothing when it cannot tell from a GET (a range
        past the end, 416): the caller asks with a GET of byte 0. With
        ``current`` it is a revalidation: a 304 yields ``current`` renewed,
        and no bytes. No precondition pins the version: whatever answers is the
        one learnt, and later reads pin it."""
        headers = self._request_headers(request_headers, current)
        if ranged:
            headers["Range"] = f"bytes={start}-{start + length - 1}"
        empty = False
        if current is not None:
            if current.etag:
                headers["If-None-Match"] = current.etag
            if current.last_modified:
                headers["If-Modified-Since"] = format_http_date(current.last_modified)
        request_time = time.time()
        try:
            async with self._get(key, headers) as resp:
                status, h = resp.status, resp.headers
                if status == 416:
                    if start > 0:
                        return  # past the end, or no ranges: the caller asks for byte 0
                    if ranged and h.get("Content-Range", "").strip() == "bytes */0":
                        empty = True  # an empty object: its answer without a Range
                if status == 304 and current is not None:
                    yield self._renewed(current, h, request_time, time.time())
                    return
                if not empty:
                    async for item in self._learnt(
                        key, start, length, resp, request_time, request_headers or {}
                    ):
                        yield item
                    return
        except (TimeoutError, ClientError) as exc:
            raise self._get_error(exc, key) from None
        async for item in self.read_first(
            key, start, length, request_headers=request_headers, current=current, ranged=False
        ):
            yield item

    async def _learnt(
        self,
        key: str,
        start: int,
        length: int,
        resp: Answer,
        request_time: float,
        request_headers: Mapping[str, str],
    ) -> AsyncIterator[ObjectMeta | bytes]:
        """The meta of a GET's answer, then its bytes ``start..start+length-1``."""
        status, h = resp.status, resp.headers
        skip = 0
        if status == 206:
            m = _CONTENT_RANGE.fullmatch(h.get("Content-Range", ""))
            if m is None or m.group(3) == "*" or int(m.group(1)) != start:
                raise OriginError(
                    f"{self.shown}: {key!r}: no usable Content-Range ({h.get('Content-Range')!r})"
                )
            size = int(m.group(3))
            if int(m.group(2)) != min(start + length, size) - 1:
                raise OriginError(
                    f"{self.shown}: {key!r}: Content-Range {h.get('Content-Range')!r} "
                    f"is not bytes {start}-{min(start + length, size) - 1}/{size}"
                )
        else:
            # the whole answer (Range ignored, or not a 200): our part of it
            skip = start
            if resp.content_length is None:
                whole = await self._unsized(resp, key)
                yield self._meta(
                    key, status, len(whole), h, request_time, time.time(), request_headers
                )
                if start < len(whole):
                    yield whole[start : start + length]
                return
            size = resp.content_length
        yield self._meta(key, status, size, h, request_time, time.time(), request_headers)
        want = max(0, min(length, size - start))
        if want:
            async for chunk in self._body(resp, key, want, skip, status == 206):
                yield chunk

    async def _unsized(self, resp: Answer, key: str) -> bytes:
        """The whole body of an answer that gave no length (chunked, or up to
        the connection's end), up to ``UNSIZED_MAX``."""
        try:
            return await resp.read(UNSIZED_MAX)
        except Timeout:
            raise
        except ClientError as exc:
            raise OriginError(f"{self.shown}: {key!r}: an answer without a length: {exc}") from None

    def _get_error(self, exc: BaseException, key: str) -> OriginError:
        """The ``OriginError`` for what a request raised (timeouts: ``OriginTimeout``)."""
        if isinstance(exc, (TimeoutError, Timeout)):
            return OriginTimeout(f"{self.shown}: GET {key!r} timed out")
        return OriginError(f"{self.shown}: GET {key!r}: {exc}")

    async def _body(
        self, resp: Answer, key: str, length: int, skip: int, exact: bool
    ) -> AsyncIterator[bytes | memoryview]:
        """``length`` bytes of ``resp``'s body after the first ``skip``; ``exact``:
        the body must not hold more (a 206 of our range)."""
        left = length
        # whatever has arrived, as it was read from the socket: a player waiting
        # for its first byte should not wait for a buffer to fill
        async for chunk in resp.chunks():
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
                    raise OriginError(f"{self.shown}: {key!r}: more bytes than asked")
                chunk = chunk[:left]
            left -= len(chunk)
            yield chunk
            if left == 0:
                break
        if left:
            raise OriginError(f"{self.shown}: {key!r}: short read, {left} bytes missing")

    async def read(
        self, key: str, meta: ObjectMeta, start: int, length: int
    ) -> AsyncIterator[bytes]:
        if length <= 0:
            return
        end = start + length - 1
        headers = self._request_headers(None, meta)
        if meta.status != 200:
            # not the object's bytes but an answer (a 404's body, a redirect's):
            # asked for whole, and it must still be the same answer
            chunks = self._read_answer(key, meta, start, length, headers)
        else:
            headers["Range"] = f"bytes={start}-{end}"
            if is_strong(meta.etag):
                headers["If-Match"] = meta.etag
            elif meta.last_modified:
                headers["If-Unmodified-Since"] = format_http_date(meta.last_modified)
            chunks = self._read_range(key, meta, start, length, headers)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    async def _read_range(
        self, key: str, meta: ObjectMeta, start: int, length: int, headers: dict[str, str]
    ) -> AsyncIterator[bytes]:
        end = start + length - 1
        try:
            async with self._get(key, headers) as resp:
                skip = 0
                if resp.status == 412:
                    raise OriginChanged(f"{self.shown}: {key!r} changed at the origin")
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
                            f"{self.shown}: {key!r}: Content-Range "
                            f"{resp.headers.get('Content-Range')!r} is not bytes "
                            f"{start}-{end}/{meta.size}"
                        )
                elif resp.status == 200:
                    # the origin ignored Range: take our part of the whole body
                    if resp.content_length not in (None, meta.size):
                        raise OriginChanged(f"{self.shown}: {key!r} is no longer {meta.size} bytes")
                    skip = start
                elif resp.status < 500:
                    raise OriginChanged(f"{self.shown}: {key!r} answered {resp.status} now")
                else:
                    raise OriginError(f"{self.shown}: GET {key!r} answered {resp.status}")
                async for chunk in self._body(resp, key, length, skip, resp.status == 206):
                    yield chunk
        except (TimeoutError, ClientError) as exc:
            raise self._get_error(exc, key) from None

    async def _read_answer(
        self, key: str, meta: ObjectMeta, start: int, length: int, headers: dict[str, str]
    ) -> AsyncIterator[bytes]:
        try:
            async with self._get(key, headers) as resp:
                if resp.status != meta.status or resp.content_length not in (None, meta.size):
                    raise OriginChanged(f"{self.shown}: {key!r} answered {resp.status} now")
                self._same_version(key, meta, resp.headers)
                async for chunk in self._body(resp, key, length, start, False):
                    yield chunk
        except (TimeoutError, ClientError) as exc:
            raise self._get_error(exc, key) from None

    # -- unsafe methods ----------------------------------------------------------

    async def forward(
        self, method: str, key: str, request_headers: Mapping[str, str], body: bytes
    ) -> Forwarded:
        """``method`` with ``body`` to the origin, once; its answer, whole."""
        headers = cachepolicy.forwarded(request_headers)
        try:
            resp = await self._client().request(method, self._target(key), headers, body)
            try:
                data = await resp.read(FORWARDED_MAX)
            finally:
                resp.release()
            return Forwarded(resp.status, cachepolicy.end_to_end(resp.headers.items()), data)
        except (TimeoutError, ClientError) as exc:
            raise self._get_error(exc, key) from None
