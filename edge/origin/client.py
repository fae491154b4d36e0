"""edgefleet's HTTP/1.1 client for HTTP origins: a kept-alive connection pool
per origin, llhttp (through httptools) for the framing, and bodies read
straight into the buffers they are handed on in.

Why not aiohttp's client here: its C parser parses all that one socket read
delivered, so an origin that sends more body than its ``Content-Length``
says loses the whole answer (the bytes after it are parsed as the next
response, "Bad status line"), and each body byte is copied twice in user
space (the socket read, then the parser's body chunk), behind a few hundred
microseconds of Python per request. Here:

- a message ends where its framing says: ``Content-Length``, chunked, or the
  connection's end (an answer with neither); a HEAD, a 204 or a 304 have no
  body, and 1xx interim answers are skipped;
- bytes after a complete message that nobody asked for (a body longer than
  its ``Content-Length``, as nginx takes them) are dropped with the
  connection, which is closed and never reused; the answer already read is
  the answer (no second request);
- a ``Content-Length`` body is read by the socket straight into buffers of
  its own (``asyncio.BufferedProtocol``), never past the message's end, and
  handed on as views of them: one copy, the kernel's; what came with the
  head, chunked bodies and bodies up to the connection's end go through the
  parser;
- a body of ``POOLED_FROM`` bytes or more is read into a reused buffer
  (``BodyBuffers``): no new 2 MiB ``bytearray`` zeroed on the event loop
  before the socket overwrites it, in the way of a miss's first byte;
- each socket read (``READ_MAX`` at most) is handed on when it arrives (the
  first byte does not wait for a buffer to fill); reading pauses after the
  head until the body is asked for (the caller's way to its first byte does
  not wait behind the body's reads), and while more than ``HIGH_WATER``
  bytes wait for their reader;
- connections per origin are bounded (``size``: a request waits for one,
  within the connect timeout); an idle one is kept ``IDLE_FOR`` seconds, and
  one the origin closed, or that holds bytes nobody asked for, is dropped
  when it is taken; a GET or HEAD whose reused connection ends before any
  byte of its answer is sent once more on a new one;
- timeouts: ``connect_timeout`` for getting a connection (the wait for one,
  DNS, TCP, TLS), ``read_timeout`` for each wait for bytes (``Timeout``);
  every other failure is a ``ClientError``.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import logging
import mmap
import socket
import ssl
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from urllib.parse import unquote, urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

log = logging.getLogger("edgefleet.origin")

HEAD_READ = 64 * 1024  # a connection's buffer for heads (and parsed bodies)
BODY_BUFFER = 4 * 1024 * 1024  # a Content-Length body's buffers, at most this each
READ_MAX = 256 * 1024  # at most this per socket read: the loop turns between reads
MAX_HEAD = 64 * 1024  # an answer's status line and headers, at most
HIGH_WATER = 1024 * 1024  # unread body bytes before the socket is read no more
IDLE_FOR = 15.0  # seconds an idle kept-alive connection is kept
NO_BODY = (204, 304)
POOLED_FROM = 256 * 1024  # bodies this large are read into reused buffers
KEEP_FREE = 64 * 1024 * 1024  # free buffers kept per origin pool, at most (bytes)
READY = 16  # new buffers a thread maps ahead, per size
SWEEP_EVERY = 1.0  # seconds between looks at the lent buffers while any is lent


class BodyBuffers:
    """Buffers for large bodies, reused once nothing refers to them.

    Why: a new ``bytearray`` of 2 MiB is zeroed (a ``memset``, and page faults
    when the heap grows) before the socket overwrites it, on the event loop;
    a cold miss's first body byte waited for it (docs/miss-path.md). Rules:

    - a buffer is an anonymous ``mmap`` (page-aligned), of a power-of-two
      size from ``POOLED_FROM`` to ``BODY_BUFFER``; smaller bodies get a
      ``bytearray`` of their own;
    - ``take`` hands out one memoryview of a buffer; every view cut from it
      (the slices handed on to fetches, outboxes, the store) shares its
      managed buffer, which holds one reference to the ``mmap`` while any
      of them lives. A lent buffer whose reference count is back to what a
      free one shows is free again: nothing can read it any more;
    - lent buffers are looked at when a buffer of the size wanted is not
      free, and every one of them then; and, while any is lent, once every
      ``SWEEP_EVERY`` seconds on the event loop, so that after a burst the
      memory goes back without waiting for the next take;
    - the reference counting this relies on is checked when the pool is
      made (a view adds exactly one reference); where it does not hold,
      nothing is pooled (``pooled`` false);
    - at most ``keep`` bytes of free buffers are kept; one past that is
      unmapped;
    - a new buffer's pages are zeroed by the kernel when first touched
      (page faults and ``clear_page``: 10-25% of the event loop's CPU during
      a burst of cold misses, when buffers wait for a store that lags
      behind and few come back). So when a take had to map a buffer (fresh
      memory is what is wanted), ``READY`` more are mapped and a thread
      faults their pages in (``_populate``: one foreign call, without the
      GIL), to be taken next; never two such refills at once.
    """

    def __init__(self, keep: int = KEEP_FREE, ready: int = READY) -> None:
        self.keep = keep
        self.free: dict[int, list[mmap.mmap]] = {}
        self.free_bytes = 0
        self.lent: list[mmap.mmap] = []
        self.ready_count = ready
        self.ready: dict[int, list[mmap.mmap]] = {}  # size -> new buffers, pages in
        self._refilling: set[int] = set()  # sizes a thread is mapping
        self._sweeping = False  # a sweep of the lent buffers is scheduled
        probe = [mmap.mmap(-1, mmap.PAGESIZE)]
        self._free_refs = _refs(probe)[0]
        view = memoryview(probe[0])
        self.pooled = _refs(probe)[0] == self._free_refs + 1
        view.release()
        probe[0].close()

    def take(self, n: int) -> memoryview:
        """A buffer of ``n`` bytes (its contents: whatever it last held)."""
        if n < POOLED_FROM or not self.pooled:
            return memoryview(bytearray(n))
        size = max(POOLED_FROM, 1 << (n - 1).bit_length())
        if not self.free.get(size):
            self.reclaim()
        free = self.free.get(size)
        if free:
            buf = free.pop()
            self.free_bytes -= size
        else:
            ready = self.ready.get(size)
            buf = ready.pop() if ready else _new_buffer(size)
            self._refill(size)
        self.lent.append(buf)
        if not self._sweeping:
            self._schedule_sweep()
        return memoryview(buf)[:n]

    def _schedule_sweep(self) -> None:
        loop = _running_loop()
        if loop is None:
            return  # not on an event loop: takes reclaim as before
        self._sweeping = True
        loop.call_later(SWEEP_EVERY, self._sweep)

    def _sweep(self) -> None:
        self._sweeping = False
        self.reclaim()
        if self.lent:
            self._schedule_sweep()

    def _refill(self, size: int) -> None:
        """Have a thread map ``ready_count`` buffers of ``size`` for the next takes."""
        want = self.ready_count - len(self.ready.get(size, ()))
        loop = _running_loop()
        if size in self._refilling or want <= 0 or loop is None:
            return  # under way, stocked, or not on an event loop (takes map their own)
        self._refilling.add(size)
        fresh = [_new_buffer(size) for _ in range(want)]  # mapped: no page in yet
        fut = loop.run_in_executor(None, _populate, fresh)

        def done(f: asyncio.Future[list[mmap.mmap]]) -> None:
            self._refilling.discard(size)
            if not f.cancelled() and f.exception() is None:
                self.ready.setdefault(size, []).extend(f.result())

        fut.add_done_callback(done)

    def reclaim(self) -> None:
        """Lent buffers nothing refers to any more: free again."""
        lent, self.lent = self.lent, []
        for buf, refs in zip(lent, _refs(lent), strict=True):
            if refs > self._free_refs:
                self.lent.append(buf)
            elif self.free_bytes + len(buf) <= self.keep:
                self.free.setdefault(len(buf), []).append(buf)
                self.free_bytes += len(buf)
            else:
                buf.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


_MAP_FLAGS = mmap.MAP_PRIVATE | getattr(mmap, "MAP_ANONYMOUS", 0x20)
_MADV_POPULATE_WRITE = 23  # Linux 5.14


def _new_buffer(size: int) -> mmap.mmap:
    """A private anonymous mapping of ``size`` bytes (its pages come on first touch)."""
    return mmap.mmap(-1, size, flags=_MAP_FLAGS)


def _populate(bufs: list[mmap.mmap]) -> list[mmap.mmap]:
    """Fault in the pages of ``bufs`` (in a thread): ``madvise(MADV_POPULATE_WRITE)``,
    or where the kernel has no such advice a ``memset``; foreign calls, made
    without the GIL, so the event loop runs meanwhile."""
    for buf in bufs:
        c = ctypes.c_char.from_buffer(buf)
        try:
            addr, n = ctypes.addressof(c), len(buf)
            if _madvise is None or _madvise(addr, n, _MADV_POPULATE_WRITE) != 0:
                ctypes.memset(addr, 0, n)
        finally:
            del c  # the buffer's export ends here
    return bufs


def _libc_madvise() -> Callable[[int, int, int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_madvise = _libc_madvise()


def _refs(bufs: list[mmap.mmap]) -> list[int]:
    """Each buffer's reference count, as ``BodyBuffers`` compares them (one
    function for the calibration and the check, so both count alike)."""
    return [sys.getrefcount(b) for b in bufs]


class ClientError(Exception):
    """No usable answer: the connection failed, or the answer is broken."""


class Timeout(ClientError):
    """No connection, or no bytes, in time."""


class _Stale(ClientError):
    """A reused connection ended before any byte of the answer."""


class Answer:
    """One response: ``status``, ``headers`` (every field line), ``content_length``
    (``None``: chunked, or up to the connection's end) and ``chunks()``, the
    body as it arrives. ``release()`` when done with it (it closes the
    connection when the body was not read to its end)."""

    def __init__(self, conn: _Connection, method: str, read_timeout: float | None) -> None:
        self._conn = conn
        self._read_timeout = read_timeout
        self._parser = httptools.HttpResponseParser(self)
        self._no_body = method == "HEAD"
        self._raw: list[tuple[str, str]] = []
        self.status = 0
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.content_length: int | None = None
        self.head_done = False
        self.done = False  # the message is complete
        self.extra = False  # bytes came after it
        self.keep_alive = False
        self.got_any = False
        self._head_bytes = 0
        self._interim = False
        self._until_close = False
        self._left = 0  # Content-Length body bytes not yet read
        self._direct = False  # they go straight into ``_buf``
        self._buf: memoryview | None = None
        self._pos = 0
        self._ready: deque[bytes | memoryview] = deque()
        self._ready_bytes = 0
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False
        self._reading = False  # the caller has asked for the body

    # -- httptools' callbacks ---------------------------------------------------

    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done and not self.done:
            self._raw.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self.done:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True  # 100, 103: the answer follows
            self._raw = []
            return
        self.status = status
        self.head_done = True
        self.keep_alive = self._parser.should_keep_alive()  # llhttp forgets it at the end
        h = CIMultiDictProxy(CIMultiDict(self._raw))
        self.headers = h
        chunked = "chunked" in h.get("Transfer-Encoding", "").lower()
        length = h.get("Content-Length")
        if length is not None and not chunked:
            if not length.strip().isdigit():
                raise ClientError(f"a Content-Length that is not a length: {length!r}")
            self.content_length = int(length)
        if self._no_body or status in NO_BODY:
            self.done = True  # llhttp does not know the request was a HEAD
            return
        if self.content_length is not None:
            self._left = self.content_length
            if not self._left:
                self.done = True
        elif not chunked:
            self._until_close = True

    def on_body(self, body: bytes) -> None:
        if self.done:
            self.extra = True
            return
        self._ready.append(body)
        self._ready_bytes += len(body)
        if self.content_length is not None:
            self._left -= len(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif self.head_done:
            self.done = True

    # -- what the connection delivers -----------------------------------------------

    def _parse(self, data: memoryview) -> None:
        self.got_any = True
        if not self.head_done:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self.done:
                cause = exc.__context__ if isinstance(exc.__context__, ClientError) else None
                self._fail(cause or ClientError(f"an answer that cannot be parsed: {exc}"))
                return
            self.extra = True
        if not self.head_done and self._head_bytes > MAX_HEAD:
            self._fail(ClientError(f"an answer's head over {MAX_HEAD} bytes"))
            return
        if self.head_done and not self.done and self.content_length is not None:
            self._direct = True  # the rest of the body: straight into buffers
        self._settle()

    def _buffer(self) -> memoryview:
        buf = self._buf
        if buf is None or self._pos == len(buf):
            buf = self._buf = self._conn.pool.buffers.take(min(self._left, BODY_BUFFER))
            self._pos = 0
        return buf[self._pos : self._pos + READ_MAX]

    def _filled(self, n: int) -> None:
        assert self._buf is not None
        self._ready.append(self._buf[self._pos : self._pos + n])
        self._ready_bytes += n
        self._pos += n
        self._left -= n
        if not self._left:
            self.done = True
            self._direct = False
            self._buf = None
        self._settle()

    def _settle(self) -> None:
        """After each read: the connection freed or dropped, the reader woken.
        Until the caller asks for the body, the socket is read no further than
        the head's read: the caller's way to its first byte (indexing, the
        player's head) does not wait behind the body's reads."""
        if self.done:
            self._conn.finished(self)
        elif self._ready_bytes > HIGH_WATER or (self.head_done and not self._reading):
            self._conn.pause()
        self._wake()

    def _ended(self, exc: BaseException | None) -> None:
        """The connection is over (the origin closed it, or it broke)."""
        if self.done:
            return
        if self.head_done and self._until_close and exc is None:
            self.done = True
        elif not self.got_any and self._conn.reused:
            self._fail(_Stale("a kept-alive connection closed before the answer"))
        elif not self.head_done:
            self._fail(ClientError(f"the connection ended before the answer's head ({exc})"))
        else:
            self._fail(ClientError(f"the connection ended before the answer's end ({exc})"))
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._conn.drop()
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        w = self._waiter = loop.create_future()
        timer = None
        if self._read_timeout is not None:
            timer = loop.call_later(self._read_timeout, _expire, w)
        try:
            await w
        except Timeout:
            self._fail(Timeout("no bytes from the origin in time"))
            raise
        finally:
            if timer is not None:
                timer.cancel()

    # -- for the caller ---------------------------------------------------------------

    async def _head(self) -> None:
        while not self.head_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def chunks(self) -> AsyncIterator[bytes | memoryview]:
        """The body, each socket read's bytes as they arrive."""
        ready = self._ready
        self._reading = True
        while True:
            if ready:
                chunk = ready.popleft()
                self._ready_bytes -= len(chunk)
                yield chunk
                continue
            if self._error is not None:
                raise self._error
            if self.done:
                return
            self._conn.resume()  # paused after the head, or at HIGH_WATER
            await self._wait()

    async def read(self, limit: int) -> bytes:
        """The whole body (at most ``limit`` bytes, else ``ClientError``)."""
        out = bytearray()
        async for chunk in self.chunks():
            out += chunk
            if len(out) > limit:
                raise ClientError(f"an answer over {limit} bytes")
        return bytes(out)

    def release(self) -> None:
        """Done with it: a connection whose answer was not read to its end is closed."""
        if self._released:
            return
        self._released = True
        if not self.done or self._error is not None:
            self._conn.drop()


def _expire(w: asyncio.Future[None]) -> None:
    if not w.done():
        w.set_exception(Timeout("no bytes from the origin in time"))


class _Connection(asyncio.BufferedProtocol):
    """One connection to the origin, one answer at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.answer: Answer | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.paused = False
        self._head = memoryview(bytearray(HEAD_READ))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        a = self.answer
        if a is not None and a._direct:
            return a._buffer()
        return self._head

    def buffer_updated(self, nbytes: int) -> None:
        a = self.answer
        if a is None:
            self.pool.unasked(self, nbytes)
            self.drop()
        elif a._direct:
            a._filled(nbytes)
        else:
            a._parse(self._head[:nbytes])

    def eof_received(self) -> bool:
        self.drop()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.lost(self)
        a = self.answer
        if a is not None:
            a._ended(exc)

    # -- for its answer and the pool ------------------------------------------------------

    def start(self, answer: Answer, request: bytes) -> None:
        self.answer = answer
        assert self.transport is not None
        self.transport.write(request)

    def finished(self, answer: Answer) -> None:
        """Its answer is complete: back to the pool, or closed."""
        if self.answer is not answer:
            return
        if answer.extra:
            self.pool.unasked(self, 0)
            self.drop()
            return
        self.answer = None
        if answer.keep_alive and not answer._until_close:
            self.resume()
            self.pool.put(self)
        else:
            self.drop()

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def drop(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()  # connection_lost follows
        elif self.transport is None:
            self.closed = True

    def usable(self) -> bool:
        """Idle, open, not too old, and nothing waiting on it: no bytes
        nobody asked for, no end of the connection (seen before the loop
        would tell)."""
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        if time.monotonic() - self.idle_since > IDLE_FOR:
            return False
        sock = self.transport.get_extra_info("socket")
        if sock is None or self.transport.get_extra_info("sslcontext") is not None:
            return True
        # a socket object of the transport's descriptor, for one peek (uvloop's
        # own refuses recv), detached after it: the descriptor stays the transport's
        peek = socket.socket(sock.family, socket.SOCK_STREAM, 0, sock.fileno())
        try:
            waiting = peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        finally:
            peek.detach()
        if waiting:
            self.pool.unasked(self, len(waiting))
        return False


class Pool:
    """Kept-alive connections to one origin (``scheme://host:port``), at most ``size``."""

    def __init__(
        self,
        url: str,
        *,
        shown: str,
        user_agent: str,
        connect_timeout: float | None,
        read_timeout: float | None,
        size: int = 256,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.shown = shown
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.host_header = parts.netloc.rpartition("@")[2]
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.size = size
        self.ssl_context = (ssl_context or ssl.create_default_context()) if self.https else None
        self.defaults = {"User-Agent": user_agent, "Accept-Encoding": "identity"}
        if parts.username is not None:
            cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.defaults["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._opening = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._warned = False
        self.buffers = BodyBuffers()

    # -- connections --------------------------------------------------------------------

    def put(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.append(conn)
        self._wake_one()

    def lost(self, conn: _Connection) -> None:
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        self._wake_one()

    def unasked(self, conn: _Connection, nbytes: int) -> None:
        """Bytes after a complete answer, or on an idle connection: dropped with it."""
        if not self._warned:  # once per origin: an origin that does it does it often
            self._warned = True
            log.warning(
                "origin %s: bytes after a complete answer (a body longer than its "
                "Content-Length?): dropped with the connection",
                self.shown,
            )

    def _wake_one(self) -> None:
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                return

    async def _acquire(self) -> _Connection:
        while True:
            while self._idle:
                conn = self._idle.pop()
                if conn.usable():
                    conn.reused = True
                    return conn
                conn.drop()
            if len(self._open) + self._opening < self.size:
                return await self._connect()
            w = asyncio.get_running_loop().create_future()
            self._waiters.append(w)
            try:
                await w
            except BaseException:
                w.cancel()
                self._wake_one()  # pass the turn on
                raise

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        self._opening += 1
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(self),
                self.host,
                self.port,
                ssl=self.ssl_context,
                server_hostname=self.host if self.ssl_context is not None else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ClientError(f"cannot connect: {exc}") from None
        finally:
            self._opening -= 1
            self._wake_one()
        self._open.add(conn)
        return conn

    async def close(self) -> None:
        for conn in list(self._open):
            conn.drop()
        self._idle.clear()

    # -- requests -------------------------------------------------------------------------

    def _encode(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | None
    ) -> bytes:
        fields = CIMultiDict(self.defaults)
        fields.update(headers)
        fields["Host"] = self.host_header
        fields.popall("Content-Length", None)
        fields.popall("Transfer-Encoding", None)
        if body or method in ("POST", "PUT", "PATCH"):
            fields["Content-Length"] = str(len(body or b""))
        lines = [f"{method} {target} HTTP/1.1"]
        for name, value in fields.items():
            if any(c in name + value for c in "\r\n\0") or any(c in name for c in " :"):
                raise ClientError(f"a request header that cannot be sent: {name!r}")
            lines.append(f"{name}: {value}")
        try:
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise ClientError("a request that cannot be sent in Latin-1") from None
        return head + body if body else head

    async def request(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
    ) -> Answer:
        """The answer to ``method target`` once its head is read. A GET or HEAD
        whose kept-alive connection ended before any answer goes once more on
        a new one."""
        request = self._encode(method, target, headers, body)
        tries = 2 if method in ("GET", "HEAD") else 1
        for n in range(tries):
            try:
                async with asyncio.timeout(self.connect_timeout):
                    conn = await self._acquire()
            except TimeoutError:
                raise Timeout("no connection to the origin in time") from None
            answer = Answer(conn, method, self.read_timeout)
            try:
                conn.start(answer, request)
                await answer._head()
            except _Stale:
                if n + 1 < tries:
                    continue
                raise ClientError("the connection closed before the answer") from None
            except BaseException:
                answer.release()
                raise
            return answer
        raise AssertionError("unreachable")


async def get(url: str, headers: Mapping[str, str], **kw: object) -> Answer:
    """One GET of ``url`` on a pool of its own (the connection closes with the
    answer's end): for tests and one-off requests."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    pool = Pool(url, shown=parts.netloc.rpartition("@")[2], **kw)  # type: ignore[arg-type]
    return await pool.request("GET", target, {**headers, "Connection": "close"})
