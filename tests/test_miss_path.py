"""The miss path against a real HTTP origin on loopback: one fetch per slice,
streaming, misbehaving origins, freshness, tiers. Counts are the origin's own."""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import SLICE, Appliance, metric, small_window_socket, wait_for
from origin_server import OriginServer

TOKEN = "0123456789abcdef-token"


@pytest.fixture
def origin():
    server = OriginServer().start()
    yield server
    server.stop()


def start(tmp: Path, *origins: str, extra: tuple[str, ...] = ()) -> Appliance:
    args = ["--store", str(tmp / "store"), "--capacity", "64MiB", "--slice-size", str(SLICE),
            "--admin-token", TOKEN, "--origin-retries", "0", *extra]  # fmt: skip
    for url in origins:
        args += ["--origin", url]
    return Appliance(args).start()


def used(app: Appliance) -> int:
    return app.health()["store"]["used_bytes"]


def test_cold_reads_fetch_each_slice_once(tmp_path: Path, origin: OriginServer) -> None:
    objects = {
        "small.m3u8": random.randbytes(300),
        "empty.ts": b"",
        "one.m4s": random.randbytes(SLICE),
        "big.mp4": random.randbytes(9 * SLICE + 123),
    }
    for key, data in objects.items():
        origin.put(key, data)
    app = start(tmp_path, origin.url)
    try:
        status, _, body = app.get("/big.mp4", Range=f"bytes={SLICE - 5}-{2 * SLICE + 5}")
        assert status == 206 and body == objects["big.mp4"][SLICE - 5 : 2 * SLICE + 6]
        for key, data in objects.items():
            status, headers, body = app.get("/" + key)
            assert status == 200 and body == data, key
            assert headers["etag"] == origin.objects[key].etag
        for key, data in objects.items():  # hits now
            assert app.get("/" + key)[2] == data
        gets = origin.asked("GET", "/big.mp4")
        assert sorted(g.range for g in gets) == sorted(
            f"bytes={i * SLICE}-{min((i + 1) * SLICE, len(objects['big.mp4'])) - 1}"
            for i in range(10)
        )
        # what the object is came with the first slice's answer: no HEAD
        assert origin.asked("HEAD") == []
        # an empty object has no first slice (416): it is learnt from its GET
        # without a Range
        assert [g.status for g in origin.asked("GET", "/empty.ts")] == [416, 200]
        wait_for(lambda: used(app) == sum(len(v) for v in objects.values()))
        assert app.get("/missing.ts")[0] == 404
    finally:
        assert app.stop() == 0


def test_a_cold_miss_learns_the_object_from_its_first_slice(
    tmp_path: Path, origin: OriginServer
) -> None:
    data = random.randbytes(4 * SLICE + 10)
    origin.put("movie.mp4", data, etag='"m1"')
    origin.put("other.mp4", data[::-1])
    app = start(tmp_path, origin.url)
    try:
        # a range in the third slice: that slice's GET tells what the object is
        status, headers, body = app.get("/movie.mp4", Range=f"bytes={2 * SLICE + 1}-")
        assert status == 206 and body == data[2 * SLICE + 1 :]
        assert headers["content-range"] == f"bytes {2 * SLICE + 1}-{len(data) - 1}/{len(data)}"
        assert headers["etag"] == '"m1"'
        gets = origin.asked("GET", "/movie.mp4")
        assert gets[0].range == f"bytes={2 * SLICE}-{3 * SLICE - 1}"
        assert "If-Match" not in gets[0].headers  # nothing to match yet
        assert all(g.headers.get("If-Match") == '"m1"' for g in gets[1:])
        assert len(gets) == 3 and origin.asked("HEAD") == []
        # a HEAD wants no bytes: it is learnt from a GET of the first byte (an
        # origin's HEAD need not say the length)
        status, headers, _ = app.request("HEAD", "/other.mp4")
        assert status == 200 and headers["content-length"] == str(len(data))
        assert [g.range for g in origin.asked("GET", "/other.mp4")] == ["bytes=0-0"]
        assert origin.asked("HEAD") == []
        assert app.get("/other.mp4")[2] == data[::-1]
        assert len(origin.asked("GET", "/other.mp4")) == 6
    finally:
        assert app.stop() == 0


def test_fifty_players_one_cold_object(tmp_path: Path, origin: OriginServer) -> None:
    data = random.randbytes(8 * SLICE - 1000)
    origin.put("title.mp4", data)
    app = start(tmp_path, origin.url)
    try:

        def play(_: int) -> bytes:
            return app.get("/title.mp4")[2]

        with ThreadPoolExecutor(50) as pool:
            bodies = list(pool.map(play, range(50)))
        assert all(b == data for b in bodies)
        assert origin.asked("HEAD") == []
        gets = origin.asked("GET")
        assert len(gets) == 8 and len({g.range for g in gets}) == 8
    finally:
        assert app.stop() == 0


def test_first_byte_does_not_wait_for_the_slice(tmp_path: Path, origin: OriginServer) -> None:
    data = random.randbytes(SLICE)
    origin.put("seg.m4s", data)
    hold = threading.Event()
    origin.faults.hold = hold  # the origin sends 1 KiB, then waits
    app = start(tmp_path, origin.url)
    try:
        with socket.create_connection(("127.0.0.1", app.port), timeout=10) as s:
            s.sendall(b"GET /seg.m4s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got = b""
            while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < 1024:
                got += s.recv(65536)
            # the player has the first KiB while the origin still holds the rest
            assert not hold.is_set()
            assert got.split(b"\r\n\r\n", 1)[1][:1024] == data[:1024]
            hold.set()
            while chunk := s.recv(65536):
                got += chunk
        assert got.split(b"\r\n\r\n", 1)[1] == data
    finally:
        hold.set()
        assert app.stop() == 0


def test_slices_fetched_ahead_are_sent_from_memory(tmp_path: Path, origin: OriginServer) -> None:
    """A response sends the slices it fetched ahead from the bytes it holds, even
    once they are stored: reading them back from the store would read the disk
    on the event loop (slices are written past the page cache). Their files
    are overwritten while the response waits on a player that does not read:
    a response that read them back would send what the disk holds now."""
    N = 200  # more than the kernel's socket buffers hold between the two
    data = random.randbytes(N * SLICE)
    origin.put("film.mp4", data)
    app = start(tmp_path, origin.url)
    try:
        s = small_window_socket(app.port, 4096)  # the player reads nothing yet
        s.sendall(b"GET /film.mp4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        before, now = -1, used(app)
        while now != before or now == 0:  # until the response waits and nothing lands
            time.sleep(0.3)
            before, now = now, used(app)
        held = [p for p in (tmp_path / "store").rglob("slices/*/*/*") if p.is_file()]
        assert 0 < len(held) < N  # the response waits on a slice before the last
        for p in held:
            with open(p, "r+b") as f:
                f.write(bytes(SLICE))
        got = b""
        while chunk := s.recv(1 << 20):
            got += chunk
        s.close()
        assert got.split(b"\r\n\r\n", 1)[1] == data
        assert len(origin.asked("GET", "/film.mp4")) == N  # each slice asked for once
    finally:
        assert app.stop() == 0


def test_a_player_that_leaves_does_not_cancel_the_fetch(
    tmp_path: Path, origin: OriginServer
) -> None:
    data = random.randbytes(SLICE)
    origin.put("seg.m4s", data)
    hold = threading.Event()
    origin.faults.hold = hold
    app = start(tmp_path, origin.url)
    try:
        s = socket.create_connection(("127.0.0.1", app.port), timeout=10)
        s.sendall(b"GET /seg.m4s HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        s.close()  # gone mid-body
        results = []
        t = threading.Thread(target=lambda: results.append(app.get("/seg.m4s")))
        t.start()
        time.sleep(0.2)
        hold.set()
        t.join(20)
        assert results[0][0] == 200 and results[0][2] == data
        assert len(origin.asked("GET")) == 1
        wait_for(lambda: used(app) == SLICE)
    finally:
        hold.set()
        assert app.stop() == 0


def test_players_at_any_offset_while_a_cold_object_is_indexed(
    tmp_path: Path, origin: OriginServer
) -> None:
    # A cold miss is answered before its index entry is committed: every player
    # that comes meanwhile, wherever its range starts, still shares one origin
    # fetch per slice, and what is stored is whole.
    data = random.randbytes(6 * SLICE + 77)
    origin.put("title.mp4", data)
    hold = threading.Event()
    origin.faults.hold = hold  # each answer sends 1 KiB, then waits
    app = start(tmp_path, origin.url)
    try:
        starts = [0, 0, 10, SLICE - 1, SLICE, 2 * SLICE + 3, 5 * SLICE, 6 * SLICE + 76] * 3

        def play(a: int) -> tuple[int, bytes]:
            status, _, body = app.get("/title.mp4", Range=f"bytes={a}-")
            return status, body

        with ThreadPoolExecutor(len(starts)) as pool:
            results = pool.map(play, starts)
            time.sleep(0.3)
            hold.set()
            for a, (status, body) in zip(starts, results, strict=True):
                assert status == 206 and body == data[a:], a
        assert origin.asked("HEAD") == []
        gets = [g.range for g in origin.asked("GET")]
        assert len(gets) == len(set(gets)) == 7  # one per slice
        wait_for(lambda: used(app) == len(data))
        scrub = app.request("POST", "/_edge/admin/scrub", {"Authorization": f"Bearer {TOKEN}"})
        assert json.loads(scrub[2])["failures"] == 0
        assert app.get("/title.mp4")[2] == data  # from the store now
        assert len(origin.asked("GET")) == 7
    finally:
        hold.set()
        assert app.stop() == 0


def test_a_cold_miss_is_answered_while_another_writer_holds_the_index(
    tmp_path: Path, origin: OriginServer
) -> None:
    # The first byte never waits for the object's index entry: not for its
    # commit's fsync, nor for the write lock another writer holds (the fill, a
    # slice commit, an operator's sqlite3 shell). Its slices are stored once
    # the entry is committed.
    data = random.randbytes(3 * SLICE + 5)
    origin.put("seg.m4s", data)
    app = start(tmp_path, origin.url)
    holder = sqlite3.connect(tmp_path / "store" / "index.sqlite", isolation_level=None)
    try:
        assert app.get("/_edge/health")[0] == 200
        holder.execute("BEGIN IMMEDIATE")  # the index's write lock, held
        conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
        conn.request("GET", "/seg.m4s")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == data
        conn.close()
        assert used(app) == 0  # nothing stored while the lock is held
        holder.execute("ROLLBACK")
        wait_for(lambda: used(app) == len(data))
        assert app.get("/seg.m4s")[2] == data
        assert len(origin.asked("GET")) == 4  # one per slice, stored after all
    finally:
        with contextlib.suppress(sqlite3.Error):
            holder.execute("ROLLBACK")
        holder.close()
        assert app.stop() == 0


def test_a_store_that_falls_behind_holds_no_more_than_its_backlog(
    tmp_path: Path, origin: OriginServer
) -> None:
    # While the index's write lock is held (a fill, an operator's sqlite3
    # shell) or the disks are slow, missed slices wait in memory for the
    # store. At most --store-backlog of them: the others are served and not
    # stored, and fetched again when next asked for. Players get every byte.
    objects = {f"t/{n}.m4s": random.randbytes(4 * SLICE) for n in range(12)}
    for key, data in objects.items():
        origin.put(key, data)
    backlog = 8 * SLICE
    app = start(tmp_path, origin.url, extra=("--store-backlog", str(backlog)))
    holder = sqlite3.connect(tmp_path / "store" / "index.sqlite", isolation_level=None)
    try:
        assert app.get("/_edge/health")[0] == 200
        holder.execute("BEGIN IMMEDIATE")  # the store's commits wait
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda k: app.get("/" + k), objects))
        assert [(status, body) for status, _, body in got] == [(200, d) for d in objects.values()]
        slices = 4 * len(objects)
        wait_for(lambda: metric(app, "edgefleet_store_skipped_slices_total") == slices - 8)
        wait_for(lambda: metric(app, "edgefleet_store_backlog_bytes") == backlog)
        holder.execute("ROLLBACK")
        wait_for(lambda: metric(app, "edgefleet_store_backlog_bytes") == 0)
        assert used(app) == backlog  # what waited is stored; the rest was let go
        assert len(origin.asked("GET")) == slices
        for key, data in objects.items():  # the skipped slices are misses again
            assert app.get("/" + key)[2] == data
        assert len(origin.asked("GET")) == 2 * slices - 8
        # the backlog still holds for them: each is stored, or counted as skipped
        skipped = slices - 8
        wait_for(
            lambda: (
                used(app) // SLICE + metric(app, "edgefleet_store_skipped_slices_total") - skipped
                == slices
            )
        )
        assert metric(app, "edgefleet_store_write_failures_total") == 0
    finally:
        with contextlib.suppress(sqlite3.Error):
            holder.execute("ROLLBACK")
        holder.close()
        assert app.stop() == 0


def test_an_object_replaced_while_its_first_slice_streams(
    tmp_path: Path, origin: OriginServer
) -> None:
    # The player has its first bytes before the object is indexed; the origin
    # then replaces the object and cuts the answer. The resumed read finds
    # another ETag: the player gets a short body, the old version is dropped
    # from the store, and the next player gets the new one whole.
    old = random.randbytes(SLICE)
    origin.put("seg.m4s", old, etag='"old"')
    hold = threading.Event()
    origin.faults.hold = hold
    origin.faults.drop_after = 20_000
    app = start(tmp_path, origin.url, extra=("--origin-retries", "1"))
    try:
        with socket.create_connection(("127.0.0.1", app.port), timeout=10) as s:
            s.sendall(b"GET /seg.m4s HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < 1024:
                got += s.recv(65536)
            assert got.startswith(b"HTTP/1.1 200") and b'etag: "old"' in got.lower()
            new = random.randbytes(SLICE)
            origin.put("seg.m4s", new, etag='"new"')
            hold.set()
            while chunk := s.recv(65536):
                got += chunk
        body = got.split(b"\r\n\r\n", 1)[1]
        assert len(body) < SLICE and body == old[: len(body)]
        gets = origin.asked("GET", "/seg.m4s")
        assert gets[1].headers.get("If-Match") == '"old"' and gets[1].status == 412
        status, headers, body = app.get("/seg.m4s")
        assert status == 200 and body == new and headers["etag"] == '"new"'
        wait_for(lambda: used(app) == SLICE)
        scrub = app.request("POST", "/_edge/admin/scrub", {"Authorization": f"Bearer {TOKEN}"})
        assert json.loads(scrub[2])["failures"] == 0
        assert app.get("/seg.m4s")[2] == new
        assert len(origin.asked("GET", "/seg.m4s")) == 3
    finally:
        hold.set()
        assert app.stop() == 0


def test_origin_errors_are_retried_passed_through_and_hits_keep_flowing(
    tmp_path: Path, origin: OriginServer
) -> None:
    origin.put("hit.ts", b"h" * 1000)
    origin.put("cold.ts", b"c" * 1000)
    app = start(tmp_path, origin.url, extra=("--origin-retries", "2"))
    try:
        assert app.get("/hit.ts")[0] == 200
        origin.faults.fail = 3  # the first GET and both retries
        status, headers, body = app.get("/cold.ts")
        assert status == 500 and body == b"origin trouble\n"  # the origin's own answer
        assert "fwd=uri-miss" in headers["cache-status"]
        assert len(origin.asked("GET", "/cold.ts")) == 3
        assert app.get("/hit.ts") == app.get("/hit.ts") and app.get("/hit.ts")[0] == 200
        assert app.get("/cold.ts")[2] == b"c" * 1000  # the origin is back
    finally:
        assert app.stop() == 0


def test_a_hanging_origin_gets_504(tmp_path: Path, origin: OriginServer) -> None:
    origin.put("x.ts", b"x")
    origin.faults.hang = True
    app = start(tmp_path, origin.url, extra=("--origin-read-timeout", "0.5"))
    try:
        status, _, body = app.get("/x.ts")
        assert status == 504 and b"did not answer in time" in body
        assert used(app) == 0
    finally:
        assert app.stop() == 0


def test_origin_dies_mid_transfer(tmp_path: Path, origin: OriginServer) -> None:
    data = random.randbytes(SLICE)
    origin.put("seg.m4s", data)
    origin.put("seg2.m4s", data[::-1])
    app = start(tmp_path, origin.url, extra=("--origin-retries", "1"))
    try:
        # with a retry: resumed where the first attempt broke off (learnt by a
        # HEAD first, so the GET's bytes are read as they come)
        assert app.request("HEAD", "/seg.m4s")[0] == 200
        origin.faults.drop_after = 20_000
        status, _, body = app.get("/seg.m4s")
        assert status == 200 and body == data
        gets = origin.asked("GET", "/seg.m4s")[1:]  # after the HEAD's GET of byte 0
        assert [g.range for g in gets] == [f"bytes=0-{SLICE - 1}", f"bytes=20000-{SLICE - 1}"]
        assert gets[1].headers.get("If-Match") == origin.objects["seg.m4s"].etag
        wait_for(lambda: used(app) == SLICE)
    finally:
        assert app.stop() == 0
    # without one: the player sees a short body, nothing torn is stored
    app = start(tmp_path, origin.url, extra=("--origin-retries", "0"))
    try:
        assert app.request("HEAD", "/seg2.m4s")[0] == 200
        origin.faults.drop_after = 20_000
        with socket.create_connection(("127.0.0.1", app.port), timeout=10) as s:
            s.sendall(b"GET /seg2.m4s HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while chunk := s.recv(65536):
                got += chunk
        assert got.startswith(b"HTTP/1.1 200") and len(got.split(b"\r\n\r\n", 1)[1]) < SLICE
        time.sleep(0.3)
        assert used(app) == SLICE  # only seg.m4s
        scrub = app.request("POST", "/_edge/admin/scrub", {"Authorization": f"Bearer {TOKEN}"})
        assert json.loads(scrub[2])["failures"] == 0
    finally:
        assert app.stop() == 0


def test_a_changed_object_is_never_mixed(tmp_path: Path, origin: OriginServer) -> None:
    old = random.randbytes(4 * SLICE)
    origin.put("movie.mp4", old, etag='"old"')
    app = start(tmp_path, origin.url)
    try:
        assert app.get("/movie.mp4", Range="bytes=0-99")[2] == old[:100]
        new = random.randbytes(4 * SLICE)
        origin.put("movie.mp4", new, etag='"new"')
        status, headers, body = app.get("/movie.mp4", Range=f"bytes={3 * SLICE}-{3 * SLICE + 99}")
        assert status == 206 and body == new[3 * SLICE : 3 * SLICE + 100]
        assert headers["etag"] == '"new"'
        status, headers, body = app.get("/movie.mp4")
        assert body == new and headers["etag"] == '"new"'
    finally:
        assert app.stop() == 0


def test_404_is_remembered_briefly(tmp_path: Path, origin: OriginServer) -> None:
    app = start(tmp_path, origin.url, extra=("--negative-ttl", "1s"))
    try:
        for _ in range(3):
            assert app.get("/nope.ts")[0] == 404
        assert len(origin.asked("GET", "/nope.ts")) == 1 and origin.asked("HEAD") == []
        origin.put("nope.ts", b"now it exists")
        time.sleep(1.1)
        assert app.get("/nope.ts")[2] == b"now it exists"
    finally:
        assert app.stop() == 0


def test_several_origins_in_order(tmp_path: Path, origin: OriginServer) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()  # nothing listens there
    origin.put("x.ts", b"from the second origin")
    app = start(tmp_path, dead_url, origin.url)
    try:
        assert app.get("/x.ts")[2] == b"from the second origin"
    finally:
        assert app.stop() == 0


def test_the_breaker_stops_asking_a_failing_origin(tmp_path: Path, origin: OriginServer) -> None:
    origin.faults.fail = 1000
    app = start(
        tmp_path, origin.url, extra=("--breaker-failures", "3", "--breaker-cooldown", "30s")
    )
    try:
        # the origin's 500s are passed through until the breaker opens
        assert [app.get(f"/k{i}.ts")[0] for i in range(8)] == [500] * 3 + [502] * 5
        assert len(origin.log) == 3  # then the breaker answered for it
        text = app.get("/_edge/metrics")[2].decode()
        assert 'result="breaker_open"' in text
    finally:
        assert app.stop() == 0


def test_freshness_and_revalidation(tmp_path: Path, origin: OriginServer) -> None:
    origin.put("live.m3u8", b"#EXTM3U v1\n", cache_control="max-age=1")
    origin.put("private.m3u8", b"#EXTM3U mine\n", cache_control="private")
    app = start(tmp_path, origin.url)
    try:
        assert app.get("/live.m3u8")[2] == b"#EXTM3U v1\n"
        assert app.get("/live.m3u8")[2] == b"#EXTM3U v1\n"  # fresh: a hit
        assert len(origin.log) == 1  # the GET that told what it is
        time.sleep(1.1)
        assert app.get("/live.m3u8")[2] == b"#EXTM3U v1\n"
        # revalidated by a conditional GET of the first byte
        revalidations = origin.asked("GET", "/live.m3u8")[1:]
        assert len(revalidations) == 1 and revalidations[0].status == 304
        assert revalidations[0].headers.get("If-None-Match") == origin.objects["live.m3u8"].etag
        assert origin.asked("HEAD") == []  # the stored body was kept
        # a new version at the origin replaces it once stale
        origin.put("live.m3u8", b"#EXTM3U v2\n", cache_control="max-age=1")
        time.sleep(1.1)
        assert app.get("/live.m3u8")[2] == b"#EXTM3U v2\n"
        # private: fetched for each request, never stored
        for _ in range(2):
            assert app.get("/private.m3u8")[2] == b"#EXTM3U mine\n"
        assert len(origin.asked("GET", "/private.m3u8")) == 2
        inventory = app.get("/_edge/inventory")[2].decode()
        assert "private.m3u8" not in inventory
    finally:
        assert app.stop() == 0


def test_stale_if_error(tmp_path: Path, origin: OriginServer) -> None:
    origin.put("a.m3u8", b"A", cache_control="max-age=1, stale-if-error=60")
    origin.put("b.m3u8", b"B", cache_control="max-age=1, must-revalidate, stale-if-error=60")
    app = start(tmp_path, origin.url)
    try:
        assert app.get("/a.m3u8")[2] == b"A" and app.get("/b.m3u8")[2] == b"B"
        time.sleep(1.1)
        origin.faults.fail = 1000
        status, _, body = app.get("/a.m3u8")
        assert status == 200 and body == b"A"  # stale, because the origin is failing
        assert app.get("/b.m3u8")[0] == 500  # must-revalidate: never stale
    finally:
        assert app.stop() == 0


def test_tiered_appliances(tmp_path: Path, origin: OriginServer) -> None:
    data = random.randbytes(3 * SLICE + 7)
    origin.put("movie.mp4", data)
    parent = start(tmp_path / "parent", origin.url)
    child = start(tmp_path / "child", parent.url(""))
    try:
        status, headers, body = child.get("/movie.mp4", Range=f"bytes={SLICE}-{2 * SLICE}")
        assert status == 206 and body == data[SLICE : 2 * SLICE + 1]
        assert child.get("/movie.mp4")[2] == data
        assert child.get("/movie.mp4")[2] == data
        assert headers["etag"] == origin.objects["movie.mp4"].etag
        assert len(origin.asked("GET")) == 4  # the origin saw each slice once, from the parent
        wait_for(lambda: used(child) == len(data) and used(parent) == len(data))
    finally:
        assert child.stop() == 0
        assert parent.stop() == 0


def test_age_is_sent_for_content_with_a_lifetime(tmp_path: Path, origin: OriginServer) -> None:
    origin.put("live.m3u8", b"#EXTM3U\n", cache_control="max-age=60")
    origin.put("vod.mp4", b"v" * 100)  # no caching headers: heuristic lifetime
    app = start(tmp_path, origin.url)
    try:
        app.get("/live.m3u8")
        time.sleep(1.1)
        _, headers, _ = app.get("/live.m3u8")
        assert 1 <= int(headers["age"]) <= 3
        assert headers["cache-control"] == "max-age=60"
    finally:
        assert app.stop() == 0


def inventory(app: Appliance) -> set[str]:
    return {json.loads(x)["key"] for x in app.get("/_edge/inventory")[2].splitlines()}


@pytest.mark.parametrize("admission", ["doorkeeper", "off"])
def test_admission_under_capacity_pressure(
    tmp_path: Path, origin: OriginServer, admission: str
) -> None:
    for i in range(8):
        origin.put(f"old{i}.m4s", random.randbytes(SLICE))
    new = random.randbytes(SLICE)
    origin.put("new.m4s", new)
    app = start(
        tmp_path, origin.url, extra=("--capacity", str(8 * SLICE), "--admission", admission)
    )
    try:
        for i in range(8):
            assert app.get(f"/old{i}.m4s")[0] == 200
        wait_for(lambda: used(app) == 8 * SLICE)
        time.sleep(1.2)  # the appliance looks at its fill once a second
        assert app.get("/new.m4s")[2] == new
        time.sleep(0.3)
        if admission == "doorkeeper":
            # a one-hit wonder evicts nothing
            assert "new.m4s" not in inventory(app) and len(inventory(app)) == 8
            assert app.get("/new.m4s")[2] == new  # asked again: now it earns a place
        wait_for(lambda: "new.m4s" in inventory(app))
        assert used(app) <= 8 * SLICE
    finally:
        assert app.stop() == 0


def test_an_object_only_a_later_origin_has(tmp_path: Path, origin: OriginServer) -> None:
    first = OriginServer().start()  # up, but without the object
    try:
        data = random.randbytes(3 * SLICE)
        origin.put("only_b.ts", data, cache_control="max-age=1")
        app = start(tmp_path, first.url, origin.url)
        try:
            assert app.get("/only_b.ts")[2] == data
            assert len(origin.asked("GET")) == 3
            assert [a.status for a in first.log] == [404]  # asked once, did not have it
            time.sleep(1.1)  # stale: revalidated where it came from
            status, _, body = app.get("/only_b.ts")
            assert status == 200 and body == data
            assert origin.asked("GET")[-1].status == 304
        finally:
            assert app.stop() == 0
    finally:
        first.stop()


def test_content_that_is_not_stored_is_fetched_once_per_request(
    tmp_path: Path, origin: OriginServer
) -> None:
    data = random.randbytes(6 * SLICE)
    origin.put("mine.mp4", data, cache_control="private")
    app = start(tmp_path, origin.url)
    try:
        assert app.get("/mine.mp4")[2] == data
        assert len(origin.asked("GET")) == 6
    finally:
        assert app.stop() == 0


def test_an_origin_that_ignores_if_match_never_makes_a_torn_object(
    tmp_path: Path, origin: OriginServer
) -> None:
    import http.client

    v1, v2 = random.randbytes(3 * SLICE), random.randbytes(3 * SLICE)
    origin.put("movie.mp4", v1, etag='"v1"')
    app = start(tmp_path, origin.url)
    try:
        assert app.get("/movie.mp4", Range="bytes=0-9")[2] == v1[:10]  # slice 0 stored
        wait_for(lambda: used(app) == SLICE)
        origin.put("movie.mp4", v2, etag='"v2"')  # same size, new version
        origin.faults.ignore_preconditions = True
        try:
            body = app.get("/movie.mp4")[2]
        except http.client.IncompleteRead:
            body = None  # cut off once the change showed: the honest end
        assert body in (None, v1, v2)
        _, headers, body = app.get("/movie.mp4")
        assert body == v2 and headers["etag"] == '"v2"'
        assert app.get("/movie.mp4")[2] == v2  # and that is what was stored
    finally:
        assert app.stop() == 0


def test_an_origin_error_on_unstored_content_is_passed_on(
    tmp_path: Path, origin: OriginServer
) -> None:
    origin.put("mine.m3u8", b"#EXTM3U\n", cache_control="no-store")
    app = start(tmp_path, origin.url)
    try:
        assert app.get("/mine.m3u8")[2] == b"#EXTM3U\n"
        origin.faults.fail_gets = 1
        status, _, body = app.get("/mine.m3u8")
        assert status == 500 and body == b"origin trouble\n"
    finally:
        assert app.stop() == 0
