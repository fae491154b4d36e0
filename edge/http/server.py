"""The accept loop of the lean HTTP/1.1 server, its listening sockets and its
stop signals.

``ContentServer`` accepts on its listening sockets (each one of a worker's
``SO_REUSEPORT`` group; TLS ones wrap what they accept in the certificate
set's context), keeps the connections, sweeps idle ones every second,
pauses accepting for a second when the process is out of descriptors, and on
shutdown lets in-flight responses finish within a grace period.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from edge.http.connection import HEADER_TIMEOUT, Connection
from edge.http.tls import HANDSHAKE_TIMEOUT, CertSet
from edge.http.wire import Handler

log = logging.getLogger("edgefleet.http")


class ListenError(OSError):
    """A listening socket that could not be bound; the message says where and why."""


def bind_listeners(
    host: str, port: int, count: int = 1, *, reuse_port: bool = False, backlog: int = 1024
) -> list[socket.socket]:
    """``count`` listening sockets on ``host:port`` (IPv6 when ``host`` has a colon).

    With ``reuse_port`` they form an ``SO_REUSEPORT`` group (one per worker);
    a plain bind comes first, so a port another process holds (even another
    appliance, with ``SO_REUSEPORT``) is an error rather than a silent share.
    Port 0 picks one free port for the whole group."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if reuse_port:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
                port = probe.getsockname()[1]
        except OSError as exc:
            raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    socks: list[socket.socket] = []
    for _ in range(count):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            s.close()
            for other in socks:
                other.close()
            raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        s.listen(backlog)
        socks.append(s)
    return socks


def limits(cfg: Any) -> dict[str, float]:
    """``ContentServer``'s connection limits from a configuration that has the
    ``edge.config.CONNECTION_OPTIONS`` (the appliance's, steering's)."""
    return {
        "keepalive_timeout": cfg.keepalive_timeout,
        "handshake_timeout": cfg.tls_handshake_timeout,
        "header_timeout": cfg.header_timeout,
    }


class ContentServer:
    """Accepts on a listening socket and keeps the connections."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket | None,
        handler: Handler,
        *,
        keepalive_timeout: float = 75.0,
        tls_socks: list[socket.socket] | None = None,
        certs: CertSet | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        header_timeout: float = HEADER_TIMEOUT,
    ) -> None:
        self.handshake_timeout = handshake_timeout
        self.header_timeout = header_timeout
        self.loop = loop
        # (listening socket, does it speak TLS?)
        self.listeners = [(sock, False)] if sock is not None else []
        self.listeners += [(s, True) for s in tls_socks or ()]
        if any(tls for _, tls in self.listeners) and certs is None:
            raise ValueError("a TLS listener needs certificates")
        self.certs = certs
        self.ktls_seen = False  # a connection got kernel TLS
        self.handler = handler
        self.keepalive_timeout = keepalive_timeout
        self.connections: set[Connection] = set()
        self.stopping = False
        self.accepting = False
        self.on_count: Callable[[int], None] | None = None
        # told of each send that waits for a thread to read its file in
        self.on_disk_wait: Callable[[], None] | None = None
        self.on_fd_pressure: Callable[[], None] | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def start(self) -> None:
        for sock, _ in self.listeners:
            sock.setblocking(False)
        self._listen(True)
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def _listen(self, on: bool) -> None:
        if on == self.accepting:
            return
        self.accepting = on
        for sock, tls in self.listeners:
            if sock.fileno() < 0:
                continue
            if on:
                self.loop.add_reader(sock.fileno(), self._accept, sock, tls)
            else:
                self.loop.remove_reader(sock.fileno())

    @property
    def tls_mode(self) -> str:
        return "ktls" if self.ktls_seen else "userland"

    def _accept(self, sock: socket.socket, tls: bool) -> None:
        for _ in range(64):
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # the pending connection stays in the backlog: pause, make room
                    log.error("accept failed (%s): pausing accepts for a second", exc)
                    if self.on_fd_pressure is not None:
                        self.on_fd_pressure()
                    self._pause_accepting(1.0)
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = addr[0] if isinstance(addr, tuple) else str(addr)
            if tls:
                assert self.certs is not None
                try:
                    conn = self.certs.context.wrap_socket(
                        conn, server_side=True, do_handshake_on_connect=False
                    )
                except OSError:
                    conn.close()  # gone before we could look at it
                    continue
            c = Connection(self, conn, client, tls)
            self.connections.add(c)
            if self.on_count:
                self.on_count(len(self.connections))

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if self.on_count:
            self.on_count(len(self.connections))

    def _sweep(self) -> None:
        if self.certs is not None:
            self.certs.rotate_tickets(time.time())
        now = self.loop.time()
        for c in list(self.connections):
            if c.expired(now, self.keepalive_timeout):
                c.time_out()
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def _pause_accepting(self, seconds: float) -> None:
        if not self.accepting:
            return
        self._listen(False)

        def resume() -> None:
            if not self.stopping:
                self._listen(True)

        self.loop.call_later(seconds, resume)

    def stop_accepting(self) -> None:
        self._listen(False)
        for sock, _ in self.listeners:
            if sock.fileno() >= 0:
                sock.close()

    async def shutdown(self, grace: float) -> None:
        """Stop accepting; let in-flight responses finish within ``grace`` s."""
        self.stopping = True
        self.stop_accepting()
        deadline = self.loop.time() + grace
        while True:
            for c in list(self.connections):
                if c.idle() and c.header_started is None:
                    c.close()
                else:
                    c.answer_last()
            if not self.connections or self.loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        for c in list(self.connections):
            c.close()
        if self._sweeper is not None:
            self._sweeper.cancel()


def stop_signal(loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT.

    Once it is set the server is already stopping within its grace period, so
    another SIGTERM (a supervisor repeating itself, or a process group and its
    parent both signalling) must not kill it while it finishes or tears down:
    from the first one on, SIGTERM stays blocked in this (the main) thread, and
    ``after_stop`` ignores it once the loop has closed and given the signal
    back its default action.
    """
    import signal

    stop = asyncio.Event()

    def on_stop() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, on_stop)
    loop.add_signal_handler(signal.SIGINT, on_stop)
    return stop


def after_stop() -> None:
    """Ignore SIGTERM (and drop one that is pending) once the event loop is closed."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def socket_url(scheme: str, sock: socket.socket) -> str:
    """``scheme://host:port`` of a listening socket (an IPv6 host in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"
