"""The content port's HTTP/1.1 connection: raw sockets, llhttp, sendfile.

Rules it keeps:
- requests are parsed by llhttp (``httptools``); responses leave in request
  order, so pipelining is safe; a request is handled only when the one before
  it has been answered (its head and body are queued);
- a response is a head (bytes) and body parts: bytes, or ``FileSpan``s that go
  out with ``os.sendfile`` (zero copy) through the connection's ``Outbox``
  (edge.http.outbox, which says what can block: the disk, never the socket);
  a streamed response (a miss) yields parts from an async iterator, throttled
  by the socket's drain;
- a response is logged when its last byte is handed to the kernel, or when the
  connection dies before that, with the body bytes that really left;
- limits: headers 16 KiB (431); a request's headers complete within the
  server's ``header_timeout`` (the setting, 15 s) of its first byte,
  else 408 and close (a connection with something queued or in progress is
  closed without one); a new connection's first byte within ``header_timeout``
  too (of the accept, or of the TLS handshake's end), else it is closed; idle
  keep-alive between requests ``keepalive_timeout`` s; no progress sending
  for ``SEND_TIMEOUT`` s. A once-a-second sweep (edge.http.server) applies
  them, so each is late by up to a second;
- the connection is in one read state and one write state, and moves only
  along ``READ_MOVES`` and ``WRITE_MOVES`` (staying put is always allowed; any
  other move raises ``StateError``). The reader callback is registered exactly
  in the read states of ``READER_ON``, the writer exactly in ``BLOCKED``.

Read states:
- ``HANDSHAKE``: a TLS connection's handshake, within the server's
  ``handshake_timeout`` (``tls_handshake_timeout``, 10 s);
  what is not a TLS hello ends it at once (edge.http.tls, docs/tls.md);
- ``READING``: bytes go to the parser;
- ``PAUSED``: not reading, too much is queued; reading resumes when it drains;
- ``LAST``: the last response is chosen (``Connection: close``, a stop); what
  arrives is dropped, and the peer's end of input is still noticed;
- ``EOF``: read no more: the peer closed its side, or sent what we cannot
  parse or an upgrade; the connection closes once its answers are out;
- ``LINGER``: our last byte is out and our side shut; what the peer still
  sends is dropped until it closes or ``LINGER_SECONDS`` pass;
- ``CLOSED``.

Write states: ``OPEN`` (sending straight away), ``BLOCKED`` (the socket is
full: the writer callback is armed), ``DISK`` (the file span next in line is
not in the page cache: a thread reads it in, and sending resumes when it is
done; the event loop never waits for the disk), ``SHUT`` (our side shut after
the last byte), ``CLOSED``.

Over TLS the socket is a non-blocking ``ssl.SSLSocket``; how parts go
through it, with kernel TLS or without, is the outbox's business.

The socket is ours, not an asyncio transport's: uvloop has no ``loop.sendfile``
and a transport would not let a response mix its buffer with sendfile safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import secrets
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable
from typing import Any, TypeVar

import httptools

from edge.core.host import host_problem
from edge.core.keys import loggable
from edge.http.outbox import (
    TLS_CHUNK,
    WOULD_BLOCK,
    ColdFile,
    DiskError,
    Done,
    Outbox,
    PeerGone,
    warm_span,
)
from edge.http.tls import ktls_sending, tls_io
from edge.http.wire import FileSpan, Host, Request, Response

_BODILESS = frozenset(("GET", "HEAD", "OPTIONS"))  # their bodies mean nothing here


class Read(enum.Enum):
    HANDSHAKE = "handshake"
    READING = "reading"
    PAUSED = "paused"
    LAST = "last"
    EOF = "eof"
    LINGER = "linger"
    CLOSED = "closed"


class Write(enum.Enum):
    OPEN = "open"
    BLOCKED = "blocked"
    DISK = "disk"
    SHUT = "shut"
    CLOSED = "closed"


READ_MOVES: dict[Read, frozenset[Read]] = {
    Read.HANDSHAKE: frozenset({Read.READING, Read.CLOSED}),
    Read.READING: frozenset({Read.PAUSED, Read.LAST, Read.EOF, Read.CLOSED}),
    Read.PAUSED: frozenset({Read.READING, Read.LAST, Read.EOF, Read.CLOSED}),
    Read.LAST: frozenset({Read.EOF, Read.LINGER, Read.CLOSED}),
    Read.EOF: frozenset({Read.CLOSED}),
    Read.LINGER: frozenset({Read.CLOSED}),
    Read.CLOSED: frozenset(),
}
WRITE_MOVES: dict[Write, frozenset[Write]] = {
    Write.OPEN: frozenset({Write.BLOCKED, Write.DISK, Write.SHUT, Write.CLOSED}),
    Write.BLOCKED: frozenset({Write.OPEN, Write.DISK, Write.CLOSED}),
    Write.DISK: frozenset({Write.OPEN, Write.CLOSED}),
    Write.SHUT: frozenset({Write.CLOSED}),
    Write.CLOSED: frozenset(),
}
READER_ON = frozenset({Read.HANDSHAKE, Read.READING, Read.LAST, Read.LINGER})
# the states the per-request code compares with, as globals: reading an
# Enum member through its class costs ~70 ns a time, a global ~8
_HANDSHAKE, _READING, _PAUSED, _LAST = Read.HANDSHAKE, Read.READING, Read.PAUSED, Read.LAST
_EOF, _LINGER, _CLOSED = Read.EOF, Read.LINGER, Read.CLOSED
_OPEN, _BLOCKED, _SHUT, _WCLOSED = Write.OPEN, Write.BLOCKED, Write.SHUT, Write.CLOSED
_DISK = Write.DISK
ANSWERING = frozenset({Read.READING, Read.PAUSED})  # new requests are still taken


class StateError(RuntimeError):
    """A move the state tables do not allow."""


S = TypeVar("S", Read, Write)


def move(table: dict[S, frozenset[S]], now: S, new: S) -> S:
    """``new`` if the table allows going there from ``now`` (or it is ``now``)."""
    if new is not now and new not in table[now]:
        raise StateError(f"{type(now).__name__} state cannot go from {now.name} to {new.name}")
    return new


log = logging.getLogger("edgefleet.http")

MAX_HEADER_BYTES = 16 * 1024
HEADER_TIMEOUT = 15.0  # the default of the server's header_timeout
SEND_TIMEOUT = 60.0
MAX_PIPELINED = 32  # parsed requests waiting: stop reading past this
MAX_QUEUED = 64  # parts queued for the socket: stop answering past this
LINGER_SECONDS = 2.0  # after our last byte, read and drop what the client still sends
STREAM_HIGH_WATER = 1 << 20
# bytes asked for per read: a TLS read returns one record, at most 16 KiB; a
# larger buffer is allocated and shrunk each time, and malloc consolidates its
# free lists when 64 KiB come back (measured: ~0.3 us a request)
READ_SIZE = 16 * 1024 + 256
SEND_NOW_MAX = 16 * 1024  # a body joined to its head for one send (else sendmsg, or gathered)


def _internal_error(handler: Any, req: Request) -> Response:
    """A 500 for a handler's exception: a request id for the client, the
    traceback with the same id for the log."""
    rid = secrets.token_hex(6)
    log.exception("request %s: handler failed on %s", rid, loggable(req.target))
    return handler.error(req, 500, f"internal error (request {rid})")


class _Fail:
    """In the request queue: a request that could not be parsed, answered in turn."""

    __slots__ = ("message", "status")

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


class Connection:
    def __init__(self, server: Host, sock: socket.socket, client: str, tls: bool = False) -> None:
        self.server = server
        self.loop = server.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.client = client
        self.parser = httptools.HttpRequestParser(self)
        self.outbox = Outbox(sock, self._log_done, tls)
        self.out = self.outbox.parts  # what is queued for the socket
        self.pending: deque[Request] = deque()
        self.read = Read.HANDSHAKE if tls else Read.READING
        self.write = Write.OPEN
        self.tls = tls
        self.tls_version: str | None = None
        self.sni: str | None = None
        self.linger_handle: asyncio.TimerHandle | None = None
        self.response_start = 0
        self.last_active = self.loop.time()  # last byte in or out
        self.last_progress = self.last_active  # last byte out, or last response queued
        self.header_started: float | None = None
        self.header_bytes = 0
        self.raw_header_bytes = 0
        self.task: asyncio.Task[None] | None = None  # the handler answering, when it awaits
        self.drain_waiter: asyncio.Future[None] | None = None
        self._req: Request | None = None
        self.body_over = False  # the request's body is larger than the handler takes
        self.good_host: bytes | None = None  # the last Host value host_problem let through
        self._url = b""  # the target, as it came in
        # how input is read: the socket's recv, or once handshaken its OpenSSL
        # object's read and pending (edge.http.tls.tls_io)
        self._read_raw: Any = sock.recv
        self._tls_pending: Any = None
        self.loop.add_reader(self.fd, self._on_read)

    @property
    def closed(self) -> bool:
        return self.read is Read.CLOSED

    @property
    def busy(self) -> bool:
        return self.task is not None

    # -- states ----------------------------------------------------------------

    def _to_read(self, new: Read) -> None:
        old = self.read
        if new is old:
            return
        self.read = move(READ_MOVES, old, new)
        if new in READER_ON:
            if old not in READER_ON:
                self.loop.add_reader(self.fd, self._on_read)
        elif old in READER_ON:
            self.loop.remove_reader(self.fd)
        if self.tls and new is Read.READING and old is Read.PAUSED:
            self.loop.call_soon(self._on_read)  # input OpenSSL decrypted but we did not take

    def _on_writable(self) -> None:
        if self.read is Read.HANDSHAKE:
            self._handshake()
        else:
            self._flush()

    def _handshake(self) -> None:
        try:
            self.sock.do_handshake()  # type: ignore[attr-defined]
        except ssl.SSLWantReadError:
            self._to_write(Write.OPEN)
            return
        except ssl.SSLWantWriteError:
            self._to_write(Write.BLOCKED)
            return
        except (OSError, ValueError) as exc:  # not TLS, a bad hello, a reset
            log.debug("TLS handshake with %s failed: %s", self.client, exc)
            self.close()
            return
        self._to_write(Write.OPEN)
        self.last_active = self.loop.time()  # the first request's wait starts now
        self._read_raw, write, self._tls_pending = tls_io(self.sock)
        self.outbox.use_tls_write(write)
        self.tls_version = self.sock.version()  # type: ignore[attr-defined]
        self.sni = getattr(self.sock, "sni_name", None)
        if ktls_sending(self.sock):
            self.outbox.userland = False  # hits keep sendfile: the kernel encrypts
            self.server.ktls_seen = True
        self._to_read(Read.READING)
        self._on_read()  # the first request may have come with the handshake's last flight

    def _to_write(self, new: Write) -> None:
        old = self.write
        if new is old:
            return
        self.write = move(WRITE_MOVES, old, new)
        if new is Write.BLOCKED:
            self.loop.add_writer(self.fd, self._on_writable)
        elif old is Write.BLOCKED:
            self.loop.remove_writer(self.fd)

    def answer_last(self) -> None:
        """Take no more requests: answer the ones taken, then close."""
        if self.read in ANSWERING:
            self._to_read(Read.LAST)

    # -- parser callbacks ----------------------------------------------------

    # llhttp calls on_url first for every request (its first bytes are the
    # method, then the target): a request begins there, which spares every
    # request an on_message_begin call

    def on_url(self, url: bytes) -> None:
        if self._req is None:  # a new request
            req = self._req = Request(self.client, time.perf_counter())
            if self.tls:
                req.tls, req.sni = self.tls_version, self.sni
            self._url = url
            self.header_started = self.last_active  # set as the bytes came in
            self.header_bytes = len(url)
            self.raw_header_bytes = 0
            return
        self._url += url  # the target came in more than one read
        self.header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        headers = self._req.headers  # type: ignore[union-attr]
        k = name.lower()
        old = headers.get(k)
        headers[k] = value if old is None else old + b", " + value

    def on_headers_complete(self) -> None:
        if self.header_bytes > MAX_HEADER_BYTES:
            return
        self.header_bytes = 0
        req = self._req
        if req is None:
            return
        p = self.parser
        req.method = p.get_method().decode("latin-1")
        req.version = p.get_http_version()
        # keepalive_timeout 0: no keep-alive at all (as nginx has it)
        req.keep_alive = p.should_keep_alive() and self.server.keepalive_timeout > 0
        req.target = self._url
        self.header_started = None

    def on_body(self, body: bytes) -> None:
        req = self._req
        limit = getattr(self.server.handler, "max_request_body", None)
        if req is None or self.body_over or limit is None or req.method in _BODILESS:
            return  # a handler that takes no bodies, or a GET's: read and dropped
        if len(req.body) + len(body) > limit:
            self.body_over = True
            req.body = b""
            return
        req.body += body

    def on_message_complete(self) -> None:
        if self.body_over:
            self.body_over = False
            self._req = None
            self._to_read(Read.EOF)  # read no more: answer what came before, then close
            self.pending.append(_Fail(413, "request body too large"))  # type: ignore[arg-type]
            return
        req, self._req = self._req, None  # the next on_url begins the next one
        if req is not None and self.header_bytes <= MAX_HEADER_BYTES:
            # RFC 9112 §3.2: no Host in HTTP/1.1, or two, is a 400 (edge.core.host)
            host = req.headers.get(b"host")
            if host is not None and host == self.good_host:
                bad = None  # as host_problem found it for the request before
            else:
                bad = host_problem(req.version, host)
                if bad is None and host is not None:
                    self.good_host = host
            self.pending.append(req if bad is None else _Fail(400, bad))  # type: ignore[arg-type]

    # -- reading -------------------------------------------------------------

    def _on_read(self) -> None:
        if self.read is _HANDSHAKE:
            self._handshake()
            return
        try:  # _recv, written out: this is every request's way in
            data = self._read_raw(READ_SIZE)
        except WOULD_BLOCK:
            return
        except ssl.SSLEOFError:
            data = b""
        except OSError:
            self.close()
            return
        self._received(data)
        # OpenSSL may hold decrypted input the socket will not signal again
        while self.tls and self.read is _READING and self._tls_pending():
            if not self._recv():
                return

    def _recv(self) -> bool:
        """Read once and take what came; ``False`` when nothing more is to be read now."""
        try:
            data = self._read_raw(READ_SIZE)
        except WOULD_BLOCK:
            return False
        except ssl.SSLEOFError:
            data = b""  # an end without close_notify: an end, as SSLSocket.recv has it
        except OSError:
            self.close()
            return False
        self._received(data)
        return True

    def _received(self, data: bytes) -> None:
        if self.read is _LINGER:
            if not data:
                self.close()
            return  # what a client sends after our last byte is dropped
        if not data:
            self._to_read(_EOF)  # answer what was asked, then close
            if self.idle():
                self.close()
            return
        self.last_active = self.loop.time()
        if self.read is not _READING:
            return  # LAST: the last response is chosen; the rest is dropped
        if self.header_started is not None:
            # still in one request's headers: a guard against an endless header line
            self.raw_header_bytes += len(data)
            if self.raw_header_bytes > 4 * MAX_HEADER_BYTES:
                self._fail(431, "request headers too large")
                return
        elif self._req is None:
            # between requests: the next one's headers are due within header_timeout
            # from now, even if these bytes end before its target (on_url)
            self.header_started = self.last_active
            self.raw_header_bytes = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # RFC 9110 §7.8: an Upgrade we do not do is ignored; the request is
            # answered as it is, and nothing after it is read (the parser stops).
            self._to_read(_EOF)
            if self.pending:
                if type(self.pending[-1]) is not _Fail:  # a refused one closes anyway
                    self.pending[-1].keep_alive = False
            else:
                self.pending.append(_Fail(400, "protocol upgrades are not supported"))  # type: ignore[arg-type]
            self._process()
            return
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed request: {exc}")
            return
        if self.header_bytes > MAX_HEADER_BYTES:
            self._fail(431, "request headers too large")
            return
        self._process()

    def _fail(self, status: int, message: str) -> None:
        """Answer a request we cannot parse after the good ones before it, then close."""
        self._to_read(Read.EOF)  # read no more
        self.pending.append(_Fail(status, message))  # type: ignore[arg-type]
        self._process()

    # -- handling ------------------------------------------------------------

    def _process(self) -> None:
        handler = self.server.handler
        while self.pending and self.task is None and self.read is not _CLOSED:
            if len(self.out) > MAX_QUEUED:
                break  # a client that asks faster than it reads waits for the socket
            req = self.pending.popleft()
            if type(req) is _Fail:
                failed = Request(self.client, time.perf_counter())
                failed.method, failed.keep_alive = "-", False
                self._emit(failed, handler.error(None, req.status, req.message))
                self._answer_none_after()
                break
            if self.server.stopping:
                req.keep_alive = False
            try:
                result = handler.handle(req)
            except Exception:
                result = _internal_error(handler, req)
            if type(result) is Response:
                if (
                    self.out
                    or self.pending
                    or result.stream is not None
                    or not self._send_now(req, result)
                ):
                    self._emit(req, result)
            elif isinstance(result, Response):
                self._emit(req, result)
            else:
                self.task = self.loop.create_task(self._run(req, result))
                break
            if not req.keep_alive or result.close:
                self._answer_none_after()
                break
        if len(self.pending) > MAX_PIPELINED or len(self.out) > MAX_QUEUED:
            if self.read is _READING:
                self._to_read(_PAUSED)
        elif not self.pending and self.read is _PAUSED:
            self._to_read(_READING)
        if self.out or self.read is not _READING or self.write is not _OPEN:
            self._flush()
        # else all is out and more may come: nothing for _flush to do

    def _send_now(self, req: Request, resp: Response) -> bool:
        """Nothing is queued or waiting: send a response whose body is in
        memory at once, head and body in one buffer, and log it when all of it
        left; False (nothing done) for any other, which goes the general way.
        What is left after a partial send is queued as ``_emit`` queues it."""
        body = resp.body
        if req.method == "HEAD" or not body:
            data = resp.head
        elif resp.wire is not None:
            data = resp.wire
        elif len(body) == 1 and type(body[0]) is bytes and len(body[0]) <= SEND_NOW_MAX:
            data = resp.head + body[0]
        elif (
            len(body) == 1
            and type(body[0]) is FileSpan
            and self.outbox.userland
            and 0 < body[0].count <= TLS_CHUNK - len(resp.head)
        ):
            return self._send_span_now(req, resp, body[0])
        else:
            return False
        outbox = self.outbox
        start = self.response_start = outbox.sent
        self.last_active = self.last_progress = self.loop.time()
        try:
            if outbox.send_whole(data):
                self.server.handler.finished(
                    req, resp, len(data) - len(resp.head), time.perf_counter()
                )
                return True
            self.out.append(Done(req, resp, start))  # what is left goes with flush
        except PeerGone:
            self.out.append(Done(req, resp, start))
            self.close()  # which logs it, with the bytes that left
        return True

    def _send_span_now(self, req: Request, resp: Response, span: FileSpan) -> bool:
        """``_send_now`` for a head and a file span over userland TLS: the
        file read in after the head, one TLS send (``Outbox.send_with_span``)."""
        outbox = self.outbox
        start = self.response_start = outbox.sent
        self.last_active = self.last_progress = self.loop.time()
        try:
            if outbox.send_with_span(resp.head, span):
                body = outbox.sent - start - len(resp.head)
                self.server.handler.finished(req, resp, body, time.perf_counter())
                return True
            self.out.append(Done(req, resp, start))  # what is left goes with flush
        except PeerGone:
            self.out.append(Done(req, resp, start))
            self.close()  # which logs it, with the bytes that left
        except DiskError as exc:
            self.out.append(Done(req, resp, start))
            self._disk_error(exc.span, exc.error)
        return True

    def _answer_none_after(self) -> None:
        self.answer_last()
        self.pending.clear()

    async def _run(self, req: Request, pending: Awaitable[Response]) -> None:
        try:
            resp = await self._response(req, pending)
            if self.closed:
                return
            self._emit(req, resp, done=resp.stream is None)
            self._flush()
            if resp.stream is not None and not await self._stream(req, resp):
                return
            if not req.keep_alive or resp.close:
                self._answer_none_after()
        finally:
            self.task = None
        if not self.closed:
            self._process()

    async def _response(self, req: Request, pending: Awaitable[Response]) -> Response:
        try:
            return await pending
        except asyncio.CancelledError:
            raise
        except Exception:
            return _internal_error(self.server.handler, req)

    async def _stream(self, req: Request, resp: Response) -> bool:
        """Queue a streamed body as it comes, held back by the socket's drain;
        False if the connection ended first."""
        assert resp.stream is not None
        try:
            async for part in resp.stream:
                if self.closed:
                    return False
                self.out.append(part)
                self._flush()
                if self.outbox.backlog() > STREAM_HIGH_WATER:
                    await self._drained()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("response to %s aborted: %s", loggable(req.target), exc)
            self.close()
            return False
        finally:
            with contextlib.suppress(Exception):
                await resp.stream.aclose()  # type: ignore[attr-defined]
        self.out.append(Done(req, resp, self.response_start))
        self._flush()
        return True

    def _emit(self, req: Request, resp: Response, done: bool = True) -> None:
        self.response_start = self.outbox.sent + (self.outbox.backlog() if self.out else 0)
        self.out.append(resp.head)
        if req.method != "HEAD":
            self.out.extend(resp.body)
        if done:
            self.out.append(Done(req, resp, self.response_start))
        self.last_active = self.last_progress = self.loop.time()

    def _drained(self) -> asyncio.Future[None]:
        fut = self.loop.create_future()
        if not self.out:
            fut.set_result(None)
        else:
            self.drain_waiter = fut
        return fut

    # -- writing -------------------------------------------------------------

    def _flush(self) -> None:
        """Send what is queued: until all is out, or the socket is full (the
        writer is armed), or a file must come from the disk first (a thread
        reads it), or the connection ended."""
        if self.write is _DISK:
            return  # sending resumes once the thread has read the file in
        outbox = self.outbox
        before = outbox.sent
        try:
            all_out = outbox.flush()
        except PeerGone:
            self.close()
            return
        except DiskError as exc:
            self._disk_error(exc.span, exc.error)
            return
        except ColdFile as exc:
            self._warm(exc.span)
            return
        finally:
            if outbox.sent != before:
                self.last_active = self.last_progress = self.loop.time()
        if not all_out:
            self._to_write(_BLOCKED)
            return
        self._all_sent()

    def _log_done(self, done: Done) -> None:
        self.server.handler.finished(
            done.req, done.resp, done.body_bytes(self.outbox.sent), time.perf_counter()
        )

    def _all_sent(self) -> None:
        """Everything queued is out: wake a stream waiting to drain, take held
        requests, or close after the last response."""
        if self.write is _BLOCKED:
            self._to_write(_OPEN)
        if self.drain_waiter is not None:
            waiter, self.drain_waiter = self.drain_waiter, None
            if not waiter.done():
                waiter.set_result(None)
        if self.task is not None:
            return
        if self.pending:
            self._process()  # requests held back while the socket was full
        elif self.read is _LAST or self.read is _EOF:
            self._linger()

    def _linger(self) -> None:
        """Close after our last byte without a reset: half-close, then drop what
        the client still sends for a while (a close with unread input would make
        the kernel reset the connection and discard what it has not sent yet)."""
        if self.read is Read.EOF:
            self.close()
            return
        if self.read is not Read.LAST:
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self._to_write(Write.SHUT)
        self._to_read(Read.LINGER)
        self.linger_handle = self.loop.call_later(LINGER_SECONDS, self.close)

    def _warm(self, span: FileSpan) -> None:
        """Have a thread read ``span`` into the page cache (a descriptor of its
        own: the span's may close with the connection meanwhile), then send."""
        try:
            fd = os.dup(span.fd)
        except OSError:
            span.warm = True  # the send that follows meets and reports it
            self.loop.call_soon(self._flush)
            return
        self._to_write(_DISK)
        if self.server.on_disk_wait is not None:
            self.server.on_disk_wait()
        job = self.loop.run_in_executor(None, warm_span, fd, span.offset, span.count)
        job.add_done_callback(lambda _job: self._warmed(span))

    def _warmed(self, span: FileSpan) -> None:
        if self.write is not _DISK:
            return  # closed meanwhile
        span.warm = True
        self._to_write(_OPEN)
        self.last_progress = self.loop.time()
        self._flush()

    def _disk_error(self, span: FileSpan, exc: OSError) -> None:
        log.error("cannot send %s: %s", span.path, exc)
        if span.on_error is not None:
            span.on_error(exc)
        self.close()

    # -- lifecycle -----------------------------------------------------------

    def idle(self) -> bool:
        return self.task is None and not self.out and not self.pending

    def expired(self, now: float, keepalive_timeout: float) -> bool:
        """Too slow with the handshake or the headers, idle too long, or a client not reading."""
        if self.read is Read.HANDSHAKE:
            return now - self.last_active > self.server.handshake_timeout
        header_timeout = self.server.header_timeout
        if self.header_started is not None and now - self.header_started > header_timeout:
            return True
        if self.out:
            return now - self.last_progress > SEND_TIMEOUT
        if self.idle() and self.read is not Read.LINGER:
            # before its first request (nothing sent yet) a connection waits for
            # that request's headers, as nginx's client_header_timeout has it;
            # between requests it is idle
            limit = keepalive_timeout if self.outbox.sent else header_timeout
            return now - self.last_active > limit
        return False

    def time_out(self) -> None:
        """``expired``: a request whose headers are late is answered 408 and the
        connection closed after it (RFC 9110 §15.5.9), when nothing else is
        queued or in progress; any other expiry closes it at once."""
        if self.header_started is not None and self.read is _READING and self.idle():
            self.header_started = None  # answered: the sweep does not come back to it
            self.pending.append(_Fail(408, "request headers took too long"))  # type: ignore[arg-type]
            self._process()  # answered, then the connection lingers and closes
            return
        self.close()

    def close(self) -> None:
        if self.read is Read.CLOSED:
            return
        self._to_read(Read.CLOSED)
        self._to_write(Write.CLOSED)
        if self.linger_handle is not None:
            self.linger_handle.cancel()
        now, sent = time.perf_counter(), self.outbox.sent
        for done in self.outbox.close():
            self.server.handler.finished(done.req, done.resp, done.body_bytes(sent), now)
        self.pending.clear()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.cancel()
        with contextlib.suppress(OSError):
            self.sock.close()
        self.server.forget(self)
