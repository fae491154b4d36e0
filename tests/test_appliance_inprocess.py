"""The appliance and its miss path in the test's own process: a real Store on
disk, a real origin (files in a directory, or the HTTP origin on loopback), the
real Appliance, MissPath and ViewCache, driven request by request without a
socket. What a response would put on the wire is read back from its parts:
bytes, memoryviews and FileSpans (read with pread, as sendfile would)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from origin_server import OriginServer

from edge.appliance.appliance import Appliance
from edge.appliance.metrics import RequestMetrics
from edge.config import ServeConfig, StoreRootConfig
from edge.http.wire import FileSpan, Request, Response
from edge.origin import open_origin
from edge.serve import make_store

SLICE = 64 * 1024


async def body_of(resp: Response) -> bytes:
    out = bytearray()
    parts = list(resp.body)
    for part in parts:
        out += read_part(part)
    if resp.stream is not None:
        async for part in resp.stream:
            out += read_part(part)
    return bytes(out)


def read_part(part: object) -> bytes:
    if isinstance(part, FileSpan):
        fd = part.fd if part.fd >= 0 else os.open(part.path, os.O_RDONLY)
        try:
            return os.pread(fd, part.count, part.offset)
        finally:
            if part.fd < 0:
                os.close(fd)
    return bytes(part)  # type: ignore[call-overload]


def status_of(resp: Response) -> int:
    return int(resp.head.split(b" ", 2)[1])


def request(target: str, method: str = "GET", **headers: str) -> Request:
    req = Request("127.0.0.1", time.monotonic())
    req.method = method
    req.target = target.encode()
    req.headers = {k.replace("_", "-").lower().encode(): v.encode() for k, v in headers.items()}
    return req


class InProcess:
    def __init__(self, tmp: Path, origin_url: str) -> None:
        (tmp / "store").mkdir(exist_ok=True)
        self.cfg = ServeConfig(
            store=[StoreRootConfig(str(tmp / "store"), 64 * 1024 * 1024)],
            index=str(tmp / "index.db"),
            origin=[origin_url],
            slice_size=SLICE,
            origin_retries=0,
        )
        self.store = make_store(self.cfg)
        self.store.open()
        self.executor = ThreadPoolExecutor(4)
        self.app: Appliance | None = None

    async def __aenter__(self) -> Appliance:
        origins = [open_origin(u, self.cfg.origin_settings()) for u in self.cfg.origin]
        self.app = Appliance(self.cfg, self.store, origins, self.executor, None, RequestMetrics())
        return self.app

    async def __aexit__(self, *exc: object) -> None:
        assert self.app is not None
        await self.app.stop()
        # as serve does: the threads finish their index writes before the
        # index's connections close
        self.executor.shutdown(wait=True)
        self.store.close()


async def ask(app: Appliance, req: Request) -> Response:
    resp = app.handle(req)
    if asyncio.iscoroutine(resp) or isinstance(resp, asyncio.Future):
        resp = await resp
    assert isinstance(resp, Response)
    return resp


async def settle(app: Appliance) -> None:
    """Wait for the slices the last responses fetched to be stored."""
    for _ in range(200):
        if not app.background and not app.chain.tasks:
            return
        await asyncio.sleep(0.01)


async def test_file_origin_miss_then_hit(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    (origin / "show").mkdir(parents=True)
    data = random.randbytes(5 * SLICE + 77)
    (origin / "show" / "seg.ts").write_bytes(data)
    async with InProcess(tmp_path, origin.as_uri()) as app:
        first = await ask(app, request("/show/seg.ts"))
        assert status_of(first) == 200 and first.cache == "miss"
        assert await body_of(first) == data
        await settle(app)
        obj = app.store.lookup("show/seg.ts")
        assert obj is not None and obj.complete
        again = await ask(app, request("/show/seg.ts"))
        assert again.cache == "hit" and again.stream is None
        assert all(isinstance(p, FileSpan) for p in again.body)
        assert await body_of(again) == data
        # a range that crosses slices, and several ranges as multipart
        part = await ask(app, request("/show/seg.ts", range=f"bytes={SLICE - 3}-{2 * SLICE + 3}"))
        assert status_of(part) == 206
        assert await body_of(part) == data[SLICE - 3 : 2 * SLICE + 4]
        multi = await ask(app, request("/show/seg.ts", range="bytes=0-9,-10"))
        body = await body_of(multi)
        assert status_of(multi) == 206 and b"multipart/byteranges" in multi.head
        assert data[:10] in body and data[-10:] in body
        # preconditions on the stored object
        etag = obj.meta.etag
        assert status_of(await ask(app, request("/show/seg.ts", if_none_match=etag))) == 304
        assert status_of(await ask(app, request("/show/seg.ts", if_match='"other"'))) == 412
        gone = await ask(app, request("/show/seg.ts", range=f"bytes={len(data)}-"))
        assert status_of(gone) == 416
        assert b"Content-Range: bytes */" in gone.head
        missing = await ask(app, request("/show/none.ts"))
        assert status_of(missing) == 404


async def test_concurrent_misses_share_one_fetch_per_slice(tmp_path: Path) -> None:
    server = OriginServer().start()
    try:
        data = random.randbytes(4 * SLICE + 5)
        server.put("movie.mp4", data)
        async with InProcess(tmp_path, server.url) as app:
            ranges = [None, "bytes=0-", f"bytes={SLICE}-", f"bytes={3 * SLICE}-{3 * SLICE + 9}"]
            reqs = [
                request("/movie.mp4", **({"range": r} if r else {})) for r in ranges for _ in (1, 2)
            ]
            resps = await asyncio.gather(*(ask(app, r) for r in reqs))
            bodies = await asyncio.gather(*(body_of(r) for r in resps))
            for r, resp, body in zip(reqs, resps, bodies, strict=True):
                rng = r.headers.get(b"range")
                if rng is None or rng == b"bytes=0-":
                    assert body == data
                elif rng == f"bytes={SLICE}-".encode():
                    assert body == data[SLICE:]
                else:
                    assert body == data[3 * SLICE : 3 * SLICE + 10]
                assert resp.cache in ("miss", "partial", "hit")
            await settle(app)
            gets = server.asked("GET", "/movie.mp4")
            asked_ranges = [g.range for g in gets]
            # every slice came from the origin once, however many asked for it
            assert len(asked_ranges) == len(set(asked_ranges)) == 5, asked_ranges
            hit = await ask(app, request("/movie.mp4"))
            assert hit.cache == "hit" and await body_of(hit) == data
            assert len(server.asked("GET", "/movie.mp4")) == 5
    finally:
        server.stop()


@pytest.mark.parametrize("method", ["HEAD", "GET"])
async def test_head_and_get_agree(tmp_path: Path, method: str) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    data = random.randbytes(SLICE + 1)
    (origin / "x.m4s").write_bytes(data)
    async with InProcess(tmp_path, origin.as_uri()) as app:
        resp = await ask(app, request("/x.m4s", method))
        assert status_of(resp) == 200
        assert f"Content-Length: {len(data)}".encode() in resp.head
        body = await body_of(resp)
        assert body == (data if method == "GET" else b"")
