"""``edgefleet serve``: processes, sockets and signals around the appliance.

The main process recovers the store, binds the listening sockets (one per
worker, ``SO_REUSEPORT``) and runs the worker itself when there is one, or forks
and supervises N workers. Workers die with the main process; SIGTERM/SIGINT
drain them within ``grace``; SIGHUP reopens the access log.
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
from concurrent.futures import ThreadPoolExecutor

from edge.config import ServeConfig
from edge.core.policy import make_policy
from edge.store import RootSpec, Store, StoreError

log = logging.getLogger("edgefleet.serve")


def make_store(cfg: ServeConfig) -> Store:
    return Store(
        [RootSpec(path, cap) for path, cap in cfg.root_capacities()],
        cfg.index,
        slice_size=cfg.slice_size,
        policy=make_policy(cfg.eviction, cfg.half_life),
        half_life=cfg.half_life,
        index_sync=cfg.index_sync,
    )


def bind_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """One listening socket per worker, sharing the port with SO_REUSEPORT."""
    from edge.http.server import ListenError, bind_listeners

    try:
        return bind_listeners(host, port, count, reuse_port=True)
    except ListenError as exc:
        raise SystemExit(f"edgefleet serve: {exc} (--listen)") from None


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent process dies (Linux; elsewhere nothing)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run(cfg: ServeConfig) -> int:
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
        host, port = cfg.listen
        socks = bind_sockets(host, port, cfg.workers)
        bound = socks[0].getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        print(
            f"edgefleet serve: listening on http://{shown}:{bound[1]} "
            f"({cfg.workers} worker{'s' if cfg.workers > 1 else ''}, "
            f"{len(cfg.store)} store root{'s' if len(cfg.store) > 1 else ''}, "
            f"origin {', '.join(cfg.origin) or 'none'})",
            file=sys.stderr,
            flush=True,
        )
        if cfg.workers == 1:
            return worker_main(cfg, socks[0], 1)
        return supervise(cfg, socks)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def supervise(cfg: ServeConfig, socks: list[socket.socket]) -> int:
    children: dict[int, int] = {}  # pid -> slot
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
                for i, s in enumerate(socks):
                    if i != slot:
                        s.close()
                code = worker_main(cfg, socks[slot], len(socks))
            except BaseException:
                log.exception("worker crashed")
            finally:
                os._exit(code)
        children[pid] = slot
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
    for slot in range(len(socks)):
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
        log.error("worker %d exited with %d; starting another", pid, exit_code)
        time.sleep(0.5)
        if not stopping:
            spawn(slot)
    return status


def worker_main(cfg: ServeConfig, sock: socket.socket, workers: int) -> int:
    import uvloop

    from edge.http.server import after_stop

    try:
        return uvloop.run(_worker(cfg, sock, workers))
    finally:
        after_stop()


async def _worker(cfg: ServeConfig, sock: socket.socket, workers: int) -> int:
    from edge.appliance.appliance import Appliance
    from edge.appliance.metrics import RequestMetrics
    from edge.appliance.ops import Ops
    from edge.http.accesslog import AccessLog
    from edge.http.server import ContentServer, stop_signal
    from edge.origin import open_origin

    loop = asyncio.get_running_loop()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            soft = hard if hard != resource.RLIM_INFINITY else 1 << 20
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="edgefleet-io")
    loop.set_default_executor(executor)
    store = make_store(cfg)
    store.open(recover=False)
    origins = [open_origin(url, cfg.origin_settings()) for url in cfg.origin]
    access_log = AccessLog(cfg.access_log) if cfg.access_log else None
    metrics = RequestMetrics()
    app = Appliance(cfg, store, origins, executor, access_log, metrics)
    app.ops = Ops(app, workers)
    app.scrub_share = cfg.scrub_rate // workers  # the workers share the scrub rate
    # slice files kept open by the views: half of what the process may open
    app.views.max_open_files = max(64, (soft - 256) // 2)
    server = ContentServer(loop, sock, app, keepalive_timeout=cfg.keepalive_timeout)
    server.on_count = metrics.set_connections
    server.on_fd_pressure = app.views.shed_files
    app.start()
    server.start()
    stop = stop_signal(loop)
    # SIGHUP (systemctl reload, logrotate) reopens the log; without one it is harmless
    loop.add_signal_handler(
        signal.SIGHUP, access_log.reopen if access_log is not None else (lambda: None)
    )
    await stop.wait()
    log.info("stopping: finishing in-flight responses (grace %.0fs)", cfg.grace)
    await server.shutdown(cfg.grace)
    await app.stop()  # closes the origins too
    if access_log is not None:
        access_log.close()
    executor.shutdown(wait=True)
    store.close()
    return 0
