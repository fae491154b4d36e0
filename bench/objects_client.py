"""The objects ``miss_vs_origin.py`` serves, and the client that downloads them.

The objects are random bytes written and fsynced under an origin directory,
backdated to look as old as a video library's; the client is the same for
every path it measures (the origin, the appliance, nginx's slice cache):
asyncio ``BufferedProtocol`` connections that read each body with
``recv_into`` into a buffer allocated beforehand, so its own cost per byte is
the kernel's copy, and every body is checked against its file's SHA-256 after
the run, not during it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

from benchlib import HOST, KIB, write_synced

HEAD_MAX = 64 * KIB  # the largest response head the client accepts
REQUEST_TIMEOUT = 60.0  # seconds for one whole object
WARMUP_KEY = "warmup/seg_00000.m4s"  # fetched, unmeasured, by every new appliance


class Meter(Protocol):
    """What measures a download: started before the first request, ended after
    the last byte with the wall time in between."""

    def begin(self) -> None: ...

    def end(self, wall: float) -> None: ...


# -- the objects ----------------------------------------------------------------


@dataclass
class Corpus:
    origin: Path
    keys: list[str]  # measured objects, as keys (URL paths without the leading /)
    size: int  # bytes per object
    digests: dict[str, bytes]  # SHA-256 of every file, warm-up object included


def make_corpus(
    work: Path, objects: int, size: int, per_title: int, seed: int, age: float
) -> Corpus:
    """Random objects, written and fsynced, their modification time ``age`` seconds
    in the past (nginx's Last-Modified, which sets the appliance's heuristic
    freshness lifetime: 10% of the age, at most a day)."""
    origin = work / "origin"
    rng = random.Random(seed)
    keys = [f"titles/{i // per_title}/seg_{i % per_title:05d}.m4s" for i in range(objects)]
    digests: dict[str, bytes] = {}
    mtime = time.time() - age
    for key in [WARMUP_KEY, *keys]:
        path = origin / key
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(size)
        write_synced(path, data)
        if age:
            os.utime(path, (mtime, mtime))
        digests[key] = hashlib.sha256(data).digest()
    return Corpus(origin, keys, size, digests)


# -- the client ------------------------------------------------------------------


@dataclass
class Fetch:
    """One GET and what became of it; times from ``time.perf_counter``."""

    key: str
    status: int = 0
    length: int = 0
    got: int = 0
    sent_at: float = 0.0
    head_at: float = 0.0
    first_byte_at: float = 0.0
    done_at: float = 0.0
    error: str = ""


class Connection(asyncio.BufferedProtocol):
    """A keep-alive HTTP/1.1 connection that reads each response body straight into a
    buffer given by the caller (``recv_into``, no copy but the kernel's), so the
    client costs little and the same for both paths. Bodies need Content-Length."""

    def __init__(self, host_header: bytes) -> None:
        self.host_header = host_header
        self.transport: asyncio.Transport | None = None
        self.head = bytearray(HEAD_MAX)
        self.head_view = memoryview(self.head)
        self.head_len = 0
        self.target = memoryview(bytearray(0))
        self.fetch: Fetch | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.in_body = False
        self.closing = False
        self.closed = False

    # protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        f = self.fetch
        if f is not None and not f.done_at:
            where = f"after {f.got} of {f.length} body bytes" if self.in_body else "before the head"
            self._fail(f"connection closed {where}" + (f": {exc}" if exc else ""))

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.in_body and self.fetch is not None:
            return self.target[self.fetch.got : self.fetch.length]
        if self.head_len >= HEAD_MAX:  # cannot happen: a full head buffer fails the fetch
            return memoryview(bytearray(KIB))
        return self.head_view[self.head_len :]

    def buffer_updated(self, nbytes: int) -> None:
        now = time.perf_counter()
        f = self.fetch
        if f is None or f.done_at:
            self._close()  # bytes nobody asked for
            return
        if self.in_body:
            if not f.got:
                f.first_byte_at = now
            f.got += nbytes
            if f.got == f.length:
                self._finish(now)
            return
        self.head_len += nbytes
        end = self.head.find(b"\r\n\r\n", 0, self.head_len)
        if end < 0:
            if self.head_len >= HEAD_MAX:
                self._fail("response head over 64 KiB")
            return
        f.head_at = now
        lines = bytes(self.head_view[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            self._fail(f"bad status line {lines[0]!r}")
            return
        f.status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "close" in headers.get("connection", "").lower():
            self.closing = True
        if "transfer-encoding" in headers:
            self._fail(f"Transfer-Encoding {headers['transfer-encoding']!r}: not supported")
            return
        length = headers.get("content-length", "")
        if not length.isdigit():
            self._fail(f"status {f.status} without a usable Content-Length")
            return
        f.length = int(length)
        if f.status != 200:
            self._fail(f"status {f.status}")
            return
        if f.length > len(self.target):
            self._fail(f"Content-Length {f.length} over the expected {len(self.target)}")
            return
        extra = self.head_len - (end + 4)
        self.head_len = 0
        if extra > f.length:
            self._fail("more bytes than Content-Length")
            return
        if extra:
            self.target[:extra] = self.head_view[end + 4 : end + 4 + extra]
            f.first_byte_at = now
        f.got = extra
        if f.got == f.length:
            self._finish(now)
        else:
            self.in_body = True

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost reports a cut response

    # for the caller

    async def get(self, key: str, target: memoryview, timeout: float) -> Fetch:
        """GET /key into ``target`` (which must hold the body)."""
        f = Fetch(key)
        if self.closed or self.transport is None:
            f.error = "connection closed"
            return f
        self.fetch = f
        self.target = target
        self.in_body = False
        self.head_len = 0
        self.waiter = asyncio.get_running_loop().create_future()
        req = b"GET /%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: miss_vs_origin\r\n\r\n" % (
            key.encode(),
            self.host_header,
        )
        f.sent_at = time.perf_counter()
        self.transport.write(req)
        try:
            async with asyncio.timeout(timeout):
                await self.waiter
        except TimeoutError:
            self._fail(f"no complete response within {timeout:.0f} s ({f.got} of {f.length} bytes)")
        return f

    def close(self) -> None:
        self._close()

    # internals

    def _finish(self, now: float) -> None:
        f = self.fetch
        assert f is not None
        f.done_at = now
        self.in_body = False
        if self.closing:
            self._close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, error: str) -> None:
        f = self.fetch
        if f is not None and not f.error and not f.done_at:
            f.error = error
        self.in_body = False
        self._close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


async def connect(port: int) -> Connection:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(
        lambda: Connection(f"{HOST}:{port}".encode()), HOST, port
    )
    return proto


async def download(
    port: int,
    keys: list[str],
    buffers: dict[str, memoryview],
    concurrency: int,
    meter: Meter,
) -> tuple[list[Fetch], float]:
    """Every object of ``keys`` once, ``concurrency`` at a time, each worker on its own
    keep-alive connection (reopened if the server closes it). Returns the fetches and
    the wall time from the first request to the last byte."""
    conns = [await connect(port) for _ in range(min(concurrency, len(keys)))]
    jobs = iter(keys)
    fetches: list[Fetch] = []

    async def worker(conn: Connection) -> None:
        for key in jobs:  # one iterator shared by all the workers
            if conn.closed:
                try:
                    conn = await connect(port)
                except OSError as exc:
                    fetches.append(Fetch(key, error=f"connect: {exc}"))
                    continue
            fetches.append(await conn.get(key, buffers[key], REQUEST_TIMEOUT))
        conn.close()

    meter.begin()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    wall = time.perf_counter() - t0
    meter.end(wall)
    return fetches, wall


def verify(fetches: list[Fetch], buffers: dict[str, memoryview], corpus: Corpus) -> list[str]:
    """SHA-256 of every complete body against its file's (in threads: hashlib lets go
    of the GIL)."""

    def one(f: Fetch) -> str:
        if f.error or not f.done_at:
            return ""
        if f.length != corpus.size:
            return f"{f.key}: {f.length} bytes, the file has {corpus.size}"
        if hashlib.sha256(buffers[f.key][: f.length]).digest() != corpus.digests[f.key]:
            return f"{f.key}: the body differs from the file (SHA-256)"
        return ""

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return [p for p in pool.map(one, fetches) if p]
