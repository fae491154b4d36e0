"""Real steering on loopback: an ``edgefleet steer`` process and a fleet of
``edgefleet serve`` appliances; clients bound to 127.x.y.z source addresses
(Linux routes all of 127/8 to lo)."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

from conftest import SLICE, Appliance, Service, exchange

SECRET = "steer-test-secret-0123456789"


def start_appliance(
    tmp: Path, name: str, origin: Path, port: int, extra: tuple[str, ...] = ()
) -> Appliance:
    return Appliance(
        [
            *extra,
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


class Steering(Service):
    """An ``edgefleet steer`` process on an ephemeral loopback port."""

    command = "steer"

    def __init__(self, config: Path, *flags: str) -> None:
        super().__init__(["--config", str(config), *flags])
        self.config = config

    def request(
        self, path: str, source: str = "127.0.0.1", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=30, source_address=(source, 0)
        )
        return exchange(conn, "GET", path, headers)

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
        assert self.child is not None
        self.child.send(sig)
