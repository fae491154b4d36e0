"""A whole fleet on loopback: what runs where (pure), and the processes that run it.

Rules it keeps:
- ``layout`` is pure: the three appliances of two ISPs, their prefixes, ports
  and capacities, and the steering service, from the work directory, the host,
  the base port and the catalog's size; the configuration files are rendered
  from it as text;
- every part runs as its own ``edgefleet`` process started the way an operator
  starts it (``serve``, ``steer``, ``fill`` with a TOML file), through
  demo/processes.py: in its own session with SIGTERM as its parent-death
  signal, so a killed demo leaves nothing behind;
- a child that dies is reported, not restarted; stopping signals steering
  first, then the appliances (SIGTERM: each finishes its in-flight
  responses), and waits for all of them.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo.catalog import CatalogObject
from demo.processes import Process, StartError, edgefleet, start_edgefleet, stop_all, tail

__all__ = ["Child", "DemoError", "edgefleet", "spawn", "stop_all", "tail", "wait_listening"]

MIB = 1 << 20
SLICE = 256 * 1024


@dataclass(frozen=True)
class ApplianceSite:
    name: str
    isp: str
    site: str
    latitude: float
    longitude: float
    prefixes: tuple[str, ...]
    capacity: int  # bytes
    port: int  # 0: any free port
    peer: str | None = None  # another appliance's name to fill from first


@dataclass(frozen=True)
class Layout:
    workdir: Path
    host: str
    steer_port: int
    origin: str
    appliances: tuple[ApplianceSite, ...]
    tls: tuple[Path, Path] | None = None  # (ca.pem, edge.pem): the fleet speaks HTTPS

    def dir(self, name: str) -> Path:
        return self.workdir / name


def layout(workdir: Path, host: str, port: int, origin: str, catalog_bytes: int) -> Layout:
    """ISP A: two appliances with room for everything; ISP B: one with room for half."""
    whole = round(catalog_bytes * 1.5) + 4 * MIB
    half = max(MIB, catalog_bytes // 2)

    def at(i: int) -> int:
        return 0 if port == 0 else port + i

    a = ("127.0.0.0/24", "::1/128")
    b = ("127.0.1.0/24",)
    return Layout(
        workdir,
        host,
        at(0),
        origin,
        (
            ApplianceSite("isp-a-1", "isp-a", "a", 52.37, 4.90, a, whole, at(1)),
            ApplianceSite("isp-a-2", "isp-a", "a", 52.37, 4.90, a, whole, at(2), "isp-a-1"),
            ApplianceSite("isp-b-1", "isp-b", "b", 50.11, 8.68, b, half, at(3), "isp-a-1"),
        ),
    )


def _toml(value: Any) -> str:
    return json.dumps(value)  # strings, numbers and lists of them are the same in TOML


def _listen(lay: Layout, port: int) -> str:
    """The listening lines: plain HTTP, or HTTPS with the demo's certificate."""
    address = _toml(f"{lay.host}:{port}")
    if lay.tls is None:
        return f"listen = {address}"
    ca, cert = lay.tls
    return f"tls_listen = [{address}]\ntls_cert = {_toml([str(cert)])}\nca_file = {_toml(str(ca))}"


def appliance_toml(lay: Layout, a: ApplianceSite, s3: dict[str, str]) -> str:
    d = lay.dir(a.name)
    lines = [
        f"# {a.name}: an appliance of {a.isp} (site {a.site}), written by edgefleet demo",
        _listen(lay, a.port),
        f"origin = {_toml([lay.origin])}",
        f"index = {_toml(str(d / 'index.sqlite'))}",
        f"access_log = {_toml(str(d / 'access.log'))}",
        f'slice_size = "{SLICE // 1024}KiB"',
        "workers = 1",
        'grace = "5s"',
        'cors_origin = "*"',
        *(f"{k} = {_toml(v)}" for k, v in sorted(s3.items())),
        "",
        "[fill]",
        'headroom = "5%"',
        "concurrency = 4",
        "",
        "[[store]]",
        f"path = {_toml(str(d / 'store'))}",
        f"capacity = {a.capacity}",
    ]
    return "\n".join(lines) + "\n"


def steer_toml(lay: Layout, urls: dict[str, str]) -> str:
    lines = [
        "# the demo fleet's steering, written by edgefleet demo",
        _listen(lay, lay.steer_port),
        "answers = 3",
        'health_interval = "1s"',
        'health_timeout = "1s"',
        "fall = 2",
        "rise = 2",
        'inventory_interval = "2s"',
        f"access_log = {_toml(str(lay.workdir / 'steer-access.log'))}",
    ]
    for a in lay.appliances:
        lines += [
            "",
            "[[appliance]]",
            f"id = {_toml(a.name)}",
            f"url = {_toml(urls[a.name])}",
            f"site = {_toml(a.site)}",
            f"latitude = {a.latitude}",
            f"longitude = {a.longitude}",
            f"prefixes = {_toml(list(a.prefixes))}",
        ]
    return "\n".join(lines) + "\n"


def manifest_lines(objects: Sequence[CatalogObject]) -> str:
    """Predicted requests: title n is watched in proportion to 1/n (Zipf), and one
    viewing asks for each object ``requests`` times (a byte-range file once per
    segment), so the plan's score per byte keeps whole renditions in popularity order."""
    out = [
        json.dumps({"key": o.key, "size": o.size, "score": round(o.requests / o.title, 6)})
        for o in objects
    ]
    return "\n".join(out) + "\n"


# --- processes: demo/processes.py; the demo's children die with it by SIGTERM ---

Child = Process
DemoError = StartError  # a part of the fleet could not start; names it and its log


def spawn(name: str, args: list[str], log: Path) -> Child:
    """``edgefleet ARGS`` as the fleet's part ``name``, its output appended to ``log``."""
    return start_edgefleet(name, args, log, parent_death=signal.SIGTERM)


def wait_listening(child: Child, stopping: Callable[[], bool], timeout: float = 60.0) -> str:
    """The URL from the child's ``listening on`` line, or a DemoError naming its log."""
    return child.wait_banner(timeout, stopping)
