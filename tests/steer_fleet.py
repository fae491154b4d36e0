"""Real steering on loopback: an ``edgefleet steer`` process and a fleet of
``edgefleet serve`` appliances; clients bound to 127.x.y.z source addresses
(Linux routes all of 127/8 to lo)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from conftest import ROOT, SLICE, Appliance

SECRET = "steer-test-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_appliance(tmp: Path, name: str, origin: Path, port: int) -> Appliance:
    return Appliance(
        [
            "--listen", f"127.0.0.1:{port}",
            "--store", str(tmp / f"store-{name}"),
            "--capacity", "64MiB",
            "--origin", f"file://{origin}",
            "--slice-size", str(SLICE),
            "--admin-token", "0123456789abcdef-token",
            "--url-signing-key", f"k1={SECRET}",
        ]
    ).start()  # fmt: skip


def appliance_toml(name: str, port: int, site: str, lat: float, prefixes: list[str]) -> str:
    return (
        f'[[appliance]]\nid = "{name}"\nurl = "http://127.0.0.1:{port}"\nsite = "{site}"\n'
        f"latitude = {lat}\nlongitude = 10.0\nprefixes = {json.dumps(prefixes)}\n"
        'capacity = "10Gbit"\n'
    )


class Steering:
    """An ``edgefleet steer`` process on an ephemeral loopback port."""

    def __init__(self, config: Path, *flags: str) -> None:
        self.config = config
        self.flags = flags
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.stderr: list[str] = []

    def start(self, timeout: float = 30.0) -> Steering:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "steer", "--config", str(self.config),
             "--listen", "127.0.0.1:0", *self.flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True,
        )  # fmt: skip
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("edgefleet steer exited: " + "".join(self.stderr))
            self.stderr.append(line)
            m = re.search(r"edgefleet steer: listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        else:
            raise RuntimeError("edgefleet steer did not start: " + "".join(self.stderr))
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def request(
        self, path: str, source: str = "127.0.0.1", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=30, source_address=(source, 0)
        )
        try:
            conn.request("GET", path, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def steer(self, key: str, source: str = "127.0.0.1", **headers: str) -> dict[str, Any]:
        status, _, body = self.request(f"/steer?object={key}", source, headers)
        assert status == 200, body
        return json.loads(body)

    def first(self, key: str, source: str) -> str | None:
        status, _, body = self.request(f"/steer?object={key}", source)
        return json.loads(body)["appliances"][0]["id"] if status == 200 else None

    def fleet(self) -> dict[str, dict[str, Any]]:
        doc = json.loads(self.request("/_steer/fleet")[2])
        return {a["id"]: a for a in doc["appliances"]}

    def metrics(self) -> str:
        return self.request("/_steer/metrics")[2].decode()

    def send(self, sig: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise AssertionError(
                "edgefleet steer ignored SIGTERM:\n" + "".join(self.stderr[-20:])
            ) from None
