"""The origin chain the miss path and the fill share, against real origins:
directories on disk and the HTTP origin on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from origin_server import OriginServer

from edge.config import ServeConfig
from edge.origin import OriginChanged, OriginSettings, open_origin
from edge.origin.chain import OriginChain
from fill.download import Sources


def origins(tmp: Path, *holdings: dict[str, bytes]) -> list[str]:
    urls = []
    for n, held in enumerate(holdings):
        d = tmp / f"origin{n}"
        d.mkdir()
        for key, data in held.items():
            (d / key).parent.mkdir(parents=True, exist_ok=True)
            (d / key).write_bytes(data)
        urls.append(d.as_uri())
    return urls


async def test_an_object_only_the_fallback_origin_holds_is_found(tmp_path: Path) -> None:
    urls = origins(tmp_path, {"other.ts": b"x"}, {"t/seg.ts": b"from the fallback"})
    chain = OriginChain([open_origin(u) for u in urls], retries=0)
    try:
        meta = await chain.head("t/seg.ts")
        assert meta is not None and meta.size == len(b"from the fallback")
        assert await chain.head("t/none.ts") is None
        assert chain.known_missing("t/none.ts") and not chain.known_missing("t/seg.ts")
    finally:
        await chain.close()


async def test_the_fill_asks_the_fallback_origins_too(tmp_path: Path) -> None:
    """The fill's lookup goes through the chain: the first origin's "absent"
    passes the question on, as it does for the miss path."""
    urls = origins(tmp_path, {}, {"t/seg.ts": b"from the fallback"})
    sources = Sources.open(urls, [], OriginSettings(), retries=0)
    try:
        meta = await sources.head("t/seg.ts")
        assert meta is not None and meta.size == len(b"from the fallback")
        assert await sources.head("t/none.ts") is None
    finally:
        await sources.close()


async def test_the_fill_and_the_appliance_take_the_same_settings() -> None:
    cfg = ServeConfig(origin=["file:///tmp"], origin_retries=4, breaker_failures=7)
    sources = Sources.open(
        cfg.origin, [], cfg.origin_settings(), retries=cfg.origin_retries,
        breaker_failures=cfg.breaker_failures, breaker_cooldown=cfg.breaker_cooldown,
    )  # fmt: skip
    try:
        assert sources.chain.retries == 4
        assert all(b.failures == 7 for b in sources.chain.breakers.values())
    finally:
        await sources.close()


@pytest.mark.parametrize("change", ["rewritten", "removed"])
async def test_a_file_changed_since_it_was_learnt_is_a_change(tmp_path: Path, change: str) -> None:
    """Not an origin failure: no retry, no breaker count; the caller learns
    the object again."""
    (url,) = origins(tmp_path, {"a.ts": b"first version"})
    origin = open_origin(url)
    meta = await origin.head("a.ts")
    assert meta is not None
    path = tmp_path / "origin0" / "a.ts"
    if change == "rewritten":
        path.write_bytes(b"second version, longer")
        os.utime(path, (meta.last_modified + 5, meta.last_modified + 5))
    else:
        path.unlink()
    chain = OriginChain([origin], retries=3, breaker_failures=1)
    try:
        f = chain.fetch("a.ts", "g", 0, meta, 1024)
        with pytest.raises(OriginChanged):
            await f.data()
        assert chain.breakers[id(origin)].allow(0.0)  # still closed
    finally:
        await chain.close()


async def test_the_http_origin_is_asked_once_for_a_changed_object() -> None:
    server = OriginServer().start()
    try:
        server.put("a.ts", b"first version")
        origin = open_origin(server.url)
        chain = OriginChain([origin], retries=3)
        try:
            meta = await chain.head("a.ts")
            assert meta is not None
            server.put("a.ts", b"another version")
            with pytest.raises(OriginChanged):
                await chain.fetch("a.ts", "g", 0, meta, 1024).data()
            reads = [a for a in server.asked("GET") if "If-Match" in a.headers]
            assert len(reads) == 1  # not retried
        finally:
            await chain.close()
    finally:
        server.stop()


async def test_the_http_origins_slices_come_over_kept_alive_connections_bounded() -> None:
    """One connection serves slice after slice; concurrent slices open at
    most ``pool_size`` connections; every byte arrives, in its slice."""
    import asyncio
    import random

    server = OriginServer().start()
    try:
        data = random.randbytes(10 * 65536 + 7)
        server.put("v.mp4", data)
        origin = open_origin(server.url, OriginSettings(pool_size=2))
        chain = OriginChain([origin], retries=0)
        try:
            meta = await chain.learn("v.mp4", 0, 65536)
            assert meta is not None and meta.size == len(data)
            first = await chain.fetch("v.mp4", "g", 0, meta, 65536).data()
            for idx in (1, 2, 3):
                assert await chain.fetch("v.mp4", "g", idx, meta, 65536).data() == bytes(
                    data[idx * 65536 : (idx + 1) * 65536]
                )
            assert len({a.conn for a in server.asked("GET")}) == 1
            rest = await asyncio.gather(
                *(chain.fetch("v.mp4", "g", i, meta, 65536).data() for i in range(4, 11))
            )
            assert first + b"".join(rest) == data[:65536] + data[4 * 65536 :]
            assert len({a.conn for a in server.asked("GET")}) <= 2
        finally:
            await chain.close()
    finally:
        server.stop()
