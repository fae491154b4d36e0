"""The header timeout (``header_timeout``) against a real appliance on loopback,
over HTTP and HTTPS: a request whose headers trickle in is answered 408 and
closed, a new connection that sends nothing is closed, a kept-alive
connection idle between requests follows ``keepalive_timeout``; other
clients are served meanwhile (docs/security.md, "The HTTP connection")."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from conftest import Appliance, file_appliance_args, make_catalog, statuses, wait_for
from test_tls import https_port

KEY = "titles/81234/720p/seg_00002.m4s"
HEADER_TIMEOUT = 1.0  # seconds: what the appliance here is given
KEEPALIVE = 60.0  # far longer than any wait below


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("header-timeout")
    catalog = make_catalog(tmp / "origin")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    cert = ca.issue_cert("127.0.0.1", key_type=trustme.KeyType.ECDSA)
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "cert.pem"))
    app = Appliance(
        [
            "--tls-listen", "127.0.0.1:0",
            "--tls-cert", str(tmp / "cert.pem"),
            "--header-timeout", f"{HEADER_TIMEOUT}s",
            "--keepalive-timeout", f"{KEEPALIVE}s",
            *file_appliance_args(tmp),
        ]
    ).start()  # fmt: skip
    tls_port = https_port(app)
    ctx = ssl.create_default_context(cafile=str(tmp / "ca.pem"))
    yield app, catalog, tmp, tls_port, ctx
    assert app.stop() == 0


Connect = Callable[[], socket.socket]


@pytest.fixture(params=["http", "https"])
def connect(request, served) -> Connect:
    """A new connection to the appliance, plain or TLS (handshaken)."""
    app, _, _, tls_port, ctx = served

    def plain() -> socket.socket:
        return socket.create_connection(("127.0.0.1", app.port), timeout=30)

    def tls() -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", tls_port), timeout=30)
        return ctx.wrap_socket(raw, server_hostname="127.0.0.1")

    return plain if request.param == "http" else tls


def read_to_end(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def trickle(s: socket.socket, limit: float = 30.0) -> tuple[bytes, float]:
    """Send headers that never end, a byte every 50 ms, until the server
    answers or closes; (what it sent until it closed, seconds since the first
    byte). The server drops what it is sent after its answer, so sending goes
    on while the answer is read: a close with unread input would be a reset."""
    line = b"GET /" + KEY.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Slow: "
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < limit:
        s.sendall(line[sent : sent + 1] if sent < len(line) else b"a")
        sent += 1
        s.settimeout(0.05)  # a read, not select: TLS 1.3 tickets arrive with no data
        try:
            first = s.recv(65536)
        except TimeoutError:
            continue
        s.settimeout(30)
        return first + (read_to_end(s) if first else b""), time.monotonic() - start
    raise AssertionError(f"not answered nor closed within {limit}s")


def access_lines(tmp: Path) -> list[dict]:
    return [json.loads(x) for x in (tmp / "access.log").read_text().splitlines()]


def test_slow_headers_get_408_and_a_close_while_others_are_served(served, connect) -> None:
    _, catalog, tmp, _, _ = served
    got: dict[str, tuple[bytes, float] | BaseException] = {}

    def slow() -> None:
        try:
            with connect() as s:
                got["slow"] = trickle(s)
        except BaseException as exc:  # raised again below, in the test
            got["slow"] = exc

    slowloris = threading.Thread(target=slow)
    slowloris.start()
    served_meanwhile = 0
    while slowloris.is_alive():  # players on other connections get their answers
        with connect() as s:
            s.sendall(f"GET /{KEY} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            raw = read_to_end(s)
        assert statuses(raw) == [200] and raw.endswith(catalog[KEY])
        served_meanwhile += 1
    slowloris.join()
    if isinstance(got["slow"], BaseException):
        raise got["slow"]
    answer, took = got["slow"]
    assert served_meanwhile > 0
    assert took >= HEADER_TIMEOUT  # the timeout, not sooner
    head, _, body = answer.partition(b"\r\n\r\n")
    assert statuses(head) == [408] and b"Connection: close" in head
    assert body.startswith(b"408 Request Timeout")
    logged = wait_for(lambda: [x for x in access_lines(tmp) if x["status"] == 408])
    assert logged


def test_a_connection_that_never_asks_is_closed_after_the_header_timeout(served, connect) -> None:
    """As nginx's client_header_timeout: a new connection's wait for its first
    request counts as its headers'; nothing was asked, so nothing is answered."""
    with connect() as s:
        start = time.monotonic()
        assert read_to_end(s) == b""  # closed by the appliance, long before KEEPALIVE
        assert time.monotonic() - start >= HEADER_TIMEOUT


def test_idle_keep_alive_follows_the_idle_timeout_not_the_header_timeout(served, connect) -> None:
    _, catalog, _, _, _ = served
    request = f"GET /{KEY} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with connect() as s:
        for _ in range(2):
            s.sendall(request)
            raw = b""
            while not raw.endswith(catalog[KEY]):
                chunk = s.recv(65536)
                assert chunk, "closed while idle between requests"
                raw += chunk
            assert statuses(raw) == [200]
            # idle for three header timeouts: the sweep (once a second) would
            # have closed a connection held to the header timeout by now
            time.sleep(3 * HEADER_TIMEOUT)
        # and a request that then trickles in gets its own header timeout
        answer, took = trickle(s)
        assert statuses(answer) == [408] and took >= HEADER_TIMEOUT
