#!/usr/bin/env python3
"""``edgefleet serve`` against nginx on the same files, the same core, the same load.

Both servers run one worker pinned to one core (``--server-cpu``, default 0) and
serve the same generated files; ``wrk`` runs pinned to another core
(``--client-cpu``, default 1) with one thread. nginx is configured the way a
file-serving edge would be (``sendfile on``, ``tcp_nopush off``, ``tcp_nodelay
on``, no access log); edgefleet is warmed first so every measured request is a
hit served from its store. For each scenario the servers take turns
(edgefleet, nginx, edgefleet, nginx, ...) so drift on the box hits both alike.

Scenarios:

- ``segment``: full GETs of random 2 MiB segments;
- ``range``: 64 KiB ``Range`` requests at random offsets of random 2 MiB
  segments (half of them aligned to 64 KiB, half at any byte);
- ``small``: full GETs of random 1 KiB objects.

Per server and scenario it reports requests/s, MB/s (10^6 bytes, headers
included), the 99th percentile latency, and the server's CPU time per request
(user + system time of the whole process from ``/proc/PID/stat``, divided by
the requests wrk completed), then the ratios edgefleet/nginx against the
targets. Run ``python bench/serve_vs_nginx.py --help`` for the options;
``bench/README.md`` explains the output.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    HOST,
    MIB,
    Server,
    add_executable_args,
    add_output_args,
    admin_get,
    allowed_cpus,
    check_cpus,
    check_executables,
    cpu_core,
    cpu_ticks,
    log,
    machine,
    metric_samples,
    parse_wrk,
    pinned,
    print_header,
    run_in_workdir,
    rusage_seconds,
    spawn_edgefleet,
    start_nginx,
    stored_keys,
    tail,
    version,
    write_json,
    write_synced,
)
from charts import ratio_bars_png

SEGMENT_SIZE = 2 * MIB
RANGE_SIZE = 64 * 1024
SMALL_SIZE = 1024
P99_TARGET = 2.0  # edgefleet p99 at most this many times nginx's
BUSY_PCT = 90.0  # a core this busy is what limits a run
NOISE_PCT = 10.0  # other work or steal on the server core above this: a noisy run
RANGE_REQUESTS = 20_000  # distinct range requests wrk picks from


# -- scenarios ----------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    connections: int
    target: float  # minimum edgefleet/nginx requests/s ratio
    lua: str  # the wrk script (written to the work directory)
    body: int  # body bytes per response


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("segment", "2 MiB segments, full GET", 16, 1.0, "paths.lua", SEGMENT_SIZE),
    Scenario("range", "64 KiB ranges of 2 MiB segments", 32, 0.8, "ranges.lua", RANGE_SIZE),
    Scenario("small", "1 KiB objects, full GET", 32, 0.5, "paths.lua", SMALL_SIZE),
)

# Every request is built once in init(); request() only picks one at random, so
# wrk spends its time on the sockets, not in Lua.
PATHS_LUA = """\
-- GET a random path of the list file args[1]; args[2] seeds the choice.
local reqs = {}
local n = 0

function init(args)
  for line in io.lines(args[1]) do
    n = n + 1
    reqs[n] = wrk.format("GET", line)
  end
  math.randomseed(tonumber(args[2]))
end

function request()
  return reqs[math.random(n)]
end
"""

RANGES_LUA = """\
-- GET "Range: bytes=a-(a+len-1)" of a random path of the list file args[1]:
-- args[2] seeds, args[3] is the object size, args[4] the range length,
-- args[5] how many distinct requests to build. Half of the offsets are
-- aligned to the range length, half are any byte.
local reqs = {}
local n = 0

function init(args)
  local paths = {}
  for line in io.lines(args[1]) do
    paths[#paths + 1] = line
  end
  math.randomseed(tonumber(args[2]))
  local size = tonumber(args[3])
  local len = tonumber(args[4])
  local count = tonumber(args[5])
  for i = 1, count do
    local a
    if i % 2 == 0 then
      a = math.random(0, math.floor((size - len) / len)) * len
    else
      a = math.random(0, size - len)
    end
    local h = {}
    h["Range"] = "bytes=" .. a .. "-" .. (a + len - 1)
    reqs[i] = wrk.format("GET", paths[math.random(#paths)], h)
  end
  n = count
end

function request()
  return reqs[math.random(n)]
end
"""


# -- the files ----------------------------------------------------------------


@dataclass
class Corpus:
    origin: Path
    segments: list[str]  # URL paths
    small: list[str]
    segments_list: Path  # one URL path a line, for wrk
    small_list: Path

    def all_paths(self) -> list[str]:
        return self.segments + self.small


def make_corpus(work: Path, titles: int, per_title: int, small: int, seed: int) -> Corpus:
    origin = work / "origin"
    rng = random.Random(seed)
    segments: list[str] = []
    for t in range(titles):
        d = origin / "titles" / str(t)
        d.mkdir(parents=True)
        for s in range(per_title):
            name = f"seg_{s:05d}.m4s"
            write_synced(d / name, rng.randbytes(SEGMENT_SIZE))
            segments.append(f"/titles/{t}/{name}")
    objects: list[str] = []
    per_dir = 100
    for i in range(small):
        d = origin / "small" / f"{i // per_dir:03d}"
        d.mkdir(parents=True, exist_ok=True)
        name = f"obj_{i:05d}.m4s"
        write_synced(d / name, rng.randbytes(SMALL_SIZE))
        objects.append(f"/small/{i // per_dir:03d}/{name}")
    seg_list = work / "segments.txt"
    seg_list.write_text("".join(p + "\n" for p in segments))
    small_list = work / "small.txt"
    small_list.write_text("".join(p + "\n" for p in objects))
    (work / "paths.lua").write_text(PATHS_LUA)
    (work / "ranges.lua").write_text(RANGES_LUA)
    return Corpus(origin, segments, objects, seg_list, small_list)


# -- processes ----------------------------------------------------------------


def start_edgefleet(
    work: Path, name: str, exe: str, cpu: int, access_log: bool, timeout: float
) -> Server:
    store = work / f"store-{name}"
    store.mkdir(exist_ok=True)  # a store root must exist
    cmd = [
        exe,
        "serve",
        "--listen",
        f"{HOST}:0",
        "--store",
        str(store),
        "--capacity",
        "4GiB",
        "--origin",
        f"file://{work / 'origin'}",
        "--workers",
        "1",
        "--log-level",
        "warning",
    ]
    if access_log:
        cmd += ["--access-log", str(work / f"{name}-access.log")]
    return spawn_edgefleet(
        name,
        pinned(cmd, cpu),
        work / f"{name}.log",
        store=store,
        timeout=timeout,
    )


def start_nginx_server(work: Path, name: str, exe: str, cpu: int, access_log: bool) -> Server:
    log_line = (
        f"access_log {work}/{name}-access.log combined buffer=64k flush=1s;"
        if access_log
        else "access_log off;"
    )
    return start_nginx(work, name, exe, cpu, log_line)


# -- HTTP checks and warming ----------------------------------------------------


class Client:
    """One keep-alive connection to a server, for warming and checks."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection(HOST, port, timeout=60)

    def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        for attempt in (1, 2):
            try:
                self.conn.request("GET", path, headers=headers or {})
                resp = self.conn.getresponse()
                body = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def fetch_all(server: Server, paths: list[str]) -> None:
    client = Client(server.port)
    try:
        for p in paths:
            status, _, _ = client.get(p)
            if status != 200:
                raise RuntimeError(f"{server.name}: GET {p} answered {status} while warming")
    finally:
        client.close()


def edgefleet_counts(server: Server) -> dict[str, float]:
    """Content requests answered so far, by cache result (from /_edge/metrics)."""
    text = admin_get(server.port, "/_edge/metrics").decode()
    counts: dict[str, float] = {}
    for _, labels, value in metric_samples(text, ["edgefleet_requests_total"]):
        key = labels.get("cache", "?")
        counts[key] = counts.get(key, 0.0) + value
    return counts


def stored_objects(server: Server) -> int:
    return len(stored_keys(server.port))


def read_bandwidth(files: list[Path], rounds: int = 3) -> float:
    """GB/s reading ``files`` from the page cache in 1 MiB reads (best of ``rounds``)."""
    buf = bytearray(MIB)
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        n = 0
        for path in files:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                while k := os.readv(fd, [buf]):
                    n += k
            finally:
                os.close(fd)
        best = max(best, n / (time.perf_counter() - t0) / 1e9)
    return best


def page_cache_check(work: Path, corpus: Corpus, servers: list[Server]) -> dict[str, float]:
    """How fast the segments nginx serves and the slices edgefleet serves read.

    The same bytes can sit in page-cache memory laid out differently (large
    folios or single pages, depending on how and when they were written or
    read back), and copying them can then run at very different speeds (8 vs
    19 GB/s has been seen on the same box). On loopback the client copies every
    byte it receives out of those pages, so a gap here can move the 2 MiB
    results without either server being faster; it is reported, not corrected.
    """
    rates = {"origin": read_bandwidth([corpus.origin / p.lstrip("/") for p in corpus.segments])}
    for s in servers:
        if s.kind == "edgefleet":
            slices = [
                p
                for p in (work / f"store-{s.name}" / "slices").rglob("*")
                if p.is_file() and p.stat().st_size == SEGMENT_SIZE
            ]
            rates[s.name] = read_bandwidth(slices) if slices else float("nan")
    return rates


def warm(server: Server, corpus: Corpus) -> None:
    """Fetch everything, let the stores settle, fetch everything again."""
    paths = corpus.all_paths()
    t0 = time.monotonic()
    fetch_all(server, paths)
    time.sleep(1.0)
    if server.kind == "edgefleet":
        deadline = time.monotonic() + 60
        while (n := stored_objects(server)) < len(paths):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.name}: only {n} of {len(paths)} objects stored")
            time.sleep(0.5)
    fetch_all(server, paths)
    log(f"  warmed {server.name}: {len(paths)} objects twice in {time.monotonic() - t0:.1f} s")


@dataclass
class Sample:
    scenario: str
    path: str
    headers: dict[str, str]
    status: int


def samples(corpus: Corpus, rng: random.Random) -> list[Sample]:
    a = rng.randrange(0, SEGMENT_SIZE - RANGE_SIZE)
    return [
        Sample("segment", rng.choice(corpus.segments), {}, 200),
        Sample(
            "range",
            rng.choice(corpus.segments),
            {"Range": f"bytes={a}-{a + RANGE_SIZE - 1}"},
            206,
        ),
        Sample("small", rng.choice(corpus.small), {}, 200),
    ]


def check_identical(servers: list[Server], corpus: Corpus, rng: random.Random) -> list[str]:
    """One request of each scenario to every server: same status, same body as
    the file on disk. Returns the problems found."""
    problems: list[str] = []
    for s in samples(corpus, rng):
        expected = (corpus.origin / s.path.lstrip("/")).read_bytes()
        rng_hdr = s.headers.get("Range")
        if rng_hdr:
            a, b = (int(x) for x in rng_hdr.split("=", 1)[1].split("-"))
            expected = expected[a : b + 1]
        bodies: dict[str, bytes] = {}
        for server in servers:
            client = Client(server.port)
            try:
                status, headers, body = client.get(s.path, s.headers)
            finally:
                client.close()
            bodies[server.name] = body
            where = f"{s.scenario}: {server.name} GET {s.path} {rng_hdr or ''}".rstrip()
            if status != s.status:
                problems.append(f"{where}: status {status}, expected {s.status}")
            if body != expected:
                problems.append(f"{where}: body of {len(body)} bytes differs from the file's")
            if rng_hdr and not headers.get("content-range", "").startswith(
                f"bytes {rng_hdr.split('=', 1)[1]}/"
            ):
                problems.append(f"{where}: Content-Range {headers.get('content-range')!r}")
        first = next(iter(bodies.values()))
        if any(b != first for b in bodies.values()):
            problems.append(f"{s.scenario}: bodies differ between servers for {s.path}")
    return problems


# -- wrk ----------------------------------------------------------------------


@dataclass
class Run:
    scenario: str
    server: str
    round: int
    requests: int
    seconds: float
    rps: float
    mb_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_us_per_request: float
    server_cpu_pct: float
    client_cpu_pct: float
    server_core_other_pct: float  # the server core's busy time not spent by the server
    server_core_steal_pct: float  # time the hypervisor gave the server core to others
    non_2xx: int
    socket_errors: dict[str, int]
    problems: list[str] = field(default_factory=list)


def lua_args(scenario: Scenario, corpus: Corpus, seed: int) -> list[str]:
    if scenario.name == "segment":
        return [str(corpus.segments_list), str(seed)]
    if scenario.name == "small":
        return [str(corpus.small_list), str(seed)]
    return [
        str(corpus.segments_list),
        str(seed),
        str(SEGMENT_SIZE),
        str(RANGE_SIZE),
        str(RANGE_REQUESTS),
    ]


def run_wrk(
    server: Server,
    scenario: Scenario,
    corpus: Corpus,
    work: Path,
    *,
    wrk: str,
    client_cpu: int,
    server_cpu: int,
    connections: int,
    duration: float,
    seed: int,
    round_: int,
) -> Run:
    cmd = pinned(
        [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "-s",
            str(work / scenario.lua),
            f"http://{HOST}:{server.port}/",
            "--",
            *lua_args(scenario, corpus, seed),
        ],
        client_cpu,
    )
    tck = os.sysconf("SC_CLK_TCK")
    before_children = rusage_seconds(resource.RUSAGE_CHILDREN)
    core0 = cpu_core(server_cpu)
    ticks0 = cpu_ticks(server.pid)
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    ticks1 = cpu_ticks(server.pid)
    core1 = cpu_core(server_cpu)
    after_children = rusage_seconds(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()}")
    w = parse_wrk(out.stdout)
    server_secs = (ticks1 - ticks0) / tck
    core_total = max(1, core1.total - core0.total)
    other_pct = 100.0 * ((core1.busy - core0.busy) - (ticks1 - ticks0)) / core_total
    steal_pct = 100.0 * (core1.steal - core0.steal) / core_total
    client_cpu = after_children - before_children
    problems: list[str] = []
    if w.non_2xx:
        problems.append(f"{w.non_2xx} non-2xx/3xx responses")
    if any(w.socket_errors.values()):
        errs = ", ".join(f"{k} {v}" for k, v in w.socket_errors.items() if v)
        problems.append(f"socket errors: {errs}")
    if w.requests == 0:
        problems.append("no request completed")
    if not server.alive():
        problems.append(f"{server.name} died (exit {server.proc.returncode})")
    return Run(
        scenario=scenario.name,
        server=server.name,
        round=round_,
        requests=w.requests,
        seconds=w.seconds,
        rps=w.rps,
        mb_per_s=w.bytes_per_s / 1e6,
        p50_ms=w.p50_ms,
        p99_ms=w.p99_ms,
        max_ms=w.max_ms,
        cpu_us_per_request=server_secs / w.requests * 1e6 if w.requests else float("nan"),
        server_cpu_pct=100.0 * server_secs / wall,
        client_cpu_pct=100.0 * client_cpu / wall,
        server_core_other_pct=other_pct,
        server_core_steal_pct=steal_pct,
        non_2xx=w.non_2xx,
        socket_errors=w.socket_errors,
        problems=problems,
    )


# -- summary ------------------------------------------------------------------


@dataclass
class Summary:
    scenario: str
    server: str
    runs: int
    rps: float
    mb_per_s: float
    p99_ms: float
    max_ms: float
    cpu_us_per_request: float
    server_cpu_pct: float
    client_cpu_pct: float
    limit: str  # what held the run back: "server", "wrk", "both" or "-" (neither core busy)
    server_core_other_pct: float  # the worst run's
    server_core_steal_pct: float  # the worst run's
    problems: list[str]


def limit(server_cpu_pct: float, client_cpu_pct: float) -> str:
    server, client = server_cpu_pct >= BUSY_PCT, client_cpu_pct >= BUSY_PCT
    return "both" if server and client else "server" if server else "wrk" if client else "-"


def summarize(runs: list[Run], how: str) -> Summary:
    problems = [f"round {r.round}: {p}" for r in runs for p in r.problems]
    best = max(runs, key=lambda r: r.rps)

    def pick(f: Callable[[Run], float]) -> float:
        if how == "best":
            return f(best)
        return float(statistics.median(f(r) for r in runs))

    return Summary(
        scenario=runs[0].scenario,
        server=runs[0].server,
        runs=len(runs),
        rps=pick(lambda r: r.rps),
        mb_per_s=pick(lambda r: r.mb_per_s),
        p99_ms=pick(lambda r: r.p99_ms),
        max_ms=max(r.max_ms for r in runs),
        cpu_us_per_request=pick(lambda r: r.cpu_us_per_request),
        server_cpu_pct=pick(lambda r: r.server_cpu_pct),
        client_cpu_pct=pick(lambda r: r.client_cpu_pct),
        limit=limit(pick(lambda r: r.server_cpu_pct), pick(lambda r: r.client_cpu_pct)),
        server_core_other_pct=max(r.server_core_other_pct for r in runs),
        server_core_steal_pct=max(r.server_core_steal_pct for r in runs),
        problems=problems,
    )


@dataclass
class Comparison:
    scenario: str
    edgefleet: str
    nginx: str
    rps_ratio: float
    rps_target: float
    rps_met: bool
    p99_ratio: float
    p99_target: float
    p99_met: bool
    cpu_ratio: float
    caveat: str


def compare(scenario: Scenario, e: Summary, n: Summary) -> Comparison:
    rps_ratio = e.rps / n.rps if n.rps else float("nan")
    p99_ratio = e.p99_ms / n.p99_ms if n.p99_ms else float("nan")
    caveat = ""
    if n.limit in ("wrk", "both"):
        caveat = (
            f"{n.server} was held back by wrk ({n.client_cpu_pct:.0f}% of its core), not by its "
            f"own CPU ({n.server_cpu_pct:.0f}%): the req/s ratio flatters {e.server}; "
            "CPU/req compares the servers"
        )
    return Comparison(
        scenario=scenario.name,
        edgefleet=e.server,
        nginx=n.server,
        rps_ratio=rps_ratio,
        rps_target=scenario.target,
        rps_met=rps_ratio >= scenario.target,
        p99_ratio=p99_ratio,
        p99_target=P99_TARGET,
        p99_met=p99_ratio <= P99_TARGET,
        cpu_ratio=e.cpu_us_per_request / n.cpu_us_per_request
        if n.cpu_us_per_request
        else float("nan"),
        caveat=caveat,
    )


RPS = "req/s (higher is better; mark: least target)"
P99 = "p99 latency (lower is better; mark: most target)"
CPU = "CPU per request (lower is better)"


def ratio_chart(path: Path, comparisons: list[Comparison], args: argparse.Namespace) -> None:
    """The ratios edgefleet/nginx of every scenario (and server pair) as bars."""
    groups: dict[str, dict[str, float]] = {}
    targets: dict[str, dict[str, float]] = {}
    for c in comparisons:
        name = c.scenario + ("" if c.edgefleet == "edgefleet" else f"\n{c.edgefleet}")
        groups[name] = {RPS: c.rps_ratio, P99: c.p99_ratio, CPU: c.cpu_ratio}
        targets[name] = {RPS: c.rps_target, P99: c.p99_target}
    title = (
        f"edgefleet serve / nginx, 1 worker each, {args.duration:.0f} s runs, "
        f"{args.rounds} round(s), {args.aggregate}"
    )
    ratio_bars_png(path, groups, targets, title, "edgefleet / nginx")


def print_table(
    scenarios: list[Scenario],
    summaries: dict[tuple[str, str], Summary],
    comparisons: list[Comparison],
    pairs: list[tuple[str, str]],
    how: str,
) -> None:
    head = (
        f"{'scenario':<34} {'server':<14} {'req/s':>10} {'MB/s':>9} {'p99 ms':>8} "
        f"{'CPU us/req':>10} {'srv CPU':>8} {'wrk CPU':>8} {'limit':>6}  problems"
    )
    print()
    print(f"results ({how} of each server's runs)")
    print_header(head)
    for sc in scenarios:
        first = True
        for e_name, n_name in pairs:
            for name in (e_name, n_name):
                s = summaries[(sc.name, name)]
                label = sc.title if first else ""
                first = False
                print(
                    f"{label:<34} {name:<14} {s.rps:>10.0f} {s.mb_per_s:>9.1f} "
                    f"{s.p99_ms:>8.2f} {s.cpu_us_per_request:>10.1f} "
                    f"{s.server_cpu_pct:>7.0f}% {s.client_cpu_pct:>7.0f}% {s.limit:>6}  "
                    f"{'; '.join(s.problems) or '-'}"
                )
            c = next(c for c in comparisons if c.scenario == sc.name and c.edgefleet == e_name)
            print(
                f"{'':<34} {'ratio':<14} {c.rps_ratio:>9.2f}x "
                f"(target >= {c.rps_target:.1f}x: {'met' if c.rps_met else 'MISSED'}), "
                f"p99 {c.p99_ratio:.2f}x (target <= {c.p99_target:.1f}x: "
                f"{'met' if c.p99_met else 'MISSED'}), CPU/req {c.cpu_ratio:.2f}x"
            )
            if c.caveat:
                print(f"{'':<34} {'caveat':<14} {c.caveat}")
        print()


# -- main ---------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Compare edgefleet serve with nginx on the same files (loopback only).",
    )
    p.add_argument(
        "--duration", type=float, default=None, help="seconds per wrk run (default 10, --quick 3)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="runs per server and scenario (default 2, --quick 1)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds of unmeasured load per server before each scenario (default 2, --quick 1)",
    )
    p.add_argument(
        "--quick", action="store_true", help="under a minute in all: 3 s runs, 1 round, 1 s warm-up"
    )
    p.add_argument(
        "--scenarios",
        default=",".join(s.name for s in SCENARIOS),
        help="comma-separated, of: " + ", ".join(s.name for s in SCENARIOS) + " (default: all; "
        "with --https: range, small, handshake)",
    )
    p.add_argument(
        "--connections",
        type=int,
        default=None,
        help="wrk connections for every scenario "
        "(default: 16 for segments, 32 for ranges and small objects)",
    )
    p.add_argument(
        "--aggregate",
        choices=("median", "best"),
        default="median",
        help="how a server's runs are summed up (default median)",
    )
    p.add_argument(
        "--access-log",
        action="store_true",
        help="also measure both servers writing an access log (edgefleet+log, nginx+log)",
    )
    p.add_argument("--titles", type=int, default=4, help="titles of 2 MiB segments (default 4)")
    p.add_argument("--segments", type=int, default=16, help="2 MiB segments per title (default 16)")
    p.add_argument("--small", type=int, default=2000, help="1 KiB objects (default 2000)")
    p.add_argument("--server-cpu", type=int, default=0, help="core the servers run on (default 0)")
    p.add_argument("--client-cpu", type=int, default=1, help="core wrk runs on (default 1)")
    p.add_argument(
        "--seed", type=int, default=1, help="seed for the files and the requests (default 1)"
    )
    add_executable_args(p)
    p.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk", help="wrk")
    p.add_argument("--https", action="store_true", help="HTTPS instead (bench/https_mode.py)")
    add_output_args(p)
    p.add_argument(
        "--png",
        metavar="PATH",
        default="serve_vs_nginx.png",
        help="a bar chart of the ratios (default serve_vs_nginx.png; '' for none)",
    )
    args = p.parse_args(argv)
    quick = (3.0, 1, 1.0)
    full = (10.0, 2, 2.0)
    defaults = quick if args.quick else full
    args.duration = defaults[0] if args.duration is None else args.duration
    args.rounds = defaults[1] if args.rounds is None else args.rounds
    args.warmup = defaults[2] if args.warmup is None else args.warmup
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    known: dict[str, Any] = {s.name: s for s in SCENARIOS}
    if args.https:  # its own scenarios (range, small, handshake), all unless named
        import https_mode

        known = {s.name: s for s in https_mode.SCENARIOS}
        if args.scenarios == ",".join(s.name for s in SCENARIOS):
            names = list(known)
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        p.error(f"--scenarios: unknown {', '.join(unknown) or '(none given)'}")
    args.scenario_list = [known[n] for n in names]
    if args.rounds < 1 or args.duration < 1:
        p.error("--rounds and --duration must be at least 1")
    if args.server_cpu == args.client_cpu:
        p.error("--server-cpu and --client-cpu must differ")
    check_cpus(p, [("--server-cpu", args.server_cpu), ("--client-cpu", args.client_cpu)])
    check_executables(
        p, [("--edgefleet", args.edgefleet), ("--nginx", args.nginx), ("--wrk", args.wrk)]
    )
    if shutil.which("taskset") is None:
        p.error("taskset (util-linux) is needed")
    return args


def bench(args: argparse.Namespace, work: Path, servers: list[Server]) -> int:
    scenarios: list[Scenario] = args.scenario_list
    log(f"work directory {work}")
    log(
        f"generating {args.titles * args.segments} x 2 MiB segments and "
        f"{args.small} x 1 KiB objects"
    )
    corpus = make_corpus(work, args.titles, args.segments, args.small, args.seed)

    variants = [(False, "")] + ([(True, "+log")] if args.access_log else [])
    pairs: list[tuple[str, str]] = []
    for access_log, suffix in variants:
        e = start_edgefleet(
            work, f"edgefleet{suffix}", args.edgefleet, args.server_cpu, access_log, 60
        )
        servers.append(e)
        n = start_nginx_server(work, f"nginx{suffix}", args.nginx, args.server_cpu, access_log)
        servers.append(n)
        pairs.append((e.name, n.name))
    for s in servers:
        log(
            f"  {s.name}: pid {s.pid}, port {s.port}, cpus {', '.join(sorted(allowed_cpus(s.pid)))}"
        )
        if allowed_cpus(s.pid) != {str(args.server_cpu)}:
            raise RuntimeError(f"{s.name} is not pinned to CPU {args.server_cpu}")

    log("warming (every object fetched twice from each server)")
    for s in servers:
        warm(s, corpus)
    cache_rates = page_cache_check(work, corpus, servers)
    log(
        "  page cache read speed of the 2 MiB files: "
        + ", ".join(f"{k} {v:.1f} GB/s" for k, v in cache_rates.items())
    )

    problems = check_identical(servers, corpus, random.Random(args.seed))
    if problems:
        for p in problems:
            log(f"  MISMATCH {p}")
        log("correctness check failed: not measuring")
        return 1
    log(
        f"  correctness: identical bodies from {', '.join(s.name for s in servers)} for "
        f"{', '.join(sc.name for sc in scenarios)} samples"
    )

    misses_before = {s.name: edgefleet_counts(s) for s in servers if s.kind == "edgefleet"}
    runs: list[Run] = []
    for sc in scenarios:
        conns = args.connections or sc.connections
        log(f"{sc.title}: {conns} connections, {args.duration:.0f} s x {args.rounds} rounds")
        common: dict[str, Any] = {
            "wrk": args.wrk,
            "client_cpu": args.client_cpu,
            "server_cpu": args.server_cpu,
            "connections": conns,
            "seed": args.seed,
        }
        if args.warmup > 0:
            for s in servers:
                run_wrk(s, sc, corpus, work, duration=args.warmup, round_=0, **common)
        for r in range(1, args.rounds + 1):
            for s in servers:
                run = run_wrk(s, sc, corpus, work, duration=args.duration, round_=r, **common)
                runs.append(run)
                log(
                    f"  round {r} {s.name:<14} {run.rps:>9.0f} req/s {run.mb_per_s:>8.1f} MB/s "
                    f"p99 {run.p99_ms:>7.2f} ms max {run.max_ms:>7.2f} ms "
                    f"{run.cpu_us_per_request:>7.1f} us/req "
                    f"srv {run.server_cpu_pct:>3.0f}% wrk {run.client_cpu_pct:>3.0f}% "
                    f"core {args.server_cpu} other {run.server_core_other_pct:>3.0f}% "
                    f"steal {run.server_core_steal_pct:>3.0f}%"
                    + (f"  PROBLEM {'; '.join(run.problems)}" if run.problems else "")
                )

    notes: list[str] = []
    for s in servers:
        if s.kind != "edgefleet":
            continue
        after = edgefleet_counts(s)
        before = misses_before[s.name]
        grew = {
            k: after.get(k, 0) - before.get(k, 0)
            for k in ("miss", "partial")
            if after.get(k, 0) - before.get(k, 0)
        }
        if grew:
            notes.append(f"{s.name}: not all measured requests were hits: {grew}")
    for s in servers:
        if not s.alive():
            notes.append(f"{s.name} exited during the run:\n{tail(s.log)}")
    slowest, fastest = min(cache_rates.values()), max(cache_rates.values())
    cache_warning = []
    if "segment" in [sc.name for sc in scenarios] and fastest > 1.25 * slowest:
        cache_warning.append(
            "the 2 MiB files of one server read from the page cache "
            f"{fastest / slowest:.1f}x faster than the other's ("
            + ", ".join(f"{k} {v:.1f} GB/s" for k, v in cache_rates.items())
            + "): the segment figures may reflect that rather than the servers"
        )
    warnings = cache_warning + [
        f"{r.scenario} round {r.round} {r.server}: a noisy run, CPU {args.server_cpu} also "
        f"spent {r.server_core_other_pct:.0f}% of the time on other work and lost "
        f"{r.server_core_steal_pct:.0f}% to the hypervisor (steal)"
        for r in runs
        if max(r.server_core_other_pct, r.server_core_steal_pct) > NOISE_PCT
    ]

    summaries = {
        (sc.name, s.name): summarize(
            [r for r in runs if r.scenario == sc.name and r.server == s.name], args.aggregate
        )
        for sc in scenarios
        for s in servers
    }
    comparisons = [
        compare(sc, summaries[(sc.name, e)], summaries[(sc.name, n)])
        for sc in scenarios
        for e, n in pairs
    ]
    print(
        f"edgefleet serve vs nginx: 1 worker each on CPU {args.server_cpu}, "
        f"wrk -t1 on CPU {args.client_cpu}, {args.duration:.0f} s runs, {args.rounds} rounds"
    )
    print_table(scenarios, summaries, comparisons, pairs, args.aggregate)
    for note in notes:
        print(f"note: {note}")
    for warning in warnings:
        print(f"warning: {warning}")
    failed = any(s.problems for s in summaries.values()) or bool(notes)
    missed = [c for c in comparisons if not (c.rps_met and c.p99_met)]
    print(
        f"targets: {len(comparisons) - len(missed)} of {len(comparisons)} scenario comparisons met"
        + ("; runs with problems are flagged above" if failed else "")
    )

    if args.png:
        ratio_chart(Path(args.png), comparisons, args)
        log(f"chart written to {args.png}")
    if args.json:
        doc = {
            "settings": {
                "duration_s": args.duration,
                "rounds": args.rounds,
                "warmup_s": args.warmup,
                "aggregate": args.aggregate,
                "server_cpu": args.server_cpu,
                "client_cpu": args.client_cpu,
                "access_log": args.access_log,
                "segments": len(corpus.segments),
                "small_objects": len(corpus.small),
                "seed": args.seed,
                "scenarios": [asdict(sc) for sc in scenarios],
            },
            "machine": machine(),
            "page_cache_gb_per_s": cache_rates,
            "versions": {
                "edgefleet": version([args.edgefleet, "--version"]),
                "nginx": version([args.nginx, "-v"]),
                "wrk": version([args.wrk, "-v"]),
            },
            "runs": [asdict(r) for r in runs],
            "summaries": [asdict(s) for s in summaries.values()],
            "comparisons": [asdict(c) for c in comparisons],
            "notes": notes,
            "warnings": warnings,
        }
        write_json(args.json, doc)
        log(f"results written to {args.json}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.https:  # HTTPS: its own scenarios and targets (bench/https_mode.py)
        import https_mode

        return run_in_workdir(
            "serve_vs_nginx --https",
            "edgefleet-bench-",
            args.keep,
            lambda work, servers: https_mode.main(args, work, servers),
        )
    return run_in_workdir(
        "serve_vs_nginx",
        "edgefleet-bench-",
        args.keep,
        lambda work, servers: bench(args, work, servers),
    )


if __name__ == "__main__":
    sys.exit(main())
