"""Restarts, crashes, workers and signals: the store survives, nothing torn is served."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import (
    SLICE,
    Appliance,
    make_catalog,
    mount_tmpfs,
    small_window_socket,
    wait_for,
)

from edge.store.files import read_trailer

TOKEN = "0123456789abcdef-token"


def serve_args(tmp: Path, origin: Path, *extra: str) -> list[str]:
    return [
        "--store", str(tmp / "store"),
        "--capacity", "256MiB",
        "--origin", f"file://{origin}",
        "--slice-size", str(SLICE),
        "--access-log", str(tmp / "access.log"),
        "--admin-token", TOKEN,
        *extra,
    ]  # fmt: skip


def files_under(path: Path) -> dict[str, int]:
    """Each file under ``path`` and its size (a slice file's: before its trailer)."""
    out = {}
    for p in path.rglob("*"):
        if p.is_file():
            found = read_trailer(str(p))
            out[str(p)] = p.stat().st_size - (found[1] if found else 0)
    return out


def test_restart_keeps_every_object_as_a_hit(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    catalog = make_catalog(origin)
    total = sum(len(v) for v in catalog.values())
    app = Appliance(serve_args(tmp_path, origin)).start()
    for key in catalog:
        assert app.get("/" + quote(key))[0] == 200
    wait_for(lambda: app.health()["store"]["used_bytes"] == total)
    assert app.stop() == 0
    # the origin goes away: everything must now come from the store
    for key in catalog:
        (origin / key).unlink()
    (tmp_path / "access.log").unlink()
    app = Appliance(serve_args(tmp_path, origin)).start()
    try:
        for key, data in catalog.items():
            status, _, body = app.get("/" + quote(key))
            assert status == 200 and body == data, key
        log = wait_for(lambda: _content_lines(tmp_path / "access.log", len(catalog)))
        assert {line["cache"] for line in log} == {"hit"}
    finally:
        assert app.stop() == 0


def _content_lines(path: Path, n: int):
    if not path.exists():
        return None
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    lines = [x for x in lines if not x["key"].startswith("_edge/")]
    return lines if len(lines) >= n else None


def _hammer(port: int, keys: list[str], stop: threading.Event) -> None:
    rng = random.Random()
    while not stop.is_set():
        key = rng.choice(keys)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(f"GET /{key} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                while s.recv(1 << 16):
                    pass
        except OSError:
            time.sleep(0.01)


def test_sigkill_during_writes_leaves_a_consistent_store(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    rng = random.Random(7)
    catalog = {}
    for i in range(40):
        key = f"titles/{i}/seg.m4s"
        data = rng.randbytes(rng.randint(1, 6) * SLICE - rng.randint(0, 999))
        (origin / f"titles/{i}").mkdir(parents=True)
        (origin / key).write_bytes(data)
        catalog[key] = data
    keys = list(catalog)
    for round_no in range(3):
        app = Appliance(serve_args(tmp_path, origin, "--workers", "2")).start()
        stop = threading.Event()
        threads = [threading.Thread(target=_hammer, args=(app.port, keys, stop)) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.4 + 0.3 * round_no)
        app.kill()  # SIGKILL to the whole process group, mid-write
        stop.set()
        for t in threads:
            t.join()
    app = Appliance(serve_args(tmp_path, origin)).start()
    try:
        store = tmp_path / "store"
        assert not list((store / "tmp").iterdir()), "temp files survived recovery"
        on_disk = files_under(store / "slices")
        assert app.health()["store"]["used_bytes"] == sum(on_disk.values())
        status, _, body = app.request(
            "POST", "/_edge/admin/scrub", {"Authorization": f"Bearer {TOKEN}"}
        )
        report = json.loads(body)
        assert status == 200 and report["failures"] == 0
        assert report["slices_checked"] == len(on_disk)
        for key, data in catalog.items():
            status, _, body = app.get("/" + key)
            assert status == 200 and body == data, key
    finally:
        assert app.stop() == 0


def test_workers_share_the_port_the_store_and_the_metrics(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    catalog = make_catalog(origin)
    key = "titles/81234/movie.mp4"
    app = Appliance(serve_args(tmp_path, origin, "--workers", "2")).start()
    try:
        assert app.health()["workers"] == 2
        n = 60
        for _ in range(n):
            status, _, body = app.get("/" + key)  # a new connection each time
            assert status == 200 and body == catalog[key]

        def served() -> float:
            text = app.get("/_edge/metrics")[2].decode()
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("edgefleet_requests_total{") and 'status="200"' in line
            )

        # summed over both workers; each adds its counts once a second
        wait_for(lambda: served() >= n)
        # one worker purges; the other must not serve the purged version
        (origin / key).write_bytes(b"new version")
        status, _, _ = app.request(
            "POST", f"/_edge/admin/purge?key={key}", {"Authorization": f"Bearer {TOKEN}"}
        )
        assert status == 200
        for _ in range(20):
            status, _, body = app.get("/" + key)
            assert status == 200 and body == b"new version"
    finally:
        assert app.stop() == 0


def test_a_crashed_worker_is_replaced(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    catalog = make_catalog(origin)
    app = Appliance(serve_args(tmp_path, origin, "--workers", "2")).start()
    try:
        assert app.proc is not None
        children = Path(f"/proc/{app.proc.pid}/task/{app.proc.pid}/children")
        before = wait_for(lambda: len(children.read_text().split()) == 2 and children.read_text())
        before = before.split()
        assert app.get("/titles/81234/master.m3u8")[0] == 200
        os.kill(int(before[0]), signal.SIGKILL)
        wait_for(lambda: len(set(children.read_text().split()) - set(before)) == 1)
        key = "titles/81234/master.m3u8"
        for _ in range(10):
            status, _, body = app.get("/" + key)
            assert status == 200 and body == catalog[key]
    finally:
        assert app.stop() == 0


def test_sigterm_finishes_in_flight_responses(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    data = random.randbytes(8 * 1024 * 1024)
    origin.mkdir()
    (origin / "big.mp4").write_bytes(data)
    app = Appliance(serve_args(tmp_path, origin, "--grace", "20s")).start()
    assert app.get("/big.mp4")[2] == data  # now a hit
    s = small_window_socket(app.port)
    s.sendall(b"GET /big.mp4 HTTP/1.1\r\nHost: x\r\n\r\n")
    first = s.recv(1024)
    assert first.startswith(b"HTTP/1.1 200")
    assert app.proc is not None
    os.kill(app.proc.pid, signal.SIGTERM)
    time.sleep(0.3)
    # no new connections once stopping
    try:
        socket.create_connection(("127.0.0.1", app.port), timeout=2).close()
        refused = False
    except OSError:
        refused = True
    assert refused
    # a supervisor repeating itself neither cuts the response nor the clean exit
    os.kill(app.proc.pid, signal.SIGTERM)
    chunks = [first]
    while chunk := s.recv(1 << 16):
        chunks.append(chunk)
    s.close()
    body = b"".join(chunks).split(b"\r\n\r\n", 1)[1]
    assert body == data
    assert app.stop() == 0


def test_an_unusable_store_is_reported(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "not-a-dir").write_text("x")

    def serve(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edge.cli", "serve", "--store", str(tmp_path / "not-a-dir"),
             "--capacity", "1GiB", "--listen", "127.0.0.1:0", *argv],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    out = serve("--index", str(tmp_path / "index.sqlite"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "no usable store root" in out.stderr and "not-a-dir" in out.stderr
    out = serve()  # the index would live in the unusable root
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "cannot open the index" in out.stderr


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 200 KiB tmpfs: a disk with room for two or three slices."""
    yield from mount_tmpfs(tmp_path / "disk", "200k")


def test_a_full_disk_serves_without_storing(tmp_path: Path, tiny_disk: Path) -> None:
    """The disk fills up (ENOSPC) below the configured capacity: players still get
    every byte, nothing torn is stored, the root is not declared failed."""
    disk = tiny_disk
    origin = tmp_path / "origin"
    origin.mkdir()
    data = random.randbytes(5 * SLICE)
    (origin / "movie.mp4").write_bytes(data)
    small = random.randbytes(1000)
    (origin / "small.vtt").write_bytes(small)
    app = Appliance(
        ["--store", f"{disk}=64MiB", "--index", str(tmp_path / "index.sqlite"),
         "--origin", f"file://{origin}", "--slice-size", str(SLICE), "--admin-token", TOKEN]
    ).start()  # fmt: skip
    try:
        for _ in range(2):
            status, _, body = app.get("/movie.mp4")
            assert status == 200 and body == data

        # the slices that fit are stored after the answer, and the others find the
        # disk full: wait for both, and for no write to be in flight, not a while
        def settled() -> bool:
            text = app.get("/_edge/metrics")[2].decode()
            return (
                app.health()["store"]["used_bytes"] > 0
                and _counter(text, "edgefleet_disk_full_total") > 0
                and not any((disk / "tmp").iterdir())
            )

        wait_for(settled, timeout=20)
        health = app.health()
        assert health["status"] == "ok" and health["store"]["roots"][0]["state"] == "ok"
        assert 0 < health["store"]["used_bytes"] < len(data)
        status, _, body = app.get("/small.vtt")
        assert status == 200 and body == small
        status, _, body = app.request(
            "POST", "/_edge/admin/scrub", {"Authorization": f"Bearer {TOKEN}"}
        )
        assert json.loads(body)["failures"] == 0
        wait_for(lambda: not any((disk / "tmp").iterdir()))  # small.vtt may be being stored
        for _ in range(2):  # what was stored stays, and is served with the rest
            status, _, body = app.get("/movie.mp4")
            assert status == 200 and body == data
        assert 0 < app.health()["store"]["used_bytes"] < len(data)
    finally:
        assert app.stop() == 0


def _counter(metrics: str, name: str) -> float:
    """The value of the unlabelled counter ``name`` in a Prometheus text page."""
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} is not in the metrics")


def test_sighup_is_harmless_without_an_access_log(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    catalog = make_catalog(origin)
    for workers in ("1", "2"):
        app = Appliance(
            ["--store", str(tmp_path / "store"), "--capacity", "64MiB",
             "--origin", f"file://{origin}", "--workers", workers]
        ).start()  # fmt: skip
        try:
            assert app.proc is not None
            time.sleep(0.3)
            os.kill(app.proc.pid, signal.SIGHUP)
            time.sleep(0.5)
            assert app.proc.poll() is None
            key = "titles/81234/master.m3u8"
            assert app.get("/" + key)[2] == catalog[key]
            assert not any("exited" in line for line in app.stderr)
        finally:
            assert app.stop() == 0


def test_running_out_of_file_descriptors_is_not_a_failed_disk(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    catalog = make_catalog(origin)
    app = Appliance(serve_args(tmp_path, origin), max_files=300).start()
    try:
        for key in catalog:
            assert app.get("/" + quote(key))[0] == 200
        stored = sum(1 for data in catalog.values() if data)  # the empty one holds no bytes
        wait_for(lambda: app.health()["store"]["objects"] == stored)
        assert app.stop() == 0
        app = Appliance(serve_args(tmp_path, origin), max_files=300).start()
        import http.client

        player = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
        player.request("GET", "/titles/81234/master.m3u8")  # connected before the crunch
        player.getresponse().read()
        hogs = []
        try:
            for _ in range(400):  # take every descriptor the appliance has left
                try:
                    hogs.append(socket.create_connection(("127.0.0.1", app.port), timeout=2))
                except OSError:
                    break
            time.sleep(0.5)
            key = "titles/81234/movie.mp4"  # its slice file is not open yet
            player.request("GET", "/" + key, headers={"Range": "bytes=150000-150010"})
            status = player.getresponse().status
            assert status in (206, 503)
        finally:
            player.close()
            for s in hogs:
                s.close()
        time.sleep(1.5)
        health = app.health()
        assert health["status"] == "ok"
        assert health["store"]["objects"] == stored
        assert app.get("/" + key, Range="bytes=150000-150010")[2] == catalog[key][150000:150011]
    finally:
        assert app.stop() == 0
