"""edgefleet's HTTP/1.1 client for HTTP origins (edge/origin/client.py)
against a raw origin on loopback that writes each answer's bytes as given,
in one write, and counts its connections."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from conftest import resident

from edge.http.tls import client_context
from edge.origin import client
from edge.origin.client import ClientError, Pool, Timeout

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
HANG = b"hang"  # an answer that never comes
CLOSE = b""  # close the connection without answering

Script = Callable[[int, int, bytes], bytes]  # (connection no., request no. on it, head) -> answer
HOLD = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok"  # the rest, "ok", when ``held`` is set


class RawOrigin:
    def __init__(
        self, script: Script, tls: ssl.SSLContext | None = None, close_after: bool = False
    ) -> None:
        self.script = script
        self.close_after = close_after
        self.tls = tls
        self.asked: list[tuple[int, bytes]] = []  # (connection no., request head)
        self.conns = 0
        self.open = 0
        self.most_open = 0
        self.server: asyncio.Server | None = None
        self.held = asyncio.Event()

    async def __aenter__(self) -> RawOrigin:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conns += 1
        n, self.open = self.conns, self.open + 1
        self.most_open = max(self.most_open, self.open)
        try:
            for i in range(100):
                head = await reader.readuntil(b"\r\n\r\n")
                self.asked.append((n, head))
                length = next(
                    (int(x.split(b":")[1]) for x in head.split(b"\r\n")
                     if x.lower().startswith(b"content-length:")),
                    0,
                )  # fmt: skip
                if length:
                    await reader.readexactly(length)
                answer = self.script(n, i, head)
                if answer == HANG:
                    await asyncio.sleep(3600)
                if answer == CLOSE:
                    break
                writer.write(answer)
                await writer.drain()
                if answer == HOLD:
                    await self.held.wait()
                    writer.write(b"ok")
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()


def pool(origin: RawOrigin, scheme: str = "http", **kw: object) -> Pool:
    args: dict[str, object] = {"connect_timeout": 2, "read_timeout": 2}
    args.update(kw)
    return Pool(origin.url(scheme), shown="origin", user_agent="edgefleet", **args)  # type: ignore[arg-type]


async def fetch(p: Pool, target: str = "/x", method: str = "GET", **kw: object) -> tuple:  # type: ignore[type-arg]
    resp = await p.request(method, target, {"Range": "bytes=0-9"}, **kw)  # type: ignore[arg-type]
    try:
        body = b"".join([bytes(c) async for c in resp.chunks()])
    finally:
        resp.release()
    return resp.status, resp.headers, resp.content_length, body


def always(answer: bytes) -> Script:
    return lambda n, i, head: answer


# -- framing -------------------------------------------------------------------------------


async def test_the_declared_length_and_nothing_after_it_asked_once() -> None:
    """Bytes after a complete message are nobody's answer: the declared
    length is the answer, read once, and the connection is never reused."""
    long = (
        b"HTTP/1.1 206 Partial Content\r\nContent-Length: 4\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
        b"abcdHTTP/1.1 200 OK\r\nX-Smuggled: yes\r\n\r\nmore"
    )
    async with RawOrigin(lambda n, i, head: long if b"/long" in head else OK) as origin:
        p = pool(origin)
        status, headers, length, body = await fetch(p, "/long?a=1")
        assert (status, length, body) == (206, 4, b"abcd")
        assert headers.getall("x-a") == ["1", "2"] and "X-Smuggled" not in headers
        assert len(origin.asked) == 1
        sent = origin.asked[0][1]
        assert sent.startswith(b"GET /long?a=1 HTTP/1.1\r\n")
        for line in (b"Host: 127.0.0.1:", b"Range: bytes=0-9", b"Accept-Encoding: identity"):
            assert line in sent
        assert (await fetch(p))[3] == b"ok"
        assert [n for n, _ in origin.asked] == [1, 2]  # a new connection
        await p.close()


async def test_a_long_body_read_past_the_head_is_cut_at_its_length_too() -> None:
    """A body longer than one read, then more: the body is read into its own
    buffers, never past its end; the bytes after it close the connection."""
    body = bytes(range(256)) * 4096  # 1 MiB
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body + b"trailing junk"
    async with RawOrigin(lambda n, i, head: answer if b"/big" in head else OK) as origin:
        p = pool(origin)
        assert (await fetch(p, "/big"))[3] == body
        await asyncio.sleep(0.05)
        assert (await fetch(p))[3] == b"ok"
        assert [n for n, _ in origin.asked] == [1, 2]
        await p.close()


async def test_chunked_and_to_the_connections_end() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    async with RawOrigin(always(chunked)) as origin:
        p = pool(origin)
        assert (await fetch(p))[2:] == (None, b"abcde")
        assert (await fetch(p))[2:] == (None, b"abcde")
        assert origin.conns == 1  # chunked: kept alive
        await p.close()
    until_end = b"HTTP/1.1 200 OK\r\n\r\nuntil the end" + b"x" * 200_000
    async with RawOrigin(always(until_end), close_after=True) as o:
        p = pool(o)
        _, _, length, body = await fetch(p)
        assert (length, body) == (None, b"until the end" + b"x" * 200_000)
        await fetch(p)
        assert o.conns == 2  # ended by the connection's end: not reused
        await p.close()


async def test_no_body_answers_and_interim_ones() -> None:
    answers = {
        b"/head": b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        b"/304": b'HTTP/1.1 304 Not Modified\r\nETag: "a"\r\n\r\n',
        b"/103": b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK,
    }

    def script(n: int, i: int, head: bytes) -> bytes:
        return answers[head.split(b" ")[1]]

    async with RawOrigin(script) as origin:
        p = pool(origin)
        status, _, length, body = await fetch(p, "/head", "HEAD")
        assert (status, length, body) == (200, 1000, b"")
        status, headers, _, body = await fetch(p, "/304")
        assert (status, headers["ETag"], body) == (304, '"a"', b"")
        status, headers, _, body = await fetch(p, "/103")
        assert (status, body) == (200, b"ok") and "Link" not in headers
        assert origin.conns == 1  # every one of them kept the connection
        await p.close()


async def test_an_answer_broken_before_its_end_is_an_error() -> None:
    for raw in (
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTX/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"x" * 200_000,
    ):
        async with RawOrigin(always(raw), close_after=True) as origin:
            with pytest.raises(ClientError):
                await fetch(pool(origin))


async def test_a_header_that_would_split_the_request_is_refused() -> None:
    p = Pool("http://127.0.0.1:9", shown="o", user_agent="e", connect_timeout=1, read_timeout=1)
    with pytest.raises(ClientError, match="cannot be sent"):
        await p.request("GET", "/", {"X": "a\r\nB: c"})


async def test_credentials_in_the_url_and_a_body() -> None:
    async with RawOrigin(always(OK)) as origin:
        p = Pool(f"http://user:pw@127.0.0.1:{origin.port}", shown="o", user_agent="e",
                 connect_timeout=1, read_timeout=1)  # fmt: skip
        resp = await p.request("POST", "/f", {"Content-Type": "text/plain"}, b"hello")
        assert await resp.read(100) == b"ok"
        head = origin.asked[0][1]
        assert b"Authorization: Basic dXNlcjpwdw==" in head and b"Content-Length: 5" in head
        await p.close()


# -- the pool --------------------------------------------------------------------------------


async def test_kept_alive_connections_are_reused() -> None:
    async with RawOrigin(always(OK)) as origin:
        p = pool(origin)
        for _ in range(5):
            assert (await fetch(p))[3] == b"ok"
        assert origin.conns == 1 and len(origin.asked) == 5
        await p.close()


async def test_connections_are_bounded_and_waited_for() -> None:
    seen: list[int] = []
    async with RawOrigin(always(HOLD)) as origin:
        p = pool(origin, size=2)

        async def one() -> bytes:
            resp = await p.request("GET", "/x", {})
            seen.append(1)
            try:
                return await resp.read(10)  # its connection is busy until the body's end
            finally:
                resp.release()

        tasks = [asyncio.create_task(one()) for _ in range(6)]
        await asyncio.sleep(0.2)
        assert len(seen) == 2 and origin.most_open == 2  # the others wait for a connection
        origin.held.set()
        assert await asyncio.gather(*tasks) == [b"okok"] * 6
        assert origin.most_open == 2 and origin.conns == 2
        await p.close()


async def test_a_full_pool_within_the_connect_timeout_else_timeout() -> None:
    async with RawOrigin(lambda n, i, head: HANG if b"/hang" in head else OK) as origin:
        p = pool(origin, size=1, connect_timeout=0.3, read_timeout=5)
        hung = asyncio.create_task(p.request("GET", "/hang", {}))
        await asyncio.sleep(0.1)
        with pytest.raises(Timeout):
            await p.request("GET", "/x", {})
        hung.cancel()
        await p.close()


async def test_a_stale_kept_alive_connection_is_retried_once_on_a_new_one() -> None:
    """The origin closes a kept-alive connection as the next request arrives:
    a GET is sent once more on a new connection; an unsafe method is not."""
    async with RawOrigin(lambda n, i, head: OK if i == 0 else CLOSE) as origin:
        p = pool(origin)
        assert (await fetch(p))[3] == b"ok"
        assert (await fetch(p))[3] == b"ok"  # conn 1 dropped it: conn 2 answered
        assert [n for n, _ in origin.asked] == [1, 1, 2]
        with pytest.raises(ClientError):
            await fetch(p, "/x", "POST", body=b"once")  # conn 2, second request: closed
        assert [n for n, _ in origin.asked] == [1, 1, 2, 2]
        await p.close()


async def test_an_idle_connection_the_origin_wrote_to_is_not_used() -> None:
    """Bytes on an idle connection are nobody's answer: it is dropped."""
    async with RawOrigin(always(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")) as origin:
        p = pool(origin)
        assert (await fetch(p))[3] == b"ok"
        await asyncio.sleep(0.05)
        assert (await fetch(p))[3] == b"ok"
        assert origin.conns == 2
        await p.close()


# -- timeouts --------------------------------------------------------------------------------


async def test_read_timeouts_for_the_head_and_for_the_body() -> None:
    async with RawOrigin(always(HANG)) as origin:
        with pytest.raises(Timeout):
            await pool(origin, read_timeout=0.2).request("GET", "/", {})
    stalled = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst"
    async with RawOrigin(lambda n, i, head: stalled if i == 0 else HANG) as origin:
        p = pool(origin, read_timeout=0.2)
        resp = await p.request("GET", "/", {})
        got = []
        with pytest.raises(Timeout):
            async for c in resp.chunks():
                got.append(bytes(c))
        assert got == [b"first"]
        resp.release()
        await p.close()


# -- https -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(d / "origin.pem")
    )
    return ca, d


async def test_an_https_origin_is_verified_and_kept_alive(pki: tuple[trustme.CA, Path]) -> None:
    _, d = pki
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(d / "origin.pem"))
    body = b"y" * 300_000
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    async with RawOrigin(always(answer), tls=tls) as origin:
        p = pool(origin, "https", ssl_context=client_context(str(d / "ca.pem")))
        assert (await fetch(p))[3] == body
        assert (await fetch(p))[3] == body
        assert origin.conns == 1
        await p.close()
        doubting = pool(origin, "https")  # the system store does not know the test CA
        with pytest.raises(ClientError, match="cannot connect"):
            await fetch(doubting)


async def test_one_off_get() -> None:
    async with RawOrigin(always(OK)) as origin:
        resp = await client.get(origin.url() + "/x", {}, user_agent="e",
                                connect_timeout=1, read_timeout=1)  # fmt: skip
        assert resp.status == 200 and await resp.read(10) == b"ok"
        assert b"Connection: close" in origin.asked[0][1]


async def test_the_body_is_not_read_before_it_is_asked_for() -> None:
    """After the head, the socket is read no further until the body is asked
    for (a cold miss's way to its first byte does not wait behind the body's
    reads); then all of it comes."""
    body = bytes(range(256)) * (32 * 1024)  # 8 MiB
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    async with RawOrigin(always(answer)) as origin:
        p = pool(origin)
        resp = await p.request("GET", "/big", {})
        await asyncio.sleep(0.2)
        assert resp._ready_bytes <= client.HEAD_READ and resp._conn.paused
        got = b"".join([bytes(c) async for c in resp.chunks()])
        assert got == body
        resp.release()
        await p.close()


# -- body buffers --------------------------------------------------------------------------


async def test_large_bodies_go_into_buffers_reused_once_nothing_refers_to_them() -> None:
    """A 2 MiB body is read into a pooled buffer; while any view of it is held
    (a slice fetch, an outbox), the next body gets another buffer and the
    held bytes stay as they were; once they are dropped, the buffer is used
    again."""
    size = 2 * 1024 * 1024
    bodies = [bytes([i]) * size for i in range(3)]
    script: Script = lambda n, i, head: (  # noqa: E731
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + bodies[i]
    )
    async with RawOrigin(script) as origin:
        p = pool(origin)

        async def body() -> list[bytes | memoryview]:
            resp = await p.request("GET", "/big", {})
            chunks = [c async for c in resp.chunks()]
            resp.release()
            return chunks

        first = await body()
        assert isinstance(first[-1], memoryview)
        buffer = id(first[-1].obj)  # the mmap stays alive in the pool: its id is its own
        second = await body()
        assert id(second[-1].obj) != buffer  # the first's bytes are still held
        assert b"".join(first) == bodies[0] and b"".join(second) == bodies[1]
        del first
        third = await body()
        assert id(third[-1].obj) == buffer
        assert b"".join(third) == bodies[2] and b"".join(second) == bodies[1]
        await p.close()


def test_body_buffers_sizes_and_what_is_kept() -> None:
    """Small bodies get a bytearray of their own; large ones a power-of-two
    buffer; free buffers past ``keep`` bytes are unmapped."""
    b = client.BodyBuffers(keep=4 * 1024 * 1024)
    assert b.pooled
    small = b.take(client.POOLED_FROM - 1)
    assert isinstance(small.obj, bytearray) and len(small) == client.POOLED_FROM - 1
    views = [b.take(3 * 1024 * 1024) for _ in range(3)]
    assert [len(v) for v in views] == [3 * 1024 * 1024] * 3
    assert all(len(v.obj) == 4 * 1024 * 1024 for v in views)  # type: ignore[arg-type]
    held = views.pop()
    del views
    b.reclaim()
    assert b.free_bytes == 4 * 1024 * 1024 and len(b.lent) == 1  # one kept, one unmapped
    held[:3] = b"abc"  # still writable: it was never freed
    assert bytes(held[:3]) == b"abc"


async def test_new_buffers_come_with_their_pages_in() -> None:
    """A take that has to map a buffer (none free: fresh memory is wanted)
    has a thread map ``ready_count`` more and fault their pages in, so the
    socket's reads into the next ones do not fault page by page on the
    event loop; the next takes get those, every page already in memory."""
    size = 2 * 1024 * 1024
    b = client.BodyBuffers(ready=3)
    first = b.take(size)
    assert not any(resident(first.obj))  # type: ignore[arg-type]  # mapped here: no page yet
    deadline = asyncio.get_running_loop().time() + 10
    while len(b.ready.get(size, ())) < 3:
        assert asyncio.get_running_loop().time() < deadline, "no buffers made ready"
        await asyncio.sleep(0.01)
    ready = list(b.ready[size])
    assert all(all(resident(m)) for m in ready)
    taken = [b.take(size) for _ in range(3)]
    assert {id(v.obj) for v in taken} == {id(m) for m in ready}
    assert all(all(resident(v.obj)) for v in taken)  # type: ignore[arg-type]


async def test_buffers_nothing_refers_to_go_back_without_a_new_take() -> None:
    """After a burst, buffers whose bytes nobody holds any more are freed
    (up to ``keep``) or unmapped within a sweep, not at the next take."""
    size = 2 * 1024 * 1024
    b = client.BodyBuffers(keep=2 * size, ready=0)
    views = [b.take(size) for _ in range(5)]
    held = views.pop()  # still with a player
    del views
    deadline = asyncio.get_running_loop().time() + 10
    while len(b.lent) > 1:
        assert asyncio.get_running_loop().time() < deadline, "lent buffers never swept"
        await asyncio.sleep(0.05)
    assert b.lent == [held.obj] and b.free_bytes == 2 * size
    assert len(b.free[size]) == 2  # and the other two, past keep, unmapped
    del held
    while b.lent:
        assert asyncio.get_running_loop().time() < deadline, "the last buffer never swept"
        await asyncio.sleep(0.05)
    assert b.free_bytes == 2 * size  # keep is full: the last one was unmapped
