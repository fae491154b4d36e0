"""Server processes on loopback: start one, wait until it listens, read its log, stop it.

The demo (``edgefleet demo``), the tests (tests/conftest.py) and the benchmarks
(bench/benchlib.py) all run ``edgefleet`` commands, and the benchmarks nginx,
through this one harness. It lives in an installed package because the demo
needs it at run time.

Rules it keeps:
- every child runs in its own session (its own process group), its stdout and
  stderr appended to one log file; ``log_from`` marks where this run's lines
  start, so a log shared by restarts is read from the right place;
- a child dies with its parent: the kernel sends it ``parent_death`` when the
  process that started it goes away. The demo and the tests ask for SIGTERM
  (an appliance then finishes what it serves and leaves its store clean); the
  benchmarks ask for SIGKILL, because their nginx runs without a master
  process and an interrupted measurement has nothing worth finishing;
- "listening" is learnt one of two ways: ``wait_banner`` reads the line every
  ``edgefleet`` command prints (``edgefleet serve: listening on http://...``),
  which also gives the port a ``--listen HOST:0`` child chose;
  ``wait_port`` connects to a port the caller chose, for servers that print
  no such line (nginx);
- a child that exits while we wait is an error naming it and its log's tail;
- stopping signals the whole process group, waits, and sends SIGKILL after
  the timeout; ``stop_all`` signals every child first and then waits, so
  children stop in parallel, in the order given.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


class StartError(RuntimeError):
    """A child did not come up; the message names it and ends with its log's tail."""


def edgefleet(*args: str) -> list[str]:
    """The command line of ``edgefleet ARGS`` with the Python that runs us."""
    return [sys.executable, "-m", "edge.cli", *args]


def start_edgefleet(name: str, args: list[str], log: Path, **options: Any) -> Process:
    """``edgefleet ARGS`` (``args[0]`` is the command), as ``start`` runs it."""
    return start(name, edgefleet(*args), log, command=args[0], **options)


def child_setup(
    parent_death: int | None, max_files: int | None = None
) -> Callable[[], None] | None:
    """What the child runs before exec: its parent-death signal and file limit."""
    if parent_death is None and max_files is None:
        return None

    def setup() -> None:
        if parent_death is not None:
            with contextlib.suppress(Exception):
                ctypes.CDLL(None, use_errno=True).prctl(1, parent_death)  # PR_SET_PDEATHSIG
        if max_files is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (max_files, max_files))

    return setup


@dataclass
class Process:
    """A running child: its name, its log and the ``Popen`` behind it."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    log_from: int = 0  # where this run's lines start in the log
    command: str = ""  # the edgefleet command it runs (serve, steer), named in its banner
    port: int = 0
    url: str = ""
    exited: int | None = None  # set by whoever notices it exit
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        """This run's log so far."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self.log_from)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def lines(self) -> list[str]:
        return self.text().splitlines(keepends=True)

    def tail(self, n: int = 5, sep: str = " | ") -> str:
        """The log's last lines, on one line by default (for an error message)."""
        return tail(self.log, n, sep)

    def wait_banner(
        self, timeout: float = 60.0, stopping: Callable[[], bool] = lambda: False
    ) -> str:
        """The URL of the child's ``edgefleet COMMAND: listening on URL`` line (its
        port in ``port``); ``StartError`` if it exits or says nothing in time."""
        banner = re.compile(rf"edgefleet {self.command}: listening on (https?://[^\s:]+:(\d+)\S*)")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not stopping():
            m = banner.search(self.text())
            if m:
                self.url, self.port = m.group(1), int(m.group(2))
                return self.url
            if self.proc.poll() is not None:
                raise StartError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            time.sleep(0.05)
        raise StartError(f"{self.name} did not start within {timeout:.0f}s: {self.tail()}")

    def wait_port(self, port: int, timeout: float = 30.0, host: str = HOST) -> None:
        """Until ``host:port`` accepts a connection; ``StartError`` if the child exits
        or the port stays closed."""
        self.port = port
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
                return
            time.sleep(0.05)
        raise StartError(f"{self.name} not listening on {host}:{port} after {timeout:.0f}s")

    def send(self, sig: int) -> None:
        """``sig`` to the child's process group, if it still runs."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> bool:
        """``sig``, then wait; SIGKILL after ``timeout``. True if it exited in time."""
        self.send(sig)
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            self.kill()
            return False

    def kill(self) -> None:
        self.send(signal.SIGKILL)
        self.proc.wait(10)


def start(
    name: str,
    cmd: list[str],
    log: Path,
    *,
    parent_death: int | None = signal.SIGTERM,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    max_files: int | None = None,
    command: str = "",
) -> Process:
    """Run ``cmd`` in its own session, its output appended to ``log``; ``env`` is
    added to ours (with ``PYTHONUNBUFFERED`` set, so log lines arrive whole).
    ``command`` names the edgefleet command whose banner ``wait_banner`` reads."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        start_at = out.tell()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
            preexec_fn=child_setup(parent_death, max_files),
        )
    return Process(name, proc, log, log_from=start_at, command=command)


def tail(path: Path, lines: int = 20, sep: str = "\n") -> str:
    """The last ``lines`` lines of a log after its name, joined by ``sep``."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return f"(no log at {path})"
    return f"{path.name}: " + sep.join(text)


def stop_all(children: Sequence[Process], timeout: float = 15.0) -> None:
    """SIGTERM to every child in order, then wait for all; SIGKILL after ``timeout``."""
    for c in children:
        c.send(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for c in children:
        try:
            c.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.kill()


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
