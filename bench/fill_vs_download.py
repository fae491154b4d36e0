#!/usr/bin/env python3
"""The nightly fill (``edgefleet fill``) against a plain concurrent download of the same objects.

An nginx origin on loopback (``sendfile on``) serves a generated catalog of
random objects (96 x 8 MiB by default), and a JSON-lines manifest lists them
(key, size, score, xxh3). Each round measures, in turns so drift on the machine
affects both alike:

- the **reference**: every object downloaded once with aiohttp, ``--concurrency``
  whole-object GETs at a time, each body written to a file in a directory on the
  same filesystem as the fill's store (and, unless ``--no-memory``, the same
  download once more into memory only, the ceiling of the client);
- the **fill**: ``python -m edge.cli fill --store NEW_DIR --capacity ... --origin
  http://127.0.0.1:PORT --manifest M --now --concurrency N --slice-size S`` as a
  child process, on a fresh store every round; its JSON report (stdout) gives the
  bytes added and the run's duration.

It prints the median MB/s (10^6 bytes per second) of each, the ratio
fill/reference (the plain download to files) against its target (>= 0.9),
beside it the ratio to the same download with every file fsynced afterwards
(what the fill's durability would cost the reference), and the CPU time of
the client and of the fill process (``getrusage`` of the children). Run ``python
bench/fill_vs_download.py --help`` for the options; ``bench/README.md`` explains
the output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import xxhash
from benchlib import (
    HOST,
    MIB,
    Server,
    add_output_args,
    check_cpus,
    check_executables,
    cpu_ticks,
    die_with_us,
    format_size,
    log,
    machine,
    print_header,
    proc_stat,
    run_in_workdir,
    rusage_seconds,
    start_nginx,
    tail,
    version,
    write_json,
    write_synced,
)

from edge.config import parse_size

TARGET = 0.9  # fill MB/s at least this share of the reference's
NOISE_PCT = 10.0  # CPU spent by processes outside the benchmark above this: a noisy run
PER_TITLE = 8  # objects per title directory
FILL_TIMEOUT = 600.0  # seconds for one fill run
NGINX_DIRECTIVES = "access_log off;\n    etag on;"
KINDS = ("reference", "memory", "fill")
LABELS = {
    "reference": "reference (to files)",
    "memory": "reference (to memory)",
    "fill": "edgefleet fill",
}


# -- the catalog -------------------------------------------------------------------


@dataclass
class Catalog:
    origin: Path
    manifest: Path
    keys: list[str]
    size: int  # bytes per object

    @property
    def total(self) -> int:
        return len(self.keys) * self.size


def make_catalog(work: Path, objects: int, size: int, seed: int) -> Catalog:
    """Random objects (written and fsynced, so nginx serves clean page-cache pages)
    and their manifest: ranked in key order, with the xxh3-64 of every object."""
    origin = work / "origin"
    rng = random.Random(seed)
    keys = [f"titles/t{i // PER_TITLE:04d}/seg_{i % PER_TITLE:05d}.m4s" for i in range(objects)]
    lines = []
    for i, key in enumerate(keys):
        path = origin / key
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(size)
        write_synced(path, data)
        entry = {
            "key": key,
            "size": size,
            "score": float(objects - i),
            "xxh3": xxhash.xxh3_64(data).hexdigest(),
        }
        lines.append(json.dumps(entry) + "\n")
    manifest = work / "manifest.jsonl"
    manifest.write_text("".join(lines))
    return Catalog(origin, manifest, keys, size)


# -- CPU over a run ------------------------------------------------------------------


class Meter:
    """nginx's CPU, the whole machine's and the hypervisor's steal over one run;
    the CPU of the measured side (client or fill) is given to ``end``."""

    def __init__(self, nginx: Server) -> None:
        self.nginx = nginx
        self.tck = os.sysconf("SC_CLK_TCK")
        self.n0 = cpu_ticks(nginx.pid, gone=0)
        self.m0 = proc_stat()["cpu"]

    def end(self, wall: float, measured_cpu: float) -> dict[str, float]:
        n = (cpu_ticks(self.nginx.pid, gone=0) - self.n0) / self.tck
        m1 = proc_stat()["cpu"]
        procs = m1.user + m1.nice + m1.system - self.m0.user - self.m0.nice - self.m0.system
        irq = (m1.irq + m1.softirq - self.m0.irq - self.m0.softirq) / self.tck
        total = max(1, m1.total - self.m0.total)
        wall = max(wall, 1e-9)
        return {
            "nginx_cpu_s": n,
            # loopback TCP does much of its receiving in softirqs, which the kernel
            # charges to no process
            "softirq_pct": 100.0 * irq / wall,
            # user + system time of all cores not spent by nginx or the measured side
            "other_pct": 100.0 * max(0.0, procs / self.tck - n - measured_cpu) / wall,
            "steal_pct": 100.0 * (m1.steal - self.m0.steal) / total * (os.cpu_count() or 1),
        }


# -- one run -----------------------------------------------------------------------


@dataclass
class Run:
    round: int
    kind: str  # "reference", "memory" or "fill"
    bytes: int
    seconds: float  # measured time (fill: the run's duration_seconds)
    mb_per_s: float
    wall_s: float  # fill: the whole process, interpreter start-up included
    cpu_s: float  # the client (this process) or the fill process, user + system
    nginx_cpu_s: float
    softirq_pct: float
    other_pct: float
    steal_pct: float
    flush_s: float | None = None  # reference to files: fsync of every file afterwards
    report: dict[str, Any] = field(default_factory=dict)  # fill: parts of its JSON report
    problems: list[str] = field(default_factory=list)

    @property
    def cpu_ms_per_mb(self) -> float:
        return 1e3 * self.cpu_s / (self.bytes / 1e6) if self.bytes else float("nan")


async def download(
    port: int, keys: list[str], size: int, concurrency: int, dest: Path | None
) -> tuple[int, float, list[str]]:
    """Every object once, ``concurrency`` whole-object GETs at a time on one aiohttp
    session, each body written to a file in ``dest`` as it arrives (``None``: only
    counted). Returns the body bytes, the seconds from the first request to the
    last file closed, and the problems."""
    problems: list[str] = []
    got = 0
    jobs = iter(enumerate(keys))
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:

        async def worker() -> None:
            nonlocal got
            for i, key in jobs:  # one iterator shared by all the workers
                n = 0
                fd = -1
                try:
                    async with session.get(f"http://{HOST}:{port}/{key}") as resp:
                        if resp.status != 200:
                            problems.append(f"{key}: status {resp.status}")
                            continue
                        if dest is not None:
                            fd = os.open(dest / f"{i:06d}", os.O_WRONLY | os.O_CREAT, 0o644)
                        async for chunk in resp.content.iter_any():
                            n += len(chunk)
                            if fd >= 0:
                                view = memoryview(chunk)
                                while view:
                                    view = view[os.write(fd, view) :]
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    problems.append(f"{key}: {exc or type(exc).__name__}")
                finally:
                    if fd >= 0:
                        os.close(fd)
                if n != size:
                    problems.append(f"{key}: {n} bytes, the object has {size}")
                got += n

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(keys)))))
        seconds = time.perf_counter() - t0
    return got, seconds, problems


def flush(dest: Path) -> float:
    """Seconds to fsync every file in ``dest`` (what the fill does slice by slice)."""
    t0 = time.perf_counter()
    for path in dest.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return time.perf_counter() - t0


def reference_round(
    args: argparse.Namespace, work: Path, round_: int, nginx: Server, catalog: Catalog, kind: str
) -> Run:
    dest: Path | None = None
    if kind == "reference":
        dest = work / f"reference-{round_}"
        dest.mkdir()
    try:
        meter = Meter(nginx)
        c0 = rusage_seconds(resource.RUSAGE_SELF)
        got, seconds, problems = asyncio.run(
            download(nginx.port, catalog.keys, catalog.size, args.concurrency, dest)
        )
        cpu = rusage_seconds(resource.RUSAGE_SELF) - c0
        figures = meter.end(seconds, cpu)
        # untimed: the next run starts with no dirty pages of this one left to write back
        flush_s = flush(dest) if dest is not None else None
    finally:
        if dest is not None:
            shutil.rmtree(dest, ignore_errors=True)
    if got != catalog.total:
        problems.append(f"{got} of {catalog.total} bytes")
    if not nginx.alive():
        problems.append(f"nginx died (exit {nginx.proc.returncode})")
    return Run(
        round=round_,
        kind=kind,
        bytes=got,
        seconds=seconds,
        mb_per_s=got / seconds / 1e6,
        wall_s=seconds,
        cpu_s=cpu,
        nginx_cpu_s=figures["nginx_cpu_s"],
        softirq_pct=figures["softirq_pct"],
        other_pct=figures["other_pct"],
        steal_pct=figures["steal_pct"],
        flush_s=flush_s,
        problems=problems,
    )


def fill_command(
    args: argparse.Namespace, store: Path, nginx: Server, catalog: Catalog
) -> list[str]:
    store.mkdir(exist_ok=True)  # a store root must exist
    return [
        args.python,
        "-m",
        "edge.cli",
        "fill",
        "--store",
        str(store),
        "--capacity",
        str(2 * catalog.total + 64 * MIB),  # room for all of it, headroom included
        "--origin",
        f"http://{HOST}:{nginx.port}",
        "--manifest",
        str(catalog.manifest),
        "--now",
        "--concurrency",
        str(args.concurrency),
        "--slice-size",
        args.slice_size,
        "--log-level",
        "warning",
    ]


def run_fill(cmd: list[str], work: Path, log_path: Path) -> tuple[int, str, float, float]:
    """Run ``cmd`` to its end: (exit status, stdout, wall seconds, CPU seconds of the
    child, from ``getrusage(RUSAGE_CHILDREN)``: user + system of all its threads)."""
    c0 = rusage_seconds(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log_path, "wb") as err:
        proc = subprocess.Popen(
            cmd,
            cwd=work,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            preexec_fn=die_with_us,
        )
        try:
            out, _ = proc.communicate(timeout=FILL_TIMEOUT)
        except BaseException:  # a timeout or Ctrl-C: the fill goes too
            proc.kill()
            proc.wait()
            raise
    wall = time.perf_counter() - t0
    cpu = rusage_seconds(resource.RUSAGE_CHILDREN) - c0
    return proc.returncode, out.decode(errors="replace"), wall, cpu


def fill_round(
    args: argparse.Namespace, work: Path, round_: int, nginx: Server, catalog: Catalog
) -> Run:
    store = work / f"store-{round_}"
    cmd = fill_command(args, store, nginx, catalog)
    if args.py_spy_dir:
        out = Path(args.py_spy_dir).resolve() / f"fill-round-{round_}.txt"
        record = ["record", "--threads", "--format", "raw", "--rate", "250", "-o", str(out)]
        cmd = [args.py_spy, *record, "--", *cmd]
    log_path = work / f"fill-{round_}.log"
    try:
        meter = Meter(nginx)
        code, out_text, wall, cpu = run_fill(cmd, work, log_path)
        figures = meter.end(wall, cpu)
    finally:
        if not args.keep:
            shutil.rmtree(store, ignore_errors=True)
    problems: list[str] = []
    report: dict[str, Any] = {}
    try:
        # the report is the first JSON document on stdout (py-spy adds lines after it)
        report = json.JSONDecoder().raw_decode(out_text, out_text.index("{"))[0]
    except ValueError:
        problems.append(f"no JSON report on stdout (exit {code}):\n{tail(log_path)}")
    added = report.get("added", {})
    got = int(added.get("bytes", 0))
    seconds = float(report.get("duration_seconds", 0.0)) or wall
    if report:
        if code != 0:
            problems.append(f"exit status {code}")
        if report.get("status") != "complete":
            problems.append(f"status {report.get('status')!r}")
        if report.get("failed"):
            problems.append(f"{len(report['failed'])} failed, first: {report['failed'][0]}")
        if report.get("checksum_mismatches"):
            problems.append(f"{len(report['checksum_mismatches'])} checksum mismatches")
        if added.get("objects") != len(catalog.keys) or got != catalog.total:
            problems.append(
                f"added {added.get('objects')} objects, {got} bytes; expected "
                f"{len(catalog.keys)}, {catalog.total}"
            )
    if not nginx.alive():
        problems.append(f"nginx died (exit {nginx.proc.returncode})")
    kept = ("status", "duration_seconds", "rate_bytes_per_second", "added", "failed", "not_done")
    return Run(
        round=round_,
        kind="fill",
        bytes=got,
        seconds=seconds,
        mb_per_s=got / seconds / 1e6 if seconds else 0.0,
        wall_s=wall,
        cpu_s=cpu,
        nginx_cpu_s=figures["nginx_cpu_s"],
        softirq_pct=figures["softirq_pct"],
        other_pct=figures["other_pct"],
        steal_pct=figures["steal_pct"],
        report={k: report[k] for k in kept if k in report},
        problems=problems,
    )


def start_up_cpu(args: argparse.Namespace, work: Path, nginx: Server, catalog: Catalog) -> float:
    """CPU seconds of a dry run (start-up, imports, store, manifest and plan; nothing
    downloaded): the share of a fill run's CPU that does not depend on the bytes."""
    store = work / "store-dry-run"
    cmd = [*fill_command(args, store, nginx, catalog), "--dry-run"]
    try:
        code, _, _, cpu = run_fill(cmd, work, work / "fill-dry-run.log")
    finally:
        shutil.rmtree(store, ignore_errors=True)
    if code != 0:
        raise RuntimeError(
            f"edgefleet fill --dry-run exited with {code}:\n{tail(work / 'fill-dry-run.log')}"
        )
    return cpu


def run_line(r: Run) -> str:
    extra = ""
    if r.kind == "fill":
        extra = f" (process {r.wall_s:.2f} s)"
    elif r.flush_s is not None:
        extra = f" (+{r.flush_s:.2f} s to fsync)"
    return (
        f"  round {r.round} {LABELS[r.kind]:<21} {r.mb_per_s:>8.1f} MB/s in {r.seconds:>6.2f} s"
        f"{extra}; CPU {r.cpu_s:.2f} s ({r.cpu_ms_per_mb:.2f} ms/MB), nginx "
        f"{r.nginx_cpu_s:.2f} s, softirq {r.softirq_pct:.0f}%, other processes "
        f"{r.other_pct:.0f}% of a core"
        + (f"  PROBLEM {'; '.join(r.problems[:3])}" if r.problems else "")
    )


# -- summary ----------------------------------------------------------------------


@dataclass
class Summary:
    kind: str
    runs: int
    mb_per_s: float
    seconds: float
    wall_s: float
    cpu_s: float
    cpu_ms_per_mb: float
    nginx_cpu_s: float
    other_pct: float
    flushed_mb_per_s: float | None
    problems: list[str]


def summarize(runs: list[Run]) -> Summary:
    def med(values: list[float]) -> float:
        return float(statistics.median(values)) if values else float("nan")

    flushed = [r.bytes / (r.seconds + r.flush_s) / 1e6 for r in runs if r.flush_s is not None]
    return Summary(
        kind=runs[0].kind,
        runs=len(runs),
        mb_per_s=med([r.mb_per_s for r in runs]),
        seconds=med([r.seconds for r in runs]),
        wall_s=med([r.wall_s for r in runs]),
        cpu_s=med([r.cpu_s for r in runs]),
        cpu_ms_per_mb=med([r.cpu_ms_per_mb for r in runs]),
        nginx_cpu_s=med([r.nginx_cpu_s for r in runs]),
        other_pct=med([r.other_pct for r in runs]),
        flushed_mb_per_s=med(flushed) if flushed else None,
        problems=[f"round {r.round}: {p}" for r in runs for p in r.problems],
    )


def print_table(
    args: argparse.Namespace,
    catalog: Catalog,
    placement: str,
    summaries: dict[str, Summary],
    dry_cpu: float,
) -> float:
    print(
        f"edgefleet fill vs a plain download: {len(catalog.keys)} x {format_size(catalog.size)} "
        f"objects ({format_size(catalog.total)}), {args.concurrency} at a time, slice "
        f"{args.slice_size}, median of {args.rounds} rounds; {placement}"
    )
    print()
    print_header(
        f"{'path':<28} {'MB/s':>8} {'seconds':>8} {'CPU s':>7} {'CPU ms/MB':>9} "
        f"{'nginx CPU s':>11} {'other':>6}  problems"
    )
    rows: list[tuple[str, Summary, float]] = []
    for kind in KINDS:
        s = summaries.get(kind)
        if s is None:
            continue
        rows.append((LABELS[kind], s, s.mb_per_s))
    for label, s, mbps in rows:
        print(
            f"{label:<28} {mbps:>8.1f} {s.seconds:>8.2f} {s.cpu_s:>7.2f} {s.cpu_ms_per_mb:>9.2f} "
            f"{s.nginx_cpu_s:>11.2f} {s.other_pct:>5.0f}%  "
            + (f"{len(s.problems)}: {s.problems[0]}" if s.problems else "-")
        )
    ref, fill = summaries["reference"], summaries["fill"]
    total_mb = catalog.total / 1e6
    if ref.flushed_mb_per_s is not None:
        print(f"{'  reference + fsync':<28} {ref.flushed_mb_per_s:>8.1f}"
              "   (the download's time plus the fsync of its files afterwards)")  # fmt: skip
    print(
        f"{'  fill, whole process':<28} {total_mb / fill.wall_s:>8.1f} {fill.wall_s:>8.2f}"
        f" {'':>7} {'':>9}   (start-up: a dry run takes {dry_cpu:.2f} s of CPU; "
        f"without it {1e3 * max(0.0, fill.cpu_s - dry_cpu) / total_mb:.2f} ms/MB)"
    )
    ratio = fill.mb_per_s / ref.mb_per_s if ref.mb_per_s else float("nan")
    print()
    print(
        f"{'ratio (the target)':<28} {ratio:>7.2f}x fill / plain download to files "
        f"({fill.mb_per_s:.0f} / {ref.mb_per_s:.0f} MB/s), target >= {TARGET:.1f}x: "
        f"{'met' if ratio >= TARGET else 'MISSED'}"
    )
    if ref.flushed_mb_per_s:
        print(
            f"{'beside it':<28} {fill.mb_per_s / ref.flushed_mb_per_s:>7.2f}x fill / plain "
            f"download with every file fsynced ({fill.mb_per_s:.0f} / "
            f"{ref.flushed_mb_per_s:.0f} MB/s; the fill fsyncs before it commits)"
        )
    others = []
    if "memory" in summaries and summaries["memory"].mb_per_s:
        others.append(f"fill/memory {fill.mb_per_s / summaries['memory'].mb_per_s:.2f}x")
    if ref.cpu_ms_per_mb:
        others.append(
            f"CPU per MB fill/plain download {fill.cpu_ms_per_mb / ref.cpu_ms_per_mb:.2f}x "
            f"({fill.cpu_ms_per_mb:.2f} / {ref.cpu_ms_per_mb:.2f} ms)"
        )
    if others:
        print(f"{'':<28} {'; '.join(others)}")
    return ratio


# -- main ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Compare 'edgefleet fill' with a plain concurrent download of the same "
        "objects from the same nginx origin (loopback only).",
    )
    p.add_argument("--objects", type=int, default=96, help="objects (default 96)")
    p.add_argument(
        "--object-size", type=parse_size, default=8 * MIB, help="bytes per object (default 8MiB)"
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="objects downloaded at a time, by both (default 8, the fill's)",
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument(
        "--slice-size", default="2MiB", help="the fill's slice size (default 2MiB, the appliance's)"
    )
    p.add_argument(
        "--no-memory",
        dest="memory",
        action="store_false",
        help="skip the download into memory (only files)",
    )
    p.add_argument(
        "--pin",
        action="store_true",
        help="pin nginx to --origin-cpu, the client and the fill to --client-cpu",
    )
    p.add_argument("--client-cpu", type=int, default=0, help="with --pin (default 0)")
    p.add_argument("--origin-cpu", type=int, default=1, help="with --pin (default 1)")
    p.add_argument("--seed", type=int, default=1, help="seed for the objects (default 1)")
    p.add_argument(
        "--python",
        default=sys.executable,
        help="the Python that runs 'python -m edge.cli fill' (default: this one)",
    )
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx", help="nginx")
    p.add_argument(
        "--py-spy-dir",
        metavar="DIR",
        help="record every fill run with py-spy into DIR (collapsed stacks, one file a "
        "round; speedscope.app reads them); the fill's figures then pay for the sampling",
    )
    p.add_argument(
        "--py-spy",
        default=shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")),
        help="py-spy (default: on PATH or beside this Python)",
    )
    add_output_args(p)
    args = p.parse_args(argv)
    if args.objects < 1 or args.rounds < 1 or args.concurrency < 1 or args.object_size < 1:
        p.error("--objects, --object-size, --rounds and --concurrency must be at least 1")
    try:
        parse_size(args.slice_size)
    except ValueError as exc:
        p.error(f"--slice-size: {exc}")
    if args.pin:
        if args.client_cpu == args.origin_cpu:
            p.error("--client-cpu and --origin-cpu must differ")
        check_cpus(p, [("--client-cpu", args.client_cpu), ("--origin-cpu", args.origin_cpu)])
        if shutil.which("taskset") is None:
            p.error("--pin needs taskset (util-linux)")
    exes = [("--python", args.python), ("--nginx", args.nginx)]
    if args.py_spy_dir:
        exes.append(("--py-spy", args.py_spy))
    check_executables(p, exes)
    return args


def bench(args: argparse.Namespace, work: Path, live: list[Server]) -> int:
    t_start = time.monotonic()
    log(f"work directory {work}")
    if args.py_spy_dir:
        Path(args.py_spy_dir).mkdir(parents=True, exist_ok=True)
    origin_cpu: int | None = None
    if args.pin:
        os.sched_setaffinity(0, {args.client_cpu})  # the fill, a child, inherits it
        origin_cpu = args.origin_cpu
        placement = f"nginx on CPU {args.origin_cpu}, client and fill on CPU {args.client_cpu}"
    else:
        cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
        placement = f"nothing pinned (CPUs {cpus})"
    log(f"placement: {placement}")
    log(
        f"generating {args.objects} objects of {format_size(args.object_size)} "
        "(random bytes, fsynced) and their manifest"
    )
    catalog = make_catalog(work, args.objects, args.object_size, args.seed)
    nginx = start_nginx(work, "nginx", args.nginx, origin_cpu, NGINX_DIRECTIVES)
    live.append(nginx)
    log(f"  nginx: pid {nginx.pid}, port {nginx.port}")

    # unmeasured: nginx's first requests, this process's imports, the fill's start-up
    got, seconds, problems = asyncio.run(
        download(nginx.port, catalog.keys, catalog.size, args.concurrency, None)
    )
    if problems:
        raise RuntimeError("warm-up download failed: " + "; ".join(problems[:5]))
    log(f"  warm-up download into memory: {got / seconds / 1e6:.1f} MB/s")
    dry_cpu = start_up_cpu(args, work, nginx, catalog)
    log(f"  fill dry run (start-up, manifest, plan): {dry_cpu:.2f} s of CPU")

    runs: list[Run] = []
    for r in range(1, args.rounds + 1):
        refs = ["reference", "memory"] if args.memory else ["reference"]
        order = [*refs, "fill"] if r % 2 else ["fill", *refs]
        for kind in order:
            if kind == "fill":
                run = fill_round(args, work, r, nginx, catalog)
            else:
                run = reference_round(args, work, r, nginx, catalog, kind)
            runs.append(run)
            log(run_line(run))

    summaries = {
        k: summarize([r for r in runs if r.kind == k])
        for k in KINDS
        if k != "memory" or args.memory
    }
    ratio = print_table(args, catalog, placement, summaries, dry_cpu)

    warnings = [
        f"round {r.round} {r.kind}: a noisy run, other processes took {r.other_pct:.0f}% "
        f"of a core and the hypervisor {r.steal_pct:.0f}% (steal)"
        for r in runs
        if r.other_pct > NOISE_PCT or r.steal_pct > NOISE_PCT
    ]
    if args.py_spy_dir:
        warnings.append(f"the fill ran under py-spy (profiles in {args.py_spy_dir})")
    for w in warnings:
        print(f"warning: {w}")
    failed = any(s.problems for s in summaries.values())
    log(f"done in {time.monotonic() - t_start:.0f} s")
    if args.json:
        write_json(
            args.json,
            {
                "settings": {
                    "objects": args.objects,
                    "object_size": args.object_size,
                    "concurrency": args.concurrency,
                    "rounds": args.rounds,
                    "slice_size": args.slice_size,
                    "memory": args.memory,
                    "placement": placement,
                    "seed": args.seed,
                },
                "machine": machine(),
                "versions": {
                    "edgefleet": version([args.python, "-m", "edge.cli", "--version"]),
                    "nginx": version([args.nginx, "-v"]),
                    "aiohttp": aiohttp.__version__,
                },
                "fill_command": fill_command(args, work / "store-N", nginx, catalog),
                "dry_run_cpu_s": dry_cpu,
                "runs": [asdict(r) | {"cpu_ms_per_mb": r.cpu_ms_per_mb} for r in runs],
                "summaries": [asdict(s) for s in summaries.values()],
                "ratio": ratio,
                "target": TARGET,
                "warnings": warnings,
            },
        )
        log(f"results written to {args.json}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_in_workdir(
        "fill_vs_download",
        "edgefleet-fill-",
        args.keep,
        lambda work, live: bench(args, work, live),
    )


if __name__ == "__main__":
    sys.exit(main())
