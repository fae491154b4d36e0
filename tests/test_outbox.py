"""edge.http.outbox on real sockets: parts leave in order, whole, with a small
send buffer forcing partial sends; over userland TLS files are read in; a
short file is a DiskError."""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import trustme

from edge.http.outbox import DiskError, Done, Outbox
from edge.http.tls import tls_io
from edge.http.wire import FileSpan, Response


def queue(outbox: Outbox, file: Path, data: bytes) -> list[bytes]:
    """Two responses: a head and a file span, then a head and bytes."""
    head1, head2 = b"HTTP/1.1 200 OK\r\n\r\n", b"HTTP/1.1 206 Partial\r\n\r\n"
    r1, r2 = Response(200, head1), Response(206, head2)
    outbox.parts.extend([head1, FileSpan(str(file), 1000, 300_000), Done(None, r1, 0)])  # type: ignore[arg-type]
    start = len(head1) + 300_000
    outbox.parts.extend([head2, b"tail-" * 1000, Done(None, r2, start)])  # type: ignore[arg-type]
    return [head1 + data[1000:301_000], head2 + b"tail-" * 1000]


def pump(outbox: Outbox, sock: socket.socket, receiver: socket.socket | None) -> bytes:
    """Flush until all is out; read what arrives (unless a thread reads)."""
    got = b""
    while not outbox.flush():
        if receiver is not None:
            got += receiver.recv(1 << 20)  # the socket is full: there is something to read
        else:
            select.select([], [sock], [], 5)
    return got


@pytest.fixture
def file(tmp_path: Path) -> tuple[Path, bytes]:
    data = bytes(range(256)) * 2000
    path = tmp_path / "slice"
    path.write_bytes(data)
    return path, data


def test_parts_leave_in_order_and_done_counts_body_bytes(file) -> None:
    path, data = file
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    a.setblocking(False)
    done: list[tuple[int, int]] = []
    outbox = Outbox(a, lambda d: done.append((d.resp.status, d.body_bytes(outbox.sent))), False)
    expected = queue(outbox, path, data)
    got = pump(outbox, a, b)
    a.close()
    while chunk := b.recv(1 << 20):
        got += chunk
    assert got == b"".join(expected)
    assert done == [(200, 300_000), (206, 5000)]
    assert outbox.backlog() == 0


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of TCP sockets on loopback (a socketpair is AF_UNIX)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        b = socket.create_connection(listener.getsockname())
        a, _ = listener.accept()
    return a, b


class TlsPeer:
    """A handshaken server-side TLS socket (non-blocking) and a client thread
    that collects all it gets, slowly."""

    def __init__(self, pair, ca: trustme.CA) -> None:  # type: ignore[no-untyped-def]
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("edge.test").configure_cert(server_ctx)
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        a, b = pair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        self.received = bytearray()

        def client() -> None:
            with client_ctx.wrap_socket(b, server_hostname="edge.test") as c:
                # slowly: the server's sends fill the socket and block, again and again
                while chunk := c.recv(8192):
                    self.received.extend(chunk)
                    time.sleep(0.0005)

        self.thread = threading.Thread(target=client)
        self.thread.start()
        a.setblocking(False)
        self.tls = tls = server_ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                select.select([tls], [], [], 5)
            except ssl.SSLWantWriteError:
                select.select([], [tls], [], 5)

    def close(self) -> bytes:
        self.tls.close()
        self.thread.join(10)
        return bytes(self.received)


def flush_in_turns(outboxes: list[Outbox], peers: list[TlsPeer]) -> list[bytes]:
    """Flush the outboxes in turns until all is out; what each peer received."""
    waiting = list(zip(outboxes, peers, strict=True))
    while waiting:
        waiting = [(o, p) for o, p in waiting if not o.flush()]
        if waiting:
            select.select([], [p.tls for _, p in waiting], [], 5)
    return [peer.close() for peer in peers]


@pytest.mark.parametrize("pair", [socket.socketpair, tcp_pair], ids=["unix", "tcp"])
def test_userland_tls_reads_files_in_and_encrypts_them(file, pair, tmp_path: Path) -> None:
    """Two connections take turns; with a send buffer this small OpenSSL's
    writes block midway. The bytes it is handed again are the same, not what
    the other connection read meanwhile into the buffer both gather into.
    Over TCP several records go out corked."""
    path, data = file
    other = tmp_path / "other-slice"
    other.write_bytes(bytes(reversed(data)))
    files = [(path, data), (other, bytes(reversed(data)))]
    ca = trustme.CA()
    peers = [TlsPeer(pair, ca), TlsPeer(pair, ca)]
    done: list[int] = []
    outboxes, expected = [], []
    for n, peer in enumerate(peers):
        outbox = Outbox(peer.tls, lambda d: done.append(d.resp.status), True)
        outbox.use_tls_write(tls_io(peer.tls)[1])  # as a connection does once handshaken
        whole = b"HTTP/1.1 200 OK\r\n\r\n" + bytes([n]) * 200_000
        if not outbox.send_whole(whole):  # the socket is full: retried by flush
            assert outbox.backlog() > 0
        outboxes.append(outbox)
        expected.append(b"".join([whole, *queue(outbox, *files[n])]))
    assert flush_in_turns(outboxes, peers) == expected
    assert sorted(done) == [200, 200, 206, 206]


@pytest.mark.parametrize("pair", [socket.socketpair, tcp_pair], ids=["unix", "tcp"])
def test_a_head_and_a_file_span_sent_at_once_over_tls(file, pair, tmp_path: Path) -> None:
    """``send_with_span``: the head and the span read in after it, one TLS
    send; what a full socket did not take is queued, and stays right while
    the other connection's send reuses the buffer; then what follows."""
    path, data = file
    other = tmp_path / "other-slice"
    other.write_bytes(bytes(reversed(data)))
    files = [(path, data), (other, bytes(reversed(data)))]
    ca = trustme.CA()
    peers = [TlsPeer(pair, ca), TlsPeer(pair, ca)]
    outboxes, expected = [], []
    for n, peer in enumerate(peers):
        outbox = Outbox(peer.tls, lambda d: None, True)
        outbox.use_tls_write(tls_io(peer.tls)[1])
        head = b"HTTP/1.1 206 Partial Content\r\n\r\n"
        span = FileSpan(str(files[n][0]), 1000, 100_000)
        if outbox.send_with_span(head, span):
            assert outbox.backlog() == 0
        outbox.parts.append(b"and then %d" % n)
        outboxes.append(outbox)
        expected.append(head + files[n][1][1000:101_000] + b"and then %d" % n)
    assert flush_in_turns(outboxes, peers) == expected


def test_send_whole_queues_what_did_not_fit(file) -> None:
    """A response sent at once (nothing queued) that the socket takes only
    part of: the rest is queued, flush sends it, then what follows, in order."""
    path, data = file
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    a.setblocking(False)
    outbox = Outbox(a, lambda d: None, False)
    whole = b"HTTP/1.1 200 OK\r\n\r\n" + bytes(range(256)) * 1000
    assert outbox.send_whole(b"small") is True and outbox.sent == 5
    assert outbox.send_whole(whole) is False  # the socket is full
    assert 0 < outbox.backlog() < len(whole) and outbox.sent == 5 + len(whole) - outbox.backlog()
    expected = [b"small", whole, *queue(outbox, path, data)]
    got = b"".join([b.recv(1 << 20)]) + pump(outbox, a, b)
    a.close()
    while chunk := b.recv(1 << 20):
        got += chunk
    assert got == b"".join(expected)


def test_a_file_shorter_than_its_span_is_a_disk_error(file) -> None:
    path, _ = file
    a, b = socket.socketpair()
    a.setblocking(False)
    for tls in (False, True):  # sendfile, or read in (the socket is not TLS: not reached)
        outbox = Outbox(a, lambda d: None, tls)
        outbox.parts.append(FileSpan(str(path), 500_000, 100_000))
        with pytest.raises(DiskError, match="shorter than its index row"):
            outbox.flush()
    outbox = Outbox(a, lambda d: None, False)
    outbox.parts.append(FileSpan(str(path.with_name("gone")), 0, 10))
    with pytest.raises(DiskError, match="No such file"):
        outbox.flush()
    a.close()
    b.close()
