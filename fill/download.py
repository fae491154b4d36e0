"""Getting one object's bytes for the fill: from a peer that holds it, else the origin.

Theory of operation: ``Sources`` knows the origins (in order, through the
same ``OriginChain`` the appliance's miss path asks: what an object is comes
from the first origin that has it) and, from each peer appliance's
``/_edge/inventory``, which peer holds which object in which version.
``fetch_object`` walks an object's slices in order: slices the store already
holds are reread from disk, each run of missing ones is downloaded with one
GET (sources in order, retries with backoff, every read pinned to the ETag)
and cut into slice temp files as it arrives (``fill.stage``), fsynced
before the object is handed back; everything passes through one xxh3-64 hash,
so the whole object is verified before any of it is committed. Rules it keeps:
- a peer is asked only for an object it holds complete in the same version;
  one that fails, or holds another version, passes the rest to the next source;
- a download that breaks off resumes at its first slice not yet staged;
- ``OriginChanged`` from the origin the object was learnt from ends the object
  (the manifest's version is gone); from another source (a peer, a fallback
  origin that holds another version or none) it passes the rest on; any other
  error is retried ``retries`` times per source (an attempt that brought whole
  slices does not count);
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

import aiohttp

from edge.core.meta import ObjectMeta, slice_bounds
from edge.http.tls import client_context
from edge.origin import Origin, OriginChanged, OriginError, OriginSettings, open_origin
from edge.origin.chain import OriginChain, backoff
from edge.store import Staged, Store, StoredObject
from fill.budget import TokenBucket
from fill.stage import ObjectStager, StagePools, runs

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
    chain: OriginChain  # the same origins, asked in order with retries and breakers
    peers: list[Source] = field(default_factory=list)

    @classmethod
    def open(
        cls,
        origin_urls: list[str],
        peer_urls: list[str],
        settings: OriginSettings,
        *,
        retries: int = 2,
        breaker_failures: int = 5,
        breaker_cooldown: float = 10.0,
    ) -> Sources:
        origins = [Source(f"origin {u}", open_origin(u, settings)) for u in origin_urls]
        chain = OriginChain(
            [src.origin for src in origins],
            retries=retries,
            backoff_base=BACKOFF_BASE,
            negative_ttl=0,  # one lookup per object and night: nothing to remember
            breaker_failures=breaker_failures,
            breaker_cooldown=breaker_cooldown,
        )
        peers = [Source(f"peer {u}", open_origin(u, settings), {}) for u in peer_urls]
        return cls(origins, chain, peers)

    async def learn_peers(self, settings: OriginSettings) -> dict[str, str]:
        """Read every peer's inventory; a peer that does not answer is left out
        (returned with the reason), never fatal."""
        problems: dict[str, str] = {}
        timeout = aiohttp.ClientTimeout(
            sock_connect=settings.connect_timeout, sock_read=settings.read_timeout
        )
        verify = client_context(settings.ca_file) if settings.ca_file else True
        connector = aiohttp.TCPConnector(ssl=verify)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
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
        """Peers that hold this version, then the origins: the one ``head``
        learnt the object from first."""
        peers = [p for p in self.peers if (p.holds or {}).get(key) == (meta.size, meta.etag)]
        by_origin = {id(src.origin): src for src in self.origins}
        return peers + [by_origin[id(o)] for o in self.chain.order(key)]

    async def head(self, key: str) -> ObjectMeta | None:
        """What the first origin that has ``key`` says it is; ``None``: no
        origin has it (each was asked)."""
        return await self.chain.head(key)

    async def close(self) -> None:
        for src in self.peers:
            await src.origin.close()
        await self.chain.close()


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


async def fetch_run(
    stager: ObjectStager,
    end: int,
    sources: list[Source],
    retries: int,
    throttle: Throttle,
    progress: Callable[[int], None],
    downloaded: dict[str, int],
) -> None:
    """Slices ``stager.idx`` up to ``end`` (exclusive) staged, with one GET for
    all of them. A download that breaks off resumes at the first slice not yet
    staged: from the same source while it keeps bringing whole slices (else
    after ``retries`` more tries with backoff), then from the next source."""
    obj = stager.obj
    key, meta = obj.key, obj.meta
    last_start, last_length = slice_bounds(end - 1, meta.size, obj.slice_size)
    stop = last_start + last_length
    error: OriginError | None = None
    authority = next((src for src in sources if src.holds is None), None)
    for src in sources:
        fails = 0
        while stager.idx < end:
            start = stager.idx * obj.slice_size
            length = stop - start
            before = len(stager.staged)
            got = 0
            try:
                try:
                    async with contextlib.aclosing(
                        src.origin.read(key, meta, start, length)
                    ) as stream:
                        async for chunk in stream:
                            got += len(chunk)
                            if got > length:
                                raise OriginError(f"{src.name}: {key!r}: more bytes than asked for")
                            await throttle.take(len(chunk))
                            await stager.feed(chunk)
                            progress(len(chunk))
                    if got != length:
                        raise OriginError(f"{src.name}: {key!r}: {got} of {length} bytes")
                    await stager.flush()
                except OriginError:
                    await stager.rewind()  # keeps the whole slices that arrived
                    raise
                finally:
                    n = sum(st.size for st in stager.staged[before:])
                    if n:
                        downloaded[src.name] = downloaded.get(src.name, 0) + n
            except OriginChanged as exc:
                if src is authority:  # the origin it was learnt from: this version is gone
                    raise
                error = exc
                break  # a peer with another version: next source
            except OriginError as exc:
                error = exc
                log.warning("fill: %s: %r bytes %d+%d (try %d): %s", src.name, key, start,
                            length, fails + 1, exc)  # fmt: skip
                if len(stager.staged) > before:
                    fails = 0  # it brought whole slices: resume at once
                    continue
                fails += 1
                if fails > retries:
                    break
                await asyncio.sleep(backoff(fails - 1, BACKOFF_BASE))
        if stager.idx >= end:
            return
    raise error or OriginError(f"{key!r}: no source to fill from")


async def fetch_object(
    store: Store,
    obj: StoredObject,
    sources: list[Source],
    retries: int,
    throttle: Throttle,
    progress: Callable[[int], None],
    pools: StagePools,
) -> Fetched:
    """Every slice of ``obj`` staged (durably) or reread, and the digest of the whole:
    one download per run of missing slices, cut into slices as it arrives."""
    stager = ObjectStager(store, obj, pools)
    out = Fetched([], "", {})
    try:
        for held, first, end in runs(obj):
            stager.seek(first)
            if held:
                for idx in range(first, end):
                    await stager.hash_held(idx, slice_bounds(idx, obj.meta.size, obj.slice_size)[1])
            else:
                await fetch_run(stager, end, sources, retries, throttle, progress, out.downloaded)
        await stager.sync()
    except BaseException:
        await stager.discard()
        raise
    out.staged = stager.staged
    out.digest = stager.digest()
    return out
