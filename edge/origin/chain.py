"""The origin chain: asking the origins, once, patiently, and not for ever.

Theory of operation: ``OriginChain`` owns the ordered list of origins, a circuit
breaker per origin, the retry policy and the memory of recent 404s (the
negative cache). The appliance's miss path and the nightly fill both ask
through it. ``head`` learns what an object is (or revalidates it); ``fetch``
returns the ``SliceFetch`` of one slice, started once however many requests
want it (``edge.origin.slicefetch``). Rules it keeps:
- origins are tried in order; a breaker that is open skips its origin;
- an object is absent (``None``) only when every origin answered that it has
  no such object; an origin that fails or does not have it passes the
  question on to the next;
- a failed request is retried ``retries`` times with doubling, jittered backoff;
  a slice that already delivered bytes resumes at its first missing byte;
- an answer that changes the object (``OriginChanged``) is not retried: the
  caller must learn the object again;
- a fetch that fails keeps its error for its readers and is forgotten, so the
  next request tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from edge.core.breaker import Breaker
from edge.core.cachepolicy import explicitly_fresh, origin_failed
from edge.core.keys import loggable
from edge.core.meta import ObjectMeta, same_version, slice_bounds
from edge.origin import Origin, OriginChanged, OriginError, OriginRefused, OriginTimeout
from edge.origin.slicefetch import SliceFetch, shared

log = logging.getLogger("edgefleet.origin")

T = TypeVar("T")

BACKOFF_BASE = 0.1
CLAIM_WAIT = 2.0  # seconds a learnt slice waits for its request to ask for it
TAKE_WAIT = 0.02  # seconds a learnt slice's first bytes wait to be sent before the rest is read


def backoff(n: int, base: float = BACKOFF_BASE) -> float:
    """Seconds to wait before retry ``n + 1``: doubling, jittered by ±50%."""
    return base * 2**n * (0.5 + random.random())


NEGATIVE_MAX = 100_000


async def _discard(result: Any) -> None:
    """Close the body of an answer that is not going to be used."""
    if isinstance(result, tuple) and result[1] is not None:
        await result[1].aclose()


def _asking(origin: Origin, request_headers: Mapping[str, str] | None) -> dict[str, Any]:
    """The player's request headers, for an origin behind which the appliance
    is a shared cache (HTTP); nothing for the others."""
    if request_headers is None or not getattr(origin, "shared_cache", False):
        return {}
    return {"request_headers": request_headers}


def _is_absent(meta: ObjectMeta | None) -> bool:
    """No such object: ``None``, or an HTTP origin's 404 or 410."""
    return meta is None or meta.status in (404, 410)


def _status(result: Any) -> int | None:
    meta = result[0] if isinstance(result, tuple) else result
    return meta.status if isinstance(meta, ObjectMeta) else None


def _answer_failed(result: Any) -> bool:
    """A 5xx answer: the chain counts it against the origin."""
    meta = result[0] if isinstance(result, tuple) else result
    return isinstance(meta, ObjectMeta) and origin_failed(meta.status)


class OriginChain:
    """The origins in order, with retries, breakers and the negative cache."""

    def __init__(
        self,
        origins: list[Origin],
        *,
        retries: int = 2,
        backoff_base: float = BACKOFF_BASE,
        negative_ttl: float = 10.0,
        breaker_failures: int = 5,
        breaker_cooldown: float = 10.0,
        on_origin: Callable[[str, str], None] | None = None,
        on_bytes: Callable[[int], None] | None = None,
        on_state: Callable[[str, OriginError | None], None] | None = None,
    ) -> None:
        self.origins = origins
        self.retries = retries
        self.backoff_base = backoff_base
        self.negative_ttl = negative_ttl
        self.breakers = {
            id(o): Breaker(failures=breaker_failures, cooldown=breaker_cooldown) for o in origins
        }
        self.on_origin = on_origin or (lambda kind, result: None)
        self.on_bytes = on_bytes or (lambda n: None)
        # (origin URL, None when it answered or the error when it failed): edge.origin.state
        self.on_state = on_state or (lambda url, error: None)
        self.negative: dict[str, float] = {}
        self.sources: dict[str, Origin] = {}  # key -> the origin its metadata came from
        self.heads: dict[str, asyncio.Future[ObjectMeta | None]] = {}
        self.fetches: dict[tuple[str, str, int], SliceFetch] = {}
        # (key, slice) -> the fetch ``learn`` started, until a request claims it
        # for the version it indexed (``fetch``)
        self.learnt: dict[tuple[str, int], SliceFetch] = {}
        self.tasks: set[asyncio.Task[Any]] = set()

    # -- 404s -----------------------------------------------------------------

    def known_missing(self, key: str) -> bool:
        until = self.negative.get(key)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self.negative[key]
        return False

    def _remember_missing(self, key: str) -> None:
        if self.negative_ttl <= 0:
            return
        if len(self.negative) >= NEGATIVE_MAX:
            self.negative.clear()
        self.negative[key] = time.monotonic() + self.negative_ttl

    # -- retries and breakers --------------------------------------------------

    def order(self, key: str) -> list[Origin]:
        """The origin that told us what ``key`` is first, then the others."""
        source = self.sources.get(key)
        if source is None:
            return self.origins
        return [source, *(o for o in self.origins if o is not source)]

    async def _ask(
        self,
        kind: str,
        attempt: Callable[[Origin], Awaitable[T]],
        origins: list[Origin] | None = None,
        source: Origin | None = None,
        failed: Callable[[T], bool] | None = None,
        count_success: bool = True,
        admitted: bool = False,
    ) -> T:
        """``attempt`` on each origin in turn, with retries; the first answer wins.
        ``OriginChanged`` from ``source`` (the origin the object was learnt
        from) ends it; from another origin (which may hold another version, or
        none) it passes the question on, and is raised only if nobody answers.
        ``OriginRefused`` ends it at once and touches no breaker. An answer
        ``failed`` calls a failure (an HTTP 5xx) counts and is retried like an
        error, and is the answer when the retries are spent."""
        last: OriginError | None = None
        changed: OriginChanged | None = None
        for origin in self.origins if origins is None else origins:
            breaker = self.breakers[id(origin)]
            for n in range(self.retries + 1):
                # ``admitted``: the first try continues an answer already let through
                if not (admitted and n == 0) and not breaker.allow(time.monotonic()):
                    self.on_origin(kind, "breaker_open")
                    last = last or OriginError(f"{origin.url}: circuit breaker open")
                    break
                try:
                    result = await attempt(origin)
                except OriginRefused:
                    raise
                except OriginChanged as exc:
                    breaker.success()  # it answered
                    self.on_state(origin.url, None)
                    if origin is source:
                        raise
                    changed = changed or exc
                    break
                except OriginError as exc:
                    breaker.failure(time.monotonic())
                    self.on_origin(kind, "timeout" if isinstance(exc, OriginTimeout) else "error")
                    self.on_state(origin.url, exc)
                    log.warning(
                        "origin %s (%s, try %d): %s", origin.url, kind, n + 1, loggable(str(exc))
                    )
                    last = exc
                    if n < self.retries:
                        await asyncio.sleep(backoff(n, self.backoff_base))
                    continue
                if failed is not None and failed(result):
                    breaker.failure(time.monotonic())
                    self.on_origin(kind, "error")
                    self.on_state(
                        origin.url, OriginError(f"{origin.url}: answered {_status(result)}")
                    )
                    if n < self.retries:
                        await _discard(result)
                        await asyncio.sleep(backoff(n, self.backoff_base))
                        continue
                    return result
                if count_success:
                    breaker.success()
                    self.on_state(origin.url, None)
                return result
        raise changed or last or OriginError("no origin configured")

    # -- metadata --------------------------------------------------------------

    async def head(
        self, key: str, request_headers: Mapping[str, str] | None = None
    ) -> ObjectMeta | None:
        """What ``key`` is at the first origin that has it; ``None``: no origin has it.
        Concurrent calls for one key share one request."""
        return await shared(self.heads, key, lambda: self._head(key, request_headers))

    async def _head(self, key: str, request_headers: Mapping[str, str] | None) -> ObjectMeta | None:
        # Each origin in turn: one that does not have it, or fails, passes the
        # question on. 404 only when every origin answered that it has nothing.
        error: OriginError | None = None
        absent: ObjectMeta | None = None  # an HTTP origin's own 404 or 410
        failed: ObjectMeta | None = None  # an HTTP origin's 5xx
        for origin in self.origins:
            try:
                meta = await self._ask(
                    "head",
                    lambda o: o.head(key, **_asking(o, request_headers)),
                    [origin],
                    failed=_answer_failed,
                )
            except OriginRefused:
                raise
            except OriginError as exc:
                error = exc
                continue
            self.on_origin("head", "ok" if not _is_absent(meta) else "not_found")
            if _is_absent(meta):
                absent = absent or meta
                continue
            assert meta is not None
            if origin_failed(meta.status) and origin is not self.origins[-1]:
                failed = failed or meta  # a 5xx: the next origin may do better
                continue
            self._remember_source(key, origin)
            return meta
        return self._none_has(key, error, absent, failed)

    def _negative(self, meta: ObjectMeta | None) -> ObjectMeta | None:
        """An HTTP origin's 404 or 410 that says nothing of its freshness:
        the RFC leaves its lifetime to the cache, which is ``negative_ttl``."""
        if meta is None or meta.status not in (404, 410) or meta.headers is None:
            return meta
        if explicitly_fresh(meta.cache_control, meta.headers):
            return meta
        return dataclasses.replace(meta, fresh_until=time.time() + self.negative_ttl)

    def _remember_source(self, key: str, origin: Origin) -> None:
        if len(self.sources) >= NEGATIVE_MAX:
            self.sources.clear()
        self.sources[key] = origin

    def _none_has(
        self,
        key: str,
        error: OriginError | None,
        absent: ObjectMeta | None,
        failed: ObjectMeta | None = None,
    ) -> ObjectMeta | None:
        """No origin has ``key``: an HTTP origin's own answer saying so, else
        an origin's 5xx answer, else the last error, else ``None``
        (remembered for ``negative_ttl``)."""
        if absent is not None:
            return self._negative(absent)
        if failed is not None:
            return failed
        if error is not None:
            raise error
        self._remember_missing(key)
        return None

    async def learn(
        self,
        key: str,
        idx: int,
        slice_size: int,
        request_headers: Mapping[str, str] | None = None,
    ) -> ObjectMeta | None:
        """What ``key`` is, learnt from the answer to the GET of slice ``idx``
        where the origin can (``read_first``), else from a HEAD. That GET's bytes
        go on arriving as the slice's fetch, which ``fetch`` hands to the first
        request that asks for the slice of that version: a cold miss costs one
        origin round trip before its first byte, not two. ``request_headers``
        (the player's) go on to an HTTP origin."""
        error: OriginError | None = None
        absent: ObjectMeta | None = None
        failed: ObjectMeta | None = None
        start = idx * slice_size
        for origin in self.origins:
            stream: AsyncIterator[Any] | None = None
            try:
                opened = None
                if hasattr(origin, "read_first"):
                    opened = await self._ask(
                        "read",
                        lambda o: self._open_first(o, key, start, slice_size, request_headers),
                        [origin],
                        failed=_answer_failed,
                    )
                if opened is None:
                    meta = await self._ask(
                        "head",
                        lambda o: o.head(key, **_asking(o, request_headers)),
                        [origin],
                        failed=_answer_failed,
                    )
                    self.on_origin("head", "ok" if not _is_absent(meta) else "not_found")
                else:
                    meta, stream = opened
                    if _is_absent(meta):
                        self.on_origin("read", "not_found")
            except OriginRefused:
                raise
            except OriginError as exc:
                error = exc
                continue
            if _is_absent(meta) and origin is not self.origins[-1]:
                absent = absent or meta
                await _discard((meta, stream))
                continue
            if meta is None:
                continue
            if origin_failed(meta.status) and origin is not self.origins[-1]:
                failed = failed or meta  # a 5xx: the next origin may do better
                await _discard((meta, stream))
                continue
            self._remember_source(key, origin)
            if stream is not None:
                await self._keep_learnt(key, idx, meta, stream, slice_size)
            return self._negative(meta)
        return self._none_has(key, error, absent, failed)

    async def _keep_learnt(
        self, key: str, idx: int, meta: ObjectMeta, stream: AsyncIterator[Any], slice_size: int
    ) -> None:
        """The rest of a learning GET's answer, kept as slice ``idx``'s fetch
        until a request for that version asks for it."""
        start, length = slice_bounds(idx, meta.size, slice_size)
        if not length:
            await stream.aclose()  # type: ignore[attr-defined]
            return
        f = SliceFetch(length)
        f.learnt = (key, idx, meta)
        self.learnt[(key, idx)] = f
        self._start(f, key, meta, start, length, stream)

    @staticmethod
    async def _open_first(
        origin: Origin,
        key: str,
        start: int,
        length: int,
        request_headers: Mapping[str, str] | None = None,
        current: ObjectMeta | None = None,
    ) -> tuple[ObjectMeta | None, AsyncIterator[Any] | None] | None:
        """(metadata, the rest of the answer: the bytes) from ``read_first``;
        (None, None) when the origin has no such object; None when the GET
        cannot tell (ask HEAD). With ``current``, a conditional GET."""
        kw = _asking(origin, request_headers)
        if current is not None:
            kw["current"] = current
        stream = origin.read_first(key, start, length, **kw)  # type: ignore[attr-defined]
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            return None
        if first is None:
            await stream.aclose()
            return None, None
        return first, stream

    async def revalidate(
        self,
        key: str,
        current: ObjectMeta,
        request_headers: Mapping[str, str] | None = None,
        slice_size: int = 0,
    ) -> ObjectMeta | None:
        """``current`` renewed (304), or what replaced it, or ``None`` (gone).
        An HTTP origin is asked with a conditional GET."""

        # The origin it came from decides; one that does not have it (None)
        # passes the question on, as a HEAD does.
        meta: ObjectMeta | None = None
        error: OriginError | None = None
        for origin in self.order(key):
            try:
                if getattr(origin, "shared_cache", False) and slice_size:
                    # a conditional GET of the first slice: a new version's
                    # bytes go on to the request, as a cold miss's do
                    opened = await self._ask(
                        "revalidate",
                        lambda o: self._open_first(o, key, 0, slice_size, request_headers, current),
                        [origin],
                        failed=_answer_failed,
                    )
                    meta, stream = opened or (None, None)
                    if meta is not None and stream is not None:
                        if same_version(meta, current) and meta.status == current.status:
                            await stream.aclose()  # type: ignore[attr-defined]
                        else:
                            await self._keep_learnt(key, 0, meta, stream, slice_size)
                else:
                    meta = await self._ask(
                        "revalidate",
                        lambda o: o.head(key, current, **_asking(o, request_headers)),
                        [origin],
                        failed=_answer_failed,
                    )
            except OriginRefused:
                raise
            except OriginError as exc:
                error = exc
                continue
            if meta is not None:
                self.sources[key] = origin
                break
        if meta is None and error is not None:
            raise error
        if meta is None:
            self._remember_missing(key)
            self.on_origin("revalidate", "not_found")
        elif same_version(meta, current) and meta.status == current.status:
            self.on_origin("revalidate", "not_modified")
        else:
            self.on_origin("revalidate", "modified")
        return meta

    # -- slices ----------------------------------------------------------------

    def fetch(
        self,
        key: str,
        gen: str,
        idx: int,
        meta: ObjectMeta,
        slice_size: int,
        store: Callable[[list[bytes]], Awaitable[None]] | None = None,
    ) -> SliceFetch:
        """The fetch of slice ``idx`` of this version of ``key``, started if need be
        (or the one ``learn`` started for it). ``store`` receives the complete
        slice (and the fetch stays findable until it has stored it, so nobody
        fetches it again meanwhile)."""
        k = (key, gen, idx)
        f = self.fetches.get(k)
        if f is None:
            learnt = self.learnt.get((key, idx))
            if learnt is not None and learnt.learnt is not None:
                m = learnt.learnt[2]
                if same_version(m, meta):
                    del self.learnt[(key, idx)]
                    f = self.fetches[k] = learnt
                    f.k = k
        if f is not None:
            f.claim(store)
            return f
        start, length = slice_bounds(idx, meta.size, slice_size)
        f = SliceFetch(length)
        f.k = k
        f.claim(store)
        self.fetches[k] = f
        self._start(f, key, meta, start, length)
        return f

    def _start(
        self,
        f: SliceFetch,
        key: str,
        meta: ObjectMeta,
        start: int,
        length: int,
        opened: AsyncIterator[Any] | None = None,
    ) -> None:
        task = asyncio.ensure_future(self._run_fetch(f, key, meta, start, length, opened))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _forget(self, f: SliceFetch) -> None:
        if f.k is not None and self.fetches.get(f.k) is f:
            del self.fetches[f.k]
        if f.learnt is not None:
            lk = (f.learnt[0], f.learnt[1])
            if self.learnt.get(lk) is f:
                del self.learnt[lk]

    @staticmethod
    async def _claimed(f: SliceFetch) -> None:
        """Until a request has asked for ``f``, for at most ``CLAIM_WAIT`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLAIM_WAIT):
                while not f.claimed:
                    await f._wait()

    async def _run_fetch(
        self,
        f: SliceFetch,
        key: str,
        meta: ObjectMeta,
        start: int,
        length: int,
        opened: AsyncIterator[Any] | None,
    ) -> None:
        async def attempt(origin: Origin) -> None:
            nonlocal opened
            first = False
            if opened is not None:
                # the rest of the answer that told us what the object is
                chunks, opened, first = opened, None, True
            else:
                # resume where the previous attempt stopped
                chunks = origin.read(key, meta, start + f.got, length - f.got)
            async for chunk in chunks:
                if f.got + len(chunk) > length:
                    raise OriginError(f"{origin.url}: {key!r}: more bytes than asked")
                f.feed(chunk)
                self.on_bytes(len(chunk))
                if first:
                    # A cold miss's first bytes (read with the answer's head) go
                    # to the player before the rest is read: those reads would
                    # otherwise run ahead of its first byte.
                    first = False
                    await f.taken(TAKE_WAIT)
            if f.got != length:
                raise OriginError(f"{origin.url}: {key!r}: {f.got} of {length} bytes")

        try:
            if not f.claimed:
                # Learnt for a request that is indexing the object: its bytes wait
                # in the socket meanwhile (read now, they would keep the event
                # loop busy, and the thread that indexes waiting for the GIL).
                await self._claimed(f)
                if not f.claimed:
                    raise OriginError(f"{key!r}: slice learnt for a request that went away")
            # the body of a 5xx answer arriving is no sign that the origin is well
            await self._ask(
                "read",
                attempt,
                self.order(key),
                self.sources.get(key),
                count_success=not origin_failed(meta.status),
                admitted=opened is not None,
            )
        except BaseException as exc:
            f.fail(exc)
            self._forget(f)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        finally:
            if opened is not None:  # never read
                await opened.aclose()  # type: ignore[attr-defined]
        self.on_origin("read", "ok")
        f.finish()
        try:
            if f.store is not None:
                await f.store(f.chunks)  # written chunk by chunk: no joined copy
        finally:
            self._forget(f)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for origin in self.origins:
            await origin.close()
