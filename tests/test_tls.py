"""HTTPS on the appliance (docs/tls.md) with real clients: Python's ssl, curl.

Certificates come from a test CA made here (trustme); nothing from outside.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
import trustme
from conftest import (
    SLICE,
    Appliance,
    Service,
    disk_waits,
    drop_from_page_cache,
    exchange,
    file_appliance_args,
    make_catalog,
    wait_for,
)

from edge.http.tls import ktls_available

KEY = "titles/81234/720p/seg_00002.m4s"


def https_port(service: Service) -> int:
    for line in service.stderr:
        m = re.search(r"listening on .*https://127\.0\.0\.1:(\d+)", line)
        if m:
            return int(m.group(1))
    raise AssertionError("no https listener in: " + "".join(service.stderr))


def issue(ca: trustme.CA, path: Path, *names: str) -> Path:
    cert = ca.issue_cert(*names, key_type=trustme.KeyType.ECDSA)
    cert.private_key_and_cert_chain_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    issue(ca, d / "a.pem", "a.test", "localhost", "127.0.0.1")
    b = ca.issue_cert("b.test", "*.b.test", key_type=trustme.KeyType.ECDSA)
    b.cert_chain_pems[0].write_to_path(str(d / "b-cert.pem"))
    b.private_key_pem.write_to_path(str(d / "b-key.pem"))
    return ca, d


def client_context(pki, **kw) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki[1] / "ca.pem"))
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


@pytest.fixture(scope="module")
def served(tmp_path_factory, pki):
    tmp = tmp_path_factory.mktemp("tls")
    catalog = make_catalog(tmp / "origin")
    d = pki[1]
    app = Appliance(
        [
            "--tls-listen", "127.0.0.1:0",
            "--tls-cert", str(d / "a.pem"),
            "--tls-cert", f"{d / 'b-cert.pem'}:{d / 'b-key.pem'}",
            "--tls-handshake-timeout", "1s",
            *file_appliance_args(tmp),
        ]
    ).start()  # fmt: skip
    yield app, catalog, tmp
    assert app.stop() == 0


def get(
    port: int, ctx: ssl.SSLContext, path: str, headers: dict[str, str] | None = None, **kw
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10, **kw)
    return exchange(conn, "GET", path, headers)


def test_https_serves_what_http_serves(served, pki) -> None:
    app, catalog, tmp = served
    port, ctx = https_port(app), client_context(pki)
    for key, data in catalog.items():
        path = "/" + key.replace(" ", "%20").replace("ü", "%C3%BC")
        for _ in range(2):  # a miss, then a hit from the slice files
            status, headers, body = get(port, ctx, path)
            assert (status, body) == (200, data), key
    data = catalog[KEY]
    status, headers, body = get(port, ctx, "/" + KEY, {"Range": "bytes=100-70000"})
    assert (status, body) == (206, data[100:70001])
    assert headers["content-range"] == f"bytes 100-70000/{len(data)}"
    etag = headers["etag"]
    assert get(port, ctx, "/" + KEY, {"If-None-Match": etag})[0] == 304
    status, headers, _ = get(port, ctx, "/" + KEY, {"Origin": "https://player.example"})
    assert headers["access-control-allow-origin"] == "*"
    # keep-alive and pipelining over one TLS connection
    raw = socket.create_connection(("127.0.0.1", port))
    with ctx.wrap_socket(raw, server_hostname="a.test") as s:
        s.sendall(f"GET /{KEY} HTTP/1.1\r\nHost: a\r\n\r\n".encode() * 3)
        got = b""
        while got.count(data) < 3:
            chunk = s.recv(1 << 20)
            assert chunk
            got += chunk
    # curl, a client we did not write
    out = subprocess.run(
        ["curl", "-sSf", "--cacert", str(pki[1] / "ca.pem"), "-r", "0-9999",
         f"https://127.0.0.1:{port}/{KEY}"],
        capture_output=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    assert out == data[:10000]
    # the access log names the TLS version and the SNI name (none for an IP)
    wait_for(lambda: '"tls":"TLSv1.3"' in (tmp / "access.log").read_text(), timeout=5)
    lines = [json.loads(x) for x in (tmp / "access.log").read_text().splitlines()]
    assert {x["sni"] for x in lines if x.get("tls")} >= {None, "a.test"}


def peer_names(port: int, ctx: ssl.SSLContext, server_hostname: str | None) -> set[str]:
    raw = socket.create_connection(("127.0.0.1", port))
    with ctx.wrap_socket(raw, server_hostname=server_hostname) as s:
        cert = s.getpeercert()
        assert s.selected_alpn_protocol() == "http/1.1"
    return {v for k, v in cert["subjectAltName"] if k == "DNS"}


def stored_over_tls(app: Appliance, catalog: dict[str, bytes], pki) -> tuple:  # type: ignore[type-arg]
    """KEY fetched over TLS until it is a hit: (the https port, a client
    context, the disk waits counted so far)."""
    port, ctx = https_port(app), client_context(pki)
    assert get(port, ctx, "/" + KEY)[2] == catalog[KEY]
    wait_for(lambda: get(port, ctx, "/" + KEY)[1].get("cache-status", "").endswith("hit"))
    return port, ctx, disk_waits(app)


def test_a_hit_on_files_not_in_memory_is_read_in_a_thread_over_tls(served, pki) -> None:
    """Userland TLS reads a span into its buffer before encrypting it: that
    read, too, waits for a thread when the pages left the page cache."""
    app, catalog, tmp = served
    port, ctx, before = stored_over_tls(app, catalog, pki)
    data = catalog[KEY]
    assert drop_from_page_cache(tmp / "store") > 0
    one_slice = {"Range": "bytes=100-60000"}  # the hit path's shortcut: one send
    assert get(port, ctx, "/" + KEY, one_slice)[2] == data[100:60001]
    assert get(port, ctx, "/" + KEY)[2] == data
    assert disk_waits(app) >= before + 2


def test_pages_evicted_in_the_middle_of_a_span_are_read_in_a_thread_over_tls(served, pki) -> None:
    """The read into the TLS buffer itself does not wait for the disk: with
    only the middle pages of each slice file evicted (the first and the last
    still there), a hit over TLS still has a thread read them in."""
    app, catalog, tmp = served
    port, ctx, before = stored_over_tls(app, catalog, pki)
    data = catalog[KEY]
    page = 4096
    assert drop_from_page_cache(tmp / "store", page, SLICE - 2 * page) > 0
    one_slice = {"Range": f"bytes={SLICE}-{2 * SLICE - 1}"}  # one slice file, whole
    assert get(port, ctx, "/" + KEY, one_slice)[2] == data[SLICE : 2 * SLICE]
    assert disk_waits(app) > before
    assert get(port, ctx, "/" + KEY)[2] == data


def test_sni_chooses_the_certificate_and_the_first_is_the_default(served, pki) -> None:
    app = served[0]
    port = https_port(app)
    ctx = client_context(pki, check_hostname=False)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    a, b = {"a.test", "localhost"}, {"b.test", "*.b.test"}
    assert peer_names(port, ctx, "a.test") == a
    assert peer_names(port, ctx, "b.test") == b
    assert peer_names(port, ctx, "video.b.test") == b
    assert peer_names(port, ctx, "VIDEO.B.TEST") == b
    # an unknown name or no SNI at all: the default, never a handshake failure
    assert peer_names(port, ctx, "deep.video.b.test") == a
    assert peer_names(port, ctx, "unknown.example") == a
    assert peer_names(port, ctx, None) == a


def test_tls_1_2_and_1_3_only(served, pki) -> None:
    port = https_port(served[0])
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = client_context(pki, minimum_version=version, maximum_version=version)
        assert get(port, ctx, "/" + KEY)[0] == 200
    old = client_context(pki)
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with pytest.warns(DeprecationWarning):
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(port, old, "/" + KEY)


def send_junk(port: int, junk: bytes) -> bytes:
    """Send ``junk``; what comes back before the server closes (a reset counts as a close)."""
    got = b""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    with s, contextlib.suppress(OSError):  # a reset is an answer too
        s.sendall(junk)
        while chunk := s.recv(65536):
            got += chunk
    return got


def client_hello(pki) -> bytes:
    """The bytes of a real ClientHello, to send in part."""
    ctx = client_context(pki)
    tls = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="a.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return out.read()


def test_bad_tls_input_closes_that_connection_and_others_are_served(served, pki) -> None:
    app, catalog, _ = served
    port, ctx = https_port(app), client_context(pki)
    # plain HTTP and garbage on the TLS port: closed at once, nothing in clear
    for junk in (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", os.urandom(300), b"\x16\x03\x01\xff\xff"):
        t0 = time.monotonic()
        answer = send_junk(port, junk)
        assert b"HTTP/1.1" not in answer
        assert time.monotonic() - t0 < 4.5  # closed by the server, not by our timeout
    # truncated hellos and connections that never start one: the handshake
    # timeout (1 s here) closes them; meanwhile others are served
    hello = client_hello(pki)
    stuck = []
    for i in range(150):
        s = socket.create_connection(("127.0.0.1", port))
        if i % 2:
            s.sendall(hello[: len(hello) // 2])
        stuck.append(s)
    status, _, body = get(port, ctx, "/" + KEY)
    assert (status, body) == (200, catalog[KEY])
    for s in stuck[::15]:
        s.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(100) == b""
    for s in stuck:
        s.close()
    assert app.proc is not None and app.proc.poll() is None
    assert get(port, ctx, "/_edge/health")[0] == 200


def test_health_and_metrics_show_the_mode_and_the_certificates(served, pki) -> None:
    port, ctx = https_port(served[0]), client_context(pki)
    get(port, ctx, "/" + KEY)
    doc = json.loads(get(port, ctx, "/_edge/health")[2])
    assert doc["tls"]["mode"] == ("ktls" if ktls_available() else "userland")
    names = [c["name"] for c in doc["tls"]["certs"]]
    assert names == ["a.test", "b.test"]
    assert all(c["not_after"] > time.time() + 86400 for c in doc["tls"]["certs"])
    metrics = get(port, ctx, "/_edge/metrics")[2].decode()
    assert re.search(r'edgefleet_tls_cert_expiry_seconds\{name="b.test"\} \d', metrics)


@pytest.mark.skipif(
    not ktls_available(),
    reason="the kernel's tls module is not loaded here (modprobe tls): kTLS cannot be tested",
)
def test_ktls_keeps_sendfile_where_the_kernel_has_it(served, pki) -> None:
    port, ctx = https_port(served[0]), client_context(pki)
    ctx.set_ciphers("ECDHE+AESGCM")
    data = served[1][KEY]
    for r in ("bytes=0-", "bytes=70000-150000"):
        status, _, body = get(port, ctx, "/" + KEY, {"Range": r})
        lo = int(r.split("=")[1].split("-")[0])
        assert status == 206 and data[lo:].startswith(body)
    assert json.loads(get(port, ctx, "/_edge/health")[2])["tls"]["mode"] == "ktls"


def serial(port: int, ctx: ssl.SSLContext) -> str:
    raw = socket.create_connection(("127.0.0.1", port))
    with ctx.wrap_socket(raw, server_hostname="a.test") as s:
        return str(s.getpeercert()["serialNumber"])


def test_sighup_reloads_certificates_under_load_and_keeps_them_on_a_bad_file(
    tmp_path: Path, pki
) -> None:
    ca = pki[0]
    cert = issue(ca, tmp_path / "live.pem", "a.test", "127.0.0.1")
    make_catalog(tmp_path / "origin")
    app = Appliance(
        [
            "--tls-listen", "127.0.0.1:0",
            "--tls-cert", str(cert),
            "--store", str(tmp_path / "store"),
            "--capacity", "64MiB",
            "--origin", f"file://{tmp_path / 'origin'}",
        ]
    ).start()  # fmt: skip
    try:
        port, ctx = https_port(app), client_context(pki)
        first = serial(port, ctx)
        errors: list[BaseException] = []
        done = 0
        stop = threading.Event()

        def load() -> None:  # new connections and keep-alive ones, as players do
            nonlocal done
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
            while not stop.is_set():
                try:
                    st, _, body = get(port, ctx, "/" + KEY)
                    conn.request("GET", "/" + KEY)
                    r = conn.getresponse()
                    assert (st, r.status, len(r.read())) == (200, 200, len(body))
                    done += 1
                except BaseException as exc:  # every failure counts
                    errors.append(exc)
                    return

        workers = [threading.Thread(target=load) for _ in range(3)]
        for w in workers:
            w.start()
        wait_for(lambda: done >= 5)
        issue(ca, cert, "a.test", "127.0.0.1")  # a renewal: a new key and serial
        os.kill(app.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
        second = wait_for(lambda: (s := serial(port, ctx)) != first and s)
        before = done
        wait_for(lambda: done >= before + 5)
        # a file that does not load: the old certificate stays, the log says why
        cert.write_text("not a certificate\n")
        os.kill(app.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
        wait_for(lambda: any("TLS reload failed" in x for x in app.stderr))
        assert any(str(cert) in x for x in app.stderr if "TLS reload failed" in x)
        stop.set()
        for w in workers:
            w.join(30)
        assert not errors, errors
        assert serial(port, ctx) == second
    finally:
        assert app.stop() == 0


def test_tls_options_are_checked_at_start(tmp_path: Path, pki) -> None:
    from edge.cli import build_parser
    from edge.config import ConfigError, load_serve_config

    def load(*argv: str):
        return load_serve_config(
            build_parser().parse_args(
                ["serve", "--store", str(tmp_path), "--capacity", "1GiB", *argv]
            )
        )

    d = pki[1]
    cfg = load("--tls-listen", "127.0.0.1:8443", "--tls-cert", str(d / "a.pem"))
    assert cfg.listen is None and cfg.tls_listen == [("127.0.0.1", 8443)]  # HTTPS only
    cfg = load(
        "--listen", "127.0.0.1:8080", "--tls-listen", "[::1]:8443",
        "--tls-cert", f"{d / 'b-cert.pem'}:{d / 'b-key.pem'}",
    )  # fmt: skip
    assert cfg.listen == ("127.0.0.1", 8080) and cfg.tls_cert == [
        (str(d / "b-cert.pem"), str(d / "b-key.pem"))
    ]
    with pytest.raises(ConfigError, match="--tls-listen / tls_listen needs a certificate"):
        load("--tls-listen", "127.0.0.1:8443")
    with pytest.raises(ConfigError, match=r"--tls-cert / tls_cert.*b-cert\.pem"):
        load("--tls-listen", "127.0.0.1:8443", "--tls-cert", str(d / "b-cert.pem"))  # no key
    with pytest.raises(ConfigError, match=r"--tls-cert / tls_cert.*missing\.pem"):
        load("--tls-listen", "127.0.0.1:8443", "--tls-cert", str(d / "missing.pem"))
    toml = tmp_path / "serve.toml"
    toml.write_text(
        f'store = ["{tmp_path}"]\ncapacity = "1GiB"\ntls_listen = ["127.0.0.1:8443"]\n'
        f'tls_cert = ["{d / "a.pem"}", "{d / "b-cert.pem"}:{d / "b-key.pem"}"]\n'
    )
    cfg = load_serve_config(build_parser().parse_args(["serve", "--config", str(toml)]))
    assert len(cfg.tls_cert) == 2 and cfg.listen is None


def resumed(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None):
    raw = socket.create_connection(("127.0.0.1", port))
    with ctx.wrap_socket(raw, server_hostname="a.test", session=session) as s:
        s.sendall(b"GET /_edge/health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        while s.recv(65536):
            pass
        return s.session_reused, s.session


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_the_workers_of_a_box_resume_each_others_sessions(tmp_path: Path, pki, version) -> None:
    app = Appliance(
        [
            "--workers", "2",
            "--tls-listen", "127.0.0.1:0",
            "--tls-cert", str(pki[1] / "a.pem"),
            "--store", str(tmp_path / "store"),
            "--capacity", "64MiB",
        ]
    ).start()  # fmt: skip
    try:
        port = https_port(app)
        ctx = client_context(pki, minimum_version=version, maximum_version=version)
        reused, session = resumed(port, ctx, None)
        assert not reused and session is not None
        # new connections land on either worker (SO_REUSEPORT): all resume
        assert [resumed(port, ctx, session)[0] for _ in range(12)] == [True] * 12
        # ... and still after each worker reloaded its certificates on its own
        os.kill(app.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]  # forwarded to both
        wait_for(lambda: sum("TLS certificates reloaded" in x for x in app.stderr) == 2)
        assert [resumed(port, ctx, session)[0] for _ in range(12)] == [True] * 12
    finally:
        assert app.stop() == 0


def test_a_parent_over_https_is_verified_against_the_ca_file(served, pki, tmp_path: Path) -> None:
    parent, catalog, _ = served
    url = f"https://127.0.0.1:{https_port(parent)}"
    trusting = Appliance(
        ["--store", str(tmp_path / "s1"), "--capacity", "64MiB", "--origin", url,
         "--ca-file", str(pki[1] / "ca.pem")]
    ).start()  # fmt: skip
    doubting = Appliance(
        ["--store", str(tmp_path / "s2"), "--capacity", "64MiB", "--origin", url]
    ).start()  # fmt: skip
    try:
        status, _, body = trusting.get("/" + KEY)
        assert (status, body) == (200, catalog[KEY])
        # the system store does not know the test CA: the parent is not trusted
        assert doubting.get("/" + KEY)[0] == 502
    finally:
        assert trusting.stop() == 0 and doubting.stop() == 0
