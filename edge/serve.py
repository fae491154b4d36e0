"""``edgefleet serve``: processes, sockets and signals around the appliance.

The main process recovers the store, binds the listening sockets (one per
worker, ``SO_REUSEPORT``) and runs the worker itself when there is one, or forks
and supervises N workers. Workers die with the main process; SIGTERM/SIGINT
drain them within ``grace``; SIGHUP reopens the access log, reloads the URL
signing keys (``edge.appliance.signing_keys``) and rereads the TLS
certificates. The certificates are first loaded here, before the fork, so the
workers of a box share OpenSSL's session-ticket keys (docs/tls.md).

What can be checked before listening is checked by the main process, so a
mistake is one message and exit status 2, never a worker's traceback: the
store, the ports, the access log (opened here; the workers inherit it). An
origin that cannot work is a warning (``edge.origin.preflight``). A worker
that exits within ``START_WINDOW`` seconds of its start ``START_FAILURES``
times in a row stops the service (exit status 1) instead of being restarted
for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from edge.config import ConfigError, ServeConfig
from edge.core.policy import make_policy
from edge.http.accesslog import AccessLog
from edge.http.server import socket_url
from edge.http.tls import CertSet
from edge.store import RootSpec, Store, StoreError

log = logging.getLogger("edgefleet.serve")

START_WINDOW = 10.0  # a worker that exits sooner than this after its start failed at start
START_FAILURES = 3  # ... this many times in a row (one slot): the service stops


def make_store(cfg: ServeConfig) -> Store:
    return Store(
        [RootSpec(path, cap) for path, cap in cfg.root_capacities()],
        cfg.index,
        slice_size=cfg.slice_size,
        policy=make_policy(cfg.eviction, cfg.half_life),
        half_life=cfg.half_life,
        index_sync=cfg.index_sync,
    )


def bind_sockets(host: str, port: int, count: int, option: str = "--listen") -> list[socket.socket]:
    """One listening socket per worker, sharing the port with SO_REUSEPORT."""
    from edge.http.server import ListenError, bind_listeners

    try:
        return bind_listeners(host, port, count, reuse_port=True)
    except ListenError as exc:
        raise SystemExit(f"edgefleet serve: {exc} ({option})") from None


@dataclass(frozen=True)
class Boot:
    """What the main process prepared before the fork, for every worker."""

    load: Callable[[], ServeConfig] | None  # rereads the configuration (SIGHUP)
    access_log: AccessLog | None  # opened once, inherited
    origin_problems: dict[str, str]  # origin URL -> why it cannot work
    certs: CertSet | None  # loaded before the fork: shared session-ticket keys


class Listeners:
    """Each worker slot's listening sockets: plain HTTP (at most one) and TLS."""

    def __init__(self, cfg: ServeConfig) -> None:
        n = cfg.workers
        self.plain = bind_sockets(*cfg.listen, n) if cfg.listen is not None else []
        self.tls = [bind_sockets(h, p, n, "--tls-listen") for h, p in cfg.tls_listen]

    def slot(self, i: int) -> tuple[socket.socket | None, list[socket.socket]]:
        return (self.plain[i] if self.plain else None), [group[i] for group in self.tls]

    def close_others(self, keep: int) -> None:
        for group in [self.plain, *self.tls]:
            for i, s in enumerate(group):
                if i != keep:
                    s.close()

    def banner(self) -> str:
        urls = [socket_url("http", self.plain[0])] if self.plain else []
        return " and ".join(urls + [socket_url("https", group[0]) for group in self.tls])


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent process dies (Linux; elsewhere nothing)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run(cfg: ServeConfig, load: Callable[[], ServeConfig] | None = None) -> int:
    """``load`` reads the configuration again (for SIGHUP); none: keys stay."""
    logging.basicConfig(
        level=getattr(logging, cfg.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
    metrics_dir = tempfile.mkdtemp(prefix="edgefleet-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        store = make_store(cfg)
        try:
            report = store.open()
        except StoreError as exc:
            print(f"edgefleet serve: store: {exc}", file=sys.stderr)
            return 2
        finally:
            store.close()
        for failed in report.failed_roots:
            log.error("store root failed: %s", failed)
        try:
            access_log = open_access_log(cfg)
        except ConfigError as exc:
            print(f"edgefleet serve: {exc}", file=sys.stderr)
            return 2
        boot = Boot(
            load=load,
            access_log=access_log,
            origin_problems=check_origins(cfg),
            certs=CertSet(cfg.tls_cert) if cfg.tls_cert else None,
        )
        listeners = Listeners(cfg)
        print(
            f"edgefleet serve: listening on {listeners.banner()} "
            f"({cfg.workers} worker{'s' if cfg.workers > 1 else ''}, "
            f"{len(cfg.store)} store root{'s' if len(cfg.store) > 1 else ''}, "
            f"origin {', '.join(cfg.origin) or 'none'})",
            file=sys.stderr,
            flush=True,
        )
        if cfg.workers == 1:
            return worker_main(cfg, listeners.slot(0), 1, boot)
        try:
            return supervise(cfg, listeners, boot)
        finally:
            if access_log is not None:
                access_log.close()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def open_access_log(cfg: ServeConfig) -> AccessLog | None:
    """The access log, opened once for every worker; ``ConfigError`` naming the option."""
    if not cfg.access_log:
        return None
    try:
        return AccessLog(cfg.access_log)
    except OSError as exc:
        raise ConfigError(
            f"--access-log / access_log: cannot open {cfg.access_log}: {exc.strerror or exc}"
        ) from None


def check_origins(cfg: ServeConfig) -> dict[str, str]:
    """Origin URL → why it cannot work, for the origins that cannot (each warned)."""
    from edge.origin.preflight import start_problem

    problems = {}
    for url in cfg.origin:
        problem = start_problem(url, cfg.origin_settings())
        if problem is not None:
            log.warning("origin %s cannot work: %s; every miss it serves will fail", url, problem)
            problems[url] = problem
    return problems


def supervise(cfg: ServeConfig, listeners: Listeners, boot: Boot) -> int:
    children: dict[int, int] = {}  # pid -> slot
    started: dict[int, float] = {}  # slot -> when its worker started
    failed_starts: dict[int, int] = {}  # slot -> exits soon after start, in a row
    stopping = False

    handled = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}

    def spawn(slot: int) -> None:
        # No signal may reach the child before it has its own handlers.
        signal.pthread_sigmask(signal.SIG_BLOCK, handled)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                die_with_parent()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
                listeners.close_others(slot)
                code = worker_main(cfg, listeners.slot(slot), cfg.workers, boot)
            except BaseException:
                log.exception("worker crashed")
            finally:
                os._exit(code)
        children[pid] = slot
        started[slot] = time.monotonic()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)
    for slot in range(cfg.workers):
        spawn(slot)
    from prometheus_client import multiprocess

    status = 0
    while children:
        try:
            pid, code = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        slot = children.pop(pid, None)
        if slot is None:
            continue
        with contextlib.suppress(Exception):
            multiprocess.mark_process_dead(pid)
        exit_code = os.waitstatus_to_exitcode(code)
        if stopping:
            if exit_code != 0:
                status = 1
            continue
        if time.monotonic() - started[slot] < START_WINDOW:
            failed_starts[slot] = failed_starts.get(slot, 0) + 1
        else:
            failed_starts[slot] = 0
        if failed_starts[slot] >= START_FAILURES:
            print(
                f"edgefleet serve: a worker exited {failed_starts[slot]} times in a row within "
                f"{START_WINDOW:.0f}s of its start (last exit status {exit_code}); stopping "
                "(its errors are above)",
                file=sys.stderr,
                flush=True,
            )
            stopping = True
            forward(signal.SIGTERM, None)
            status = 1
            continue
        log.error("worker %d exited with %d; starting another", pid, exit_code)
        time.sleep(0.5)
        if not stopping:
            spawn(slot)
    return status


def origin_states(cfg: ServeConfig, origins: list[Any], problems: dict[str, str]) -> Any:
    """Each origin's state, shared by the workers through the run's metrics
    directory; ``problems`` (by configured URL) make an origin start failing."""
    from edge.origin.state import OriginStates, SharedOriginStates

    urls = [o.url for o in origins]  # an origin's own URL may differ from the configured one
    found = {o.url: problems[u] for o, u in zip(origins, cfg.origin, strict=True) if u in problems}
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # this run's, made by ``run``
    if not directory:
        return OriginStates(urls, found, time.time())
    return SharedOriginStates(urls, found, time.time(), directory, str(os.getpid()))


Slot = tuple[socket.socket | None, list[socket.socket]]


def worker_main(cfg: ServeConfig, slot: Slot, workers: int, boot: Boot) -> int:
    import uvloop

    from edge.http.server import after_stop

    try:
        return uvloop.run(_worker(cfg, slot, workers, boot))
    finally:
        after_stop()


async def _worker(cfg: ServeConfig, slot: Slot, workers: int, boot: Boot) -> int:
    from edge.appliance.appliance import Appliance
    from edge.appliance.metrics import RequestMetrics
    from edge.appliance.ops import Ops
    from edge.appliance.signing_keys import reload_signing_keys
    from edge.http.server import ContentServer, limits, stop_signal
    from edge.origin import open_origin

    access_log, certs = boot.access_log, boot.certs
    loop = asyncio.get_running_loop()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            soft = hard if hard != resource.RLIM_INFINITY else 1 << 20
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="edgefleet-io")
    store_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="edgefleet-store")
    loop.set_default_executor(executor)
    store = make_store(cfg)
    store.open(recover=False)
    origins = [open_origin(url, cfg.origin_settings()) for url in cfg.origin]
    metrics = RequestMetrics()
    states = origin_states(cfg, origins, boot.origin_problems)
    app = Appliance(cfg, store, origins, executor, access_log, metrics, states, store_executor)
    app.ops = Ops(app, workers)
    app.scrub_share = cfg.scrub_rate // workers  # the workers share the scrub rate
    # slice files kept open by the views: half of what the process may open
    app.views.max_open_files = max(64, (soft - 256) // 2)
    server = ContentServer(loop, slot[0], app, tls_socks=slot[1], certs=certs, **limits(cfg))
    if certs is not None:
        app.tls_status = lambda: certs.summary(server.tls_mode)  # for /_edge/health

        def export_expiry(cs: CertSet) -> None:
            from edge.appliance.metrics import set_tls_expiry

            set_tls_expiry([(c.name, c.not_after) for c in cs.certs])

        export_expiry(certs)
        certs.on_reload.append(export_expiry)
    server.on_count = metrics.set_connections
    server.on_disk_wait = metrics.disk_wait
    server.on_fd_pressure = app.views.shed_files
    app.start()
    server.start()
    stop = stop_signal(loop)

    # SIGHUP (systemctl reload, logrotate, an ACME deploy hook): reopen the log,
    # reload the signing keys, reread the certificates
    def on_hup() -> None:
        if access_log is not None:
            access_log.reopen()
        if boot.load is not None:
            reload_signing_keys(app, boot.load)
        if certs is not None:
            certs.reload()

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await stop.wait()
    log.info("stopping: finishing in-flight responses (grace %.0fs)", cfg.grace)
    await server.shutdown(cfg.grace)
    await app.stop()  # closes the origins too
    if access_log is not None:
        access_log.close()
    store_executor.shutdown(wait=True)
    executor.shutdown(wait=True)
    store.close()
    return 0
