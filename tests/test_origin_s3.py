"""The S3 origin against a real S3 endpoint (moto's server) on loopback.

First ``S3Origin`` on its own, then a real ``edgefleet serve`` pulling from a
bucket. Misbehaving endpoints (refusing, hanging, answering badly) are plain
sockets on loopback.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
from conftest import SLICE, Appliance, wait_for
from s3server import CREDENTIALS, free_port, put_objects, s3_client, s3_endpoint  # noqa: F401

from edge.core.meta import ObjectMeta
from edge.origin import OriginChanged, OriginError, OriginSettings, OriginTimeout, open_origin
from edge.origin.s3 import S3Origin

T = TypeVar("T")
BUCKET = "edge-origin"
RNG = random.Random(7)
OBJECTS = {
    "vod/titles/1/seg_00001.m4s": RNG.randbytes(300_000),
    "vod/titles/1/index.m3u8": b"#EXTM3U\n#EXT-X-VERSION:7\n",
    "vod/empty.ts": b"",
    "top.ts": RNG.randbytes(1000),
}
SEG = "titles/1/seg_00001.m4s"


def settings(endpoint: str, **kw: Any) -> OriginSettings:
    return OriginSettings(
        s3_endpoint=endpoint,
        s3_region="us-east-1",
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        **kw,
    )


@pytest.fixture(scope="module")
def etags(s3_endpoint: str) -> dict[str, str]:  # noqa: F811
    return put_objects(s3_endpoint, BUCKET, OBJECTS)


@pytest.fixture
async def origin(s3_endpoint: str, etags: dict[str, str]) -> AsyncIterator[S3Origin]:  # noqa: F811
    o = S3Origin(f"s3://{BUCKET}/vod", settings(s3_endpoint))
    yield o
    await o.close()


async def collect(it: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in it])


# -- S3Origin on its own ---------------------------------------------------------


def test_open_origin_picks_s3() -> None:
    o = open_origin("s3://bucket/a/b/", OriginSettings())
    assert isinstance(o, S3Origin) and o.url == "s3://bucket/a/b/"
    assert o.object_key("x.ts") == "a/b/x.ts"
    assert S3Origin("s3://bucket", OriginSettings()).object_key("x.ts") == "x.ts"
    assert S3Origin("s3://bucket/", OriginSettings()).object_key("a/x.ts") == "a/x.ts"
    assert S3Origin("s3://bucket//p//", OriginSettings()).object_key("x.ts") == "p/x.ts"


async def test_head(origin: S3Origin, etags: dict[str, str]) -> None:
    before = time.time()
    meta = await origin.head(SEG)
    assert meta is not None
    assert meta.size == len(OBJECTS["vod/" + SEG])
    assert meta.etag == etags["vod/" + SEG]
    assert meta.etag.startswith('"') and meta.etag.endswith('"') and len(meta.etag) > 2
    assert before - 120 < meta.last_modified <= before + 1
    assert meta.content_type == "video/iso.segment"  # S3 said binary/octet-stream
    assert meta.cache_control is None and meta.fresh_until is None
    playlist = await origin.head("titles/1/index.m3u8")
    assert playlist is not None and playlist.content_type == "application/vnd.apple.mpegurl"
    empty = await origin.head("empty.ts")
    assert empty is not None and empty.size == 0


async def test_head_keeps_type_and_cache_control(s3_endpoint: str) -> None:  # noqa: F811
    put_objects(
        s3_endpoint,
        BUCKET,
        {"typed/a.bin": b"abc"},
        ContentType="video/mp4",
        CacheControl="public, max-age=60",
    )
    o = S3Origin(f"s3://{BUCKET}/typed/", settings(s3_endpoint))
    try:
        meta = await o.head("a.bin")
    finally:
        await o.close()
    assert meta is not None
    assert meta.content_type == "video/mp4" and meta.cache_control == "public, max-age=60"


async def test_head_missing(origin: S3Origin) -> None:
    assert await origin.head("titles/1/nope.m4s") is None
    assert await origin.head("top.ts") is None  # outside the prefix


async def test_prefixes(s3_endpoint: str, etags: dict[str, str]) -> None:  # noqa: F811
    for url, key in [
        (f"s3://{BUCKET}", "vod/" + SEG),
        (f"s3://{BUCKET}/", "top.ts"),
        (f"s3://{BUCKET}/vod/", SEG),
        (f"s3://{BUCKET}/vod/titles", "1/seg_00001.m4s"),
        (f"s3://{BUCKET}/vod/titles/1/", "seg_00001.m4s"),
    ]:
        o = S3Origin(url, settings(s3_endpoint))
        try:
            meta = await o.head(key)
            assert meta is not None, url
            data = OBJECTS[o.object_key(key)]
            assert meta.etag == etags[o.object_key(key)]
            assert await collect(o.read(key, meta, 0, meta.size)) == data
        finally:
            await o.close()


@pytest.mark.parametrize(
    "start,length",
    [
        (0, 300_000),  # the whole object
        (0, 1),  # the first byte
        (299_999, 1),  # the last byte
        (1000, 5000),  # inside
        (65_536, 65_536),  # one slice's worth
        (200_000, 100_000),  # to the end
    ],
)
async def test_read_ranges(origin: S3Origin, start: int, length: int) -> None:
    meta = await origin.head(SEG)
    assert meta is not None
    data = OBJECTS["vod/" + SEG]
    assert await collect(origin.read(SEG, meta, start, length)) == data[start : start + length]


async def test_read_streams_in_chunks(origin: S3Origin) -> None:
    meta = await origin.head(SEG)
    assert meta is not None
    chunks = [c async for c in origin.read(SEG, meta, 0, meta.size)]
    assert len(chunks) > 1 and all(chunks)
    assert b"".join(chunks) == OBJECTS["vod/" + SEG]


@pytest.mark.parametrize(
    ("start", "length"),
    [(0, 65_536), (1000, 5000), (262_144, 65_536), (0, 1_000_000), (299_999, 10)],
)
async def test_read_first_learns_the_object_from_its_get(
    origin: S3Origin, start: int, length: int
) -> None:
    """One GetObject tells what the object is and starts its bytes: no HeadObject."""
    parts = [p async for p in origin.read_first(SEG, start, length)]
    meta, body = parts[0], parts[1:]
    assert meta == await origin.head(SEG)
    data = OBJECTS["vod/" + SEG]
    assert all(isinstance(b, bytes) for b in body)
    assert b"".join(body) == data[start : start + length]  # clipped at the end


async def test_read_first_of_what_is_not_there(origin: S3Origin) -> None:
    assert [p async for p in origin.read_first("no/such.ts", 0, 65_536)] == [None]
    # a range past the end tells nothing (416): the caller asks HeadObject
    assert [p async for p in origin.read_first(SEG, 10_000_000, 65_536)] == []
    assert [p async for p in origin.read_first("empty.ts", 0, 65_536)] == []


async def test_read_nothing_sends_nothing() -> None:
    # a dead endpoint: any request would fail
    o = S3Origin("s3://bucket/p", settings(f"http://127.0.0.1:{free_port()}"))
    meta = ObjectMeta(10, '"abc"', 0, "video/mp2t")
    try:
        assert [c async for c in o.read("a.ts", meta, 0, 0)] == []
        assert [c async for c in o.read("a.ts", meta, 10, 0)] == []
    finally:
        await o.close()


async def test_empty_object(origin: S3Origin) -> None:
    meta = await origin.head("empty.ts")
    assert meta is not None and meta.size == 0
    assert await collect(origin.read("empty.ts", meta, 0, 0)) == b""


async def test_replaced_object_is_noticed(s3_endpoint: str) -> None:  # noqa: F811
    put_objects(s3_endpoint, BUCKET, {"changing/a.ts": b"a" * 5000})
    o = S3Origin(f"s3://{BUCKET}/changing", settings(s3_endpoint))
    try:
        meta = await o.head("a.ts")
        assert meta is not None
        assert await collect(o.read("a.ts", meta, 0, 100)) == b"a" * 100
        put_objects(s3_endpoint, BUCKET, {"changing/a.ts": b"b" * 5000})  # same size
        with pytest.raises(OriginChanged):
            await collect(o.read("a.ts", meta, 100, 100))
        put_objects(s3_endpoint, BUCKET, {"changing/a.ts": b"c" * 7000})
        with pytest.raises(OriginChanged):
            await collect(o.read("a.ts", meta, 0, 5000))
        new = await o.head("a.ts")
        assert new is not None and new.etag != meta.etag and new.size == 7000
        assert await collect(o.read("a.ts", new, 6990, 10)) == b"c" * 10
    finally:
        await o.close()


async def test_deleted_object_is_noticed(s3_endpoint: str) -> None:  # noqa: F811
    put_objects(s3_endpoint, BUCKET, {"deleted/a.ts": b"a" * 100})
    o = S3Origin(f"s3://{BUCKET}/deleted", settings(s3_endpoint))
    try:
        meta = await o.head("a.ts")
        assert meta is not None
        client = s3_client(s3_endpoint)
        client.delete_object(Bucket=BUCKET, Key="deleted/a.ts")
        client.close()
        with pytest.raises(OriginError):
            await collect(o.read("a.ts", meta, 0, 100))
        assert await o.head("a.ts") is None
    finally:
        await o.close()


async def test_missing_bucket(s3_endpoint: str) -> None:  # noqa: F811
    o = S3Origin("s3://no-such-bucket/p", settings(s3_endpoint))
    meta = ObjectMeta(10, '"abc"', 0, "video/mp2t")
    try:
        with pytest.raises(OriginError, match="NoSuchBucket"):
            await collect(o.read("a.ts", meta, 0, 10))
        # a misspelt bucket is an error naming it, not a 404 for every object
        with pytest.raises(OriginError, match="bucket 'no-such-bucket' does not exist"):
            await o.head("a.ts")
    finally:
        await o.close()


async def test_credentials_from_the_environment(
    s3_endpoint: str,  # noqa: F811
    etags: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    plain = OriginSettings(s3_endpoint=s3_endpoint)  # the region defaults with an endpoint
    o = S3Origin(f"s3://{BUCKET}/vod", plain)
    try:
        meta = await o.head(SEG)
        assert meta is not None and meta.etag == etags["vod/" + SEG]
    finally:
        await o.close()
    for name in CREDENTIALS:
        monkeypatch.delenv(name)
    o = S3Origin(f"s3://{BUCKET}/vod", plain)
    try:
        with pytest.raises(OriginError, match="credentials"):
            await o.head(SEG)
    finally:
        await o.close()


# -- endpoints that misbehave ---------------------------------------------------


class RawServer:
    """A loopback socket server: each connection reads a request, then ``answer`` it."""

    def __init__(self, answer: Callable[[socket.socket, bytes], None]) -> None:
        self.answer = answer
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.requests: list[bytes] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.requests.append(data)
            self.answer(conn, data)
        except OSError:
            return

    def close(self) -> None:
        self.stopping.set()
        self.sock.close()
        for conn in self.conns:
            conn.close()


def never_answer(conn: socket.socket, request: bytes) -> None:
    return None  # the connection stays open, silent


def respond(head: str, body: bytes = b"", then_hang: bool = False) -> Callable[..., None]:
    def answer(conn: socket.socket, request: bytes) -> None:
        conn.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        if not then_hang:
            conn.shutdown(socket.SHUT_WR)

    return answer


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket, bytes], None]], RawServer]]:
    servers: list[RawServer] = []

    def make(answer: Callable[[socket.socket, bytes], None]) -> RawServer:
        servers.append(RawServer(answer))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


async def timed(coro: Any) -> tuple[float, BaseException | None]:
    t0 = time.monotonic()
    try:
        await coro
    except BaseException as exc:
        return time.monotonic() - t0, exc
    return time.monotonic() - t0, None


META = ObjectMeta(100, '"abc"', 0, "video/mp2t")


async def test_dead_endpoint_fails_fast() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    o = S3Origin("s3://bucket/p", settings(url))
    try:
        took, exc = await timed(o.head("a.ts"))
        assert isinstance(exc, OriginError) and not isinstance(exc, OriginTimeout), exc
        assert "s3://bucket/p" in str(exc) and "connect" in str(exc)
        assert took < 2.0
        took, exc = await timed(collect(o.read("a.ts", META, 0, 100)))
        assert isinstance(exc, OriginError) and not isinstance(exc, OriginTimeout), exc
        assert took < 2.0
    finally:
        await o.close()


async def test_hanging_endpoint_times_out(raw_server: Callable[..., RawServer]) -> None:
    server = raw_server(never_answer)
    o = S3Origin("s3://bucket/p", settings(server.endpoint, read_timeout=0.5))
    try:
        took, exc = await timed(o.head("a.ts"))
        assert isinstance(exc, OriginTimeout), exc
        assert 0.4 < took < 3.0
        took, exc = await timed(collect(o.read("a.ts", META, 0, 100)))
        assert isinstance(exc, OriginTimeout), exc
        assert 0.4 < took < 3.0
    finally:
        await o.close()
    assert len(server.requests) == 2  # botocore did not retry


def partial(content_range: str = "0-99/100", etag: str = '"abc"', length: int | None = 100) -> str:
    """The head of a 206 answer (``length`` None: no Content-Length, the body ends at close)."""
    head = f"HTTP/1.1 206 Partial Content\nContent-Range: bytes {content_range}\nETag: {etag}\n"
    return head + (f"Content-Length: {length}\n" if length is not None else "Connection: close\n")


def xml_error(status: str, code: str, message: str) -> tuple[str, bytes]:
    body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
    head = f"HTTP/1.1 {status}\nContent-Type: application/xml\nContent-Length: {len(body)}\n"
    return head, body


async def test_body_that_stalls_times_out(raw_server: Callable[..., RawServer]) -> None:
    server = raw_server(respond(partial(), b"x" * 10, then_hang=True))
    o = S3Origin("s3://bucket/p", settings(server.endpoint, read_timeout=0.5))
    got: list[bytes] = []

    async def read() -> None:
        async for chunk in o.read("a.ts", META, 0, 100):
            got.append(chunk)

    try:
        took, exc = await timed(read())
    finally:
        await o.close()
    assert isinstance(exc, OriginTimeout), exc
    assert b"".join(got) == b"x" * 10 and took < 3.0


@pytest.mark.parametrize(
    "head,body,error,match",
    [
        # a body cut short
        (partial(), b"x" * 10, OriginError, None),
        # more than asked for, announced
        ('HTTP/1.1 200 OK\nContent-Length: 200\nETag: "abc"\n', b"x" * 200, OriginError, "200"),
        # more than asked for, found out while reading
        (partial(length=None), b"x" * 150, OriginError, "more than"),
        # another version: If-Match ignored
        (partial(etag='"def"'), b"x" * 100, OriginChanged, "ETag"),
        (partial("0-99/300"), b"x" * 100, OriginChanged, "300 bytes"),
        # the wrong range
        (partial("1-100/100"), b"x" * 100, OriginError, "not 0-99"),
        (*xml_error("412 Precondition Failed", "PreconditionFailed", "No"), OriginChanged, None),
        (
            *xml_error("403 Forbidden", "AccessDenied", "Access Denied"),
            OriginError,
            "access denied",
        ),
        (*xml_error("500 Internal Server Error", "InternalError", "Oops"), OriginError, "500"),
        (*xml_error("503 Slow Down", "SlowDown", "Reduce your request rate"), OriginError, "503"),
    ],
)
async def test_bad_answers(
    raw_server: Callable[..., RawServer], head: str, body: bytes, error: type, match: str | None
) -> None:
    server = raw_server(respond(head, body))
    o = S3Origin("s3://bucket/p", settings(server.endpoint, read_timeout=2.0))
    try:
        with pytest.raises(error, match=match) as info:
            await collect(o.read("a.ts", META, 0, 100))
    finally:
        await o.close()
    assert not isinstance(info.value, OriginTimeout)
    assert len(server.requests) == 1  # botocore does not retry: the appliance does
    request = server.requests[0].lower()
    assert b"range: bytes=0-99\r\n" in request and b'if-match: "abc"\r\n' in request


async def test_range_ignored(raw_server: Callable[..., RawServer]) -> None:
    server = raw_server(respond('HTTP/1.1 200 OK\nContent-Length: 100\nETag: "abc"\n', b"x" * 100))
    o = S3Origin("s3://bucket/p", settings(server.endpoint))
    try:
        with pytest.raises(OriginError, match="ignored the Range"):
            await collect(o.read("a.ts", META, 50, 50))
    finally:
        await o.close()


async def test_head_access_denied(raw_server: Callable[..., RawServer]) -> None:
    server = raw_server(respond("HTTP/1.1 403 Forbidden\nContent-Length: 0\n"))
    o = S3Origin("s3://bucket/p", settings(server.endpoint))
    try:
        with pytest.raises(OriginError, match="access denied"):
            await o.head("a.ts")
    finally:
        await o.close()


# -- a real appliance pulling from S3 ---------------------------------------------

APP_BUCKET = "edge-appliance"
N = SLICE * 3 + 17
CATALOG = {
    "small.ts": RNG.randbytes(1000),
    "empty.ts": b"",
    "one-slice.m4s": RNG.randbytes(SLICE),
    "large.mp4": RNG.randbytes(SLICE * 40),
    "spans.m4s": RNG.randbytes(N),
    "multi.m4s": RNG.randbytes(N),
    "twice.m4s": RNG.randbytes(N),
    "dir with space/ü nicode.ts": RNG.randbytes(5000),
    "replaced.m4s": RNG.randbytes(N),
}


@pytest.fixture(scope="module")
def served(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:  # noqa: F811
    tmp = tmp_path_factory.mktemp("s3app")
    put_objects(s3_endpoint, APP_BUCKET, {"vod/" + k: v for k, v in CATALOG.items()})
    put_objects(s3_endpoint, APP_BUCKET, {"outside.ts": b"x"})
    app = Appliance(
        [
            "--store", str(tmp / "store"),
            "--capacity", "64MiB",
            "--origin", f"s3://{APP_BUCKET}/vod",
            "--s3-endpoint", s3_endpoint,
            "--s3-region", "us-east-1",
            "--slice-size", str(SLICE),
            "--access-log", str(tmp / "access.log"),
        ],
        env={
            **CREDENTIALS,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "none"),
        },
    ).start()  # fmt: skip
    app.access_log = tmp / "access.log"  # type: ignore[attr-defined]
    yield app
    app.stop()


def log_lines(app: Appliance, key: str, count: int) -> list[dict[str, Any]]:
    """The access log's first ``count`` lines for ``key``, once they are written."""
    path: Path = app.access_log  # type: ignore[attr-defined]

    def lines() -> list[dict[str, Any]] | None:
        if not path.exists():
            return None
        got = [json.loads(x) for x in path.read_text().splitlines() if x]
        got = [x for x in got if x["key"] == key]
        return got[:count] if len(got) >= count else None

    return wait_for(lines)


def stored(app: Appliance, key: str) -> bool:
    """Is ``key`` complete in the store (listed by the inventory)?"""
    body = app.get("/_edge/inventory")[2].decode()
    return any(json.loads(line).get("key") == key for line in body.splitlines() if line)


def cold_then_hot(app: Appliance, key: str, **headers: str) -> tuple[Any, Any]:
    first = app.get("/" + quote(key), **headers)
    wait_for(lambda: stored(app, key))
    second = app.get("/" + quote(key), **headers)
    return first, second


def test_appliance_cold_and_hot(served: Appliance) -> None:
    # smaller than a slice, exactly one, 40 of them, a key that needs quoting
    keys = ["small.ts", "one-slice.m4s", "large.mp4", "dir with space/ü nicode.ts"]
    for key in keys:
        data = CATALOG[key]
        (s1, h1, b1), (s2, h2, b2) = cold_then_hot(served, key)
        assert s1 == s2 == 200, key
        assert b1 == b2 == data, key
        assert h1["content-length"] == h2["content-length"] == str(len(data))
        assert h1["etag"] == h2["etag"] and h1["etag"].startswith('"')
    for key in keys:
        first, second = log_lines(served, key, 2)
        assert (first["cache"], second["cache"]) == ("miss", "hit"), key
    # each cold object was learnt from its first GetObject: no HeadObject at all
    metrics = served.get("/_edge/metrics")[2].decode()
    heads = [
        line for line in metrics.splitlines()
        if line.startswith("edgefleet_origin_requests_total{") and 'kind="head"' in line
    ]  # fmt: skip
    assert all(float(line.split()[-1]) == 0 for line in heads), heads


def test_appliance_empty_object(served: Appliance) -> None:
    status, headers, body = served.get("/empty.ts")
    assert status == 200 and body == b"" and headers["content-length"] == "0"
    status, headers, body = served.get("/empty.ts")
    assert status == 200 and body == b""
    assert served.get("/empty.ts", Range="bytes=0-")[0] == 416
    wait_for(lambda: stored(served, "empty.ts"))
    # the first is logged as a hit too: an empty object has no slice to miss
    assert log_lines(served, "empty.ts", 2)[1]["cache"] == "hit"


def test_appliance_ranges_across_slices(served: Appliance) -> None:
    data = CATALOG["spans.m4s"]
    ranges = [(SLICE - 10, SLICE + 9), (100, SLICE * 2 + 5), (N - 20, N - 1), (0, 0)]
    for a, b in ranges:
        status, headers, body = served.get("/spans.m4s", Range=f"bytes={a}-{b}")
        assert status == 206, (a, b)
        assert headers["content-range"] == f"bytes {a}-{b}/{N}"
        assert body == data[a : b + 1]
    status, _, body = served.get("/spans.m4s", Range="bytes=-100")
    assert status == 206 and body == data[-100:]
    (s1, _, b1), (s2, _, b2) = cold_then_hot(served, "spans.m4s")
    assert s1 == s2 == 200 and b1 == b2 == data
    got = log_lines(served, "spans.m4s", len(ranges) + 3)
    assert got[0]["cache"] == "miss" and got[-1]["cache"] == "hit"
    assert [x["bytes"] for x in got] == [b - a + 1 for a, b in ranges] + [100, N, N]


def test_appliance_multipart_ranges(served: Appliance) -> None:
    data = CATALOG["multi.m4s"]
    ranges = [(0, 9), (SLICE - 5, SLICE + 5), (SLICE * 3, N - 1)]
    spec = "bytes=" + ",".join(f"{a}-{b}" for a, b in ranges)
    touched = {i for a, b in ranges for i in range(a // SLICE, b // SLICE + 1)}
    in_store = sum(min(SLICE, N - i * SLICE) for i in touched)
    before = served.health()["store"]["used_bytes"]
    for attempt in range(2):
        if attempt:  # the first answer's slices are stored after it: wait for them
            wait_for(lambda: served.health()["store"]["used_bytes"] >= before + in_store)
        status, headers, body = served.get("/multi.m4s", Range=spec)
        assert status == 206
        ctype = headers["content-type"]
        assert ctype.startswith("multipart/byteranges; boundary=")
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body
        )
        got = [(p["Content-Range"], p.get_payload(decode=True)) for p in msg.iter_parts()]
        assert got == [(f"bytes {a}-{b}/{N}", data[a : b + 1]) for a, b in ranges]
    first, second = log_lines(served, "multi.m4s", 2)
    assert first["cache"] in ("miss", "partial")
    assert second["cache"] in ("hit", "partial")


def test_appliance_second_read_does_not_touch_origin(served: Appliance) -> None:
    def origin_bytes() -> float:
        text = served.get("/_edge/metrics")[2].decode()
        for line in text.splitlines():
            if line.startswith("edgefleet_origin_bytes_total "):
                return float(line.split()[1])
        return 0.0

    (s1, _, b1), _ = cold_then_hot(served, "twice.m4s")
    assert s1 == 200 and b1 == CATALOG["twice.m4s"]
    wait_for(lambda: origin_bytes() >= N)
    time.sleep(0.2)
    before = origin_bytes()
    for _ in range(3):
        assert served.get("/twice.m4s")[2] == CATALOG["twice.m4s"]
    time.sleep(1.1)  # request metrics reach the shared files once a second
    assert origin_bytes() == before
    assert [x["cache"] for x in log_lines(served, "twice.m4s", 5)][1:] == ["hit"] * 4


def test_appliance_missing_key(served: Appliance) -> None:
    assert served.get("/nope.ts")[0] == 404
    assert served.get("/outside.ts")[0] == 404  # not under the prefix
    assert served.get("/vod/small.ts")[0] == 404


def test_appliance_replaced_object_is_not_mixed(served: Appliance, s3_endpoint: str) -> None:  # noqa: F811
    old = CATALOG["replaced.m4s"]
    status, headers, body = served.get("/replaced.m4s", Range="bytes=0-99")
    assert status == 206 and body == old[:100]
    old_etag = headers["etag"]
    wait_for(lambda: served.health()["store"]["used_bytes"] > 0)
    new = RNG.randbytes(len(old))
    new_etag = put_objects(s3_endpoint, APP_BUCKET, {"vod/replaced.m4s": new})["vod/replaced.m4s"]
    assert new_etag != old_etag
    # slice 0 of the old version is stored; slice 1 now comes from the new one
    status, headers, body = served.get("/replaced.m4s", Range=f"bytes={SLICE}-{SLICE + 99}")
    if status != 502:  # an error, or the new version throughout, never a mix
        assert status == 206 and headers["etag"] == new_etag
        assert body == new[SLICE : SLICE + 100]
    status, headers, body = served.get("/replaced.m4s")
    assert status == 200 and headers["etag"] == new_etag and body == new
