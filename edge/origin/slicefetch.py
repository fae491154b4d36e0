"""One slice on its way from an origin, and one run of a coroutine for all callers.

A ``SliceFetch`` runs as its own task (``OriginChain.fetch`` starts it) and
keeps what has arrived, so a request reads the bytes as they come, from any
offset, and a request that goes away stops reading without stopping the fetch.
A fetch that fails keeps its error for its readers. ``shared`` runs one
coroutine for every concurrent caller with the same key.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from edge.core.meta import ObjectMeta
from edge.origin import OriginError

T = TypeVar("T")


async def shared(
    table: dict[str, asyncio.Future[T]], key: str, start: Callable[[], Awaitable[T]]
) -> T:
    """``start()``'s result, one run for all concurrent callers with this key.
    It runs as its own task: a caller that goes away cancels nothing shared."""
    fut = table.get(key)
    if fut is None:
        fut = asyncio.ensure_future(start())
        table[key] = fut
        fut.add_done_callback(lambda _f: table.pop(key, None))
    return await asyncio.shield(fut)


class SliceFetch:
    """The bytes of one slice as they arrive from an origin. ``store`` receives
    the complete slice; the first request that wants it stored sets it."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.chunks: list[bytes] = []
        self.got = 0
        self.error: BaseException | None = None
        self.done = False
        self.store: Callable[[list[bytes]], Awaitable[None]] | None = None
        self.claimed = False  # a request has asked for it (always, but for a learnt one)
        self.k: tuple[str, str, int] | None = None  # where ``OriginChain.fetches`` has it
        self.learnt: tuple[str, int, ObjectMeta] | None = None  # started by ``learn``
        self.first_out = False  # a reader has taken the first bytes (or wants them all)
        self._waiters: list[asyncio.Future[None]] = []

    def claim(self, store: Callable[[list[bytes]], Awaitable[None]] | None) -> None:
        self.claimed = True
        if self.store is None:
            self.store = store
        self._wake()

    def feed(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.got += len(chunk)
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def _wait(self) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        await fut

    async def started(self) -> None:
        """Until the first byte is here (or the fetch is over); raises its error."""
        while not self.got and not self.done and self.error is None:
            await self._wait()
        if self.error is not None and not self.got:
            raise self.error

    async def taken(self, timeout: float) -> None:
        """Until a reader has taken the first bytes (sent them on), for at most
        ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not self.first_out and self.error is None:
                    await self._wait()

    async def data(self) -> bytes:
        if not self.first_out:
            self.first_out = True
            self._wake()
        while not self.done:
            if self.error is not None:
                raise self.error
            await self._wait()
        return b"".join(self.chunks)

    async def read(self, offset: int, count: int) -> AsyncIterator[memoryview]:
        """Bytes ``offset .. offset+count`` of the slice, as they arrive."""
        pos, end = offset, offset + count
        i, base = 0, 0  # chunk index and its offset in the slice
        while pos < end:
            chunks = self.chunks
            while i < len(chunks) and base + len(chunks[i]) <= pos:
                base += len(chunks[i])
                i += 1
            if i < len(chunks):
                chunk = chunks[i]
                hi = min(len(chunk), end - base)
                yield memoryview(chunk)[pos - base : hi]
                pos = base + hi
                if not self.first_out:  # sent on: the rest of the slice may come
                    self.first_out = True
                    self._wake()
                continue
            if self.error is not None:
                raise self.error
            if self.done:
                raise OriginError("slice ended early")
            await self._wait()
