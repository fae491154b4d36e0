"""``edgefleet demo`` end to end: the fleet it starts, real players through it.

The demo runs as a subprocess exactly as a user starts it (with ``--listen
127.0.0.1:0`` so ports never clash); tests find its parts in ``--state-file``.
ffmpeg, a client we did not write, plays titles through steering; Locust
players stream while an appliance is killed.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, wait_for
from s3server import CREDENTIALS, REGION, s3_client, s3_endpoint  # noqa: F401

from demo.processes import start_edgefleet

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(
    FFMPEG is None and not os.environ.get("EDGEFLEET_REQUIRE_FFMPEG"),
    reason="ffmpeg is not installed (apt-get install ffmpeg; .ci/run installs it)",
)


class Demo:
    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.state_file = tmp / "demo-state.json"
        self.log = tmp / "demo.log"
        cmd = ["demo", "--listen", "127.0.0.1:0", "--state-file", str(self.state_file), *args]
        # a demo without --workdir makes its temp dir under the test's, not in /tmp
        env = {"TMPDIR": str(tmp), **(env or {})}
        self.child = start_edgefleet("demo", cmd, self.log, cwd=ROOT, env=env)
        self.proc = self.child.proc
        deadline = time.monotonic() + 90
        while not self.state_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("the demo did not come up:\n" + self.log.read_text())
            time.sleep(0.1)
        self.state: dict[str, Any] = json.loads(self.state_file.read_text())

    @property
    def steer(self) -> str:
        return str(self.state["steer"]["url"])

    def appliance(self, name: str) -> dict[str, Any]:
        return next(a for a in self.state["appliances"] if a["name"] == name)

    def steer_answer(self, key: str, source: str = "127.0.0.1") -> dict[str, Any]:
        host, port = self.steer.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), source_address=(source, 0)) as s:
            s.sendall(
                f"GET /steer?object={key} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            )
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        head, body = raw.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200"), raw
        return json.loads(body)

    def stop(self) -> int:
        if not self.child.stop(signal.SIGTERM, 30):
            raise AssertionError("the demo ignored SIGTERM:\n" + self.log.read_text())
        return self.proc.returncode


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}/stat").exists()
        and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    )


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.read()


@pytest.fixture(scope="module", autouse=True)
def _no_temp_dirs_left_behind() -> Iterator[None]:
    pattern = "edgefleet-demo-*"
    before = set(Path(tempfile.gettempdir()).glob(pattern))
    yield
    assert set(Path(tempfile.gettempdir()).glob(pattern)) - before == set()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    tmp = tmp_path_factory.mktemp("demo")
    d = Demo(tmp, "--workdir", str(tmp / "work"), "--titles", "3", "--duration", "8")
    try:
        yield d
    finally:
        assert d.stop() == 0, d.log.read_text()


def framemd5(source: str) -> list[str]:
    """Every decoded frame's checksum (all streams of every rendition), or the error."""
    assert FFMPEG is not None, "ffmpeg is needed here"
    done = subprocess.run(
        [
            FFMPEG,
            "-nostdin",
            "-v",
            "error",
            "-xerror",
            "-i",
            source,
            "-map",
            "0",
            "-f",
            "framemd5",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    frames = [line for line in done.stdout.splitlines() if line and not line.startswith("#")]
    assert frames
    return frames


@needs_ffmpeg
def test_ffmpeg_decodes_every_title_through_steering_as_from_the_origin(demo: Demo) -> None:
    assert demo.state["catalog"]["kind"] == "ffmpeg"
    origin = Path(demo.state["workdir"]) / "origin"
    for url in demo.state["play"]:
        key = url.split("/r/", 1)[1]
        # through steering's redirect to an appliance, byte-range rendition included
        assert framemd5(url) == framemd5(str(origin / key))
    ranged = []
    for a in demo.state["appliances"]:
        for line in Path(a["access_log"]).read_text().splitlines():
            rec = json.loads(line)
            if rec["key"].endswith("lo/index.ts") and rec["range"]:
                ranged.append(rec["status"])
    assert ranged and set(ranged) == {206}


def test_each_isps_clients_go_to_their_own_appliances_first(demo: Demo) -> None:
    key = "titles/0001/master.m3u8"
    a = demo.steer_answer(key, "127.0.0.1")
    assert len(a["urls"]) == 3
    assert [x["site"] for x in a["appliances"]][:2] == ["a", "a"]
    assert a["appliances"][2]["site"] == "b"
    assert a["class"] == "hit" and a["appliances"][0]["holds"]
    b = demo.steer_answer(key, "127.0.1.1")
    assert b["appliances"][0]["id"] == "isp-b-1" and b["class"] == "hit"
    status, body = fetch(b["urls"][0])
    assert status == 200 and body.startswith(b"#EXTM3U")


def test_the_fill_put_the_top_of_the_plan_on_each_appliance(demo: Demo) -> None:
    workdir = Path(demo.state["workdir"])
    reports = {
        a["name"]: json.loads((workdir / a["name"] / "fill-report.json").read_text())
        for a in demo.state["appliances"]
    }
    objects = demo.state["catalog"]["objects"]
    assert reports["isp-a-1"]["added"]["objects"] == objects
    assert set(reports["isp-a-1"]["added"]["from"]) == {f"origin {demo.state['origin']}"}
    peer = f"peer {demo.appliance('isp-a-1')['url']}"
    assert set(reports["isp-a-2"]["added"]["from"]) == {peer}
    small = reports["isp-b-1"]
    assert 0 < small["added"]["objects"] < objects
    # the ISP B box holds the densest demand (playlists, the most popular title's
    # byte-range rendition), not the least popular title's segment files
    b_url = demo.appliance("isp-b-1")["url"]
    lines = fetch(f"{b_url}/_edge/inventory")[1].decode().splitlines()
    held = {json.loads(line)["key"] for line in lines if line}
    assert {f"titles/000{n}/master.m3u8" for n in (1, 2, 3)} <= held
    assert "titles/0001/lo/index.ts" in held
    # and, taking demand per byte first, covers more demand than its share of bytes
    share = (
        sum((workdir / "origin" / k).stat().st_size for k in held) / demo.state["catalog"]["bytes"]
    )
    assert share < 0.6 and float(small["plan"]["demand_covered"]) > share + 0.1
    # what it lacks it pulls through from the origin
    status, body = fetch(f"{b_url}/titles/0003/master.m3u8")
    assert status == 200 and body == (workdir / "origin/titles/0003/master.m3u8").read_bytes()


def test_the_printed_commands_run_as_printed(demo: Demo) -> None:
    text = demo.log.read_text()
    assert re.search(r"name +role +url +pid +store capacity +holds", text)
    assert re.search(r"isp-a-1 .* \d+\.\d MiB +\d+ objects", text)
    assert not re.search(r"\d MB\b", text)  # one unit style: binary
    players = re.search(r"^Players: +(.*)$", text, re.M)
    assert players, text
    out = subprocess.run(
        f"{players.group(1)} --headless -u 1 -r 1 -t 3s --only-summary --player-titles 1",
        shell=True, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"players players=1 sessions=[1-9]", out.stdout + out.stderr)


def test_players_fail_over_when_their_appliance_dies(tmp_path: Path) -> None:
    d = Demo(tmp_path, "--synthetic", "--titles", "2", "--duration", "30", "--segment", "1")
    try:
        prefix = tmp_path / "players"
        locust = subprocess.Popen(
            [
                sys.executable, "-m", "locust", "-f", str(ROOT / "bench/locustfile.py"),
                "--host", d.steer, "--headless", "-u", "6", "-r", "6", "-t", "10s",
                "--csv", str(prefix), "--only-summary", "--player-titles", "1",
                "--playback-speed", "2", "--buffer-target", "4",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )  # fmt: skip

        # once players stream, kill the appliance that serves most of them
        def serving() -> dict[str, int]:
            logs = {a["name"]: Path(a["access_log"]) for a in d.state["appliances"]}
            return {name: log.read_text().count('.ts"') for name, log in logs.items()}

        counts = wait_for(lambda: (c := serving()) and max(c.values()) >= 20 and c, timeout=30)
        victim = d.appliance(max(counts, key=lambda name: counts[name]))
        os.kill(victim["pid"], signal.SIGKILL)
        out, _ = locust.communicate(timeout=60)
        with open(f"{prefix}_stats.csv") as f:
            rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
        with open(f"{prefix}_players.csv") as f:
            players = next(csv.DictReader(f))
        assert int(players["sessions"]) >= 6, out
        assert int(players["failovers"]) >= 1, out
        assert int(players["failed_sessions"]) == 0, out
        assert ("player", "failover") in rows and ("player", "startup") in rows
        assert sum(int(r["Failure Count"]) for (kind, _), r in rows.items() if kind == "GET") >= 1
        assert "rebuffer_ratio=" in out
        # the demo reports the death and keeps the rest running
        wait_for(lambda: f"{victim['name']} exited (killed by SIGKILL)" in d.log.read_text())
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0
    assert "stopped" in d.log.read_text()


def test_the_demo_stops_everything_and_removes_its_temp_dir(tmp_path: Path) -> None:
    d = Demo(tmp_path, "--synthetic", "--titles", "1", "--duration", "4", "--no-fill")
    pids = [d.state["steer"]["pid"]] + [a["pid"] for a in d.state["appliances"]]
    workdir = Path(d.state["workdir"])
    assert workdir.exists() and all(alive(p) for p in pids)
    assert d.stop() == 0
    assert not any(alive(p) for p in pids)
    assert not workdir.exists()


def test_a_killed_demo_takes_its_fleet_with_it(tmp_path: Path) -> None:
    d = Demo(tmp_path, "--synthetic", "--titles", "1", "--duration", "4", "--no-fill")
    pids = [d.state["steer"]["pid"]] + [a["pid"] for a in d.state["appliances"]]
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(10)
    wait_for(lambda: not any(alive(p) for p in pids), timeout=30)


def test_the_demo_can_use_an_s3_origin(tmp_path: Path, s3_endpoint: str) -> None:  # noqa: F811
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="demo-origin")
    env = {**CREDENTIALS, "AWS_DEFAULT_REGION": REGION}
    d = Demo(
        tmp_path,
        "--synthetic", "--titles", "2", "--duration", "4",
        "--origin", "s3://demo-origin/vod", "--s3-endpoint", s3_endpoint,
        "--workdir", str(tmp_path / "work"),
        env=env,
    )  # fmt: skip
    try:
        listed = client.list_objects_v2(Bucket="demo-origin", Prefix="vod/titles/")
        keys = {o["Key"] for o in listed.get("Contents", [])}
        assert len(keys) == d.state["catalog"]["objects"]
        assert "vod/titles/0002/lo/index.ts" in keys
        # the ISP B box did not get title 2 from the fill: it pulls it from S3
        b = d.appliance("isp-b-1")["url"]
        want = (tmp_path / "work/origin/titles/0002/lo/index.ts").read_bytes()
        status, body = fetch(f"{b}/titles/0002/lo/index.ts", {"Range": "bytes=188-1000"})
        assert status == 206 and body == want[188:1001]
    finally:
        assert d.stop() == 0
