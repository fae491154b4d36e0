"""What the store promises, seen by players: a real appliance on loopback.

Each case of docs/appliance.md's "What the store promises" that is about
serving: nothing stored is lost, and no wrong byte goes out.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SLICE, Appliance, ballast, metric, mount_tmpfs, wait_for

from edge.core.meta import ObjectMeta
from edge.store import RootSpec, Store

TOKEN = "0123456789abcdef-token"


def catalog(origin: Path, n: int = 5, seed: int = 5) -> dict[str, bytes]:
    rng = random.Random(seed)
    out = {}
    for i in range(n):
        key = f"titles/{i}/seg.m4s"
        data = rng.randbytes(3 * SLICE - rng.randint(0, 999))
        (origin / f"titles/{i}").mkdir(parents=True, exist_ok=True)
        (origin / key).write_bytes(data)
        out[key] = data
    return out


def start(tmp: Path, store: Path, *extra: str, origin: bool = True) -> Appliance:
    args = ["--store", f"{store}=64MiB", "--index", str(tmp / "index.sqlite"),
            "--slice-size", str(SLICE), "--admin-token", TOKEN, *extra]  # fmt: skip
    if origin:
        args += ["--origin", f"file://{tmp / 'origin'}"]
    return Appliance(args).start()


def stored_keys(app: Appliance) -> set[str]:
    return {json.loads(x)["key"] for x in app.get("/_edge/inventory")[2].splitlines()}


def slice_file(store: Path, index: Path, key: str, idx: int) -> str:
    s = Store([RootSpec(str(store), 64 << 20)], str(index), slice_size=SLICE)
    s.open(recover=False)
    try:
        obj = s.lookup(key)
        assert obj is not None and idx in obj.slices
        return obj.slice_path(idx)
    finally:
        s.close()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    (tmp_path / "origin").mkdir()
    (tmp_path / "store").mkdir()
    return tmp_path, tmp_path / "store", catalog(tmp_path / "origin")


def fetch_all(app: Appliance, held: dict[str, bytes]) -> None:
    for key, data in held.items():
        status, _, body = app.get("/" + key)
        assert status == 200 and body == data, key
    wait_for(lambda: stored_keys(app) >= set(held))


# -- case 1 -------------------------------------------------------------------------------


def test_appliance_started_without_its_index_serves_what_it_held(setup) -> None:
    tmp, store, held = setup
    app = start(tmp, store)
    try:
        fetch_all(app, held)
    finally:
        assert app.stop() == 0
    files = {p: p.stat().st_size for p in store.rglob("slices/**/*") if p.is_file()}
    for key in held:  # the origin is gone too: only the store can answer
        (tmp / "origin" / key).unlink()
    (tmp / "index.sqlite").rename(tmp / "old-index.sqlite")
    app = start(tmp, store)  # a new, empty index at the same path
    try:
        for key, data in held.items():
            status, _, body = app.get("/" + key)
            assert status == 200 and body == data, key
        assert app.health()["status"] == "ok"
    finally:
        assert app.stop() == 0
    assert {p: p.stat().st_size for p in store.rglob("slices/**/*") if p.is_file()} == files


# -- case 2 -------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from mount_tmpfs(tmp_path / "disk", "2m")


def test_appliance_on_a_full_disk_serves_misses_unstored(setup, small_disk: Path) -> None:
    tmp, _, held = setup
    app = start(tmp, small_disk)
    app.stop()
    weight = ballast(small_disk)  # something else fills the disk
    app = start(tmp, small_disk)  # start-up on a full disk works
    try:
        assert app.health()["status"] == "ok"
        key, data = next(iter(held.items()))
        for _ in range(2):
            status, _, body = app.get("/" + key)
            assert status == 200 and body == data  # served pass-through
        assert key not in stored_keys(app)
        assert app.health()["status"] == "ok"
        weight.unlink()  # room again: storing resumes
        time.sleep(1.2)
        wait_for(lambda: app.get("/" + key)[2] == data and key in stored_keys(app))
    finally:
        assert app.stop() == 0


# -- case 3 and 5 ------------------------------------------------------------------------------


def test_appliance_refetches_a_short_slice(setup) -> None:
    tmp, store, held = setup
    app = start(tmp, store)
    try:
        fetch_all(app, held)
        key = next(iter(held))
        with open(slice_file(store, tmp / "index.sqlite", key, 1), "r+b") as f:
            f.truncate(1000)
        with contextlib.suppress(OSError, http.client.HTTPException):
            app.get("/" + key)  # this one may be cut short: its head is already out
        for _ in range(2):
            status, _, body = app.get("/" + key)
            assert status == 200 and body == held[key]
        for k, data in held.items():  # the rest of the disk is still served
            assert app.get("/" + k)[2] == data
        health = app.health()
        assert health["status"] == "ok" and health["store"]["roots"][0]["state"] == "ok"
        assert metric(app, "edgefleet_damaged_slices_total") >= 1
    finally:
        assert app.stop() == 0


def test_appliance_refetches_a_missing_slice(setup) -> None:
    tmp, store, held = setup
    app = start(tmp, store)
    try:
        key, data = next(iter(held.items()))
        # stored by another process (as the fill does): this appliance has no view of it
        s = Store([RootSpec(str(store), 64 << 20)], str(tmp / "index.sqlite"), slice_size=SLICE)
        s.open(recover=False)
        obj = s.put(key, data, ObjectMeta(len(data), '"v1"', 0, "video/iso.segment"))
        os.unlink(obj.slice_path(1))
        s.close()
        for _ in range(2):
            status, _, body = app.get("/" + key)
            assert status == 200 and body == data  # fetched again, not "503 store changed"
        assert app.get("/" + key, Range="bytes=70000-70099")[2] == data[70000:70100]
    finally:
        assert app.stop() == 0


# -- case 4 ----------------------------------------------------------------------------------------


def flip(path: str, at: int = 100) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(16)
        f.seek(at)
        f.write(bytes(x ^ 0xFF for x in b))


def test_appliance_never_serves_flipped_bytes_after_a_restart(setup) -> None:
    tmp, store, held = setup
    app = start(tmp, store, "--scrub-rate", "0")
    try:
        fetch_all(app, held)
    finally:
        assert app.stop() == 0
    key = next(iter(held))
    flip(slice_file(store, tmp / "index.sqlite", key, 0))
    flip(slice_file(store, tmp / "index.sqlite", key, 2), 10)
    app = start(tmp, store, "--scrub-rate", "0")
    try:
        status, _, body = app.get("/" + key, Range="bytes=0-199")
        assert status == 206 and body == held[key][:200]
        status, _, body = app.get("/" + key)
        assert status == 200 and body == held[key]
        assert metric(app, "edgefleet_checksum_failures_total") == 2
    finally:
        assert app.stop() == 0


def test_background_scrub_finds_flipped_bytes(setup) -> None:
    tmp, store, held = setup
    app = start(tmp, store, "--scrub-rate", "64MiB")
    try:
        fetch_all(app, held)
        key = list(held)[2]
        flip(slice_file(store, tmp / "index.sqlite", key, 1))
        wait_for(lambda: metric(app, "edgefleet_checksum_failures_total") == 1, timeout=20)
        status, _, body = app.get("/" + key)
        assert status == 200 and body == held[key]
    finally:
        assert app.stop() == 0
