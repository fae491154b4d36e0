"""Getting one object's bytes for the fill: from a peer that holds it, else the origin.

Theory of operation: ``Sources`` knows the origins (in order) and, from each
peer appliance's ``/_edge/inventory``, which peer holds which object in which
version. ``fetch_object`` walks an object's slices in order: a slice the store
already holds is reread from disk, a missing one is downloaded (sources in
order, retries with backoff, every read pinned to the ETag) and staged as a
fsynced temp file; everything passes through one xxh3-64 hash, so the whole
object is verified before any of it is committed. Rules it keeps:
- a peer is asked only for an object it holds complete in the same version;
  one that fails, or holds another version, passes the slice to the next source;
- ``OriginChanged`` from the origin ends the object (the manifest's version is
  gone); any other error is retried ``retries`` times per source;
- every byte passes the shared token bucket (``--rate``) before it is counted;
- staged files of an object that fails or is cancelled are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import xxhash

from edge.meta import ObjectMeta, slice_bounds
from edge.origin import Origin, OriginChanged, OriginError, OriginSettings, open_origin
from edge.pull import backoff
from edge.store import Staged, Store, StoredObject
from fill.budget import TokenBucket

log = logging.getLogger("edgefleet.fill")

BACKOFF_BASE = 0.2


@dataclass
class Source:
    name: str  # "origin s3://bucket" or "peer http://10.0.0.2:8080"
    origin: Origin
    holds: dict[str, tuple[int, str]] | None = None  # peers: key -> (size, etag)


@dataclass
class Sources:
    origins: list[Source]
    peers: list[Source] = field(default_factory=list)

    @classmethod
    def open(
        cls, origin_urls: list[str], peer_urls: list[str], settings: OriginSettings
    ) -> Sources:
        return cls(
            [Source(f"origin {u}", open_origin(u, settings)) for u in origin_urls],
            [Source(f"peer {u}", open_origin(u, settings), {}) for u in peer_urls],
        )

    async def learn_peers(self, settings: OriginSettings) -> dict[str, str]:
        """Read every peer's inventory; a peer that does not answer is left out
        (returned with the reason), never fatal."""
        problems: dict[str, str] = {}
        timeout = aiohttp.ClientTimeout(
            sock_connect=settings.connect_timeout, sock_read=settings.read_timeout
        )
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for peer in self.peers:
                url = peer.origin.url.rstrip("/") + "/_edge/inventory"
                holds: dict[str, tuple[int, str]] = {}
                try:
                    async with session.get(url) as resp:
                        if resp.status != 200:
                            raise OriginError(f"HTTP {resp.status}")
                        async for line in resp.content:
                            if line.strip():
                                item = json.loads(line)
                                holds[item["key"]] = (int(item["size"]), str(item["etag"]))
                except (aiohttp.ClientError, TimeoutError, OriginError, ValueError, KeyError) as e:
                    problems[peer.name] = str(e) or type(e).__name__
                    log.warning("fill: %s left out: inventory: %s", peer.name, problems[peer.name])
                    holds = {}
                peer.holds = holds
        return problems

    def for_object(self, key: str, meta: ObjectMeta) -> list[Source]:
        peers = [p for p in self.peers if (p.holds or {}).get(key) == (meta.size, meta.etag)]
        return peers + self.origins

    async def head(self, key: str, retries: int) -> ObjectMeta | None:
        """What the first origin that has ``key`` says it is; ``None``: none has it."""
        error: OriginError | None = None
        for src in self.origins:
            for n in range(retries + 1):
                try:
                    return await src.origin.head(key)
                except OriginError as exc:
                    error = exc
                    if n < retries:
                        await asyncio.sleep(backoff(n, BACKOFF_BASE))
            # this origin failed: the next one may answer
        if error is not None:
            raise error
        return None

    async def close(self) -> None:
        for src in self.peers + self.origins:
            await src.origin.close()


class Throttle:
    """The shared rate cap (``None``: none)."""

    def __init__(self, rate: float | None) -> None:
        self.bucket = TokenBucket(rate, time.monotonic()) if rate else None

    async def take(self, n: int) -> None:
        if self.bucket is not None:
            wait = self.bucket.delay(n, time.monotonic())
            if wait > 0:
                await asyncio.sleep(wait)


@dataclass
class Fetched:
    staged: list[Staged]
    digest: str  # xxh3-64 of the whole object
    downloaded: dict[str, int]  # source name -> bytes


async def fetch_slice(
    store: Store,
    obj: StoredObject,
    idx: int,
    sources: list[Source],
    retries: int,
    throttle: Throttle,
    progress: Callable[[int], None],
    hasher: Any,
) -> tuple[Staged, str, Any]:
    """Slice ``idx`` staged as it arrives, the source that sent it, and the whole
    object's hash carried on from ``hasher`` by the attempt that succeeded."""
    key, meta = obj.key, obj.meta
    start, length = slice_bounds(idx, meta.size, obj.slice_size)
    last: OriginError | None = None
    for src in sources:
        for n in range(retries + 1):
            h = hasher.copy()
            sink = store.open_stage(obj, idx)
            try:
                async for chunk in src.origin.read(key, meta, start, length):
                    if sink.n + len(chunk) > length:
                        raise OriginError(f"{src.name}: {key!r}: more bytes than asked for")
                    await throttle.take(len(chunk))
                    sink.write(chunk)
                    h.update(chunk)
                    progress(len(chunk))
                if sink.n != length:
                    raise OriginError(f"{src.name}: {key!r}: {sink.n} of {length} bytes")
                staged = sink.close()
            except OriginChanged as exc:
                sink.abort()
                if src.holds is None:  # the origin itself: this version is gone
                    raise
                last = exc
                break  # a peer with another version: next source
            except OriginError as exc:
                sink.abort()
                last = exc
                log.warning("fill: %s: %r bytes %d+%d (try %d): %s", src.name, key, start,
                            length, n + 1, exc)  # fmt: skip
                if n < retries:
                    await asyncio.sleep(backoff(n, BACKOFF_BASE))
                continue
            except BaseException:
                sink.abort()
                raise
            return staged, src.name, h
    raise last or OriginError(f"{key!r}: no source to fill from")


async def fetch_object(
    store: Store,
    obj: StoredObject,
    sources: list[Source],
    retries: int,
    throttle: Throttle,
    progress: Callable[[int], None],
) -> Fetched:
    """Every slice of ``obj`` staged (durably) or reread, and the digest of the whole."""
    meta = obj.meta
    hasher = xxhash.xxh3_64()
    out = Fetched([], "", {})
    try:
        for idx in range(obj.slice_count):
            _, length = slice_bounds(idx, meta.size, obj.slice_size)
            if idx in obj.slices:
                data = await asyncio.to_thread(_read, obj.slice_path(idx))
                if len(data) != length:
                    raise OriginError(f"{obj.key!r}: stored slice {idx} has the wrong size")
                hasher.update(data)
                continue
            staged, name, hasher = await fetch_slice(
                store, obj, idx, sources, retries, throttle, progress, hasher
            )
            out.downloaded[name] = out.downloaded.get(name, 0) + length
            out.staged.append(staged)
        if out.staged:
            syncing = asyncio.ensure_future(asyncio.to_thread(store.sync_staged, out.staged))
            try:
                await asyncio.shield(syncing)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await syncing  # let the thread finish before its files are removed
                raise
    except BaseException:
        store.discard(out.staged)
        raise
    out.digest = hasher.hexdigest()
    return out


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
