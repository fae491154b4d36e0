"""The content port against a real appliance on loopback: RFC 9110 to the letter."""

from __future__ import annotations

import email.parser
import email.policy
import re
import socket
import time
from pathlib import Path

import pytest
from conftest import (
    SLICE,
    Appliance,
    disk_waits,
    drop_from_page_cache,
    file_appliance_args,
    make_catalog,
    raw_request,
    small_window_socket,
    statuses,
    wait_for,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

KEY = "titles/81234/720p/seg_00002.m4s"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("http")
    origin = tmp / "origin"
    catalog = make_catalog(origin)
    app = Appliance(file_appliance_args(tmp)).start()
    yield app, catalog, tmp
    assert app.stop() == 0


@pytest.fixture
def app(served):
    return served[0]


@pytest.fixture
def catalog(served):
    return served[1]


def test_whole_objects_miss_then_hit(app, catalog) -> None:
    for key, data in catalog.items():
        from urllib.parse import quote

        path = "/" + quote(key)
        for _ in range(2):
            status, headers, body = app.get(path)
            assert status == 200, key
            assert body == data, key
            assert headers["content-length"] == str(len(data))
            assert headers["accept-ranges"] == "bytes"
            assert re.fullmatch(r'"[^"]+"', headers["etag"])
            assert headers["last-modified"].endswith(" GMT")
            assert headers["server"].startswith("edgefleet/")
            assert "date" in headers


def test_content_types(app) -> None:
    assert (
        app.get("/titles/81234/master.m3u8")[1]["content-type"] == "application/vnd.apple.mpegurl"
    )
    assert app.get("/titles/81234/movie.mp4")[1]["content-type"] == "video/mp4"
    assert app.get("/titles/81234/subs/en.vtt")[1]["content-type"] == "text/vtt"
    assert app.get("/empty.ts")[1]["content-type"] == "video/mp2t"


def test_single_ranges(app, catalog) -> None:
    data = catalog[KEY]
    n = len(data)
    for spec, (a, b) in {
        "bytes=0-99": (0, 99),
        f"bytes={SLICE - 10}-{SLICE + 10}": (SLICE - 10, SLICE + 10),  # across slices
        "bytes=100-": (100, n - 1),
        "bytes=-500": (n - 500, n - 1),
        f"bytes=5-{n * 10}": (5, n - 1),
    }.items():
        status, headers, body = app.get("/" + KEY, Range=spec)
        assert status == 206, spec
        assert headers["content-range"] == f"bytes {a}-{b}/{n}"
        assert body == data[a : b + 1]
        assert headers["content-length"] == str(b - a + 1)


def test_multiple_ranges_are_multipart(app, catalog) -> None:
    data = catalog[KEY]
    status, headers, body = app.get("/" + KEY, Range="bytes=0-9, 100-199, 150-299, -10")
    assert status == 206
    ctype = headers["content-type"]
    assert ctype.startswith("multipart/byteranges; boundary=")
    assert int(headers["content-length"]) == len(body)
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body
    )
    parts = list(msg.iter_parts())
    got = [(p["Content-Range"], p.get_payload(decode=True)) for p in parts]
    n = len(data)
    assert (
        got
        == [
            (f"bytes 0-9/{n}", data[0:10]),
            (f"bytes 100-299/{n}", data[100:300]),  # overlapping ranges coalesced
            (f"bytes {n - 10}-{n - 1}/{n}", data[n - 10 :]),
        ]
    )
    assert all(p["Content-Type"] == "video/iso.segment" for p in parts)


def test_unsatisfiable_and_invalid_ranges(app, catalog) -> None:
    n = len(catalog[KEY])
    status, headers, body = app.get("/" + KEY, Range=f"bytes={n}-")
    assert status == 416 and headers["content-range"] == f"bytes */{n}"
    status, _, body = app.get("/" + KEY, Range="bytes=5-1")
    assert status == 200 and body == catalog[KEY]
    status, _, body = app.get("/" + KEY, Range="pages=1-2")
    assert status == 200 and body == catalog[KEY]
    many = "bytes=" + ",".join(f"{i * 2}-{i * 2}" for i in range(100))
    status, _, body = app.get("/" + KEY, Range=many)
    assert status == 200 and body == catalog[KEY]
    status, headers, _ = app.get("/empty.ts", Range="bytes=0-")
    assert status == 416 and headers["content-range"] == "bytes */0"


def test_head(app, catalog) -> None:
    status, headers, body = app.request("HEAD", "/" + KEY)
    assert status == 200 and body == b""
    assert headers["content-length"] == str(len(catalog[KEY]))
    # Range handling is defined for GET only
    status, headers, _ = app.request("HEAD", "/" + KEY, {"Range": "bytes=0-1"})
    assert status == 200


def test_conditionals(app, catalog) -> None:
    _, headers, _ = app.get("/" + KEY)
    etag, lm = headers["etag"], headers["last-modified"]
    status, h304, body = app.get("/" + KEY, If_None_Match=etag)
    assert status == 304 and body == b"" and h304["etag"] == etag
    assert app.get("/" + KEY, If_None_Match=f"W/{etag}")[0] == 304
    assert app.get("/" + KEY, If_None_Match='"nope"')[0] == 200
    assert app.get("/" + KEY, If_Modified_Since=lm)[0] == 304
    assert app.get("/" + KEY, If_Modified_Since="Thu, 01 Jan 1970 00:00:00 GMT")[0] == 200
    assert app.get("/" + KEY, If_Modified_Since="garbage")[0] == 200
    assert app.get("/" + KEY, If_Match=etag)[0] == 200
    assert app.get("/" + KEY, If_Match='"nope"')[0] == 412
    assert app.get("/" + KEY, If_Unmodified_Since="Thu, 01 Jan 1970 00:00:00 GMT")[0] == 412
    assert app.get("/" + KEY, If_Unmodified_Since=lm)[0] == 200
    # If-Range: a matching validator keeps the range, a stale one gets the whole body
    assert app.get("/" + KEY, Range="bytes=0-9", If_Range=etag)[0] == 206
    assert app.get("/" + KEY, Range="bytes=0-9", If_Range=lm)[0] == 206
    status, _, body = app.get("/" + KEY, Range="bytes=0-9", If_Range='"stale"')
    assert status == 200 and body == catalog[KEY]


def test_cors(app) -> None:
    _, headers, _ = app.get("/" + KEY, Origin="https://player.example")
    assert headers["access-control-allow-origin"] == "*"
    exposed = {h.strip().lower() for h in headers["access-control-expose-headers"].split(",")}
    assert {"content-range", "content-length", "accept-ranges", "etag"} <= exposed
    status, headers, _ = app.request(
        "OPTIONS",
        "/" + KEY,
        {
            "Origin": "https://player.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range",
        },
    )
    assert status == 204
    assert "GET" in headers["access-control-allow-methods"]
    assert "range" in headers["access-control-allow-headers"].lower()


def test_methods(app) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = app.request(method, "/" + KEY)
        assert status == 405 and headers["allow"] == "GET, HEAD, OPTIONS"


def test_not_found(app) -> None:
    status, _, body = app.get("/titles/nope.ts")
    assert status == 404 and b"not found" in body
    assert app.get("/")[0] == 404
    assert app.get("/_edge/nope")[0] == 404


@pytest.mark.parametrize(
    "target",
    [
        b"/../etc/passwd",
        b"/titles/../../../etc/passwd",
        b"/%2e%2e/%2e%2e/etc/passwd",
        b"/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        b"//etc/passwd",
        b"/titles/%00.ts",
        b"/titles%5c..%5c..%5cetc%5cpasswd",
        b"/%252e%252e/etc/passwd",
        b"/" + b"k" * 2000,
        b"/%ff.ts",
    ],
)
def test_hostile_keys_get_400(app, target: bytes) -> None:
    raw = raw_request(app.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(raw) == [400], raw[:200]


def test_hostile_requests_leave_the_server_up(app, catalog) -> None:
    cases = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET /" + KEY.encode() + b" HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
        b"GET /" + KEY.encode() + b" HTTP/1.1\r\nRange: bytes=" + b"0-1," * 5000 + b"\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    ]
    for data in cases:
        raw = raw_request(app.port, data)
        codes = statuses(raw)
        assert codes and all(400 <= c < 500 for c in codes), (data[:60], raw[:120])
    status, _, body = app.get("/" + KEY)
    assert status == 200 and body == catalog[KEY]


def test_an_upgrade_is_ignored(app, catalog) -> None:
    """RFC 9110 7.8: a server may ignore Upgrade; the request is answered as is."""
    raw = raw_request(
        app.port,
        f"GET /{KEY} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        "Connection: upgrade\r\n\r\n".encode(),
    )
    assert statuses(raw) == [200]
    assert raw.split(b"\r\n\r\n", 1)[1] == catalog[KEY]


def test_good_requests_before_a_bad_one_are_answered(app) -> None:
    good = f"GET /{KEY} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-3\r\n\r\n".encode()
    raw = raw_request(app.port, good + good + b"GARBAGE\x01 \r\n\r\n")
    assert statuses(raw) == [206, 206, 400]


def test_pipelined_requests_are_not_mistaken_for_huge_headers(app) -> None:
    filler = "X-Filler: " + "f" * 6000 + "\r\n"
    one = f"GET /{KEY} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0\r\n{filler}\r\n".encode()
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as s:
        # each send ends a request and starts the next one's headers
        for i in range(12):
            chunk = one[len(one) // 2 :] if i else b""
            s.sendall(chunk + one[: len(one) // 2])
        s.sendall(one[len(one) // 2 :] + b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert statuses(got) == [206] * 12 + [404]


def test_a_client_that_never_reads_is_held_back(app, catalog) -> None:
    """Pipelining without reading fills the server's queue, then the server stops
    reading from that client (its sends block) instead of queueing without end."""
    flood = socket.create_connection(("127.0.0.1", app.port), timeout=10)
    flood.setblocking(False)
    request = f"GET /{KEY} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * 1000
    sent, blocked = 0, False
    while sent < 256 * 1024 * 1024:
        try:
            sent += flood.send(request)
        except BlockingIOError:
            blocked = True
            break
    try:
        assert blocked, f"the server read {sent} bytes of requests it could not answer"
        status, _, body = app.get("/" + KEY)
        assert status == 200 and body == catalog[KEY]
    finally:
        flood.close()


def test_connection_close_is_not_reset_by_late_client_bytes(app, catalog) -> None:
    key = "titles/81234/movie.mp4"
    with small_window_socket(app.port) as s:
        s.sendall(f"GET /{key} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        time.sleep(0.2)
        s.sendall(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n")  # after our close
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got.split(b"\r\n\r\n", 1)[1] == catalog[key]


def test_keep_alive_and_pipelining(app, catalog) -> None:
    reqs = b"".join(
        f"GET /{key} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-4\r\n\r\n".encode()
        for key in ("titles/81234/movie.mp4", KEY, "titles/81234/master.m3u8")
    )
    raw = raw_request(
        app.port, reqs + b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert statuses(raw) == [206, 206, 206, 404]
    parts = raw.split(b"\r\n\r\n")
    assert parts[1].startswith(catalog["titles/81234/movie.mp4"][:5])


def test_http10_closes_unless_keep_alive(app) -> None:
    raw = raw_request(app.port, f"GET /{KEY} HTTP/1.0\r\n\r\n".encode())
    assert statuses(raw) == [200]
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as s:
        s.sendall(f"HEAD /{KEY} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
        head = s.recv(65536)
        assert b"Connection: keep-alive" in head
        s.sendall(f"HEAD /{KEY} HTTP/1.0\r\n\r\n".encode())
        assert statuses(s.recv(65536)) == [200]


def test_a_hit_on_files_not_in_memory_is_read_in_a_thread(served) -> None:
    """Slice files whose pages left the page cache: the hit's send waits for a
    thread to read them in (``edgefleet_disk_waits_total``), not the event
    loop for the disk; the bytes are the same."""
    app, catalog, tmp = served
    data = catalog[KEY]
    assert app.get("/" + KEY)[2] == data
    wait_for(lambda: app.get("/" + KEY)[1].get("cache-status", "").endswith("hit"))
    before = disk_waits(app)
    assert drop_from_page_cache(tmp / "store") > 0
    assert app.get("/" + KEY, Range=f"bytes=100-{SLICE + 100}")[2] == data[100 : SLICE + 101]
    assert app.get("/" + KEY)[2] == data
    after = disk_waits(app)
    assert after > before
    assert app.get("/" + KEY)[2] == data  # in memory again: nothing to wait for
    assert disk_waits(app) == after


def test_keepalive_timeout_0_turns_keep_alive_off(tmp_path: Path) -> None:
    """As nginx's ``keepalive_timeout 0``: every answer says ``Connection:
    close`` and the connection closes after it, a pipelined request unanswered
    (rather than a keep-alive that the next sweep cuts under a request)."""
    origin = tmp_path / "origin"
    make_catalog(origin)
    app = Appliance(
        ["--store", str(tmp_path / "store"), "--capacity", "64MiB",
         "--origin", f"file://{origin}", "--keepalive-timeout", "0"]
    ).start()  # fmt: skip
    try:
        get = f"GET /{KEY} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        raw = raw_request(app.port, get + get)
        assert statuses(raw) == [200]
        head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        assert b"Connection: close" in head
    finally:
        assert app.stop() == 0


def test_slow_reader_gets_everything(app, catalog) -> None:
    key = "titles/81234/movie.mp4"
    with small_window_socket(app.port) as s:
        s.sendall(f"GET /{key} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        time.sleep(0.5)
        chunks = []
        while chunk := s.recv(1000):
            chunks.append(chunk)
    raw = b"".join(chunks)
    assert raw.split(b"\r\n\r\n", 1)[1] == catalog[key]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    key=st.sampled_from(["titles/81234/movie.mp4", KEY, "titles/81234/master.m3u8"]),
    first=st.integers(0, 6 * SLICE),
    length=st.one_of(st.none(), st.integers(1, 3 * SLICE)),
)
def test_any_range_serves_exactly_the_file_bytes(served, key, first, length) -> None:
    app, catalog, _ = served
    data = catalog[key]
    spec = f"bytes={first}-" if length is None else f"bytes={first}-{first + length - 1}"
    status, headers, body = app.get("/" + key, Range=spec)
    if first >= len(data):
        assert status == 416
        return
    end = len(data) - 1 if length is None else min(first + length - 1, len(data) - 1)
    assert status == 206
    assert headers["content-range"] == f"bytes {first}-{end}/{len(data)}"
    assert body == data[first : end + 1]


def test_cold_partial_range_fetches_only_its_slices(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    catalog = make_catalog(origin)
    app = Appliance(
        ["--store", str(tmp_path / "s"), "--capacity", "64MiB", "--origin", f"file://{origin}",
         "--slice-size", str(SLICE)]
    ).start()  # fmt: skip
    try:
        key = "titles/81234/movie.mp4"  # 5 slices
        status, _, body = app.get("/" + key, Range=f"bytes={2 * SLICE + 1}-{2 * SLICE + 9}")
        assert status == 206 and body == catalog[key][2 * SLICE + 1 : 2 * SLICE + 10]
        time.sleep(0.3)
        assert app.health()["store"]["used_bytes"] == SLICE
    finally:
        assert app.stop() == 0
