"""What a connection has queued to send, and sending it without blocking.

Rules it keeps:
- parts leave in order: bytes (gathered into one ``sendmsg``), ``FileSpan``s
  with ``os.sendfile`` (zero copy), and ``Done`` markers, which are handed to
  ``on_done`` when every byte queued before them is with the kernel;
- the head is corked (``MSG_MORE``) onto a large file body, so the client gets
  full segments; measured on loopback, corking it onto a 64 KiB body cost the
  server 6 us a request, and onto a 2 MiB body saved the client a wake-up;
- over TLS the socket is an ``ssl.SSLSocket``: parts are gathered (up to
  ``TLS_CHUNK``) into one ``send``, and on userland TLS file spans are read
  into that buffer (``os.preadv``, a buffer per thread) to be encrypted;
  with kernel TLS they keep ``sendfile``, which the kernel encrypts. A TLS
  send that would block is retried with the same bytes, as OpenSSL
  requires (copied out of the per-thread buffer, which the next send
  reuses); a send of several records is corked (``TCP_CORK``), so they
  leave together;
- ``flush`` never blocks on the socket: it returns False when the socket is
  full. It raises ``PeerGone`` when the peer went away and ``DiskError``
  when a file cannot be read;
- nor on the disk, as far as the kernel tells: before a file span is first
  sent with ``sendfile``, its first page (and its last, past the first
  readahead window) is read with ``RWF_NOWAIT``, which fails rather than
  wait for the disk (and starts the readahead); on userland TLS the read
  into the buffer is itself made with ``RWF_NOWAIT`` (it takes what the
  page cache holds, up to the first page it does not); either way ``flush``
  then raises ``ColdFile`` and the connection has the span read in a thread
  (``warm_span``) before it flushes again, and from then on the span's
  reads may wait (``span.warm``). What can still block: for ``sendfile``,
  pages evicted between the probe and the send or in the middle of a long
  span; and the ``open`` of a span handed over by path (a fallback when the
  handler could not open it itself, e.g. on ``EMFILE``).
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from edge.http.wire import FileSpan, Request, Response

_MSG_MORE = getattr(socket, "MSG_MORE", 0)
_CORK = getattr(socket, "TCP_CORK", None)
CORK_ABOVE = 512 * 1024
TLS_CHUNK = 128 * 1024  # bytes gathered (and read from files) into one TLS send
TLS_RECORD = 16384  # the most a TLS record holds
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN)
WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class PeerGone(Exception):
    """The peer closed or reset the connection while we were sending."""


class DiskError(Exception):
    def __init__(self, span: FileSpan, error: OSError) -> None:
        super().__init__(f"{span.path}: {error}")
        self.span = span
        self.error = error


class ColdFile(Exception):
    """The span at the head of the queue is not in the page cache."""

    def __init__(self, span: FileSpan) -> None:
        super().__init__(span.path)
        self.span = span


class Done:
    """Queued after a response's last part: time to log it."""

    __slots__ = ("req", "resp", "sent_before")

    def __init__(self, req: Request, resp: Response, sent_before: int) -> None:
        self.req = req
        self.resp = resp
        self.sent_before = sent_before  # the outbox's byte count before the head

    def body_bytes(self, sent_now: int) -> int:
        return max(0, sent_now - self.sent_before - len(self.resp.head))


class Outbox:
    def __init__(self, sock: socket.socket, on_done: Callable[[Done], None], tls: bool) -> None:
        self.parts: deque[Any] = deque()
        self.sent = 0  # bytes (heads and bodies) handed to the kernel
        self.sock = sock
        self.fd = sock.fileno()
        self.on_done = on_done
        self.tls = tls  # bytes go through the SSLSocket
        self.userland = tls  # ... and so do files, unless the kernel encrypts (kTLS)
        self._retry = False  # the TLS buffer at the head must be sent again as it is
        # TCP_CORK around a TLS send of several records (TCP sockets, Linux)
        self.corks = _CORK is not None and sock.family in (socket.AF_INET, socket.AF_INET6)
        # how bytes go out whole: the socket's send, or once handshaken its
        # OpenSSL object's write (``use_tls_write``)
        self.write = sock.send

    def use_tls_write(self, write: Callable[[Any], int]) -> None:
        """Send TLS bytes with ``write`` (edge.http.tls.tls_io) from now on."""
        self.write = write

    def backlog(self) -> int:
        """Bytes queued and not yet with the kernel."""
        n = 0
        for item in self.parts:
            t = type(item)
            n += item.count if t is FileSpan else 0 if t is Done else len(item)
        return n

    def flush(self) -> bool:
        """Send until everything is out (True) or the socket is full (False)."""
        parts = self.parts
        while parts:
            item = parts[0]
            t = type(item)
            if t is Done:
                parts.popleft()
                self.on_done(item)
            elif self.tls and (t is not FileSpan or self.userland):
                if not self._send_tls():
                    return False
            elif not (self._send_file(item) if t is FileSpan else self._send_bytes()):
                return False
        return True

    def send_whole(self, data: bytes) -> bool:
        """Nothing is queued: send ``data`` (a response's head and body in
        one buffer) at once. True when all of it is with the kernel; else what
        is left is queued for ``flush``, as ``flush`` would have left it (over
        TLS, a send that would block is retried with the same buffer)."""
        try:
            n = self.write(data)
        except WOULD_BLOCK:
            self.parts.append(data)
            self._retry = self.tls
            return False
        except OSError as exc:
            raise PeerGone from exc
        self.sent += n
        if n < len(data):
            self.parts.append(memoryview(data)[n:])
            return False
        return True

    def close(self) -> list[Done]:
        """Drop what is queued; the ``Done`` markers that will not be reached."""
        lost = []
        for item in self.parts:
            if type(item) is FileSpan:
                item.close()
            elif type(item) is Done:
                lost.append(item)
        self.parts.clear()
        return lost

    def _send_file(self, span: FileSpan) -> bool:
        if span.fd < 0:
            _open(span)
        if span.warm is not True and not resident(span, span.count):
            raise ColdFile(span)
        try:
            n = os.sendfile(self.fd, span.fd, span.offset, span.count)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno in _GONE:
                raise PeerGone from exc
            raise DiskError(span, exc) from exc
        if n == 0:
            raise DiskError(span, OSError(errno.EIO, "slice file shorter than its index row"))
        self.sent += n
        span.offset += n
        span.count -= n
        if span.count == 0:
            span.close()
            self.parts.popleft()
        return True

    def _send_bytes(self) -> bool:
        parts = self.parts
        buffers = [parts[0]]
        following = None
        for nxt in itertools.islice(parts, 1, 16):
            if type(nxt) is FileSpan or type(nxt) is Done:
                following = nxt
                break
            buffers.append(nxt)
        flags = _MSG_MORE if type(following) is FileSpan and following.count > CORK_ABOVE else 0
        try:
            if len(buffers) == 1:
                n = self.sock.send(buffers[0], flags)
            else:
                n = self.sock.sendmsg(buffers, (), flags)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            raise PeerGone from exc
        self.sent += n
        for buf in buffers:
            size = len(buf)
            if n < size:
                parts[0] = memoryview(buf)[n:]
                return False
            parts.popleft()
            n -= size
        return True

    def send_with_span(self, head: bytes, span: FileSpan) -> bool:
        """Nothing is queued, userland TLS: ``head`` and all of ``span`` (at
        most ``TLS_CHUNK`` in all) in one TLS send, the file read straight
        after the head. True when all of it is with the kernel; else what is
        left is queued for ``flush``, as ``flush`` would have left it. Raises
        ``DiskError`` and ``PeerGone`` as ``flush`` does."""
        buf = _scratch()
        h = len(head)
        buf[:h] = head
        try:
            size = h + _read_into(span, buf[h : h + span.count])
        except ColdFile:
            self.parts.extend((head, span))  # flush meets it: a thread reads it in
            return False
        if span.count:  # a short read: the rest goes the general way
            self.parts.extend((bytes(buf[:size]), span))
            return False
        span.close()
        return self._write_tls(buf[:size], True, True)

    def _send_tls(self) -> bool:
        parts = self.parts
        data = parts[0]
        if not self._retry and (
            type(data) is FileSpan or (len(data) < TLS_CHUNK and len(parts) > 1)
        ):
            data, scratch = self._gather()
            return self._write_tls(data, True, scratch)
        return self._write_tls(data, False, False)

    def _write_tls(self, data: Any, taken: bool, scratch: bool) -> bool:
        """One TLS send of ``data``: the part at the head of the queue, or
        (``taken``) parts already taken off it, maybe in the scratch buffer.
        What is not sent is left at the head of the queue."""
        parts = self.parts
        # several records: held back (corked) until all of them are written,
        # so the kernel sends them as one and the client wakes once
        cork = self.corks and len(data) > TLS_RECORD
        if cork:
            self.sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1)
        try:
            n = self.write(data)
        except WOULD_BLOCK:
            # OpenSSL wants the same bytes again (the buffer may move):
            # the scratch buffer is the next send's, so they are copied
            self._retry = True
            if taken:
                parts.appendleft(bytes(data) if scratch else data)
            return False
        except OSError as exc:
            raise PeerGone from exc
        finally:
            if cork:
                self.sock.setsockopt(socket.IPPROTO_TCP, _CORK, 0)
        self._retry = False
        self.sent += n
        if n < len(data):
            left = memoryview(data)[n:]
            if taken:
                parts.appendleft(bytes(left) if scratch else left)
            else:
                parts[0] = left
            return False
        if not taken:
            parts.popleft()
        return True

    def _gather(self) -> tuple[Any, bool]:
        """Take the parts at the head, up to ``TLS_CHUNK``, as one buffer:
        (the buffer, whether it is the scratch buffer). On userland TLS
        file spans are read straight into it, after the head before them."""
        parts = self.parts
        buf = _scratch()
        size = 0
        taken = 0
        first: Any = None
        while parts and size < TLS_CHUNK:
            item = parts[0]
            t = type(item)
            if t is Done or (t is FileSpan and not self.userland):
                break
            if t is not FileSpan:
                taken += 1
                n = len(item)
                if size + n > TLS_CHUNK:
                    if size:
                        break
                    return parts.popleft(), False  # a large buffer goes as it is
                buf[size : size + n] = item
                size += n
                first = parts.popleft()
                continue
            try:
                size += _read_into(item, buf[size:])
            except ColdFile:
                if size:
                    break  # what is gathered goes first; the span waits at the head
                raise
            taken += 1
            if item.count:
                break
            item.close()
            parts.popleft()
        if taken == 1 and first is not None:
            return first, False  # one buffer alone: no need for a copy
        return buf[:size], True


_local = threading.local()


def _scratch() -> memoryview:
    """This thread's buffer for gathering a TLS send (one event loop per thread)."""
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(TLS_CHUNK))
    return buf


_PROBE = [bytearray(1)]
_WINDOW = 128 * 1024  # what a read of a cold file's first page brings in with it
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
WARM_READ = 256 * 1024  # a thread warming a span reads this much at a time


def resident(span: FileSpan, within: int) -> bool:
    """Is the next ``within`` bytes of ``span`` in the page cache, by its first
    page and, past the kernel's first readahead window (``_WINDOW``), its last?
    A read that may not wait says so without waiting (0.5 us), and starts the
    readahead when they are not. Asked once per span: the answer is kept in
    ``span.warm`` until a thread has read the span in (the probe's own
    readahead may finish first, but the span waits for its thread all the
    same: one answer, one path). True where the kernel cannot tell (no
    ``RWF_NOWAIT``), for a span whose file is not open yet (handed over by
    path: its send opens it, and reports what goes wrong), or when the read
    fails otherwise (the send reports that)."""
    if span.warm is not None or not _NOWAIT or span.fd < 0:
        return span.warm is not False
    n = min(span.count, within)
    try:
        os.preadv(span.fd, _PROBE, span.offset, _NOWAIT)
        if n > _WINDOW:
            os.preadv(span.fd, _PROBE, span.offset + n - 1, _NOWAIT)
    except BlockingIOError:
        span.warm = False
        return False
    except OSError:
        pass
    span.warm = True
    return True


def warm_span(fd: int, offset: int, count: int) -> None:
    """Read ``count`` bytes of the file ``fd`` from ``offset`` into the page
    cache (in a thread: this waits for the disk), then close ``fd``. Errors
    are left for the send that follows to meet and report."""
    buf = bytearray(min(count, WARM_READ))
    try:
        end = offset + count
        while offset < end:
            n = os.preadv(fd, [memoryview(buf)[: end - offset]], offset)
            if not n:
                break
            offset += n
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_into(span: FileSpan, buf: memoryview) -> int:
    """The next bytes of ``span`` into ``buf`` (userland TLS). Until a thread
    has read the span in (``span.warm``), without waiting for the disk: the
    bytes the page cache holds, up to the first page it does not, or
    ``ColdFile`` when that is the first one (the read starts the readahead)."""
    if span.warm is False:
        raise ColdFile(span)  # found cold: a thread reads it in, however soon readahead ends
    if span.fd < 0:
        _open(span)
    want = min(len(buf), span.count)
    flags = _NOWAIT if span.warm is not True else 0
    try:
        n = os.preadv(span.fd, [buf[:want]], span.offset, flags)
    except BlockingIOError:
        span.warm = False
        raise ColdFile(span) from None
    except OSError as exc:
        if flags and exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            span.warm = True  # this file cannot say: read it as before
            return _read_into(span, buf)
        raise DiskError(span, exc) from exc
    if not n:
        raise DiskError(span, OSError(errno.EIO, "slice file shorter than its index row"))
    if flags and n < want and os.fstat(span.fd).st_size > span.offset + n:
        span.warm = False  # the page after these is not in the page cache (not the file's end)
    span.offset += n
    span.count -= n
    return n


def _open(span: FileSpan) -> None:
    try:
        span.fd = os.open(span.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DiskError(span, exc) from exc
