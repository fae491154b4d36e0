#!/usr/bin/env python3
"""Steering speed: the pure decision function, and ``/steer`` over HTTP against nginx.

A synthetic, seeded fleet: 1,000 appliances in 250 sites (4 each) spread over
the globe, 100,000 client prefixes (/24 to /16, each announced to every box of
one site), 50,000 object keys, and an inventory filter per appliance holding
2,000 of the keys.

1. **Pure**: in this process, with every appliance a candidate and its filter
   loaded, time the longest-prefix match alone, ``decide()`` (localize, rank,
   classify: what the issue calls the decision function), and the whole answer
   (``decide`` + signed URLs + the JSON text) for random (client, key) pairs.
2. **HTTP**: ``edgefleet steer`` pinned to one CPU (``--server-cpu``) with the
   same fleet in its TOML configuration; ``wrk`` with one thread pinned to
   another (``--client-cpu``) asks ``/steer?object=KEY`` with random keys and an
   ``X-Forwarded-For`` of a random client address inside the 100,000 prefixes,
   from 127.0.0.1, which the configuration trusts as a proxy. The appliances
   are not running: one tiny HTTP responder in this process answers every
   appliance's ``/_edge/health`` (ok) and ``/_edge/inventory?format=bloom`` (its
   seeded filter); polls run every 60 s, so they cost nothing during a run.
   The reference, measured in the same run on the same core: nginx serving a
   static JSON file the size of a ``/steer`` answer, with the same wrk settings.
   Runs alternate (steer, nginx, steer, nginx, ...).

Targets (issue #5): >= 50,000 decisions/s for the pure function; >= 5,000
answers/s per process over HTTP with p99 <= 5 ms.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchlib import (
    HOST,
    Server,
    add_executable_args,
    add_output_args,
    check_cpus,
    check_executables,
    cpu_ticks,
    log,
    machine,
    pinned,
    print_header,
    run_in_workdir,
    spawn_edgefleet,
    start_nginx,
    version,
    write_json,
)
from serve_vs_nginx import parse_wrk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.core.inventory import build  # noqa: E402
from steering import answer  # noqa: E402
from steering.config import ApplianceSpec, SteerConfig  # noqa: E402
from steering.decide import decide  # noqa: E402
from steering.fleet import Fleet  # noqa: E402
from steering.health import FleetState  # noqa: E402
from steering.prefixes import address  # noqa: E402

SITES = 250
PER_SITE = 4
PREFIXES = 100_000
KEYS = 50_000
HELD = 2_000
SECRET = "bench-secret-0123456789abcdef"
LENGTHS = [24] * 70 + [22] * 20 + [20] * 8 + [16] * 2

STEER_LUA = """\
-- GET /steer?object=KEY with X-Forwarded-For CLIENT, from the lines "KEY CLIENT"
-- of args[1], in random order (seed args[2]).
local reqs = {}
local n = 0

function init(args)
  math.randomseed(tonumber(args[2]))
  for line in io.lines(args[1]) do
    local key, client = line:match("^(%S+) (%S+)$")
    n = n + 1
    reqs[n] = wrk.format("GET", "/steer?object=" .. key, {["X-Forwarded-For"] = client})
  end
end

function request()
  return reqs[math.random(n)]
end
"""


# -- the synthetic fleet -------------------------------------------------------------


@dataclass
class Synthetic:
    specs: list[ApplianceSpec]
    prefixes: list[ipaddress.IPv4Network]
    keys: list[str]
    held: list[list[str]]  # per appliance

    def client(self, rng: random.Random) -> str:
        net = self.prefixes[rng.randrange(len(self.prefixes))]
        return str(net.network_address + rng.randrange(net.num_addresses))


def synthetic(seed: int, base_url: str) -> Synthetic:
    rng = random.Random(seed)
    cursor = 0x0B000000  # 11.0.0.0: sequential, aligned, non-overlapping blocks
    site_prefixes: list[list[ipaddress.IPv4Network]] = [[] for _ in range(SITES)]
    prefixes = []
    for i in range(PREFIXES):
        length = rng.choice(LENGTHS)
        size = 1 << (32 - length)
        cursor = (cursor + size - 1) // size * size
        net = ipaddress.IPv4Network((cursor, length))
        cursor += size
        prefixes.append(net)
        site_prefixes[i % SITES].append(net)
    specs = []
    for s in range(SITES):
        lat, lon = rng.uniform(-55, 65), rng.uniform(-180, 180)
        for b in range(PER_SITE):
            n = s * PER_SITE + b
            specs.append(
                ApplianceSpec(
                    f"a{n}",
                    f"{base_url}/a{n}",
                    f"site{s}",
                    lat,
                    lon,
                    tuple(site_prefixes[s]),
                    10e9,
                    1.0,
                )
            )
    keys = [f"titles/{t}/1080p/seg_{k:05d}.m4s" for t in range(KEYS // 500) for k in range(500)]
    held = [rng.sample(keys, HELD) for _ in specs]
    return Synthetic(specs, prefixes, keys, held)


def toml(syn: Synthetic) -> str:
    lines = [
        'health_interval = "60s"',
        'health_timeout = "10s"',
        'inventory_interval = "600s"',
        'trusted_proxies = ["127.0.0.1/32"]',
        f'url_signing_keys = {{ k1 = "{SECRET}" }}',
        "",
    ]
    for a in syn.specs:
        nets = ", ".join(f'"{n}"' for n in a.prefixes)
        lines += [
            "[[appliance]]",
            f'id = "{a.id}"',
            f'url = "{a.url}"',
            f'site = "{a.site}"',
            f"latitude = {a.latitude}",
            f"longitude = {a.longitude}",
            'capacity = "10Gbit"',
            f"prefixes = [{nets}]",
            "",
        ]
    return "\n".join(lines)


# -- pure ------------------------------------------------------------------------------


@dataclass
class PureResult:
    what: str
    per_second: float
    p50_us: float
    p99_us: float
    n: int


def _time(what: str, fn: Any, args: list[Any]) -> PureResult:
    ns = time.perf_counter_ns
    samples = []
    t0 = ns()
    for a in args:
        s = ns()
        fn(a)
        samples.append(ns() - s)
    wall = (ns() - t0) / 1e9
    samples.sort()
    return PureResult(
        what,
        len(args) / wall,
        samples[len(samples) // 2] / 1e3,
        samples[int(len(samples) * 0.99)] / 1e3,
        len(args),
    )


def pure(syn: Synthetic, n: int, seed: int) -> list[PureResult]:
    cfg = SteerConfig(
        appliances=syn.specs, url_signing_keys={"k1": SECRET.encode()}, signing_key_id="k1"
    )
    t0 = time.monotonic()
    fleet = Fleet(cfg)
    state = FleetState([True] * len(syn.specs), [build(h, HELD) for h in syn.held])
    log(f"  compiled the fleet and {len(syn.specs)} filters in {time.monotonic() - t0:.1f} s")
    rng = random.Random(seed)
    reqs = [(syn.client(rng), syn.keys[rng.randrange(len(syn.keys))]) for _ in range(n)]
    parsed = [(address(c), c, k) for c, k in reqs]
    loc = fleet.localizer
    # warm the per-position site orders (250 of them), as a running service has
    for (v, a), c, k in parsed[: n // 10]:
        decide(fleet, state, k, loc.locate(v, a, c), 3)

    def lpm(r: Any) -> Any:
        return loc.locate(r[0][0], r[0][1], r[1])

    def decision(r: Any) -> Any:
        return decide(fleet, state, r[2], loc.locate(r[0][0], r[0][1], r[1]), 3)

    def whole(r: Any) -> Any:
        d = decide(fleet, state, r[2], loc.locate(r[0][0], r[0][1], r[1]), 3)
        urls, expires = answer.urls(d, fleet, cfg, r[1], 1_700_000_000.0)
        return json.dumps(answer.document(d, fleet, urls, expires)).encode()

    return [
        _time("localize (LPM) only", lpm, parsed),
        _time("decide() (localize+rank+classify)", decision, parsed),
        _time("whole answer (+sign+JSON)", whole, parsed),
    ]


# -- HTTP ------------------------------------------------------------------------------


class Responder:
    """Every appliance's /_edge/health and inventory filter, from one tiny server."""

    def __init__(self, syn: Synthetic) -> None:
        self.filters = {
            a.id: build(h, HELD).to_bytes() for a, h in zip(syn.specs, syn.held, strict=True)
        }
        health = json.dumps(
            {"status": "ok", "draining": False, "connections": 0, "egress_bytes_per_second": 0}
        ).encode()
        filters = self.filters

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                name = self.path.split("/")[1]
                if self.path.endswith("/_edge/health"):
                    body, ctype = health, "application/json"
                elif "/_edge/inventory" in self.path and name in filters:
                    body, ctype = filters[name], "application/vnd.edgefleet.bloom"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        class Listener(ThreadingHTTPServer):
            request_queue_size = 4096  # a thousand polls arrive at once at start
            daemon_threads = True

        self.server = Listener((HOST, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request("GET", path, headers={"X-Forwarded-For": "11.0.0.1"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def start_steer(work: Path, exe: str, cpu: int, timeout: float) -> Server:
    log_path = work / "steer.log"
    cmd = pinned([exe, "steer", "--config", str(work / "steer.toml"), "--listen", f"{HOST}:0",
                  "--log-level", "warning"], cpu)  # fmt: skip
    return spawn_edgefleet("edgefleet steer", cmd, log_path, command="steer", timeout=timeout)


@dataclass
class HttpRun:
    server: str
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_pct: float
    non_2xx: int
    errors: int


def run_wrk(
    args: argparse.Namespace, server: Server, work: Path, path: str, script: bool, round_: int
) -> HttpRun:
    cmd = [args.wrk, "-t1", f"-c{args.connections}", f"-d{args.duration}s", "--latency"]
    if script:
        cmd += ["-s", str(work / "steer.lua"), f"http://{HOST}:{server.port}/", "--",
                str(work / "requests.txt"), str(args.seed + round_)]  # fmt: skip
    else:
        cmd.append(f"http://{HOST}:{server.port}{path}")
    tck = os.sysconf("SC_CLK_TCK")
    ticks0 = cpu_ticks(server.pid)
    t0 = time.monotonic()
    out = subprocess.run(pinned(cmd, args.client_cpu), capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    cpu = (cpu_ticks(server.pid) - ticks0) / tck / wall * 100
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr}")
    w = parse_wrk(out.stdout)
    r = HttpRun(server.name, round_, w.rps, w.p50_ms, w.p99_ms, w.max_ms, cpu, w.non_2xx,
                sum(w.socket_errors.values()))  # fmt: skip
    log(f"  round {round_} {server.name}: {r.rps:,.0f} req/s, p50 {r.p50_ms:.2f} ms, "
        f"p99 {r.p99_ms:.2f} ms, server CPU {cpu:.0f}%")  # fmt: skip
    return r


def median_run(runs: list[HttpRun]) -> HttpRun:
    by = sorted(runs, key=lambda r: r.rps)
    return by[len(by) // 2]


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_executable_args(p)
    add_output_args(p)
    p.add_argument("--wrk", default="/usr/bin/wrk", help="wrk (default /usr/bin/wrk)")
    p.add_argument("--server-cpu", type=int, default=0, help="CPU for steering and nginx")
    p.add_argument("--client-cpu", type=int, default=1, help="CPU for wrk")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of (steer, nginx) (3)")
    p.add_argument("--decisions", type=int, default=200_000, help="pure decisions timed")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="1 round of 5 s, 50,000 decisions")
    p.add_argument("--pure-only", action="store_true", help="skip the HTTP part")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.decisions = 1, 5, 50_000
    check_cpus(p, [("--server-cpu", args.server_cpu), ("--client-cpu", args.client_cpu)])
    if not args.pure_only:
        check_executables(p, [("--edgefleet", args.edgefleet), ("--nginx", args.nginx),
                              ("--wrk", args.wrk)])  # fmt: skip
    return args


def bench(args: argparse.Namespace, work: Path, servers: list[Server]) -> int:
    doc: dict[str, Any] = {"machine": machine(), "settings": vars(args).copy()}
    log("building the synthetic fleet")
    responder_url = "http://127.0.0.1:{port}"
    syn = synthetic(args.seed, responder_url)
    print(
        f"steering: {len(syn.specs)} appliances in {SITES} sites, {len(syn.prefixes):,} "
        f"prefixes, {KEYS:,} keys, {HELD:,} held per appliance\n"
    )
    log("pure decision function")
    results = pure(syn, args.decisions, args.seed)
    doc["pure"] = [asdict(r) for r in results]
    print(f"pure, in one process, {args.decisions:,} random (client, key) pairs")
    print_header(f"{'what':36} {'per second':>12} {'p50 us':>8} {'p99 us':>8}  target")
    for r in results:
        target = ""
        if r.what.startswith("decide"):
            ok = r.per_second >= 50_000
            target = f">= 50,000/s: {'met' if ok else 'MISSED'}"
        print(f"{r.what:36} {r.per_second:>12,.0f} {r.p50_us:>8.1f} {r.p99_us:>8.1f}  {target}")
    print()
    if args.pure_only:
        if args.json:
            write_json(args.json, doc)
        return 0

    log("starting the appliance responder and edgefleet steer")
    responder = Responder(syn)
    try:
        # the responder's port goes into every URL
        syn.specs = [replace(a, url=a.url.format(port=responder.port)) for a in syn.specs]
        (work / "steer.toml").write_text(toml(syn))
        rng = random.Random(args.seed)
        (work / "requests.txt").write_text(
            "".join(f"{rng.choice(syn.keys)} {syn.client(rng)}\n" for _ in range(20_000))
        )
        (work / "steer.lua").write_text(STEER_LUA)
        t0 = time.monotonic()
        steer = start_steer(work, args.edgefleet, args.server_cpu, timeout=300)
        servers.append(steer)
        log(f"  steering up in {time.monotonic() - t0:.1f} s")
        health = json.loads(get(steer.port, "/_steer/health")[1])
        if health["candidates"] != len(syn.specs):
            raise RuntimeError(f"only {health['candidates']} candidates: {health}")
        status, body = get(steer.port, f"/steer?object={syn.keys[0]}")
        if status != 200:
            raise RuntimeError(f"/steer answered {status}: {body[:200]!r}")
        origin = work / "origin"
        origin.mkdir()
        (origin / "answer.json").write_bytes(body)
        nginx = start_nginx(work, "nginx", args.nginx, args.server_cpu, "access_log off;")
        servers.append(nginx)
        runs: list[HttpRun] = []
        for n in range(1, args.rounds + 1):
            runs.append(run_wrk(args, steer, work, "", True, n))
            runs.append(run_wrk(args, nginx, work, "/answer.json", False, n))
    finally:
        responder.close()
    s = median_run([r for r in runs if r.server == steer.name])
    x = median_run([r for r in runs if r.server == nginx.name])
    doc["http"] = [asdict(r) for r in runs]
    doc["answer_bytes"] = len(body)
    doc["versions"] = {"nginx": version([args.nginx, "-v"]), "wrk": version([args.wrk, "-v"])}
    print(
        f"/steer over HTTP: server on CPU {args.server_cpu}, wrk -t1 -c{args.connections} on "
        f"CPU {args.client_cpu}, {args.duration} s runs, median of {args.rounds} round(s); "
        f"answer {len(body)} bytes"
    )
    print_header(
        f"{'server':34} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'CPU':>5}  errors"
    )
    for r in (s, x):
        name = r.server if r is s else "nginx (static JSON, same size)"
        print(f"{name:34} {r.rps:>9,.0f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {r.max_ms:>7.2f} "
              f"{r.server_cpu_pct:>4.0f}%  {r.non_2xx + r.errors}")  # fmt: skip
    met_rps = s.rps >= 5000
    met_p99 = s.p99_ms <= 5.0
    verdict = f"rate {'met' if met_rps else 'MISSED'}, p99 {'met' if met_p99 else 'MISSED'}"
    print(f"{'target':34} {'>= 5,000':>9} {'':>7} {'<= 5':>7}          {verdict}")
    print(f"{'ratio steer/nginx':34} {s.rps / x.rps:>8.2f}x {s.p50_ms / x.p50_ms:>6.1f}x "
          f"{s.p99_ms / x.p99_ms:>6.1f}x")  # fmt: skip
    print(f"{'CPU per answer (steer)':34} {s.server_cpu_pct / 100 / s.rps * 1e6:>8.0f} us")
    if args.json:
        write_json(args.json, doc)
    return 1 if any(r.non_2xx or r.errors for r in runs) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_in_workdir("steer_bench", "edgefleet-steer-bench-", args.keep,
                          lambda work, servers: bench(args, work, servers))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
