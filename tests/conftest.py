"""Real servers on loopback: ``edgefleet serve`` as a subprocess, plain HTTP."""

from __future__ import annotations

import atexit
import ctypes
import errno
import http.client
import itertools
import json
import mmap
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest

from demo.processes import Process, StartError, start_edgefleet

ROOT = Path(__file__).resolve().parent.parent


# every service's log, removed when the test run ends
LOGS = Path(tempfile.mkdtemp(prefix="edgefleet-test-logs-"))
atexit.register(shutil.rmtree, LOGS, True)


def exchange(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on ``conn`` (closed after): status, headers (names lowercased), body."""
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


class Service:
    """An ``edgefleet COMMAND`` process on an ephemeral loopback port, found by
    the ``listening on`` line it prints (demo/processes.py runs it); what it
    printed is in ``stderr``, one string a line, also after it stopped."""

    command = ""

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, max_files: int | None = None
    ) -> None:
        self.args = args
        self.env = env
        self.max_files = max_files
        self.child: Process | None = None
        self.port = 0

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.child.proc if self.child else None

    @property
    def stderr(self) -> list[str]:
        return self.child.lines() if self.child else []

    def start(self, timeout: float = 30.0) -> Self:
        fd, log = tempfile.mkstemp(prefix=f"{self.command}-", suffix=".log", dir=LOGS)
        os.close(fd)
        args = [self.command, "--listen", "127.0.0.1:0", *self.args]
        self.child = start_edgefleet(
            self.command, args, Path(log), env=self.env, cwd=ROOT, max_files=self.max_files
        )
        try:
            self.child.wait_banner(timeout)
        except StartError as exc:
            raise RuntimeError(f"edgefleet {self.command}: {exc}") from None
        self.port = self.child.port
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.child is not None
        if not self.child.stop(sig, timeout):
            raise AssertionError(
                f"edgefleet {self.command} ignored signal {sig} for {timeout}s; it said:\n"
                + "".join(self.stderr[-30:])
            )
        return self.child.proc.returncode

    def kill(self) -> None:
        """SIGKILL to the whole process group; returns once every process of it
        is gone (as a service manager waits before a restart: a worker killed
        inside an fsync lives until the fsync returns)."""
        assert self.child is not None
        self.child.kill()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(self.child.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)


class Appliance(Service):
    """An ``edgefleet serve`` process on an ephemeral loopback port (its store
    roots made first: edgefleet never creates one)."""

    command = "serve"

    def start(self, timeout: float = 30.0) -> Self:
        make_store_roots(self.args)
        return super().start(timeout)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        return exchange(conn, method, path, headers)

    def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path, {k.replace("_", "-"): v for k, v in headers.items()})

    def health(self) -> dict:
        return json.loads(self.request("GET", "/_edge/health")[2])


def make_store_roots(args: list[str]) -> None:
    """Make the directory of each ``--store DIR[=SIZE]`` in ``args``."""
    for flag, value in itertools.pairwise(args):
        if flag == "--store":
            path, eq, size = value.rpartition("=")
            Path(path if eq and re.fullmatch(r"[0-9.]+\s*[A-Za-z]*", size) else value).mkdir(
                parents=True, exist_ok=True
            )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    """Poll until ``predicate()`` is truthy; its value. The appliance does some
    work after answering (storing slices, folding metrics): tests wait for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes as they are; return everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def drop_from_page_cache(store: Path, offset: int = 0, length: int = 0) -> int:
    """Evict the store's slice files (bytes ``offset`` to ``offset+length``
    of each; 0: to the end) from the page cache (their pages are clean:
    written and fsynced), as memory pressure or a restart would: the next
    hit on them must come from the disk. How many files."""
    files = [p for p in store.rglob("slices/*/*/*") if p.is_file()]
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return len(files)


def resident(mapped: mmap.mmap) -> list[bool]:
    """Which pages of ``mapped`` are in memory (``mincore``: it touches none)."""
    libc = ctypes.CDLL(None, use_errno=True)
    start = ctypes.c_char.from_buffer(mapped)
    try:
        pages = (ctypes.c_ubyte * -(-len(mapped) // mmap.PAGESIZE))()
        addr = ctypes.c_void_p(ctypes.addressof(start))
        if libc.mincore(addr, ctypes.c_size_t(len(mapped)), pages):
            raise OSError(ctypes.get_errno(), "mincore")
        return [bool(p & 1) for p in pages]
    finally:
        del start


def metric(app: Appliance, name: str) -> float:
    """The value of the unlabelled metric ``name`` (0 when it is not there)."""
    for line in app.get("/_edge/metrics")[2].decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def disk_waits(app: Appliance) -> float:
    """``edgefleet_disk_waits_total``: sends that had a thread read a file in."""
    text = app.get("/_edge/metrics")[2].decode()
    m = re.search(r"^edgefleet_disk_waits_total (\S+)$", text, re.M)
    assert m is not None, "no edgefleet_disk_waits_total in the metrics"
    return float(m.group(1))


def small_window_socket(port: int, rcvbuf: int = 16384) -> socket.socket:
    """A client whose receive buffer is small from the handshake on (a slow player)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


def statuses(raw: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def mount_tmpfs(disk: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``disk`` for a fixture to yield from (a disk that fills
    up); the test is skipped, with the reason, where mounting is not allowed."""
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("needs root to mount a small tmpfs: " + mounted.stderr.decode().strip())
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def ballast(disk: Path) -> Path:
    """Fill ``disk`` to the last byte with a file that is not the store's."""
    path = disk / "ballast"
    with open(path, "wb", buffering=0) as f:
        for block in (1 << 16, 4096, 1):
            try:
                while f.write(b"\0" * block):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return path


@pytest.fixture
def origin_dir(tmp_path: Path) -> Path:
    d = tmp_path / "origin"
    d.mkdir()
    return d


def make_catalog(origin: Path, seed: int = 1) -> dict[str, bytes]:
    """A small catalog of objects of awkward sizes around the slice size."""
    import random

    rng = random.Random(seed)
    sizes = {
        "titles/81234/720p/seg_00001.m4s": 64 * 1024,
        "titles/81234/720p/seg_00002.m4s": 64 * 1024 * 3 + 17,
        "titles/81234/master.m3u8": 300,
        "titles/81234/720p/index.m3u8": 1000,
        "titles/81234/movie.mp4": 64 * 1024 * 5,
        "titles/81234/subs/en.vtt": 1,
        "empty.ts": 0,
        "dir with space/ü nicode.ts": 5000,
    }
    out = {}
    for key, size in sizes.items():
        data = rng.randbytes(size)
        path = origin / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[key] = data
    return out


SLICE = 64 * 1024


def file_appliance_args(tmp: Path) -> list[str]:
    """An appliance's store, capacity and access log under ``tmp``, in
    test-sized slices, its origin the files of ``tmp/origin`` (``make_catalog``)."""
    return ["--store", str(tmp / "store"), "--capacity", "64MiB",
            "--origin", f"file://{tmp / 'origin'}", "--slice-size", str(SLICE),
            "--access-log", str(tmp / "access.log")]  # fmt: skip


@pytest.fixture
def catalog(origin_dir: Path) -> dict[str, bytes]:
    return make_catalog(origin_dir)


@pytest.fixture
def appliance(tmp_path: Path, origin_dir: Path, catalog: dict[str, bytes]):
    assert origin_dir == tmp_path / "origin"
    app = Appliance(
        [*file_appliance_args(tmp_path), "--admin-token", "0123456789abcdef-token"]
    ).start()
    yield app
    app.stop()
