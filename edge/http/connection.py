"""The content port's HTTP/1.1 connection: raw sockets, llhttp, sendfile.

Rules it keeps:
- requests are parsed by llhttp (``httptools``); responses leave in request
  order, so pipelining is safe; a request is handled only when the one before
  it has been answered (its head and body are queued);
- a response is a head (bytes) and body parts: bytes, or ``FileSpan``s that go
  out with ``os.sendfile`` (zero copy); a streamed response (a miss) yields
  parts from an async iterator, throttled by the socket's drain;
- nothing blocks: a send or sendfile that would block arms a writer callback;
- a response is logged when its last byte is handed to the kernel, or when the
  connection dies before that, with the body bytes that really left;
- limits: headers 16 KiB (431), headers within ``HEADER_TIMEOUT`` s, idle
  keep-alive ``keepalive_timeout`` s, no progress sending for ``SEND_TIMEOUT`` s.

The socket is ours, not an asyncio transport's: uvloop has no ``loop.sendfile``
and a transport would not let a response mix its buffer with sendfile safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable
from typing import Any

import httptools

from edge.http.wire import FileSpan, Host, Request, Response

log = logging.getLogger("edgefleet.http")

MAX_HEADER_BYTES = 16 * 1024
HEADER_TIMEOUT = 15.0
SEND_TIMEOUT = 60.0
MAX_PIPELINED = 32  # parsed requests waiting: stop reading past this
MAX_QUEUED = 64  # parts queued for the socket: stop answering past this
LINGER_SECONDS = 2.0  # after our last byte, read and drop what the client still sends
STREAM_HIGH_WATER = 1 << 20
# The head is corked (MSG_MORE) onto a large file body, so the client gets
# full segments; measured on loopback, corking it onto a 64 KiB body cost the
# server 6 us a request, and onto a 2 MiB body saved the client a wake-up.
_MSG_MORE = getattr(socket, "MSG_MORE", 0)
CORK_ABOVE = 512 * 1024


class _Fail:
    """In the request queue: a request that could not be parsed, answered in turn."""

    __slots__ = ("message", "status")

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


class _Done:
    """Queued after a response's last part: time to log it."""

    __slots__ = ("req", "resp", "sent_before")

    def __init__(self, req: Request, resp: Response, sent_before: int) -> None:
        self.req = req
        self.resp = resp
        self.sent_before = sent_before  # connection's byte count before the head

    def body_bytes(self, sent_now: int) -> int:
        return max(0, sent_now - self.sent_before - len(self.resp.head))


class Connection:
    def __init__(self, server: Host, sock: socket.socket, client: str) -> None:
        self.server = server
        self.loop = server.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.client = client
        self.parser = httptools.HttpRequestParser(self)
        self.out: deque[Any] = deque()
        self.pending: deque[Request] = deque()
        self.busy = False
        self.closing = False
        self.closed = False
        self.writer_armed = False
        self.reading = True
        self.read_eof = False
        self.lingering = False
        self.linger_handle: asyncio.TimerHandle | None = None
        self.response_start = 0
        self.sent = 0  # bytes (heads and bodies) handed to the kernel on this connection
        self.last_active = self.loop.time()  # last byte in or out
        self.last_progress = self.last_active  # last byte out, or last response queued
        self.header_started: float | None = None
        self.header_bytes = 0
        self.raw_header_bytes = 0
        self.task: asyncio.Task[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self._req: Request | None = None
        self.body_over = False  # the request's body is larger than the handler takes
        self._url: list[bytes] = []
        self.loop.add_reader(self.fd, self._on_read)

    # -- parser callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        self._req = Request(self.client, time.perf_counter())
        self._url = []
        self.header_started = self.loop.time()
        self.header_bytes = 0
        self.raw_header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
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
        req.keep_alive = p.should_keep_alive()
        req.target = b"".join(self._url)
        self.header_started = None

    def on_body(self, body: bytes) -> None:
        req = self._req
        limit = getattr(self.server.handler, "max_request_body", None)
        if req is None or self.body_over or limit is None:
            return  # a handler that takes no bodies: they are read and dropped
        if len(req.body) + len(body) > limit:
            self.body_over = True
            req.body = b""
            return
        req.body += body

    def on_message_complete(self) -> None:
        if self.body_over:
            self.body_over = False
            self._req = None
            self._stop_reading()
            self.read_eof = True  # the rest of the stream cannot be trusted to frame
            self.pending.append(_Fail(413, "request body too large"))  # type: ignore[arg-type]
            return
        if self._req is not None and self.header_bytes <= MAX_HEADER_BYTES:
            self.pending.append(self._req)
            self._req = None

    # -- reading -------------------------------------------------------------

    def _on_read(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if self.lingering:
            if not data:
                self.close()
            return  # what a client sends after our last byte is dropped
        if not data:
            self.read_eof = True
            self._stop_reading()
            self.closing = True  # answer what was asked, then close
            if self.idle():
                self.close()
            return
        self.last_active = self.loop.time()
        if self.closing:
            return
        if self.header_started is not None:
            # still in one request's headers: a guard against an endless header line
            self.raw_header_bytes += len(data)
            if self.raw_header_bytes > 4 * MAX_HEADER_BYTES:
                self._fail(431, "request headers too large")
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # RFC 9110 §7.8: an Upgrade we do not do is ignored; the request is
            # answered as it is, and nothing after it is read (the parser stops).
            self._stop_reading()
            self.read_eof = True
            if self.pending:
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

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.fd)

    def _resume_reading(self) -> None:
        if not self.reading and not self.read_eof and not self.closed and not self.closing:
            self.reading = True
            self.loop.add_reader(self.fd, self._on_read)

    def _fail(self, status: int, message: str) -> None:
        """Answer a request we cannot parse after the good ones before it, then close."""
        self._stop_reading()
        self.read_eof = True  # read no more
        self.pending.append(_Fail(status, message))  # type: ignore[arg-type]
        self._process()

    # -- handling ------------------------------------------------------------

    def _process(self) -> None:
        handler = self.server.handler
        while self.pending and not self.busy and not self.closed:
            if len(self.out) > MAX_QUEUED:
                break  # a client that asks faster than it reads waits for the socket
            req = self.pending.popleft()
            if type(req) is _Fail:
                failed = Request(self.client, time.perf_counter())
                failed.method, failed.keep_alive = "-", False
                self._emit(failed, handler.error(None, req.status, req.message))
                self.closing = True
                self.pending.clear()
                break
            if self.server.stopping:
                req.keep_alive = False
            try:
                result = handler.handle(req)
            except Exception:
                log.exception("handler failed")
                result = handler.error(req, 500, "internal error")
            if isinstance(result, Response):
                self._emit(req, result)
            else:
                self.busy = True
                self.task = self.loop.create_task(self._run(req, result))
                break
            if not req.keep_alive or result.close:
                self.closing = True
                self.pending.clear()
                break
        if len(self.pending) > MAX_PIPELINED or len(self.out) > MAX_QUEUED:
            self._stop_reading()
        elif not self.pending:
            self._resume_reading()
        self._flush()

    async def _run(self, req: Request, pending: Awaitable[Response]) -> None:
        handler = self.server.handler
        try:
            try:
                resp = await pending
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("handler failed")
                resp = handler.error(req, 500, "internal error")
            if self.closed:
                return
            self._emit(req, resp, done=resp.stream is None)
            self._flush()
            if resp.stream is not None:
                try:
                    async for part in resp.stream:
                        if self.closed:
                            return
                        self.out.append(part)
                        self._flush()
                        if self._backlog() > STREAM_HIGH_WATER:
                            await self._drained()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("response to %s aborted: %s", req.target[:200], exc)
                    self.close()
                    return
                finally:
                    with contextlib.suppress(Exception):
                        await resp.stream.aclose()  # type: ignore[attr-defined]
                self.out.append(_Done(req, resp, self.response_start))
                self._flush()
            if not req.keep_alive or resp.close:
                self.closing = True
                self.pending.clear()
        finally:
            self.busy = False
            self.task = None
        if not self.closed:
            self._process()

    def _emit(self, req: Request, resp: Response, done: bool = True) -> None:
        self.response_start = self.sent + (self._backlog() if self.out else 0)
        self.out.append(resp.head)
        if req.method != "HEAD":
            self.out.extend(resp.body)
        if done:
            self.out.append(_Done(req, resp, self.response_start))
        self.last_active = self.last_progress = self.loop.time()

    def _backlog(self) -> int:
        n = 0
        for item in self.out:
            n += (
                item.count
                if type(item) is FileSpan
                else len(item)
                if type(item) is not _Done
                else 0
            )
        return n

    def _drained(self) -> asyncio.Future[None]:
        fut = self.loop.create_future()
        if not self.out:
            fut.set_result(None)
        else:
            self.drain_waiter = fut
        return fut

    # -- writing -------------------------------------------------------------

    def _on_writable(self) -> None:
        self._flush()

    def _flush(self) -> None:
        out = self.out
        sock = self.sock
        while out:
            item = out[0]
            t = type(item)
            if t is FileSpan:
                if item.fd < 0:
                    try:
                        item.fd = os.open(item.path, os.O_RDONLY | os.O_CLOEXEC)
                    except OSError as exc:
                        self._disk_error(item, exc)
                        return
                try:
                    n = os.sendfile(self.fd, item.fd, item.offset, item.count)
                except (BlockingIOError, InterruptedError):
                    self._arm_writer()
                    return
                except OSError as exc:
                    if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                        self.close()
                    else:
                        self._disk_error(item, exc)
                    return
                if n == 0:
                    self._disk_error(
                        item, OSError(errno.EIO, "slice file shorter than its index row")
                    )
                    return
                self.sent += n
                self.last_active = self.last_progress = self.loop.time()
                item.offset += n
                item.count -= n
                if item.count == 0:
                    item.close()
                    out.popleft()
            elif t is _Done:
                out.popleft()
                self.server.handler.finished(
                    item.req, item.resp, item.body_bytes(self.sent), time.perf_counter()
                )
            else:
                # Gather the bytes that are next into one writev.
                buffers = [item]
                following = None
                for nxt in itertools.islice(out, 1, 16):
                    if type(nxt) is FileSpan or type(nxt) is _Done:
                        following = nxt
                        break
                    buffers.append(nxt)
                flags = (
                    _MSG_MORE if type(following) is FileSpan and following.count > CORK_ABOVE else 0
                )
                try:
                    if len(buffers) == 1:
                        n = sock.send(item, flags)
                    else:
                        n = sock.sendmsg(buffers, (), flags)
                except (BlockingIOError, InterruptedError):
                    self._arm_writer()
                    return
                except OSError:
                    self.close()
                    return
                self.sent += n
                self.last_active = self.last_progress = self.loop.time()
                for buf in buffers:
                    size = len(buf)
                    if n >= size:
                        out.popleft()
                        n -= size
                    else:
                        out[0] = memoryview(buf)[n:]
                        self._arm_writer()
                        return
        if self.writer_armed:
            self.writer_armed = False
            self.loop.remove_writer(self.fd)
        if self.drain_waiter is not None:
            waiter, self.drain_waiter = self.drain_waiter, None
            if not waiter.done():
                waiter.set_result(None)
        if self.busy:
            return
        if self.pending:
            self._process()  # requests held back while the socket was full
        elif self.closing:
            self._linger()

    def _linger(self) -> None:
        """Close after our last byte without a reset: half-close, then drop what
        the client still sends for a while (a close with unread input would make
        the kernel reset the connection and discard what it has not sent yet)."""
        if self.closed or self.lingering:
            return
        if self.read_eof:
            self.close()
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self.lingering = True
        if not self.reading:
            self.reading = True
            self.loop.add_reader(self.fd, self._on_read)
        self.linger_handle = self.loop.call_later(LINGER_SECONDS, self.close)

    def _arm_writer(self) -> None:
        if not self.writer_armed:
            self.writer_armed = True
            self.loop.add_writer(self.fd, self._on_writable)

    def _disk_error(self, span: FileSpan, exc: OSError) -> None:
        log.error("cannot send %s: %s", span.path, exc)
        if span.on_error is not None:
            span.on_error(exc)
        self.close()

    # -- lifecycle -----------------------------------------------------------

    def idle(self) -> bool:
        return not self.busy and not self.out and not self.pending

    def expired(self, now: float, keepalive_timeout: float) -> bool:
        """Too slow sending headers, idle too long, or a client not reading."""
        if self.header_started is not None and now - self.header_started > HEADER_TIMEOUT:
            return True
        if self.out:
            return now - self.last_progress > SEND_TIMEOUT
        if self.idle() and not self.lingering:
            return now - self.last_active > keepalive_timeout
        return False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.linger_handle is not None:
            self.linger_handle.cancel()
        if self.reading:
            self.loop.remove_reader(self.fd)
        if self.writer_armed:
            self.loop.remove_writer(self.fd)
        now = time.perf_counter()
        for item in self.out:
            if type(item) is FileSpan:
                item.close()
            elif type(item) is _Done:
                self.server.handler.finished(item.req, item.resp, item.body_bytes(self.sent), now)
        self.out.clear()
        self.pending.clear()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.cancel()
        with contextlib.suppress(OSError):
            self.sock.close()
        self.server.forget(self)
