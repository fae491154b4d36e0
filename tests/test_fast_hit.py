"""The small hit's shortcuts answer exactly what the general path answers.

A GET of a plain target seen before, for a small stored object, fresh, without
a conditional or Range header, on keep-alive HTTP/1.1, is answered from the
head and body its view joined for this second and sent at once
(docs/appliance.md, "The hit path"). Here the same request is answered both
ways, over plain HTTP and TLS, on the real server and in process: the bytes on
the wire, the access log lines and the metrics must be the same. A
conditional that does not match (``If-None-Match`` of another ETag) goes
through the planner and answers the same 200: that is the general path; so
does a request pipelined behind another (it is queued, not sent at once).
A GET of one range within one slice has a shortcut too; every kind of range
is asked the same ways.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
import trustme
from conftest import SLICE, Appliance, wait_for
from origin_server import OriginServer
from test_appliance_inprocess import InProcess, ask, body_of, request, settle
from test_tls import https_port, issue

from edge.core.signing import sign

SMALL = "titles/81234/master.m3u8"  # 300 bytes: kept in memory
SPACED = "dir with space/ü nicode.ts"  # 5000 bytes, a target with escapes
LARGE = "titles/81234/movie.mp4"  # 5 slices: sent from its files
TARGETS = {
    SMALL: "/titles/81234/master.m3u8",
    SPACED: "/dir%20with%20space/%C3%BC%20nicode.ts",
    LARGE: "/titles/81234/movie.mp4",
}
OTHER_ETAG = '"not-this-one"'


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    return issue(trustme.CA(), d / "a.pem", "localhost", "127.0.0.1")


@pytest.fixture
def served(tmp_path: Path, origin_dir: Path, catalog: dict[str, bytes], cert: Path):
    app = Appliance(
        ["--store", str(tmp_path / "store"), "--capacity", "64MiB",
         "--origin", f"file://{origin_dir}", "--slice-size", str(SLICE),
         "--access-log", str(tmp_path / "access.log"),
         "--tls-listen", "127.0.0.1:0", "--tls-cert", str(cert)]
    ).start()  # fmt: skip
    yield app, https_port(app), tmp_path / "access.log"
    app.stop()


def connect(port: int, tls: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if not tls:
        return sock
    ctx = ssl._create_unverified_context()  # the test's own certificate
    return ctx.wrap_socket(sock, server_hostname="localhost")


class Reader:
    """Whole responses, one after another, from a keep-alive connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def response(self) -> bytes:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, _ = self.buf.partition(b"\r\n\r\n")
        m = re.search(rb"\r\ncontent-length: (\d+)", head, re.IGNORECASE)
        end = len(head) + 4 + (int(m.group(1)) if m else 0)
        while len(self.buf) < end:
            self._more()
        out, self.buf = self.buf[:end], self.buf[end:]
        return out

    def _more(self) -> None:
        chunk = self.sock.recv(1 << 20)
        assert chunk, "connection closed"
        self.buf += chunk


def get(target: str, **headers: str) -> bytes:
    lines = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return f"GET {target} HTTP/1.1\r\nHost: localhost\r\n{lines}\r\n".encode()


def date_of(response: bytes) -> bytes:
    m = re.search(rb"\r\nDate: ([^\r]+)", response)
    assert m is not None
    return m.group(1)


def both_ways(sock: socket.socket, target: str, **headers: str) -> tuple[list[bytes], int]:
    """The same request asked four ways on one connection: the shortcut,
    the planner (a conditional that does not match), and a pipelined pair;
    again if the clock's second turned meanwhile (the Date line changes).
    The four answers, and how many times they were asked for."""
    reader = Reader(sock)
    for rounds in range(1, 6):
        sock.sendall(get(target, **headers))
        got = [reader.response()]
        sock.sendall(get(target, if_none_match=OTHER_ETAG, **headers))
        got.append(reader.response())
        sock.sendall(get(target, **headers) + get(target, **headers))
        got += [reader.response(), reader.response()]
        if len({date_of(r) for r in got}) == 1:
            return got, rounds
    raise AssertionError("the second kept turning")


def settled(read):  # type: ignore[no-untyped-def]
    """``read()`` once it stopped changing: the log and the metrics are
    written once a second."""
    before = read()
    while True:
        time.sleep(1.3)
        now = read()
        if now == before:
            return now
        before = now


def log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def hit_counts(app: Appliance) -> tuple[float, float]:
    """(200 hits answered, body bytes sent on hits) as /_edge/metrics has them."""
    text = app.get("/_edge/metrics")[2].decode()
    requests = sent = 0.0
    for line in text.splitlines():
        if line.startswith("edgefleet_requests_total{") and 'cache="hit"' in line:
            if 'status="200"' in line:
                requests += float(line.rsplit(" ", 1)[1])
        elif line.startswith("edgefleet_sent_bytes_total{") and 'cache="hit"' in line:
            sent += float(line.rsplit(" ", 1)[1])
    return requests, sent


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_the_shortcut_answers_the_bytes_the_general_path_answers(
    served, catalog: dict[str, bytes], tls: bool
) -> None:
    app, tls_port, log = served
    for key, target in TARGETS.items():
        assert app.get(target)[2] == catalog[key]  # stored (a miss)
    wait_for(lambda: all(app.get(t)[0] == 200 for t in TARGETS.values()))
    counted = settled(lambda: hit_counts(app))
    asked = {}
    sock = connect(tls_port if tls else app.port, tls)
    try:
        for key, target in TARGETS.items():
            answers, asked[key] = both_ways(sock, target)
            assert len(set(answers)) == 1, answers  # byte for byte
            assert answers[0].startswith(b"HTTP/1.1 200 OK\r\n")
            assert answers[0].endswith(b"\r\n\r\n" + catalog[key])
            assert b"\r\nCache-Status: edgefleet; hit\r\n" in answers[0]
            assert b"\r\nAccess-Control-Allow-Origin: *\r\n" in answers[0]
            assert b"\r\nAccept-Ranges: bytes\r\n" in answers[0]
    finally:
        sock.close()
    # the access log has the same line for each way but the time and duration
    lines = settled(lambda: log_lines(log))
    for key in TARGETS:
        four = [line for line in lines if line["key"] == key][-4:]
        for line in four:
            assert line.pop("time") and line.pop("duration_ms") >= 0
        assert all(line == four[0] for line in four), four
        assert four[0]["key"] == key and four[0]["status"] == 200 and four[0]["cache"] == "hit"
        assert four[0]["bytes"] == len(catalog[key]) and four[0]["range"] is None
        if tls:
            assert four[0]["tls"] == "TLSv1.3" and four[0]["sni"] == "localhost"
        else:
            assert "tls" not in four[0]
    # and the metrics count each of them once, with its body bytes
    hits = counted[0] + sum(4 * n for n in asked.values())
    sent = counted[1] + sum(4 * n * len(catalog[key]) for key, n in asked.items())
    assert settled(lambda: hit_counts(app)) == (hits, sent)


# (Range, status): one slice, two, a whole slice, open-ended, a suffix, one
# byte, clipped, several, past the end, invalid (ignored: 200)
RANGES = [
    ("bytes=0-99", 206), ("bytes=1000-70000", 206), ("bytes=65536-131071", 206),
    ("bytes=300000-", 206), ("bytes=-100", 206), ("bytes=5-5", 206),
    ("bytes=327000-999999", 206), ("bytes=0-0,5-9", 206), ("bytes=999999-", 416),
    ("bytes=9-5", 200),
]  # fmt: skip


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_single_range_is_answered_as_the_planner_answers_it(
    served, catalog: dict[str, bytes], tls: bool
) -> None:
    """A GET whose only shaping header is a Range of one slice takes the
    shortcut; whatever range it is, the answer is the planner's, byte for
    byte, with the same access-log line (its range included)."""
    app, tls_port, log = served
    data = catalog[LARGE]
    assert len(data) == 5 * SLICE
    assert app.get(TARGETS[LARGE])[2] == data  # a miss, stored behind the answer
    wait_for(lambda: app.get(TARGETS[LARGE])[1]["cache-status"] == "edgefleet; hit")
    sock = connect(tls_port if tls else app.port, tls)
    try:
        for value, status in RANGES:
            answers, _ = both_ways(sock, TARGETS[LARGE], range=value)
            # several ranges: each answer has a multipart boundary of its own
            answers = [re.sub(rb"boundary=(\w+)", rb"boundary=B", a) for a in answers]
            answers = [re.sub(rb"--[0-9a-f]{24}", rb"--B", a) for a in answers]
            assert len(set(answers)) == 1, (value, answers)
            assert answers[0].startswith(b"HTTP/1.1 %d " % status), (value, answers[0][:200])
            head, _, body = answers[0].partition(b"\r\n\r\n")
            m = re.search(rb"\r\nContent-Range: bytes (\d+)-(\d+)/", head)
            if status == 206 and m is not None:
                a, b = int(m.group(1)), int(m.group(2))
                assert body == data[a : b + 1] and b"\r\nCache-Status: edgefleet; hit" in head
    finally:
        sock.close()
    lines = settled(lambda: log_lines(log))
    for value, status in RANGES:
        if status == 200:
            continue  # an ignored Range is not logged as one
        four = [line for line in lines if line["range"] == value][-4:]
        assert len(four) == 4, value
        for line in four:
            assert line.pop("time") and line.pop("duration_ms") >= 0
        assert all(line == four[0] for line in four), four
        assert four[0]["key"] == LARGE and four[0]["status"] == status


def test_the_joined_head_follows_the_clock(served) -> None:
    """The head built once is built again when the Date line changes: over
    five seconds of hits, each answer's Date is the second's (the line is
    made again once a second, so it may lag the clock by about one, more on a busy machine)."""
    app, _, _ = served
    for _ in range(3):  # stored, then its first hit checks the stored bytes
        app.get(TARGETS[SMALL])
    sock = connect(app.port, False)
    dates = []
    try:
        reader = Reader(sock)
        end = time.time() + 5.2
        while time.time() < end:
            asked = time.time()
            sock.sendall(get(TARGETS[SMALL]))
            date = parsedate_to_datetime(date_of(reader.response()).decode()).timestamp()
            dates.append(date)
            assert asked - 3 < date <= time.time(), (asked, date)
            time.sleep(0.05)
    finally:
        sock.close()
    assert len(set(dates)) >= 3


def test_other_requests_still_take_the_general_path(served, catalog: dict[str, bytes]) -> None:
    """What the shortcut leaves alone is answered as before: HEAD, a match, a
    Range, HTTP/1.0, Connection: close."""
    app, _, _ = served
    target = TARGETS[SMALL]
    app.get(target)
    status, headers, body = app.request("HEAD", target)
    assert status == 200 and body == b"" and headers["content-length"] == "300"
    etag = headers["etag"]
    assert app.get(target, if_none_match=etag)[0] == 304
    status, headers, body = app.get(target, range="bytes=10-19")
    assert status == 206 and body == catalog[SMALL][10:20]
    assert headers["content-range"] == "bytes 10-19/300"
    sock = connect(app.port, False)
    try:
        sock.sendall(f"GET {target} HTTP/1.0\r\n\r\n".encode())
        reader = Reader(sock)
        old = reader.response()
        assert old.startswith(b"HTTP/1.1 200 OK\r\n") and old.endswith(catalog[SMALL])
        assert b"\r\nConnection: close\r\n" in old
    finally:
        sock.close()


def test_a_remembered_target_is_checked_once_signing_keys_come(
    tmp_path: Path, origin_dir: Path, catalog: dict[str, bytes]
) -> None:
    """A plain target remembered while no keys were configured needs a token
    as soon as keys are (reloaded on SIGHUP)."""
    conf = tmp_path / "edge.toml"
    store = tmp_path / "store"
    base = f'origin = "file://{origin_dir}"\nslice_size = {SLICE}\n'
    roots = f'[[store]]\npath = "{store}"\ncapacity = "64MiB"\n'
    conf.write_text(base + roots)
    app = Appliance(["--config", str(conf)]).start()
    try:
        target = TARGETS[SMALL]
        for _ in range(3):
            assert app.get(target)[0] == 200  # remembered as plain
        secret = "a-secret-0123456789"
        conf.write_text(base + f'url_signing_keys = {{ k = "{secret}" }}\n' + roots)
        assert app.proc is not None
        os.kill(app.proc.pid, signal.SIGHUP)
        wait_for(lambda: app.get(target)[0] == 403)
        token = sign(SMALL, "k", secret.encode(), int(time.time()) + 600)
        status, _, body = app.get(f"{target}?token={token}")
        assert status == 200 and body == catalog[SMALL]
    finally:
        assert app.stop() == 0


async def test_in_process_the_shortcut_is_the_planners_answer(
    tmp_path: Path,
) -> None:
    """From an HTTP origin with a freshness lifetime (an Age line that grows),
    in process: the shortcut's head and joined bytes are the planner's."""
    origin = OriginServer().start()
    try:
        origin.put("a.ts", b"abc" * 100, cache_control="max-age=60", headers={"Age": "7"})
        async with InProcess(tmp_path, origin.url) as app:
            await ask(app, request("/a.ts"))
            await settle(app)
            for _ in range(2):
                fast = await ask(app, request("/a.ts"))
                general = await ask(app, request("/a.ts", if_none_match=OTHER_ETAG))
                assert fast.wire is not None and general.wire is None
                assert fast.head == general.head and b"\r\nAge: " in fast.head
                assert fast.wire == general.head + await body_of(general)
                assert (fast.status, fast.cache, fast.key, fast.range, fast.body_length) == (
                    general.status, general.cache, general.key, general.range,
                    general.body_length,
                )  # fmt: skip
                time.sleep(1.1)  # the Age line changes: the joined head follows
    finally:
        origin.stop()
