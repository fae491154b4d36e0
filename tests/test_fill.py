"""``edgefleet fill`` as operators run it: a real process, moto's S3 server as
origin, real appliances as peers and as the store's reader."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import xxhash
from conftest import ROOT, Appliance, wait_for
from s3server import CREDENTIALS, REGION, put_objects, s3_endpoint  # noqa: F401

from edge.store import RootSpec, Store, slice_name
from fill.config import FillConfig
from fill.forecast import ForecastRules, Logbook
from fill.logs import requests

BUCKET = "fill-origin"
RNG = random.Random(11)
OBJECTS = {
    f"titles/{i:03d}/seg.m4s": RNG.randbytes(RNG.randint(5_000, 150_000)) for i in range(200)
}
SCORES = {k: 1000.0 / (i + 1) for i, k in enumerate(OBJECTS)}  # Zipf
CAPACITY = 8_000_000
BUDGET = FillConfig().budget(CAPACITY)  # less the default headroom, kept for pull-through


@pytest.fixture(scope="module")
def origin(s3_endpoint: str) -> dict[str, Any]:  # noqa: F811
    etags = put_objects(s3_endpoint, BUCKET, OBJECTS)
    return {"endpoint": s3_endpoint, "etags": etags}


def manifest(path: Path, keys: list[str] | None = None, **wrong: str) -> Path:
    with path.open("w") as f:
        for key in keys or list(OBJECTS):
            data = OBJECTS[key]
            digest = wrong.get(key, xxhash.xxh3_64_hexdigest(data))
            f.write(json.dumps({"key": key, "size": len(data), "score": SCORES[key],
                                "xxh3": digest}) + "\n")  # fmt: skip
    return path


def s3_flags(endpoint: str) -> list[str]:
    return [
        "--origin", f"s3://{BUCKET}", "--s3-endpoint", endpoint, "--s3-region", REGION,
        "--s3-access-key-id", CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "--s3-secret-access-key", CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    ]  # fmt: skip


def fill_cmd(store: Path, endpoint: str, *args: str, capacity: int = CAPACITY) -> list[str]:
    return [
        sys.executable, "-m", "edge.cli", "fill", "--store", str(store),
        "--capacity", str(capacity), "--slice-size", "64KiB", *s3_flags(endpoint), *args,
    ]  # fmt: skip


def fill(store: Path, endpoint: str, *args: str, **kw: Any) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        fill_cmd(store, endpoint, *args, **kw), capture_output=True, text=True, cwd=ROOT,
        timeout=180,
    )  # fmt: skip
    try:
        report = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    except ValueError:
        report = {}
    return proc.returncode, report, proc.stderr + proc.stdout


def expected_top(budget: int = BUDGET, scores: dict[str, float] = SCORES) -> set[str]:
    """The plan's rule, written out independently: score per byte, highest
    first, each object that still fits is taken."""
    order = sorted(scores, key=lambda k: (-scores[k] / len(OBJECTS[k]), -scores[k], k))
    taken, used = set(), 0
    for k in order:
        if used + len(OBJECTS[k]) <= budget:
            taken.add(k)
            used += len(OBJECTS[k])
    return taken


def open_store(path: Path, capacity: int = CAPACITY) -> Store:
    store = Store([RootSpec(str(path), capacity)], slice_size=64 * 1024)
    store.open(recover=False)
    return store


def state(path: Path) -> dict[str, tuple[int, str | None, bool]]:
    store = open_store(path)
    try:
        return {h.key: (h.stored, h.digest, h.pinned) for h in store.holdings() if h.stored}
    finally:
        store.close()


def complete(path: Path) -> set[str]:
    """The objects held whole (none while the run has not made the store yet)."""
    if not (path / "edgefleet-root.json").exists():
        return set()
    store = open_store(path)
    try:
        return {h.key for h in store.holdings() if h.complete}
    finally:
        store.close()


def check_consistent(path: Path) -> None:
    """Every byte in the store is what the origin holds, no temp file is left,
    and every slice file belongs to a row."""
    store = open_store(path)
    try:
        for h in store.holdings():
            if h.complete:
                assert store.read(h.key) == OBJECTS[h.key], h.key
        rows = store._conn().execute(
            "SELECT s.key, s.idx, o.gen FROM slices s JOIN objects o USING (key)"
        )
        names = {f"{slice_name(k)}.{g}.{i}" for k, i, g in rows}
    finally:
        store.close()
    files = {f for _, _, fs in os.walk(path / "slices") for f in fs}
    assert files == names
    assert os.listdir(path / "tmp") == []


def test_fill_holds_exactly_the_top_of_the_plan_and_a_second_run_is_a_no_op(
    tmp_path: Path, origin: dict[str, Any]
) -> None:
    m = manifest(tmp_path / "m.jsonl")
    assert sum(len(v) for v in OBJECTS.values()) > 2 * CAPACITY
    code, report, out = fill(tmp_path / "store", origin["endpoint"], "--manifest", str(m), "--now")
    assert code == 0, out
    assert report["status"] == "complete" and report["failed"] == []
    held = state(tmp_path / "store")
    assert set(held) == expected_top()
    for key, (stored, digest, pinned) in held.items():
        assert stored == len(OBJECTS[key]) and pinned
        assert digest == xxhash.xxh3_64_hexdigest(OBJECTS[key])
    assert report["added"]["objects"] == len(held)
    assert report["added"]["from"] == {f"origin s3://{BUCKET}": sum(s for s, _, _ in held.values())}
    check_consistent(tmp_path / "store")

    code, again, out = fill(tmp_path / "store", origin["endpoint"], "--manifest", str(m), "--now")
    assert code == 0, out
    assert again["added"] == {"objects": 0, "bytes": 0, "from": {}}
    assert again["kept"]["objects"] == len(held) and again["plan"]["add"]["objects"] == 0
    assert state(tmp_path / "store") == held


def test_a_fill_killed_midway_and_rerun_ends_with_the_same_store(
    tmp_path: Path, origin: dict[str, Any]
) -> None:
    m = manifest(tmp_path / "m.jsonl")
    store = tmp_path / "store"
    # slow enough (a rate cap) to be caught in the middle
    proc = subprocess.Popen(
        fill_cmd(store, origin["endpoint"], "--manifest", str(m), "--now", "--rate", "2MB"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    try:
        wait_for(lambda: len(complete(store)) >= 5, 60)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    partial = state(store)
    assert 5 <= len(partial) < len(expected_top())
    # an object the kill caught in the middle holds some slices: the rerun completes it
    whole = complete(store)
    code, report, out = fill(store, origin["endpoint"], "--manifest", str(m), "--now")
    assert code == 0, out
    assert report["added"]["objects"] == len(expected_top()) - len(whole)
    assert set(state(store)) == expected_top()
    check_consistent(store)


def test_an_object_that_does_not_match_its_checksum_is_rejected_and_reported(
    tmp_path: Path, origin: dict[str, Any]
) -> None:
    keys = list(OBJECTS)[:5]
    bad = keys[2]
    m = manifest(tmp_path / "m.jsonl", keys, **{bad: "0123456789abcdef"})
    code, report, out = fill(tmp_path / "store", origin["endpoint"], "--manifest", str(m), "--now")
    assert code == 1, out
    assert [f["key"] for f in report["failed"]] == [bad]
    assert "checksum mismatch" in report["failed"][0]["error"]
    assert len(report["checksum_mismatches"]) == 2  # reported, retried once
    assert set(state(tmp_path / "store")) == set(keys) - {bad}
    check_consistent(tmp_path / "store")


def test_outside_the_window_nothing_happens(tmp_path: Path, origin: dict[str, Any]) -> None:
    m = manifest(tmp_path / "m.jsonl", list(OBJECTS)[:3])
    now = datetime.now()
    closed = f"{(now + timedelta(hours=2)):%H:%M}-{(now + timedelta(hours=3)):%H:%M}"
    code, report, out = fill(tmp_path / "store", origin["endpoint"], "--manifest", str(m),
                             "--window", closed)  # fmt: skip
    assert code == 0, out
    assert report["status"] == "outside-window" and "opens in 1h" in report["message"]
    assert state(tmp_path / "store") == {}


def test_the_window_closing_stops_the_run_cleanly(tmp_path: Path, origin: dict[str, Any]) -> None:
    m = manifest(tmp_path / "m.jsonl")
    store = tmp_path / "store"
    now = datetime.now()
    window = f"{(now - timedelta(seconds=5)):%H:%M:%S}-{(now + timedelta(seconds=6)):%H:%M:%S}"
    proc = subprocess.Popen(
        fill_cmd(store, origin["endpoint"], "--manifest", str(m), "--window", window,
                 "--rate", "1MB"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        # the plan fits the window at the rate; a box stalled after its first
        # commits (stopped here for as long as the window has left) cannot
        wait_for(lambda: len(complete(store)) >= 3, 60)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(6)
        proc.send_signal(signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    report = json.loads(stdout)
    assert proc.returncode == 0, stderr
    assert report["status"] == "window-closed", stdout
    # the plan already counted the window: no more than rate x time left was planned
    assert report["plan"]["nightly_bytes"] <= 6 * 1_000_000
    assert report["not_done"]["objects"] > 0
    held = state(store)
    assert len(held) == report["added"]["objects"]
    check_consistent(store)


def test_the_rate_cap_holds(tmp_path: Path, origin: dict[str, Any]) -> None:
    keys = list(OBJECTS)[:40]
    m = manifest(tmp_path / "m.jsonl", keys)
    rate = 2_000_000
    started = time.monotonic()
    code, report, out = fill(tmp_path / "store", origin["endpoint"], "--manifest", str(m),
                             "--now", "--rate", str(rate))  # fmt: skip
    elapsed = time.monotonic() - started
    assert code == 0, out
    sent = sum(report["added"]["from"].values())
    assert sent == sum(len(OBJECTS[k]) for k in keys)
    burst = rate / 10
    # a cap can only slow a run down: it never went faster than rate (+ one burst)
    assert sent <= rate * elapsed + burst


def test_dry_run_and_explain_change_nothing(tmp_path: Path, origin: dict[str, Any]) -> None:
    m = manifest(tmp_path / "m.jsonl")
    proc = subprocess.run(
        fill_cmd(tmp_path / "store", origin["endpoint"], "--manifest", str(m), "--dry-run"),
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    adds = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("+ ")]
    assert set(adds) == expected_top()
    assert "of tomorrow's predicted demand" in proc.stdout
    skipped = sorted(set(OBJECTS) - expected_top())[0]
    proc = subprocess.run(
        fill_cmd(tmp_path / "store", origin["endpoint"], "--manifest", str(m),
                 "explain", skipped),
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout.startswith(f"{skipped}: not planned:") and "left in the budget" in proc.stdout
    )
    assert state(tmp_path / "store") == {}


def test_a_bad_manifest_stops_before_anything_is_downloaded(
    tmp_path: Path, origin: dict[str, Any]
) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text('{"key": "titles/000/seg.m4s", "size": 5, "score": 1}\n{"key": "../x"}\n')
    code, _, out = fill(tmp_path / "store", origin["endpoint"], "--manifest", str(m), "--now")
    assert code == 2 and "m.jsonl:2:" in out and "'..'" in out
    code, _, out = fill(tmp_path / "store", origin["endpoint"], "--manifest", str(m), "--rate", "x")
    assert code == 2 and "--rate / rate" in out


def test_the_appliance_serves_what_a_fill_adds_without_a_restart(
    tmp_path: Path, origin: dict[str, Any]
) -> None:
    keys = list(OBJECTS)[:10]
    m = manifest(tmp_path / "m.jsonl", keys)
    store = tmp_path / "store"
    # the appliance has no origin: it can serve only what the fill stores
    app = Appliance(["--store", str(store), "--capacity", str(CAPACITY), "--slice-size", "64KiB"])
    app.start()
    try:
        assert app.get("/" + keys[0])[0] == 404
        code, _report, out = fill(store, origin["endpoint"], "--manifest", str(m), "--now")
        assert code == 0, out
        for key in keys:
            status, _headers, body = app.get("/" + key)
            assert status == 200 and body == OBJECTS[key], key
        status, _, body = app.get("/" + keys[1], Range="bytes=100-199")
        assert status == 206 and body == OBJECTS[keys[1]][100:200]
        metrics = app.get("/_edge/metrics")[2].decode()
        assert "edgefleet_fill_objects_added 10.0" in metrics
        assert "edgefleet_fill_last_run_success 1.0" in metrics
    finally:
        app.stop()


def test_peers_first_then_the_origin(tmp_path: Path, origin: dict[str, Any]) -> None:
    keys = list(OBJECTS)[:12]
    peer_store = tmp_path / "peer"
    code, _, out = fill(peer_store, origin["endpoint"], "--manifest",
                        str(manifest(tmp_path / "p.jsonl", keys[:8])), "--now")  # fmt: skip
    assert code == 0, out
    peer = Appliance(["--store", str(peer_store), "--capacity", str(CAPACITY),
                      "--slice-size", "64KiB"]).start()  # fmt: skip
    try:
        code, report, out = fill(
            tmp_path / "store", origin["endpoint"], "--manifest",
            str(manifest(tmp_path / "m.jsonl", keys)), "--now", "--peer", peer.url(""),
        )  # fmt: skip
    finally:
        peer.stop()
    assert code == 0, out
    assert report["added"]["from"] == {
        f"peer {peer.url('')}": sum(len(OBJECTS[k]) for k in keys[:8]),
        f"origin s3://{BUCKET}": sum(len(OBJECTS[k]) for k in keys[8:]),
    }
    assert set(state(tmp_path / "store")) == set(keys)
    check_consistent(tmp_path / "store")


def test_a_manifest_from_the_appliances_access_logs(tmp_path: Path, origin: dict[str, Any]) -> None:
    keys = list(OBJECTS)[:4]
    log = tmp_path / "access.log"
    app = Appliance(["--store", str(tmp_path / "edge"), "--capacity", str(CAPACITY),
                     "--slice-size", "64KiB", "--access-log", str(log),
                     *s3_flags(origin["endpoint"])],
                    env=dict(CREDENTIALS)).start()  # fmt: skip
    try:
        for key, times in zip(keys, (6, 3, 1, 0), strict=True):
            for _ in range(times):
                assert app.get("/" + key)[0] == 200
    finally:
        app.stop()
    asked = dict(zip(keys[:3], (6.0, 3.0, 1.0), strict=True))
    room = len(OBJECTS[keys[0]]) + len(OBJECTS[keys[1]])
    code, _report, out = fill(tmp_path / "store", origin["endpoint"], "--from-logs", str(log),
                             "--headroom", "0", "--now", "--write-manifest",
                             str(tmp_path / "built.jsonl"), capacity=room)  # fmt: skip
    assert code == 0, out
    built = [json.loads(line) for line in (tmp_path / "built.jsonl").read_text().splitlines()]
    assert {b["key"] for b in built} == set(keys[:3])  # never asked for: not in it
    assert all(b["size"] == len(OBJECTS[b["key"]]) for b in built)
    assert set(state(tmp_path / "store")) == expected_top(room, asked)


SERIES = {
    f"series/{t}/{p:04d}.m4s": RNG.randbytes(RNG.randint(5_000, 30_000))
    for t, n in (("a", 6), ("b", 3), ("c", 1))
    for p in range(n)
}


def test_from_logs_forecasts_by_title_and_plans_segments_not_asked_yet(
    tmp_path: Path, origin: dict[str, Any]
) -> None:
    put_objects(origin["endpoint"], BUCKET, SERIES)
    log = tmp_path / "access.log"
    app = Appliance(["--store", str(tmp_path / "edge"), "--capacity", str(CAPACITY),
                     "--slice-size", "64KiB", "--access-log", str(log),
                     *s3_flags(origin["endpoint"])],
                    env=dict(CREDENTIALS)).start()  # fmt: skip
    try:  # three sessions of a play two segments; b and c one each
        for title, played in [("a", 2), ("a", 2), ("a", 2), ("b", 1), ("c", 1)]:
            for p in range(played):
                assert app.get(f"/series/{title}/{p:04d}.m4s")[0] == 200
    finally:
        app.stop()
    built_path = tmp_path / "built.jsonl"
    code, _, out = fill(tmp_path / "store", origin["endpoint"], "--from-logs", str(log),
                             "--headroom", "0", "--now", "--write-manifest", str(built_path),
                             capacity=sum(len(v) for v in SERIES.values()))  # fmt: skip
    assert code == 0, out
    built = {b["key"]: b for b in map(json.loads, built_path.read_text().splitlines())}
    # b/0001 was never asked: every start of a title that has a position 1 reached
    # it, so b's is forecast too; c/0001 is not at the origin; nobody reached 2
    assert set(built) == {"series/a/0000.m4s", "series/a/0001.m4s", "series/b/0000.m4s",
                          "series/b/0001.m4s", "series/c/0000.m4s"}  # fmt: skip
    assert all(b["size"] == len(SERIES[k]) for k, b in built.items())
    assert "series/b/0001.m4s" in state(tmp_path / "store")
    # the scores are fill.forecast's on the same log lines (up to the moment's scale)
    book = Logbook(ForecastRules(FillConfig().log_half_life, FillConfig().title_pattern))
    book.add_all(requests(log.read_text().splitlines()))
    want = book.forecast(time.time())
    unit, want_unit = built["series/a/0000.m4s"]["score"], want["series/a/0000.m4s"]
    for key, b in built.items():
        assert b["score"] / unit == pytest.approx(want[key] / want_unit, rel=1e-3), key
    assert built["series/b/0001.m4s"]["score"] == pytest.approx(unit / 3, rel=1e-3)


def test_a_new_plan_evicts_the_old_one_only_as_its_adds_need_room(
    tmp_path: Path, origin: dict[str, Any]
) -> None:
    store = tmp_path / "store"
    old, new = list(OBJECTS)[:20], list(OBJECTS)[20:30]
    capacity = sum(len(OBJECTS[k]) for k in old)  # the old plan fills the store
    code, _, out = fill(store, origin["endpoint"], "--manifest",
                        str(manifest(tmp_path / "old.jsonl", old)), "--now", "--headroom", "0",
                        capacity=capacity)  # fmt: skip
    assert code == 0, out
    assert set(state(store)) == set(old)
    code, report, out = fill(store, origin["endpoint"], "--manifest",
                             str(manifest(tmp_path / "new.jsonl", new)), "--now",
                             "--headroom", "0", capacity=capacity)  # fmt: skip
    assert code == 0, out
    held = state(store)
    assert set(new) <= set(held) and all(held[k][2] for k in new)  # added, pinned
    evicted = set(old) - set(held)
    # removed only as room was needed: the room left over is less than the last
    # object removed, so one object fewer would not have made room
    left = capacity - sum(stored for stored, _, _ in held.values())
    assert evicted and 0 <= left < max(len(OBJECTS[k]) for k in evicted)
    assert report["evicted"]["objects"] == len(evicted)
    # what no add needed stays, unpinned: ordinary cached content now
    assert report["evicted"]["unpinned"] == len(set(old) & set(held))
    assert not any(held[k][2] for k in set(old) & set(held))
    check_consistent(store)


def test_manifests_from_s3_and_http(tmp_path: Path, origin: dict[str, Any]) -> None:
    import functools
    import http.server
    import threading

    keys = list(OBJECTS)[:3]
    text = manifest(tmp_path / "m.jsonl", keys).read_bytes()
    put_objects(origin["endpoint"], BUCKET, {"plans/m.jsonl": text})
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for where in (f"s3://{BUCKET}/plans/m.jsonl",
                      f"http://127.0.0.1:{server.server_port}/m.jsonl"):  # fmt: skip
            proc = subprocess.run(
                fill_cmd(tmp_path / "store", origin["endpoint"], "--manifest", where, "--dry-run"),
                capture_output=True, text=True, cwd=ROOT,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            adds = {line.split()[1] for line in proc.stdout.splitlines() if line.startswith("+ ")}
            assert adds == set(keys), where
        missing = f"http://127.0.0.1:{server.server_port}/nope.jsonl"
        code, _, out = fill(tmp_path / "store", origin["endpoint"], "--manifest", missing, "--now")
        assert code == 2 and "HTTP 404" in out
    finally:
        server.shutdown()


def test_one_get_an_object_and_a_broken_download_resumes_at_its_last_whole_slice(
    tmp_path: Path,
) -> None:
    from origin_server import OriginServer

    objects = {f"cut/{i}.m4s": RNG.randbytes(300_000) for i in range(3)}  # 64 KiB slices: 5
    server = OriginServer().start()
    try:
        for key, data in objects.items():
            server.put(key, data)
        m = tmp_path / "m.jsonl"
        m.write_text("".join(
            json.dumps({"key": k, "size": len(v), "rank": i + 1,
                        "xxh3": xxhash.xxh3_64_hexdigest(v)}) + "\n"
            for i, (k, v) in enumerate(objects.items())
        ))  # fmt: skip
        server.faults.drop_after = 150_000  # two whole slices and a part of the third
        proc = subprocess.run(
            [sys.executable, "-m", "edge.cli", "fill", "--store", str(tmp_path / "store"),
             "--capacity", str(CAPACITY), "--slice-size", "64KiB", "--origin", server.url,
             "--manifest", str(m), "--now", "--concurrency", "1"],
            capture_output=True, text=True, cwd=ROOT, timeout=180,
        )  # fmt: skip
        # (what an object is comes from a GET of its first byte: left out here)
        gets = [(a.path, a.range) for a in server.asked("GET") if a.range != "bytes=0-0"]
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["added"]["objects"] == 3 and report["checksum_mismatches"] == []
    assert gets == [
        ("/cut/0.m4s", "bytes=0-299999"),
        ("/cut/0.m4s", "bytes=131072-299999"),  # the whole slices that arrived are kept
        ("/cut/1.m4s", "bytes=0-299999"),
        ("/cut/2.m4s", "bytes=0-299999"),
    ]
    store = open_store(tmp_path / "store")
    try:
        for key, data in objects.items():
            assert store.read(key) == data
    finally:
        store.close()
    assert os.listdir(tmp_path / "store" / "tmp") == []


def test_an_object_only_a_fallback_origin_holds_is_filled(tmp_path: Path) -> None:
    """The fill looks objects up through the origin chain, as the miss path
    does: the first origin's "no such object" passes the question on."""
    first, fallback = tmp_path / "first", tmp_path / "fallback"
    data = RNG.randbytes(100_000)
    (fallback / "t").mkdir(parents=True)
    first.mkdir()
    (fallback / "t" / "seg.m4s").write_bytes(data)
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"key": "t/seg.m4s", "size": len(data), "rank": 1}) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "edge.cli", "fill", "--store", str(tmp_path / "store"),
         "--capacity", str(CAPACITY), "--slice-size", "64KiB", "--origin", first.as_uri(),
         "--origin", fallback.as_uri(), "--manifest", str(m), "--now"],
        capture_output=True, text=True, cwd=ROOT, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["added"]["objects"] == 1 and report["failed"] == [], report
    store = open_store(tmp_path / "store")
    try:
        assert store.read("t/seg.m4s") == data
    finally:
        store.close()


def test_a_fill_from_an_http_origin_stores_its_answer_head(tmp_path: Path) -> None:
    """What the miss path would store: the origin's status and end-to-end
    headers beside the object, so a filled object answers as a missed one;
    an answer the origin says not to store is not filled."""
    from origin_server import OriginServer

    data = RNG.randbytes(100_000)
    server = OriginServer().start()
    try:
        server.put("h/seg.m4s", data, cache_control="max-age=600",
                   headers={"X-Packager": "p1", "Content-Disposition": "inline"})  # fmt: skip
        server.put("h/private.m4s", data, cache_control="private")
        m = tmp_path / "m.jsonl"
        m.write_text("".join(
            json.dumps({"key": k, "size": len(data), "rank": i + 1}) + "\n"
            for i, k in enumerate(("h/seg.m4s", "h/private.m4s"))
        ))  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "edge.cli", "fill", "--store", str(tmp_path / "store"),
             "--capacity", str(CAPACITY), "--slice-size", "64KiB", "--origin", server.url,
             "--manifest", str(m), "--now"],
            capture_output=True, text=True, cwd=ROOT, timeout=180,
        )  # fmt: skip
    finally:
        server.stop()
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(proc.stdout)
    assert report["added"]["objects"] == 1
    store = open_store(tmp_path / "store")
    try:
        obj = store.lookup("h/seg.m4s")
        assert obj is not None and store.read("h/seg.m4s") == data
        head = store.http_head("h/seg.m4s", obj.gen)
        assert head is not None and head[0] == 200
        headers = dict(json.loads(head[1]))
        assert headers["X-Packager"] == "p1" and headers["Cache-Control"] == "max-age=600"
        assert store.lookup("h/private.m4s") is None
    finally:
        store.close()
