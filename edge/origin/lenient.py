"""One GET on a connection of its own, read leniently: the fallback for an
answer aiohttp's parser refused.

aiohttp's C parser (llhttp) parses all that one socket read delivered. When an
origin sends more body than its ``Content-Length`` says, the bytes after the
message are parsed as the next response ("Bad status line"), and the whole
read fails: the complete answer before them is lost with it. nginx takes the
``Content-Length`` bytes and drops the connection; so does ``get``, for the
one request that failed so:

- it sends the GET again on a new connection with ``Connection: close``;
- llhttp (through httptools' public parser) frames the answer as its
  headers say (``Content-Length``, chunked, or up to the connection's end);
- whatever follows the end of that message is ignored, and the connection
  is closed, never reused;
- a head over ``MAX_HEAD`` bytes, or an answer broken before its end, is
  still an error (``LenientError``, an ``aiohttp.ClientError``, so callers
  handle it as any failed GET).

Only that retry uses it: every other request keeps aiohttp's client and its
connection pool. The answer offers what the HTTP origin reads of an
``aiohttp.ClientResponse``: ``status``, ``headers``, ``content_length``,
``content.iter_chunks()``, ``content.iter_any()`` and ``release()``.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator, Mapping
from urllib.parse import unquote, urlsplit

import aiohttp
import httptools
from multidict import CIMultiDict, CIMultiDictProxy

READ_SIZE = 256 * 1024
MAX_HEAD = 64 * 1024  # an answer's status line and headers, at most (aiohttp: 128 x 8 KiB)


class LenientError(aiohttp.ClientError):
    """The answer could not be read even leniently (broken before its end)."""


class _Complete(Exception):
    """Raised by the last callback of a message: llhttp parses nothing after it."""


class _Message:
    """httptools' callbacks: one response's head and body, nothing after it."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.head_done = False
        self.done = False
        self.body: list[bytes] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:
            self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        if not self.done:
            self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True
        raise _Complete


class LenientAnswer:
    """A response read by ``get``; its body is read as it is asked for."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        message: _Message,
        read_timeout: float | None,
    ) -> None:
        self._reader, self._writer = reader, writer
        self._message = message
        self._read_timeout = read_timeout
        self.status: int = message.status
        self.headers = CIMultiDictProxy(CIMultiDict(message.headers))
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        length = self.headers.get("Content-Length")
        self.content_length = int(length) if length and length.isdigit() and not chunked else None
        # no length and not chunked: the body runs to the connection's end
        self._until_close = self.content_length is None and not chunked
        self.content = self

    async def _feed(self) -> bool:
        """One more socket read into the parser; False at the connection's end."""
        async with asyncio.timeout(self._read_timeout):
            data = await self._reader.read(READ_SIZE)
        if not data:
            return False
        _feed(self._message, data)
        return True

    async def iter_any(self) -> AsyncIterator[bytes]:
        message = self._message
        while True:
            while message.body:
                yield message.body.pop(0)
            if message.done:
                return
            if not await self._feed():
                if self._until_close:
                    message.done = True
                    continue
                raise LenientError("the connection closed before the answer's end")

    async def iter_chunks(self) -> AsyncIterator[tuple[bytes, bool]]:
        async for chunk in self.iter_any():
            yield chunk, True

    def release(self) -> None:
        self._writer.close()  # never reused: bytes may follow the message


def _feed(message: _Message, data: bytes) -> None:
    if message.done:
        return
    try:
        message.parser.feed_data(data)
    except httptools.HttpParserError as exc:
        if not message.done:  # broken before its end; after it, the rest is ignored
            raise LenientError(f"an answer that cannot be parsed: {exc}") from None


def _request(url: str, headers: Mapping[str, str], user_agent: str) -> bytes:
    parts = urlsplit(url)
    fields = CIMultiDict({"User-Agent": user_agent, "Accept-Encoding": "identity"})
    fields.update(headers)
    fields["Host"] = parts.netloc.rpartition("@")[2]
    fields["Connection"] = "close"
    if parts.username is not None:
        cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        fields["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1"]
    for name, value in fields.items():
        if any(c in name + value for c in "\r\n\0"):
            raise LenientError(f"a request header that cannot be sent: {name!r}")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def get(
    url: str,
    headers: Mapping[str, str],
    *,
    user_agent: str,
    connect_timeout: float | None,
    read_timeout: float | None,
    ssl_context: ssl.SSLContext | None = None,
) -> LenientAnswer:
    """GET ``url`` on a new connection; the answer once its head is read."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    tls = (ssl_context or ssl.create_default_context()) if https else None
    port = parts.port or (443 if https else 80)
    request = _request(url, headers, user_agent)
    try:
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_connection(
                parts.hostname, port, ssl=tls, server_hostname=parts.hostname if tls else None
            )
    except OSError as exc:
        raise aiohttp.ClientOSError(exc.errno, f"cannot connect: {exc}") from None
    message = _Message()
    answer: LenientAnswer | None = None
    try:
        writer.write(request)
        got = 0
        while not message.head_done:
            if got > MAX_HEAD:
                raise LenientError(f"an answer's head over {MAX_HEAD} bytes")
            async with asyncio.timeout(read_timeout):
                data = await reader.read(READ_SIZE)
            if not data:
                raise LenientError("the connection closed before the answer's head")
            got += len(data)
            _feed(message, data)
        answer = LenientAnswer(reader, writer, message, read_timeout)
        return answer
    except OSError as exc:
        raise aiohttp.ClientOSError(exc.errno, f"the connection failed: {exc}") from None
    finally:
        if answer is None:
            writer.close()
