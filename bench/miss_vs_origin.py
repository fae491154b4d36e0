#!/usr/bin/env python3
"""Cold misses through ``edgefleet serve`` against the same objects straight from the origin.

An nginx origin serves a generated set of objects (8 MiB video segments by
default). The same asyncio client downloads the whole set, ``--concurrency``
objects at a time, once straight from nginx and once through an appliance whose
store is empty (``--origin http://127.0.0.1:NGINX``), so every request through
the appliance is a cold miss: one ranged GET per slice (the answer to the first
tells the appliance what the object is: no HEAD first), streamed to the client
as it arrives and stored. Each
round starts a new appliance on a fresh store directory, and the two paths take
turns (origin, appliance, then appliance, origin, ...) so drift on the box
affects both alike.

It reports, per path, the median of the rounds' throughput (body bytes / wall
time, MB = 10^6 bytes) and the ratio appliance/origin against its target
(>= 0.9), then, one object at a time, the time from sending a request to
receiving the first body byte, straight from nginx and through a cold appliance
(median and 90th percentile, ratio of medians against its target, <= 1.2x).
Every body is checked against the file's SHA-256, and the appliance's
``/_edge/metrics`` must count every request as a miss.

The fair peer runs in the same rounds: nginx's own slice cache
(``slice_cache.py``), cold on a fresh cache directory, in front of the same
origin; the appliance's throughput and first byte are also printed as ratios
to it (targets: >= 1.0x throughput, first byte no later).

Two scenarios, each with its own tables: ``loopback`` (nginx itself, unlimited:
the CPU-bound worst case) and ``wan`` (nginx behind ``shaped_origin.py``, a
relay adding ``--origin-rtt`` per request and capping each connection at
``--origin-conn-rate``: what an appliance whose origin is S3 across a WAN
meets). Both paths of a scenario download through the same origin.

By default nothing is pinned (the appliance and nginx both need CPU); ``--pin``
puts the appliance on one core and nginx with the client on the other. Run
``python bench/miss_vs_origin.py --help`` for the options; ``bench/README.md``
explains the output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import re
import shutil
import signal
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
    KIB,
    MIB,
    Server,
    add_executable_args,
    add_output_args,
    admin_get,
    check_cpus,
    check_executables,
    check_pinning,
    core_ticks,
    cpu_ticks,
    die_with_us,
    format_size,
    free_port,
    idle_check,
    launch_listening,
    log,
    machine,
    machine_ticks,
    metric_counts,
    parse_size,
    percentile,
    pinned,
    print_header,
    run_in_workdir,
    self_cpu,
    size_arg,
    spawn_edgefleet,
    start_nginx,
    tail,
    version,
    wait_quiet,
    wait_stored,
    write_json,
)
from objects_client import (
    REQUEST_TIMEOUT,
    WARMUP_KEY,
    Corpus,
    Fetch,
    connect,
    download,
    make_corpus,
    verify,
)
from slice_cache import cached_slices, start_slice_cache

from edge.appliance.miss import READ_AHEAD

THROUGHPUT_TARGET = 0.9  # appliance MB/s at least this share of the origin's
TTFB_TARGET = 1.2  # appliance median time to first byte at most this many times the origin's
BUSY_PCT = 90.0  # a core this busy is what limits a run
NOISE_PCT = 10.0  # CPU spent by processes outside the benchmark above this: a noisy run
PEER_TARGET = 1.0  # appliance cold-miss MB/s at least nginx's slice cache's, first byte no later
PATHS = ("origin", "appliance", "slicecache")
LABELS = {
    "origin": "origin (direct)",
    "appliance": "appliance (miss)",
    "slicecache": "nginx slice cache",
}


def parse_scenarios(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in ("loopback", "wan")]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"scenarios are loopback and wan, not {text!r}")
    return list(dict.fromkeys(names))


def parse_ms(text: str) -> float:
    """Milliseconds (``20``, ``20ms``) to seconds."""
    t = text.strip().lower().removesuffix("ms")
    try:
        ms = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time in ms: {text!r}") from None
    if ms < 0:
        raise argparse.ArgumentTypeError("a time cannot be negative")
    return ms / 1e3


def format_age(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:g} days"
    return f"{seconds:g} s"


# -- processes --------------------------------------------------------------------


# the origin: strong ETags (nginx's default, stated), no access log
NGINX_DIRECTIVES = "access_log off;\n    etag on;"


@dataclass
class OriginSide:
    """The origin of one scenario: nginx itself on loopback, or nginx behind the
    WAN-shaping relay (``shaped_origin.py``). Both paths of a scenario, straight
    and through the appliance, download from ``port``."""

    name: str  # "loopback" or "wan"
    label: str  # what it models, for the output
    nginx: Server
    relay: Server | None = None

    @property
    def port(self) -> int:
        return self.relay.port if self.relay is not None else self.nginx.port

    @property
    def servers(self) -> list[Server]:
        return [self.nginx] + ([self.relay] if self.relay is not None else [])


SHAPER = Path(__file__).with_name("shaped_origin.py")


def start_relay(work: Path, args: argparse.Namespace, nginx: Server, cpu: int | None) -> Server:
    """The WAN-shaping relay in front of ``nginx`` (on the client's CPU with --pin)."""
    port = free_port()
    log_path = work / "relay.log"
    cmd = pinned(
        [
            sys.executable,
            str(SHAPER),
            "--port",
            str(port),
            "--upstream-port",
            str(nginx.port),
            "--rtt",
            f"{args.origin_rtt * 1e3:g}ms",
            "--conn-rate",
            f"{args.origin_conn_rate:g}",
            "--link-rate",
            f"{args.origin_link_rate:g}",
        ],
        cpu,
    )
    return launch_listening("relay", cmd, log_path, "relay", port)


def wan_label(args: argparse.Namespace) -> str:
    link = f", {args.origin_link_rate:g} Mbit/s shared" if args.origin_link_rate else ""
    return (
        f"WAN-shaped origin: nginx behind a relay, RTT {args.origin_rtt * 1e3:g} ms "
        f"(+1 RTT per new connection), {args.origin_conn_rate:g} Mbit/s per connection{link}; "
        "models S3 across a WAN"
    )


LOOPBACK_LABEL = "loopback origin: nginx on 127.0.0.1, unlimited; the CPU-bound worst case"


def start_appliance(
    work: Path, name: str, args: argparse.Namespace, origin_port: int, cpu: int | None
) -> Server:
    store = work / f"store-{name}"
    store.mkdir(exist_ok=True)  # a store root must exist
    log_path = work / f"{name}.log"
    cmd = pinned(
        [
            args.edgefleet,
            "serve",
            "--listen",
            f"{HOST}:0",
            "--store",
            str(store),
            "--capacity",
            args.capacity,
            "--origin",
            f"http://{HOST}:{origin_port}",
            "--workers",
            "1",
            "--slice-size",
            args.slice_size,
            "--store-backlog",
            args.store_backlog,
            "--grace",
            "2s",  # in-flight responses at the end: only after an interrupt
            "--log-level",
            "warning",
        ],
        cpu,
    )
    return spawn_edgefleet(name, cmd, log_path, store=store, timeout=60)


# -- the appliance's own view ----------------------------------------------------


def check_misses(
    port: int, expected: int, slices_per_object: int
) -> tuple[dict[str, Any], list[str]]:
    """Waits for the request metrics (flushed once a second) to count ``expected``
    content requests, then checks that every one was a miss answered 200, with one
    origin read per slice and no HEAD (the first slice's answer tells what the
    object is)."""
    deadline = time.monotonic() + 5
    while True:
        requests, origin = metric_counts(port)
        content = sum(v for k, v in requests.items() if not k.startswith("none "))
        if content >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    problems: list[str] = []
    misses = requests.get("miss 200", 0.0)
    others = {k: v for k, v in requests.items() if k != "miss 200" and not k.startswith("none ")}
    if misses != expected:
        problems.append(f"{misses:.0f} requests counted as misses, expected {expected}")
    if others:
        problems.append(
            "requests counted otherwise: " + ", ".join(f"{k} {v:.0f}" for k, v in others.items())
        )
    heads = origin.get("head ok", 0.0)
    reads = origin.get("read ok", 0.0)
    if heads:
        problems.append(f"{heads:.0f} origin HEADs, expected none")
    if reads != expected * slices_per_object:
        problems.append(
            f"{reads:.0f} origin reads, expected one per slice ({expected * slices_per_object})"
        )
    text = admin_get(port, "/_edge/metrics").decode()
    skipped = re.search(r"^edgefleet_store_skipped_slices_total (\S+)$", text, re.M)
    if skipped and float(skipped.group(1)):
        problems.append(
            f"{float(skipped.group(1)):.0f} slices served and not stored: the store fell "
            "behind by more than --store-backlog"
        )
    failed = {k: v for k, v in origin.items() if not k.endswith(" ok")}
    if failed:
        problems.append(
            "origin requests that failed: " + ", ".join(f"{k} {v:.0f}" for k, v in failed.items())
        )
    return {"requests": requests, "origin_requests": origin}, problems


# -- CPU over a run ---------------------------------------------------------------


class Meter:
    """CPU of the appliance, nginx, the shaping relay (if any), this process (the
    client) and the whole machine over a measured interval."""

    def __init__(self, appliance: Server | None, origin: OriginSide) -> None:
        self.appliance = appliance
        self.nginx = origin.nginx
        self.relay = origin.relay
        self.relay0 = 0
        self.start: tuple[int, int, float, tuple[int, int, int, int]] = (0, 0, 0.0, (0, 0, 0, 0))
        self.cores0: dict[int, tuple[int, int]] = {}
        self.cpu: dict[str, float] = {}
        self.cores: dict[str, float] = {}  # how busy each CPU was, in %

    def begin(self) -> None:
        self.start = (
            cpu_ticks(self.appliance.pid, gone=0) if self.appliance else 0,
            cpu_ticks(self.nginx.pid, gone=0),
            self_cpu(),
            machine_ticks(),
        )
        self.relay0 = cpu_ticks(self.relay.pid, gone=0) if self.relay else 0
        self.cores0 = core_ticks()

    def end(self, wall: float) -> None:
        tck = os.sysconf("SC_CLK_TCK")
        a0, n0, c0, m0 = self.start
        a = (cpu_ticks(self.appliance.pid, gone=0) - a0) / tck if self.appliance else 0.0
        n = (cpu_ticks(self.nginx.pid, gone=0) - n0) / tck
        r = (cpu_ticks(self.relay.pid, gone=0) - self.relay0) / tck if self.relay else 0.0
        c = self_cpu() - c0
        m1 = machine_ticks()
        cores1 = core_ticks()
        self.cores = {
            str(cpu): 100.0 * (b - self.cores0[cpu][0]) / max(1, t - self.cores0[cpu][1])
            for cpu, (b, t) in sorted(cores1.items())
            if cpu in self.cores0
        }
        busy = (m1[0] - m0[0]) / tck
        total = max(1, m1[3] - m0[3])
        wall = max(wall, 1e-9)
        self.cpu = {
            "appliance_pct": 100.0 * a / wall,
            "nginx_pct": 100.0 * n / wall,
            "relay_pct": 100.0 * r / wall,
            "client_pct": 100.0 * c / wall,
            "softirq_pct": 100.0 * (m1[1] - m0[1]) / tck / wall,
            # user + system time of all cores not spent by the four: other processes
            "other_pct": 100.0 * max(0.0, busy - a - n - r - c) / wall,
            "steal_pct": 100.0 * (m1[2] - m0[2]) / total * (os.cpu_count() or 1),
            "appliance_cpu_s": a,
        }


# -- throughput ------------------------------------------------------------------


@dataclass
class Run:
    round: int
    path: str  # "origin", "appliance" or "slicecache"
    objects: int
    complete: int
    body_bytes: int
    seconds: float
    mb_per_s: float
    object_ms_median: float
    object_ms_max: float
    appliance_cpu_pct: float
    nginx_cpu_pct: float
    client_cpu_pct: float
    softirq_pct: float
    other_cpu_pct: float
    steal_pct: float
    appliance_cpu_ms_per_mb: float
    relay_cpu_pct: float = 0.0  # the WAN-shaping relay (both paths go through it)
    core_busy_pct: dict[str, float] = field(default_factory=dict)
    stored_s: float | None = None  # appliance: from the last byte to every object stored
    metrics: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def measure(
    path: str,
    round_: int,
    port: int,
    origin: OriginSide,
    appliance: Server | None,
    corpus: Corpus,
    buffers: dict[str, memoryview],
    concurrency: int,
) -> Run:
    meter = Meter(appliance, origin)
    fetches, wall = asyncio.run(download(port, corpus.keys, buffers, concurrency, meter))
    done = [f for f in fetches if f.done_at and not f.error]
    body = sum(f.got for f in done)
    times = [1e3 * (f.done_at - f.sent_at) for f in done] or [float("nan")]
    problems = [f"{f.key}: {f.error}" for f in fetches if f.error]
    if len(fetches) != len(corpus.keys):
        problems.append(f"{len(fetches)} of {len(corpus.keys)} objects requested")
    problems += verify(fetches, buffers, corpus)
    for s in (appliance, *origin.servers):
        if s is not None and not s.alive():
            problems.append(f"{s.name} died (exit {s.proc.returncode})")
    c = meter.cpu
    return Run(
        round=round_,
        path=path,
        objects=len(corpus.keys),
        complete=len(done),
        body_bytes=body,
        seconds=wall,
        mb_per_s=body / wall / 1e6,
        object_ms_median=float(statistics.median(times)),
        object_ms_max=max(times),
        appliance_cpu_pct=c["appliance_pct"],
        nginx_cpu_pct=c["nginx_pct"],
        client_cpu_pct=c["client_pct"],
        softirq_pct=c["softirq_pct"],
        other_cpu_pct=c["other_pct"],
        steal_pct=c["steal_pct"],
        relay_cpu_pct=c["relay_pct"],
        core_busy_pct=meter.cores,
        appliance_cpu_ms_per_mb=1e3 * c["appliance_cpu_s"] / (body / 1e6) if body else float("nan"),
        problems=problems,
    )


def warm_cache(server: Server, corpus: Corpus) -> None:
    """One unmeasured miss (an object outside the measured set), so the measured
    requests find the process, its origin connection and its store warmed up."""

    async def go() -> Fetch:
        conn = await connect(server.port)
        try:
            return await conn.get(WARMUP_KEY, memoryview(bytearray(corpus.size)), REQUEST_TIMEOUT)
        finally:
            conn.close()

    f = asyncio.run(go())
    if f.error:
        raise RuntimeError(
            f"{server.name}: warm-up GET /{WARMUP_KEY}: {f.error}\n{tail(server.log)}"
        )
    if server.kind == "edgefleet" and wait_stored(server.port, [WARMUP_KEY], 30, "warmup/") is None:
        raise RuntimeError(f"{server.name}: the warm-up object was not stored within 30 s")


class Profiler:
    """``py-spy record --nonblocking --format raw`` on a process, for one run."""

    def __init__(self, py_spy: str, pid: int, out: Path, cpu: int | None) -> None:
        self.out = out
        self.log = out.with_suffix(".log")
        record = ["record", "--nonblocking", "--threads", "--format", "raw", "-o", str(out)]
        cmd = pinned([py_spy, *record, "--pid", str(pid)], cpu)
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f, preexec_fn=die_with_us
            )
        deadline = time.monotonic() + 20
        while "Sampling process" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"py-spy did not start:\n{tail(self.log)}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def appliance_round(
    args: argparse.Namespace,
    work: Path,
    round_: int,
    origin: OriginSide,
    corpus: Corpus,
    buffers: dict[str, memoryview],
    live: list[Server],
) -> Run:
    appliance = start_appliance(
        work, f"appliance-{origin.name}-{round_}", args, origin.port, args.appliance_cpu
    )
    live.append(appliance)
    profiler: Profiler | None = None
    try:
        cpus = check_pinning(appliance, args.appliance_cpu)
        log(f"  round {round_} appliance: pid {appliance.pid}, port {appliance.port}, cpus {cpus}")
        warm_cache(appliance, corpus)
        if args.wait_idle:
            wait_quiet(args.wait_idle, NOISE_PCT)
        if args.py_spy_dir:
            out = Path(args.py_spy_dir) / f"appliance-{origin.name}-round-{round_}.txt"
            profiler = Profiler(args.py_spy, appliance.pid, out, args.client_cpu)
        run = measure(
            "appliance",
            round_,
            appliance.port,
            origin,
            appliance,
            corpus,
            buffers,
            args.concurrency,
        )
        if profiler is not None:
            profiler.stop()
            log(f"  profile written to {profiler.out}")
            profiler = None
        run.stored_s = wait_stored(appliance.port, corpus.keys, 120, "titles/")
        if run.stored_s is None:
            run.problems.append("not every object was stored within 120 s")
        slices = -(-corpus.size // parse_size(args.slice_size))
        run.metrics, problems = check_misses(appliance.port, len(corpus.keys) + 1, slices)
        run.problems += problems
        log_text = tail(appliance.log, 5)
        if log_text.strip():
            run.metrics["log_tail"] = log_text
        return run
    finally:
        if profiler is not None:
            profiler.stop()
        appliance.stop()
        live.remove(appliance)
        if not args.keep and appliance.store is not None:
            shutil.rmtree(appliance.store, ignore_errors=True)


def slice_cache_round(
    args: argparse.Namespace,
    work: Path,
    round_: int,
    origin: OriginSide,
    corpus: Corpus,
    buffers: dict[str, memoryview],
    live: list[Server],
) -> Run:
    """The same download through nginx's slice cache on an empty cache directory."""
    cache = start_peer(work, f"slicecache-{origin.name}-{round_}", args, origin.port)
    live.append(cache)
    try:
        cpus = check_pinning(cache, args.appliance_cpu)
        log(f"  round {round_} slice cache: pid {cache.pid}, port {cache.port}, cpus {cpus}")
        warm_cache(cache, corpus)
        if args.wait_idle:
            wait_quiet(args.wait_idle, NOISE_PCT)
        run = measure(
            "slicecache", round_, cache.port, origin, cache, corpus, buffers, args.concurrency
        )
        want = (len(corpus.keys) + 1) * -(-corpus.size // parse_size(args.slice_size))
        t0 = time.monotonic()
        while (held := cached_slices(cache)) < want and time.monotonic() - t0 < 30:
            time.sleep(0.05)
        run.stored_s = time.monotonic() - t0 if held == want else None
        run.metrics = {"cached_slices": held}
        if held != want:
            run.problems.append(f"the slice cache holds {held} slices, not {want}")
        return run
    finally:
        stop_peer(cache, live, args.keep)


def start_peer(work: Path, name: str, args: argparse.Namespace, origin_port: int) -> Server:
    """nginx's slice cache with the appliance's slice size and capacity, on its CPU."""
    slice_size, capacity = parse_size(args.slice_size), parse_size(args.capacity)
    return start_slice_cache(
        work, name, args.nginx, origin_port, slice_size, capacity, args.appliance_cpu
    )


def stop_peer(cache: Server, live: list[Server], keep: bool) -> None:
    cache.stop()
    live.remove(cache)
    if not keep and cache.store is not None:
        shutil.rmtree(cache.store, ignore_errors=True)


def run_line(run: Run) -> str:
    return (
        f"  round {run.round} {run.path:<9} {run.mb_per_s:>8.1f} MB/s in {run.seconds:>6.2f} s, "
        f"object median {run.object_ms_median:>6.1f} ms max {run.object_ms_max:>6.1f} ms; CPU "
        f"cache {run.appliance_cpu_pct:>3.0f}% nginx {run.nginx_cpu_pct:>3.0f}% "
        + (f"relay {run.relay_cpu_pct:>3.0f}% " if run.relay_cpu_pct else "")
        + f"client {run.client_cpu_pct:>3.0f}% softirq {run.softirq_pct:>3.0f}% "
        f"other {run.other_cpu_pct:>3.0f}%; cores busy "
        + " ".join(f"{k}:{v:.0f}%" for k, v in run.core_busy_pct.items())
        + (f"; stored {run.stored_s:.2f} s later" if run.stored_s is not None else "")
        + (f"  PROBLEM {'; '.join(run.problems[:5])}" if run.problems else "")
    )


# -- time to first byte ------------------------------------------------------------


@dataclass
class TtfbSample:
    key: str
    path: str
    ttfb_ms: float
    head_ms: float
    total_ms: float
    stored_s: float | None
    error: str


async def ttfb_samples(
    args: argparse.Namespace,
    ports: dict[str, int],
    appliance_port: int,
    keys: list[str],
    corpus: Corpus,
    buffers: dict[str, memoryview],
) -> list[TtfbSample]:
    """Each of ``keys`` once on every path of ``ports``, one request at a time, the
    path that goes first turning with each object."""
    conns = {path: await connect(port) for path, port in ports.items()}
    paths = list(ports)
    samples: list[TtfbSample] = []
    # the warm-up object once more from nginx: its connection has served a request
    await conns["origin"].get(WARMUP_KEY, buffers[keys[0]], REQUEST_TIMEOUT)
    for i, key in enumerate(keys):
        for path in paths[i % len(paths) :] + paths[: i % len(paths)]:
            if args.ttfb_gap:
                await asyncio.sleep(args.ttfb_gap)
            if conns[path].closed:
                conns[path] = await connect(ports[path])
            f = await conns[path].get(key, buffers[key], REQUEST_TIMEOUT)
            error = f.error or "; ".join(verify([f], buffers, corpus))
            stored: float | None = None
            if path == "appliance" and not f.error:
                stored = await asyncio.to_thread(wait_stored, appliance_port, [key], 30, key)
                if stored is None:
                    error = error or "not stored within 30 s"
            samples.append(
                TtfbSample(
                    key=key,
                    path=path,
                    ttfb_ms=1e3 * (f.first_byte_at - f.sent_at) if f.first_byte_at else 0,
                    head_ms=1e3 * (f.head_at - f.sent_at) if f.head_at else 0,
                    total_ms=1e3 * (f.done_at - f.sent_at) if f.done_at else 0,
                    stored_s=stored,
                    error=error,
                )
            )
    for c in conns.values():
        c.close()
    return samples


def ttfb_phase(
    args: argparse.Namespace,
    work: Path,
    origin: OriginSide,
    corpus: Corpus,
    buffers: dict[str, memoryview],
    live: list[Server],
) -> tuple[list[TtfbSample], dict[str, Any], list[str]]:
    """Objects one at a time, each from nginx, as a cold miss through a fresh
    appliance and through a fresh nginx slice cache (turning which goes first),
    each once the appliance has stored the previous one (and after ``--ttfb-gap``
    seconds of quiet, if given)."""
    keys = corpus.keys[: args.ttfb_objects]
    appliance = start_appliance(
        work, f"appliance-{origin.name}-ttfb", args, origin.port, args.appliance_cpu
    )
    live.append(appliance)
    profiler: Profiler | None = None
    cache: Server | None = None
    try:
        cache = start_peer(work, f"slicecache-{origin.name}-ttfb", args, origin.port)
        live.append(cache)
        cpus = check_pinning(appliance, args.appliance_cpu)
        log(
            f"time to first byte: {len(keys)} objects, one at a time "
            f"(appliance pid {appliance.pid}, port {appliance.port}, cpus {cpus}; "
            f"slice cache pid {cache.pid}, port {cache.port})"
        )
        warm_cache(appliance, corpus)
        warm_cache(cache, corpus)
        if args.py_spy_dir:
            out = Path(args.py_spy_dir) / f"appliance-{origin.name}-ttfb.txt"
            profiler = Profiler(args.py_spy, appliance.pid, out, args.client_cpu)
        if args.wait_idle:
            wait_quiet(args.wait_idle, NOISE_PCT)
        ports = {"origin": origin.port, "appliance": appliance.port, "slicecache": cache.port}
        samples = asyncio.run(ttfb_samples(args, ports, appliance.port, keys, corpus, buffers))
        if profiler is not None:
            profiler.stop()
            log(f"  profile written to {profiler.out}")
            profiler = None
        slices = -(-corpus.size // parse_size(args.slice_size))
        metrics, problems = check_misses(appliance.port, len(keys) + 1, slices)
        problems = [f"{s.path} {s.key}: {s.error}" for s in samples if s.error] + problems
        for server in (appliance, cache):
            if not server.alive():
                problems.append(f"{server.name} died (exit {server.proc.returncode})")
        return samples, metrics, problems
    finally:
        if profiler is not None:
            profiler.stop()
        if cache is not None:
            stop_peer(cache, live, args.keep)
        appliance.stop()
        live.remove(appliance)
        if not args.keep and appliance.store is not None:
            shutil.rmtree(appliance.store, ignore_errors=True)


# -- summary ----------------------------------------------------------------------


@dataclass
class Summary:
    path: str
    runs: int
    mb_per_s: float
    seconds: float
    object_ms_max: float
    appliance_cpu_pct: float
    nginx_cpu_pct: float
    client_cpu_pct: float
    softirq_pct: float
    other_cpu_pct: float
    relay_cpu_pct: float
    core_busy_pct: dict[str, float]
    limit: str
    problems: list[str]


def limit(s: Run | Summary, appliance_cpu: int | None, client_cpu: int | None) -> str:
    """What held a run back, from CPU. Pinned: the appliance's core or the client's
    (nginx and the client), at least 90% busy. Not pinned: the processes that kept at
    least 90% of a core busy, and "all cores" when every core was."""
    cores = s.core_busy_pct
    if appliance_cpu is not None and client_cpu is not None:
        busy = [
            name
            for name, cpu in (("appliance core", appliance_cpu), ("client core", client_cpu))
            if cores.get(str(cpu), 0.0) >= BUSY_PCT
        ]
    else:
        busy = [
            name
            for name, pct in (
                ("cache", s.appliance_cpu_pct),
                ("nginx", s.nginx_cpu_pct),
                ("relay", s.relay_cpu_pct),
                ("client", s.client_cpu_pct),
            )
            if pct >= BUSY_PCT
        ]
        if cores and all(v >= BUSY_PCT for v in cores.values()):
            busy.append("all cores")
    return "+".join(busy) or "-"


def summarize(runs: list[Run], appliance_cpu: int | None, client_cpu: int | None) -> Summary:
    def med(f: Callable[[Run], float]) -> float:
        return float(statistics.median(f(r) for r in runs))

    s = Summary(
        path=runs[0].path,
        runs=len(runs),
        mb_per_s=med(lambda r: r.mb_per_s),
        seconds=med(lambda r: r.seconds),
        object_ms_max=max(r.object_ms_max for r in runs),
        appliance_cpu_pct=med(lambda r: r.appliance_cpu_pct),
        nginx_cpu_pct=med(lambda r: r.nginx_cpu_pct),
        client_cpu_pct=med(lambda r: r.client_cpu_pct),
        softirq_pct=med(lambda r: r.softirq_pct),
        other_cpu_pct=med(lambda r: r.other_cpu_pct),
        relay_cpu_pct=med(lambda r: r.relay_cpu_pct),
        core_busy_pct={
            k: float(statistics.median(r.core_busy_pct.get(k, 0.0) for r in runs))
            for k in runs[0].core_busy_pct
        },
        limit="",
        problems=[f"round {r.round}: {p}" for r in runs for p in r.problems],
    )
    s.limit = limit(s, appliance_cpu, client_cpu)
    return s


@dataclass
class TtfbSummary:
    path: str
    samples: int
    median_ms: float
    p90_ms: float
    max_ms: float
    total_median_ms: float
    errors: int


def summarize_ttfb(samples: list[TtfbSample], path: str) -> TtfbSummary:
    ok = [s for s in samples if s.path == path and not s.error]
    ttfb = [s.ttfb_ms for s in ok]
    return TtfbSummary(
        path=path,
        samples=len(ok),
        median_ms=float(statistics.median(ttfb)) if ttfb else float("nan"),
        p90_ms=percentile(ttfb, 90),
        max_ms=max(ttfb) if ttfb else float("nan"),
        total_median_ms=float(statistics.median(s.total_ms for s in ok)) if ok else float("nan"),
        errors=sum(1 for s in samples if s.path == path and s.error),
    )


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def ratio_of(a: float, b: float) -> float:
    return a / b if b else float("nan")


def print_throughput(
    args: argparse.Namespace, origin: OriginSide, sums: dict[str, Summary]
) -> None:
    print(
        f"throughput: every object once, {args.concurrency} at a time "
        f"(median of {args.rounds} rounds)"
    )
    relay = origin.relay is not None
    head = (
        f"{'path':<18} {'MB/s':>8} {'wall s':>7} {'slowest ms':>10} {'cache CPU':>9} "
        f"{'nginx CPU':>9} "
        + (f"{'relay CPU':>9} " if relay else "")
        + f"{'client CPU':>10} {'softirq':>7} {'other':>6} "
        f"{'cores busy':>10}  {'limit':<20} "
        "problems"
    )
    print_header(head)
    for path in PATHS:
        s = sums[path]
        print(
            f"{LABELS[path]:<18} {s.mb_per_s:>8.1f} {s.seconds:>7.2f} {s.object_ms_max:>10.1f} "
            f"{s.appliance_cpu_pct:>8.0f}% {s.nginx_cpu_pct:>8.0f}% "
            + (f"{s.relay_cpu_pct:>8.0f}% " if relay else "")
            + f"{s.client_cpu_pct:>9.0f}% "
            f"{s.softirq_pct:>6.0f}% {s.other_cpu_pct:>5.0f}% "
            f"{'/'.join(f'{v:.0f}' for v in s.core_busy_pct.values()) + '%':>10}  "
            f"{s.limit:<20} " + (f"{len(s.problems)}: {s.problems[0]}" if s.problems else "-")
        )
    print(f"{'':<18} cache CPU: the appliance's, or the slice cache's (nginx) on its row")


def print_tables(
    args: argparse.Namespace,
    origin: OriginSide,
    summaries: dict[str, Summary],
    ttfb: dict[str, TtfbSummary],
) -> dict[str, float]:
    """The tables and the ratios: appliance/origin, slicecache/origin and
    appliance/slicecache, for throughput and for the median first byte."""
    title = f"== {origin.name}: {origin.label} =="
    print(title)
    print()
    r: dict[str, float] = {}
    if summaries:
        print_throughput(args, origin, summaries)
        o, a, n = (summaries[p].mb_per_s for p in PATHS)
        r["throughput"] = ratio_of(a, o)
        r["throughput_slice_cache"] = ratio_of(n, o)
        r["throughput_vs_slice_cache"] = ratio_of(a, n)
        print(
            f"{'ratio':<18} {r['throughput']:>7.2f}x (appliance/origin, target >= "
            f"{THROUGHPUT_TARGET:.1f}x: {met(r['throughput'] >= THROUGHPUT_TARGET)})"
        )
        print(f"{'':<18} {r['throughput_slice_cache']:>7.2f}x (nginx slice cache/origin)")
        print(
            f"{'':<18} {r['throughput_vs_slice_cache']:>7.2f}x (appliance/nginx slice cache, "
            f"target >= {PEER_TARGET:.1f}x: {met(r['throughput_vs_slice_cache'] >= PEER_TARGET)})"
        )
        if origin.relay is not None:
            print(
                f"{'':<18} direct: one connection per object, like a player; the appliance "
                f"fetches each object's slices over up to {1 + READ_AHEAD} connections at once "
                "(read-ahead), each under the same per-connection cap"
            )
        print()
    if ttfb:
        print_ttfb(ttfb, r)
    return r


def print_ttfb(ttfb: dict[str, TtfbSummary], r: dict[str, float]) -> None:
    print(
        f"time to first body byte: {ttfb['origin'].samples + ttfb['origin'].errors} objects "
        "one at a time, each a cold miss through the appliance and the slice cache"
    )
    head = (
        f"{'path':<18} {'median ms':>9} {'p90 ms':>8} {'max ms':>8} {'whole object ms':>15}  errors"
    )
    print_header(head)
    for path in PATHS:
        t = ttfb[path]
        print(
            f"{LABELS[path]:<18} {t.median_ms:>9.2f} {t.p90_ms:>8.2f} {t.max_ms:>8.2f} "
            f"{t.total_median_ms:>15.2f}  {t.errors}"
        )
    o_t, a_t, n_t = (ttfb[p] for p in PATHS)
    r["ttfb"] = ratio_of(a_t.median_ms, o_t.median_ms)
    r["ttfb_p90"] = ratio_of(a_t.p90_ms, o_t.p90_ms)
    r["ttfb_slice_cache"] = ratio_of(n_t.median_ms, o_t.median_ms)
    r["ttfb_vs_slice_cache"] = ratio_of(a_t.median_ms, n_t.median_ms)
    print(
        f"{'ratio':<18} {r['ttfb']:>8.2f}x (median, appliance/origin, target <= "
        f"{TTFB_TARGET:.1f}x: {met(r['ttfb'] <= TTFB_TARGET)}); "
        f"+{a_t.median_ms - o_t.median_ms:.2f} ms; p90 {r['ttfb_p90']:.2f}x "
        f"(+{a_t.p90_ms - o_t.p90_ms:.2f} ms)"
    )
    print(f"{'':<18} {r['ttfb_slice_cache']:>8.2f}x (median, nginx slice cache/origin)")
    print(
        f"{'':<18} {r['ttfb_vs_slice_cache']:>8.2f}x (median, appliance/nginx slice cache, "
        f"target <= {PEER_TARGET:.1f}x: {met(r['ttfb_vs_slice_cache'] <= PEER_TARGET)}); "
        f"{a_t.median_ms - n_t.median_ms:+.2f} ms"
    )
    print(
        f"{'':<18} a miss asks the origin once before its first byte: the GET of the "
        "first slice, whose answer also tells what the object is"
    )
    print()


# -- main ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Compare cold misses through edgefleet serve with downloads straight "
        "from its nginx origin: on loopback, and behind a WAN-shaping relay.",
    )
    p.add_argument("--objects", type=int, default=None, help="objects (default 48, --quick 24)")
    p.add_argument(
        "--object-size", type=size_arg, default=8 * MIB, help="bytes per object (default 8MiB)"
    )
    p.add_argument("--per-title", type=int, default=8, help="objects per title directory")
    p.add_argument(
        "--concurrency", type=int, default=8, help="objects downloaded at a time (default 8)"
    )
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3)")
    p.add_argument(
        "--ttfb-objects",
        type=int,
        default=None,
        help="objects timed one at a time for the first byte "
        "(default 48, or --objects if fewer; 0: skip)",
    )
    p.add_argument(
        "--ttfb-gap",
        type=float,
        default=0.0,
        help="seconds of quiet before each timed first byte (default 0: back to back)",
    )
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each measured run, wait up to SECONDS for other processes to go quiet "
        "(default 0: do not wait)",
    )
    p.add_argument("--quick", action="store_true", help="about 15 s: 24 objects")
    p.add_argument(
        "--pin",
        action="store_true",
        help="pin the appliance to --appliance-cpu, nginx and the client to --client-cpu",
    )
    p.add_argument("--appliance-cpu", type=int, default=0, help="with --pin (default 0)")
    p.add_argument("--client-cpu", type=int, default=1, help="with --pin (default 1)")
    p.add_argument("--slice-size", default="2MiB", help="the appliance's slice size (default 2MiB)")
    p.add_argument("--capacity", default="8GiB", help="the appliance's store capacity (8GiB)")
    p.add_argument(
        "--store-backlog",
        default="16GiB",
        help="the appliance's --store-backlog (default 16GiB: every slice is stored, as the "
        "slice cache stores everything; a slice not stored is reported as a problem)",
    )
    p.add_argument(
        "--origin-age",
        type=float,
        default=30 * 86400.0,
        metavar="SECONDS",
        help="how old the origin's files look (their mtime, nginx's Last-Modified; default "
        "30 days: fresh for a day in the appliance; 0: as written, stale within seconds)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed for the objects (default 1)")
    p.add_argument(
        "--scenarios",
        type=parse_scenarios,
        default=["loopback", "wan"],
        help="which origins, comma-separated: loopback (nginx on loopback, unlimited: the "
        "CPU-bound worst case) and wan (nginx behind a relay that adds --origin-rtt and caps "
        "each connection at --origin-conn-rate); default loopback,wan",
    )
    p.add_argument(
        "--origin-rtt",
        type=parse_ms,
        default=0.020,
        metavar="MS",
        help="wan: round trip to the origin in ms (default 20); a new connection pays one more",
    )
    p.add_argument(
        "--origin-conn-rate",
        type=float,
        default=200.0,
        metavar="MBIT",
        help="wan: Mbit/s per origin connection (default 200; 0: no cap)",
    )
    p.add_argument(
        "--origin-link-rate",
        type=float,
        default=0.0,
        metavar="MBIT",
        help="wan: Mbit/s shared by all origin connections (default 0: no shared cap)",
    )
    add_executable_args(p)
    p.add_argument(
        "--py-spy-dir",
        metavar="DIR",
        help="record the appliance with py-spy (raw format) into DIR during each "
        "throughput run and during the time-to-first-byte phase",
    )
    p.add_argument(
        "--py-spy",
        default=shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")),
        help="py-spy (default: on PATH or beside this Python)",
    )
    add_output_args(p)
    args = p.parse_args(argv)
    given = {k for k in ("objects", "rounds", "ttfb_objects") if getattr(args, k) is not None}
    quick = {"objects": 24, "rounds": 3, "ttfb_objects": 24}
    full = {"objects": 48, "rounds": 3, "ttfb_objects": 48}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.ttfb_objects > args.objects and "ttfb_objects" not in given:
        args.ttfb_objects = args.objects
    if args.objects < 1 or args.rounds < 1 or args.concurrency < 1:
        p.error("--objects, --rounds and --concurrency must be at least 1")
    if not 0 <= args.ttfb_objects <= args.objects:
        p.error("--ttfb-objects must be between 0 and --objects")
    if args.object_size < 1 or args.per_title < 1:
        p.error("--object-size and --per-title must be at least 1")
    for flag, value in (("--slice-size", args.slice_size), ("--store-backlog", args.store_backlog)):
        try:
            parse_size(value)
        except ValueError as exc:
            p.error(f"{flag}: {exc}")
    if args.pin:
        if args.appliance_cpu == args.client_cpu:
            p.error("--appliance-cpu and --client-cpu must differ")
        check_cpus(p, [("--appliance-cpu", args.appliance_cpu), ("--client-cpu", args.client_cpu)])
        if shutil.which("taskset") is None:
            p.error("--pin needs taskset (util-linux)")
    else:
        args.appliance_cpu = args.client_cpu = None
    exes = [("--edgefleet", args.edgefleet), ("--nginx", args.nginx)]
    if args.py_spy_dir:
        exes.append(("--py-spy", args.py_spy))
    check_executables(p, exes)
    need = (args.objects + 1) * args.object_size
    avail = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * KIB
    if avail and need * 3 > avail:
        p.error(
            f"{args.objects} x {format_size(args.object_size)}: the client holds every body in "
            "memory, and the origin's files and the appliance's store want the page cache too; "
            f"only {avail // MIB} MiB available"
        )
    return args


def bench(args: argparse.Namespace, work: Path, live: list[Server]) -> int:
    t_start = time.monotonic()
    log(f"work directory {work}")
    if args.py_spy_dir:
        Path(args.py_spy_dir).mkdir(parents=True, exist_ok=True)
    if args.pin:
        os.sched_setaffinity(0, {args.client_cpu})
        placement = (
            f"appliance pinned to CPU {args.appliance_cpu}, "
            f"nginx and the client to CPU {args.client_cpu}"
        )
    else:
        placement = (
            "nothing pinned (appliance, nginx and client share CPUs "
            f"{','.join(str(c) for c in sorted(os.sched_getaffinity(0)))})"
        )
    log(f"placement: {placement}")
    busy_before = idle_check()
    log(f"  before starting, other processes kept {busy_before:.0f}% of a core busy")
    log(
        f"generating {args.objects} + 1 objects of {format_size(args.object_size)} "
        f"(random bytes, fsynced)"
    )
    corpus = make_corpus(
        work, args.objects, args.object_size, args.per_title, args.seed, args.origin_age
    )
    buffers = {k: memoryview(bytearray(corpus.size)) for k in corpus.keys}

    nginx = start_nginx(work, "nginx", args.nginx, args.client_cpu, NGINX_DIRECTIVES)
    live.append(nginx)
    log(
        f"  nginx: pid {nginx.pid}, port {nginx.port}, cpus {check_pinning(nginx, args.client_cpu)}"
    )
    head = http.client.HTTPConnection(HOST, nginx.port, timeout=10)
    try:
        head.request("HEAD", "/" + corpus.keys[0])
        resp = head.getresponse()
        resp.read()
        etag = resp.getheader("ETag") or ""
    finally:
        head.close()
    if resp.status != 200 or not etag.startswith('"'):
        raise RuntimeError(f"nginx: HEAD answered {resp.status} with ETag {etag!r}")
    log(f"  origin answers HEAD with a strong ETag ({etag})")

    # unmeasured: the client's buffers get their pages, nginx its first requests
    loopback = OriginSide("loopback", LOOPBACK_LABEL, nginx)
    warm = measure("origin", 0, nginx.port, loopback, None, corpus, buffers, args.concurrency)
    if warm.problems:
        raise RuntimeError("warm-up download from nginx failed: " + "; ".join(warm.problems[:5]))
    log(f"  warm-up from nginx: {warm.mb_per_s:.1f} MB/s, bodies match the files")

    print(
        f"cold misses through edgefleet vs straight from the origin: {len(corpus.keys)} x "
        f"{format_size(corpus.size)} objects (Last-Modified {format_age(args.origin_age)} ago), "
        f"slice {args.slice_size}, {placement}"
    )
    print()
    results: dict[str, ScenarioResult] = {}
    for name in args.scenarios:
        if name == "loopback":
            origin = loopback
        else:
            relay = start_relay(work, args, nginx, args.client_cpu)
            live.append(relay)
            log(f"  relay: pid {relay.pid}, port {relay.port}, in front of nginx")
            origin = OriginSide("wan", wan_label(args), nginx, relay)
        try:
            results[name] = scenario(args, work, origin, corpus, buffers, live)
        finally:
            if origin.relay is not None:
                origin.relay.stop()
                live.remove(origin.relay)

    notes: list[str] = []
    warnings: list[str] = []
    failed = False
    targets: list[bool] = []
    for res in results.values():
        failed = failed or res.failed
        targets += res.targets
        notes += [f"{res.name}: {n}" for n in res.notes]
        warnings += [f"{res.name}: {w}" for w in res.warnings]
    if not nginx.alive():
        notes.append(f"nginx exited during the run:\n{tail(nginx.log)}")
        failed = True
    if args.py_spy_dir:
        notes.append("the appliance was profiled with py-spy: its figures paid for it")
    if busy_before > NOISE_PCT:
        warnings.insert(
            0,
            f"the machine was busy before the benchmark started: {busy_before:.0f}% of a core "
            "in use by other processes; the figures carry their load",
        )
    for note in notes:
        print(f"note: {note}")
    for w in warnings:
        print(f"warning: {w}")
    each = ", ".join(f"{r.name} {sum(r.targets)} of {len(r.targets)}" for r in results.values())
    print(
        f"targets: {sum(targets)} of {len(targets)} met"
        + (f" ({each})" if len(results) > 1 else "")
        + ("; problems are flagged above" if failed else "")
    )
    log(f"done in {time.monotonic() - t_start:.0f} s")

    if args.json:
        doc = {
            "settings": {
                "objects": args.objects,
                "object_size": args.object_size,
                "concurrency": args.concurrency,
                "rounds": args.rounds,
                "ttfb_objects": args.ttfb_objects,
                "ttfb_gap_s": args.ttfb_gap,
                "wait_idle_s": args.wait_idle,
                "slice_size": args.slice_size,
                "capacity": args.capacity,
                "pin": args.pin,
                "appliance_cpu": args.appliance_cpu,
                "client_cpu": args.client_cpu,
                "placement": placement,
                "seed": args.seed,
                "origin_age_s": args.origin_age,
                "scenarios": args.scenarios,
                "origin_rtt_s": args.origin_rtt,
                "origin_conn_rate_mbit": args.origin_conn_rate,
                "origin_link_rate_mbit": args.origin_link_rate,
            },
            "machine": machine(),
            "busy_before_pct": busy_before,
            "versions": {
                "edgefleet": version([args.edgefleet, "--version"]),
                "nginx": version([args.nginx, "-v"]),
            },
            "warmup_origin_mb_per_s": warm.mb_per_s,
            "scenarios": {name: res.doc for name, res in results.items()},
            "throughput_target": THROUGHPUT_TARGET,
            "ttfb_target": TTFB_TARGET,
            "notes": notes,
            "warnings": warnings,
        }
        write_json(args.json, doc)
        log(f"results written to {args.json}")
    return 1 if failed else 0


@dataclass
class ScenarioResult:
    name: str
    failed: bool
    targets: list[bool]
    notes: list[str]
    warnings: list[str]
    doc: dict[str, Any]


def scenario(
    args: argparse.Namespace,
    work: Path,
    origin: OriginSide,
    corpus: Corpus,
    buffers: dict[str, memoryview],
    live: list[Server],
) -> ScenarioResult:
    """Throughput rounds and the time-to-first-byte phase against one origin."""
    log(f"scenario {origin.name}: {origin.label}")
    if origin.relay is not None:
        # unmeasured: the relay's first connections
        warm = measure("origin", 0, origin.port, origin, None, corpus, buffers, args.concurrency)
        if warm.problems:
            raise RuntimeError("warm-up through the relay failed: " + "; ".join(warm.problems[:5]))
        log(f"  warm-up through the relay: {warm.mb_per_s:.1f} MB/s, bodies match the files")
    log(
        f"throughput: {args.objects} objects, {args.concurrency} at a time, {args.rounds} rounds, "
        "a new appliance with an empty store each round"
    )
    runs: list[Run] = []
    for r in range(1, args.rounds + 1):
        for path in PATHS if r % 2 else PATHS[::-1]:
            if path == "origin":
                if args.wait_idle:
                    wait_quiet(args.wait_idle, NOISE_PCT)
                run = measure(
                    "origin", r, origin.port, origin, None, corpus, buffers, args.concurrency
                )
            elif path == "appliance":
                run = appliance_round(args, work, r, origin, corpus, buffers, live)
            else:
                run = slice_cache_round(args, work, r, origin, corpus, buffers, live)
            runs.append(run)
            log(run_line(run))

    samples: list[TtfbSample] = []
    ttfb_metrics: dict[str, Any] = {}
    ttfb_problems: list[str] = []
    if args.ttfb_objects:
        samples, ttfb_metrics, ttfb_problems = ttfb_phase(args, work, origin, corpus, buffers, live)
        for p in ttfb_problems:
            log(f"  PROBLEM {p}")

    summaries = {
        path: summarize([r for r in runs if r.path == path], args.appliance_cpu, args.client_cpu)
        for path in PATHS
    }
    ttfb = {path: summarize_ttfb(samples, path) for path in PATHS} if samples else {}
    ratios = print_tables(args, origin, summaries, ttfb)

    notes: list[str] = []
    if ttfb_problems:
        notes.append(
            f"time to first byte: {len(ttfb_problems)} problems, first: {ttfb_problems[0]}"
        )
    for s in origin.servers:
        if not s.alive():
            notes.append(f"{s.name} exited during the run:\n{tail(s.log)}")
    warnings = [
        f"round {r.round} {r.path}: a noisy run, other processes took {r.other_cpu_pct:.0f}% "
        f"of a core and the hypervisor {r.steal_pct:.0f}% (steal)"
        for r in runs
        if r.other_cpu_pct > NOISE_PCT or r.steal_pct > NOISE_PCT
    ]
    failed = (
        any(s.problems for s in summaries.values())
        or bool(ttfb_problems)
        or not all(s.alive() for s in origin.servers)
    )
    targets = [
        ratios["throughput"] >= THROUGHPUT_TARGET,
        ratios["throughput_vs_slice_cache"] >= PEER_TARGET,
    ]
    if ttfb:
        targets += [ratios["ttfb"] <= TTFB_TARGET, ratios["ttfb_vs_slice_cache"] <= PEER_TARGET]
    doc = {
        "label": origin.label,
        "runs": [asdict(r) for r in runs],
        "summaries": [asdict(s) for s in summaries.values()],
        "throughput_ratio": ratios["throughput"],
        "ttfb_samples": [asdict(s) for s in samples],
        "ttfb_summaries": [asdict(t) for t in ttfb.values()],
        "ttfb_ratio": ratios.get("ttfb", float("nan")),
        "ttfb_p90_ratio": ratios.get("ttfb_p90", float("nan")),
        "ratios": ratios,
        "ttfb_metrics": ttfb_metrics,
    }
    return ScenarioResult(origin.name, failed, targets, notes, warnings, doc)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_in_workdir(
        "miss_vs_origin",
        "edgefleet-miss-",
        args.keep,
        lambda work, live: bench(args, work, live),
    )


if __name__ == "__main__":
    sys.exit(main())
