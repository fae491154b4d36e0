"""An S3-compatible bucket as origin (``s3://bucket/prefix``), through aiobotocore.

Signing, endpoint resolution and credentials are botocore's; its retries are
off (``total_max_attempts=1``) because the appliance has its own. The client
is made on first use, inside the running event loop, and kept open until
``close``.

``head`` is ``HeadObject``; ``read`` is a ranged ``GetObject`` carrying
``If-Match`` with the ETag ``head`` saw, so a replaced object is a 412, raised
as ``OriginChanged``, never a mix of two versions. The answer's
``Content-Range``, length and ETag are checked too, in case an S3-compatible
store ignores ``Range`` or ``If-Match``. Each wait for bytes is bounded by the
read timeout, as is the wait for the answer's headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from edge.core.mediatypes import guess_type
from edge.core.meta import ObjectMeta
from edge.origin import OriginChanged, OriginError, OriginSettings, OriginTimeout

CHUNK = 256 * 1024


class _Unsatisfiable(Exception):
    """S3 answered 416: the range starts past the object's end."""


NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class S3Origin:
    def __init__(self, url: str, settings: OriginSettings) -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError("an S3 origin is s3://bucket[/prefix]")
        self.url = url
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.settings = settings
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()
        self._bucket_ok = False

    def object_key(self, key: str) -> str:
        """The key at the origin: under the URL's prefix, if it has one."""
        return f"{self.prefix}/{key}" if self.prefix else key

    async def client(self) -> Any:
        """The aiobotocore S3 client, made on first use (closed by ``close``)."""
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                s = self.settings
                kwargs: dict[str, Any] = {
                    "endpoint_url": s.s3_endpoint,
                    "region_name": s.s3_region or ("us-east-1" if s.s3_endpoint else None),
                    "config": AioConfig(
                        s3={"addressing_style": s.s3_addressing_style},
                        connect_timeout=s.connect_timeout,
                        read_timeout=s.read_timeout,
                        # total attempts, the first included: the appliance retries, not botocore
                        retries={"total_max_attempts": 1},
                        # no checksum headers unless an operation needs them: some
                        # S3-compatible stores mishandle x-amz-checksum-mode
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required",
                    ),
                }
                if s.s3_access_key_id and s.s3_secret_access_key:
                    kwargs["aws_access_key_id"] = s.s3_access_key_id
                    kwargs["aws_secret_access_key"] = s.s3_secret_access_key
                stack = contextlib.AsyncExitStack()
                try:
                    client = await stack.enter_async_context(
                        get_session().create_client("s3", **kwargs)
                    )
                except (BotoCoreError, ValueError) as exc:
                    await stack.aclose()
                    raise OriginError(f"{self.url}: cannot make an S3 client: {exc}") from None
                self._stack = stack
                self._client = client
        return self._client

    def _error(self, exc: BaseException, key: str) -> OriginError:
        """The ``OriginError`` for what botocore or aiohttp raised."""
        where = f"{self.url}: {key!r}"
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 403 or code in ("403", "AccessDenied", "Forbidden"):
                return OriginError(f"{where}: access denied (403 {code})")
            if status == 412 or code == "PreconditionFailed":
                return OriginChanged(f"{where}: changed at the origin (ETag no longer matches)")
            if code in NOT_FOUND:
                return OriginChanged(f"{where}: disappeared from the origin")
            message = err.get("Message") or ""
            return OriginError(f"{where}: S3 error {status} {code} {message}".rstrip())
        if isinstance(exc, ConnectTimeoutError):
            return OriginTimeout(f"{where}: connect timed out")
        if isinstance(exc, (ReadTimeoutError, asyncio.TimeoutError)):
            return OriginTimeout(f"{where}: read timed out")
        if isinstance(exc, EndpointConnectionError):
            return OriginError(f"{where}: cannot connect to the S3 endpoint: {exc}")
        return OriginError(f"{where}: {type(exc).__name__}: {exc}")

    async def _call(
        self, key: str, op: str, missing_ok: bool = False, **params: Any
    ) -> dict[str, Any] | None:
        """``op`` on the object; ``None`` if it does not exist and ``missing_ok``.
        A range past the end (416) raises ``_Unsatisfiable``."""
        client = await self.client()
        s = self.settings
        try:
            # botocore bounds connect and each socket read; this also bounds the
            # whole exchange should something else stall
            async with asyncio.timeout(s.connect_timeout + s.read_timeout + 1.0):
                resp: dict[str, Any] = await getattr(client, op)(
                    Bucket=self.bucket, Key=self.object_key(key), **params
                )
                return resp
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if missing_ok and code in NOT_FOUND:
                return None
            if code == "InvalidRange" or code == "416":
                raise _Unsatisfiable(key) from None
            raise self._error(exc, key) from None
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._error(exc, key) from None

    async def head(self, key: str, current: ObjectMeta | None = None) -> ObjectMeta | None:
        # S3 content is immutable until purged: ``current`` is never stale here
        resp = await self._call(key, "head_object", missing_ok=True)
        if resp is None:
            await self._check_bucket()
            return None
        size = resp.get("ContentLength")
        if not isinstance(size, int) or size < 0:
            raise OriginError(f"{self.url}: {key!r}: no Content-Length from S3")
        return self._meta(key, size, resp)

    def _meta(self, key: str, size: int, resp: dict[str, Any]) -> ObjectMeta:
        """The object's metadata from a HeadObject or GetObject answer."""
        etag = resp.get("ETag")
        if not etag:
            raise OriginError(f"{self.url}: {key!r}: no ETag from S3")
        modified = resp.get("LastModified")
        ctype = resp.get("ContentType")
        if not ctype or ctype == "binary/octet-stream":
            ctype = guess_type(key)
        return ObjectMeta(
            size=size,
            etag=etag,
            last_modified=int(modified.timestamp()) if modified is not None else 0,
            content_type=ctype,
            cache_control=resp.get("CacheControl") or None,
            fresh_until=None,
        )

    async def _check_bucket(self) -> None:
        """A missing key and a missing bucket look alike to HeadObject (404): a
        misspelt bucket must be a clear error, not every object 404."""
        if self._bucket_ok:
            return
        client = await self.client()
        try:
            async with asyncio.timeout(self.settings.connect_timeout + self.settings.read_timeout):
                await client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in NOT_FOUND or code == "NoSuchBucket":
                raise OriginError(f"{self.url}: bucket {self.bucket!r} does not exist") from None
            raise self._error(exc, "") from None
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._error(exc, "") from None
        self._bucket_ok = True

    async def read_first(
        self, key: str, start: int, length: int
    ) -> AsyncIterator[ObjectMeta | bytes | None]:
        """Learn what ``key`` is from the GetObject of bytes ``start..start+length-1``
        instead of a HeadObject first (one round trip to the store, not two):
        yields the ``ObjectMeta`` (size from Content-Range), then the bytes of that
        range as they arrive (clipped to the object's end). Yields ``None`` alone
        when the object does not exist; yields nothing when the answer cannot tell
        (a range past the end, or no Content-Range for a part): the caller asks
        ``head``. No precondition: the version that answers is the one learnt."""
        if length <= 0:
            return
        end = start + length - 1
        try:
            resp = await self._call(
                key, "get_object", missing_ok=True, Range=f"bytes={start}-{end}"
            )
        except _Unsatisfiable:
            return
        if resp is None:
            await self._check_bucket()
            yield None
            return
        body = resp["Body"]
        try:
            content_range = (resp.get("ContentRange") or "").strip()
            m = CONTENT_RANGE.fullmatch(content_range)
            if m is not None and m.group(3) != "*":
                size = int(m.group(3))
                if int(m.group(1)) != start or int(m.group(2)) != min(end, size - 1):
                    raise OriginError(
                        f"{self.url}: {key!r}: S3 sent {content_range!r} for bytes {start}-{end}"
                    )
            elif not content_range and start == 0 and isinstance(resp.get("ContentLength"), int):
                size = resp["ContentLength"]  # the whole object: the store ignored Range
            else:
                return  # cannot tell the size from this answer
            yield self._meta(key, size, resp)
            async for chunk in self._stream(body, key, max(0, min(length, size - start))):
                yield chunk
        finally:
            body.close()

    async def read(
        self, key: str, meta: ObjectMeta, start: int, length: int
    ) -> AsyncIterator[bytes]:
        if length <= 0:
            return
        end = start + length - 1
        resp = await self._call(key, "get_object", Range=f"bytes={start}-{end}", IfMatch=meta.etag)
        assert resp is not None
        body = resp["Body"]
        try:
            self._check(key, meta, resp, start, end, length)
            async for chunk in self._stream(body, key, length, exact=True):
                yield chunk
        finally:
            body.close()

    async def _stream(
        self, body: Any, key: str, want: int, exact: bool = False
    ) -> AsyncIterator[bytes]:
        """``want`` bytes of a GetObject body, each read bounded by the read
        timeout; fewer is an error. ``exact``: the body is read to its end and
        must not hold more (a ranged answer); otherwise reading stops at
        ``want`` (the rest of a whole object sent where a part was asked for)."""
        got = 0
        timeout = self.settings.read_timeout
        while exact or got < want:
            try:
                async with asyncio.timeout(timeout):
                    chunk: bytes = await body.read(CHUNK if exact else min(CHUNK, want - got))
            except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise self._error(exc, key) from None
            if not chunk:
                break
            got += len(chunk)
            if got > want:
                raise OriginError(
                    f"{self.url}: {key!r}: S3 sent more than the {want} bytes asked for"
                )
            yield chunk
        if got != want:
            raise OriginError(f"{self.url}: {key!r}: S3 sent {got} of {want} bytes")

    def _check(
        self,
        key: str,
        meta: ObjectMeta,
        resp: dict[str, Any],
        start: int,
        end: int,
        length: int,
    ) -> None:
        """Is this the answer asked for: the range, of the version ``head`` saw?"""
        where = f"{self.url}: {key!r}"
        etag = resp.get("ETag")
        if etag and etag != meta.etag:
            raise OriginChanged(f"{where}: changed at the origin (ETag {etag}, was {meta.etag})")
        content_range = resp.get("ContentRange")
        if content_range:
            m = CONTENT_RANGE.fullmatch(content_range.strip())
            if m is None:
                raise OriginError(f"{where}: bad Content-Range {content_range!r} from S3")
            if m.group(3) != "*" and int(m.group(3)) != meta.size:
                raise OriginChanged(
                    f"{where}: changed at the origin ({m.group(3)} bytes, was {meta.size})"
                )
            if (int(m.group(1)), int(m.group(2))) != (start, end):
                raise OriginError(
                    f"{where}: S3 sent bytes {m.group(1)}-{m.group(2)}, not {start}-{end}"
                )
        elif start != 0 or length != meta.size:
            # a whole object where a part was asked for: the store ignored Range
            raise OriginError(f"{where}: S3 ignored the Range header")
        size = resp.get("ContentLength")
        if isinstance(size, int) and size != length:
            raise OriginError(f"{where}: S3 announced {size} bytes, not {length}")

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()
