"""JSON-lines access log, written in batches.

Lines are written in batches, on the event loop, like nginx's buffered
``access_log``: a write to the page cache is short, where handing it to a
thread would make every request wait for that thread's turn at the GIL.

One object a line: ``time`` (UTC, ISO 8601 with ms), ``client``, ``method``,
``key``, ``range``, ``status``, ``bytes`` (body bytes sent), ``cache``
(hit/miss/partial/none) and ``duration_ms``; over TLS also ``tls`` (the
version, e.g. ``TLSv1.3``) and ``sni`` (the name the client asked for, or
null). What a client wrote is escaped as JSON does; ``range`` is cut to
``RANGE_CHARS`` (a range flood is 16 KiB). Workers append to the same file
(``O_APPEND``, whole lines per write); ``reopen`` follows logrotate.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time

_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f]')


def _string(text: str) -> str:
    """A JSON string; ``json.dumps`` only when something needs escaping."""
    return json.dumps(text, ensure_ascii=False) if _UNSAFE.search(text) else f'"{text}"'


RANGE_CHARS = 200  # a Range header is logged up to this; keys are at most 1024 bytes
FLUSH_LINES = 256  # about 50 KB: written as soon as it is there, and once a second


class AccessLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._fd = -1
        self._sec = -1
        self._sec_text = ""
        self.reopen()

    def reopen(self) -> None:
        if self.path == "-":
            self._fd = sys.stdout.fileno()
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        old, self._fd = self._fd, fd
        if old >= 0:
            os.close(old)

    def record(
        self,
        now: float,
        client: str,
        method: str,
        key: str,
        range_: str | None,
        status: int,
        sent: int,
        cache: str,
        duration: float,
        tls: str | None = None,
        sni: str | None = None,
    ) -> None:
        if range_ is not None and len(range_) > RANGE_CHARS:  # a client's, up to 16 KiB
            range_ = f"{range_[:RANGE_CHARS]}…(+{len(range_) - RANGE_CHARS} chars)"
        over_tls = (
            "" if tls is None else f',"tls":"{tls}","sni":{"null" if sni is None else _string(sni)}'
        )
        self._lines.append(
            f'{{"time":"{self.timestamp(now)}","client":"{client}",'
            f'"method":"{method}","key":{_string(key)},'
            f'"range":{"null" if range_ is None else _string(range_)},"status":{status},'
            f'"bytes":{sent},"cache":"{cache}","duration_ms":{duration * 1000:.3f}{over_tls}}}\n'
        )
        if len(self._lines) >= FLUSH_LINES:
            self.flush()

    def timestamp(self, now: float) -> str:
        """``now`` as UTC ISO 8601 with milliseconds (the text of a second is cached)."""
        sec = int(now)
        if sec != self._sec:
            self._sec = sec
            self._sec_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._sec_text}.{int((now - sec) * 1000):03d}Z"

    def write(self, line: str) -> None:
        """A whole line another service formatted (ending in a newline)."""
        self._lines.append(line)
        if len(self._lines) >= FLUSH_LINES:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered (to the page cache: a short, bounded write)."""
        lines, self._lines = self._lines, []
        if not lines:
            return
        data = "".join(lines).encode("utf-8")
        with self._lock:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]

    def close(self) -> None:
        self.flush()
        if self.path != "-" and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
