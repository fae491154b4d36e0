"""The lenient GET (edge/origin/lenient.py) against a raw origin on loopback
that writes each answer's bytes as given, in one write."""

from __future__ import annotations

import asyncio

import pytest

from edge.origin import lenient


async def answer_with(raw: bytes, get_target: str = "/x?a=1"):  # type: ignore[no-untyped-def]
    """(the lenient answer's status, headers and body, the request the origin saw)."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(raw)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        resp = await lenient.get(
            f"http://user:pw@127.0.0.1:{port}{get_target}",
            {"Range": "bytes=0-9", "Foo": "1"},
            user_agent="edgefleet",
            connect_timeout=2,
            read_timeout=2,
        )
        try:
            body = b"".join([c async for c, _ in resp.content.iter_chunks()])
        finally:
            resp.release()
        return (resp.status, resp.headers, resp.content_length, body), seen[0]
    finally:
        server.close()


async def test_the_declared_length_and_nothing_after_it() -> None:
    (status, headers, length, body), sent = await answer_with(
        b"HTTP/1.1 206 Partial Content\r\nContent-Length: 4\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
        b"abcdHTTP/1.1 200 OK\r\nX-Smuggled: yes\r\n\r\nmore"
    )
    assert (status, length, body) == (206, 4, b"abcd")
    assert headers.getall("x-a") == ["1", "2"] and "X-Smuggled" not in headers
    assert sent.startswith(b"GET /x?a=1 HTTP/1.1\r\n")
    for line in (b"Connection: close", b"Range: bytes=0-9", b"Foo: 1", b"Authorization: Basic "):
        assert line in sent


async def test_chunked_and_to_the_connections_end() -> None:
    got, _ = await answer_with(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\ngarbage"
    )
    assert got[2:] == (None, b"abc")
    got, _ = await answer_with(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
    assert got[2:] == (None, b"until the end")


async def test_an_answer_broken_before_its_end_is_an_error() -> None:
    with pytest.raises(lenient.LenientError):
        await answer_with(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
    with pytest.raises(lenient.LenientError):
        await answer_with(b"HTTX/1.1 200 OK\r\n\r\n")


async def test_a_header_that_would_split_the_request_is_refused() -> None:
    with pytest.raises(lenient.LenientError):
        await lenient.get(
            "http://127.0.0.1:9/", {"X": "a\r\nB: c"}, user_agent="e",
            connect_timeout=1, read_timeout=1,
        )  # fmt: skip


async def test_a_head_without_end_is_refused() -> None:
    with pytest.raises(lenient.LenientError, match="head over"):
        await answer_with(b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"x" * 200_000)
