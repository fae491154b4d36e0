"""Pieces the benchmark scripts share: server processes, CPU accounting, output.

The scripts in ``bench/`` run ``edgefleet serve`` and nginx as child processes
on loopback (through demo/processes.py, the harness the demo and the tests
use), read CPU time from ``/proc``, print fixed-width tables and write their
results as JSON. What they do alike lives here; what each measures stays
in the script. Import it as ``from benchlib import ...``: a script run as
``python bench/X.py`` has ``bench/`` first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

from demo.processes import Process, child_setup, free_port, start
from demo.processes import tail as tail  # the scripts import it from here
from edge.core.sizes import GIB as GIB
from edge.core.sizes import KIB as KIB
from edge.core.sizes import MIB as MIB
from edge.core.sizes import format_size as format_size  # the same
from edge.core.sizes import parse_size

HOST = "127.0.0.1"  # loopback only, by design

DEFAULT_EDGEFLEET = str(Path(sys.executable).with_name("edgefleet"))


def log(msg: str) -> None:
    """Progress on stderr, so stdout holds only the results."""
    print(msg, file=sys.stderr, flush=True)


def write_synced(path: Path, data: bytes) -> None:
    """Write and fsync: nginx then serves clean page-cache pages, as edgefleet does
    (its store fsyncs every slice). Pages still dirty, waiting for writeback, are
    read markedly slower (2-3x for 2 MiB files here), which would handicap nginx
    until the kernel's writeback happened to reach them."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


# -- CPU accounting -----------------------------------------------------------------


def cpu_ticks(pid: int, *, gone: int | None = None) -> int:
    """utime + stime of the whole process (all its threads), in clock ticks.

    A process that is gone raises ``OSError``, or counts as ``gone`` if given."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        if gone is None:
            raise
        return gone
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


class CpuTimes(NamedTuple):
    """The first eight counters of a ``cpu`` line of /proc/stat, in clock ticks."""

    user: int
    nice: int
    system: int
    idle: int
    iowait: int
    irq: int
    softirq: int
    steal: int

    @property
    def busy(self) -> int:
        """Time spent on work: user, nice, system, irq and softirq."""
        return self.user + self.nice + self.system + self.irq + self.softirq

    @property
    def total(self) -> int:
        return sum(self)


def proc_stat() -> dict[str, CpuTimes]:
    """The CPU counters of /proc/stat so far: ``"cpu"`` for all CPUs together,
    ``"cpu0"``, ``"cpu1"``, ... for each one."""
    out: dict[str, CpuTimes] = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu"):
                words = line.split()
                out[words[0]] = CpuTimes(*(int(x) for x in words[1:9]))
    return out


def rusage_seconds(who: int) -> float:
    """User + system CPU seconds of ``resource.RUSAGE_SELF`` or ``RUSAGE_CHILDREN``."""
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def allowed_cpus(pid: int) -> set[str]:
    """The CPU lists every thread of ``pid`` may run on."""
    lists: set[str] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    lists.add(line.split(":", 1)[1].strip())
    return lists


def machine_ticks() -> tuple[int, int, int, int]:
    """(user + system, irq + softirq, steal, total) clock ticks of all CPUs so far,
    from /proc/stat. Loopback TCP does much of its receiving in softirqs, which the
    kernel counts apart from the processes that caused them."""
    t = proc_stat()["cpu"]
    return t.user + t.nice + t.system, t.irq + t.softirq, t.steal, t.total


def cpu_core(cpu: int) -> CpuTimes:
    """The counters of one CPU so far."""
    t = proc_stat().get(f"cpu{cpu}")
    if t is None:
        raise RuntimeError(f"cpu{cpu} not in /proc/stat")
    return t


def core_ticks() -> dict[int, tuple[int, int]]:
    """(busy, total) clock ticks of each CPU so far, irq and softirq time counted busy."""
    return {int(name[3:]): (t.busy, t.total) for name, t in proc_stat().items() if name != "cpu"}


def idle_check(seconds: float = 1.0) -> float:
    """How busy the machine is with nothing of ours running, in % of one core."""
    m0 = machine_ticks()
    time.sleep(seconds)
    m1 = machine_ticks()
    return 100.0 * ((m1[0] - m0[0]) + (m1[1] - m0[1])) / os.sysconf("SC_CLK_TCK") / seconds


def wait_quiet(limit: float, noise_pct: float = 10.0) -> None:
    """Up to ``limit`` seconds for other processes to leave the machine (less than
    ``noise_pct`` % of a core busy over half a second)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        busy = idle_check(0.5)
        if busy < noise_pct:
            return
        log(f"  waiting for a quiet machine: other processes keep {busy:.0f}% of a core busy")


def self_cpu() -> float:
    """User + system CPU seconds of this process (the client), all threads."""
    return rusage_seconds(resource.RUSAGE_SELF)


def check_pinning(server: Server, cpu: int | None) -> str:
    cpus = allowed_cpus(server.pid)
    if cpu is not None and cpus != {str(cpu)}:
        raise RuntimeError(f"{server.name} is not pinned to CPU {cpu}: {sorted(cpus)}")
    return ", ".join(sorted(cpus))


# -- processes: demo/processes.py runs them ------------------------------------------
#
# The benchmarks' children get SIGKILL when the benchmark dies (not SIGTERM as the
# demo's): nginx runs without a master and an interrupted measurement has nothing
# worth finishing. edgefleet is found listening by its banner line, nginx (which
# prints none) by probing the port it was given.

die_with_us = child_setup(signal.SIGKILL)
"""In a child, before exec: killed if this script dies without cleaning up."""


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    """``cmd`` under ``taskset -c cpu``, or as it is for ``None``."""
    return cmd if cpu is None else ["taskset", "-c", str(cpu), *cmd]


@dataclass
class Server(Process):
    """A server the benchmark started: ``kind`` is "edgefleet", "nginx" or "relay";
    ``store`` is edgefleet's store directory."""

    kind: str = ""
    store: Path | None = None


def launch(
    name: str, cmd: list[str], log_path: Path, kind: str, *, command: str = "", **fields: Any
) -> Server:
    """Start ``cmd`` (already pinned, if it should be) as a ``Server``."""
    proc = start(name, cmd, log_path, parent_death=signal.SIGKILL, command=command)
    return Server(**vars(proc), kind=kind, **fields)


def launch_listening(
    name: str, cmd: list[str], log_path: Path, kind: str, port: int, timeout: float = 30.0
) -> Server:
    """``launch``, then wait until ``port`` accepts connections; stopped if it does not."""
    server = launch(name, cmd, log_path, kind)
    try:
        server.wait_port(port, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def spawn_edgefleet(
    name: str,
    cmd: list[str],
    log_path: Path,
    *,
    command: str = "serve",
    store: Path | None = None,
    timeout: float = 60.0,
) -> Server:
    """Run an ``edgefleet COMMAND --listen 127.0.0.1:0`` command line; its port is the
    one its banner names. A process that does not come up is stopped."""
    server = launch(name, cmd, log_path, "edgefleet", command=command, store=store)
    try:
        server.wait_banner(timeout)
    except BaseException:
        server.stop()
        raise
    return server


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process off;
pid {work}/{name}.pid;
error_log {work}/{name}-error.log warn;

events {{
    worker_connections 4096;
    use epoll;
}}

http {{
    types {{
        video/iso.segment m4s;
    }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush off;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    {directives}
    client_body_temp_path {work}/{name}-tmp/body;
    proxy_temp_path {work}/{name}-tmp/proxy;
    fastcgi_temp_path {work}/{name}-tmp/fastcgi;
    uwsgi_temp_path {work}/{name}-tmp/uwsgi;
    scgi_temp_path {work}/{name}-tmp/scgi;

    server {{
        listen {host}:{port};
        root {work}/origin;
        location / {{
            {location}
        }}
    }}
}}
"""


def start_nginx(
    work: Path,
    name: str,
    exe: str,
    cpu: int | None,
    directives: str,
    timeout: float = 30.0,
    location: str = "",
) -> Server:
    """nginx, one worker without a master, serving ``work/origin`` on a free port.
    ``directives`` go into its ``http`` block (the access log, at least), ``location``
    into its ``location /`` (a proxy, say, instead of the files)."""
    port = free_port()
    (work / f"{name}-tmp").mkdir()
    conf = work / f"{name}.conf"
    conf.write_text(
        NGINX_CONF.format(
            work=work, name=name, host=HOST, port=port, directives=directives, location=location
        )
    )
    cmd = pinned(
        [exe, "-p", str(work), "-c", str(conf), "-e", str(work / f"{name}-error.log")], cpu
    )
    return launch_listening(name, cmd, work / f"{name}.log", "nginx", port, timeout)


def metric_samples(text: str, names: Iterable[str]) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample of the metrics ``names`` in a Prometheus
    text exposition (``/_edge/metrics``)."""
    wanted = set(names)
    pat = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$")
    for line in text.splitlines():
        m = pat.match(line)
        if m and m.group(1) in wanted:
            yield m.group(1), dict(re.findall(r'(\w+)="([^"]*)"', m.group(2))), float(m.group(3))


# -- the appliance's admin endpoints ------------------------------------------------


def admin_get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"GET {path} answered {resp.status}")
    return body


def metric_counts(port: int) -> tuple[dict[str, float], dict[str, float]]:
    """(content requests by cache result and status, origin requests by kind and result),
    from /_edge/metrics."""
    requests: dict[str, float] = {}
    origin: dict[str, float] = {}
    text = admin_get(port, "/_edge/metrics").decode()
    names = ("edgefleet_requests_total", "edgefleet_origin_requests_total")
    for name, labels, value in metric_samples(text, names):
        if not value:  # every label set is exposed from the start, at 0
            continue
        if name == "edgefleet_requests_total":
            k = f"{labels.get('cache', '?')} {labels.get('status', '?')}"
            requests[k] = requests.get(k, 0.0) + value
        else:
            k = f"{labels.get('kind', '?')} {labels.get('result', '?')}"
            origin[k] = origin.get(k, 0.0) + value
    return requests, origin


def stored_keys(port: int, prefix: str = "") -> set[str]:
    path = "/_edge/inventory" + (f"?prefix={prefix}" if prefix else "")
    keys: set[str] = set()
    for line in admin_get(port, path).splitlines():
        if line.strip():
            keys.add(str(json.loads(line)["key"]))
    return keys


def wait_stored(port: int, keys: list[str], timeout: float, prefix: str = "") -> float | None:
    """Seconds until the inventory lists every one of ``keys``; ``None``: not within
    ``timeout``."""
    t0 = time.monotonic()
    want = set(keys)
    while True:
        if want <= stored_keys(port, prefix):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(0.01)


# -- wrk ------------------------------------------------------------------------------

_UNITS_TIME = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_UNITS_SIZE = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"cannot read latency {text!r}")
    return float(m.group(1)) * _UNITS_TIME[m.group(2)]


def _bytes(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(B|KB|MB|GB|TB)", text)
    if not m:
        raise ValueError(f"cannot read size {text!r}")
    return float(m.group(1)) * _UNITS_SIZE[m.group(2)]


@dataclass
class WrkOutput:
    requests: int
    seconds: float
    rps: float
    bytes_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: dict[str, int]


def parse_wrk(text: str) -> WrkOutput:
    def find(pattern: str) -> re.Match[str]:
        m = re.search(pattern, text, re.MULTILINE)
        if not m:
            raise ValueError(f"wrk output has no {pattern!r}:\n{text}")
        return m

    done = find(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)")
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors = dict(zip(errors, (int(x) for x in m.groups()), strict=True))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkOutput(
        requests=int(done.group(1)),
        seconds=_ms(done.group(2) + done.group(3)) / 1e3,
        rps=float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        bytes_per_s=_bytes(find(r"^Transfer/sec:\s+(\S+)").group(1)),
        p50_ms=_ms(find(r"^\s+50%\s+(\S+)").group(1)),
        p99_ms=_ms(find(r"^\s+99%\s+(\S+)").group(1)),
        max_ms=_ms(find(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)").group(1)),
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=errors,
    )


# -- figures --------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between the closest ranks."""
    if not values:
        return float("nan")
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def size_arg(text: str) -> int:
    """A size option (``8MiB``, ``512KiB``, ``1048576``), read by edge.core.sizes."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- command line, work directory, cleanup --------------------------------------------


def add_executable_args(p: argparse.ArgumentParser) -> None:
    """``--edgefleet`` and ``--nginx``."""
    p.add_argument(
        "--edgefleet",
        default=DEFAULT_EDGEFLEET,
        help="the edgefleet executable (default: beside this Python)",
    )
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx", help="nginx")


def add_output_args(p: argparse.ArgumentParser) -> None:
    """``--json`` and ``--keep``."""
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (for debugging)")


def check_cpus(p: argparse.ArgumentParser, options: Iterable[tuple[str, int]]) -> None:
    """Every (option, CPU) must name a CPU this process may run on."""
    cpus = os.sched_getaffinity(0)
    for opt, cpu in options:
        if cpu not in cpus:
            p.error(f"{opt} {cpu}: not one of this process's CPUs {sorted(cpus)}")


def check_executables(p: argparse.ArgumentParser, options: Iterable[tuple[str, str]]) -> None:
    """Every (option, executable) must be on ``PATH`` or an executable file."""
    for opt, exe in options:
        if not (shutil.which(exe) or os.access(exe, os.X_OK)):
            p.error(f"{opt}: {exe} is not an executable")


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def workdir(keep: bool, prefix: str) -> Iterator[Path]:
    """A new temporary directory, removed afterwards unless ``keep``."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            log(f"work directory kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def run_in_workdir(
    prog: str, prefix: str, keep: bool, bench: Callable[[Path, list[Server]], int]
) -> int:
    """``bench(work, servers)`` in a temporary work directory, SIGTERM and SIGHUP
    taken as Ctrl-C. Whatever happens, the servers ``bench`` added to ``servers``
    are stopped (last started first) and the directory removed. Returns ``bench``'s
    exit status, 130 when interrupted, 2 on an error (printed after ``prog``)."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    servers: list[Server] = []
    try:
        with workdir(keep, prefix) as work:
            try:
                return bench(work, servers)
            finally:
                for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(signum, signal.SIG_IGN)  # let the cleanup finish
                for s in reversed(servers):
                    s.stop()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError, OSError) as exc:  # StartError included
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2


# -- output ---------------------------------------------------------------------------


def print_header(head: str) -> None:
    """A table's column heads, underlined."""
    print(head)
    print("-" * len(head))


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        info["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    return info


def version(cmd: list[str]) -> str:
    """The first line ``cmd`` prints (``--version`` and the like), or ``?``."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "?"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "?"


def write_json(path: str | Path, doc: dict[str, Any]) -> None:
    """``doc`` as indented JSON (what JSON cannot hold, as strings), with a final newline."""
    Path(path).write_text(json.dumps(doc, indent=2, default=str) + "\n")
