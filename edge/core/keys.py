"""Object keys: from a request target to a key that is safe everywhere.

What it decides: whether a request target names an object, and which one. The
rules it keeps:
- a key is the percent-decoded path without its leading ``/`` and without the
  query; it is decoded exactly once and must be valid UTF-8;
- a key can never escape the store or reach an origin as anything but the key:
  no NUL or control characters, no backslash, no ``.``/``..``/empty segments
  (so no absolute paths and no trailing ``/``), no decoded ``%`` (a
  double-encoded key is rejected rather than left for a later hop to decode);
- keys are at most ``MAX_KEY_BYTES`` long (S3's limit), and each path segment
  at most ``MAX_SEGMENT_BYTES`` (a file name's limit, ``NAME_MAX``, on the
  file systems of file origins and most HTTP origins): longer is the client's
  mistake, a 414 before any origin is asked, never an origin failure that
  would count against its circuit breaker;
- the ``_edge/`` namespace is the appliance's own (``is_reserved``).

Nothing here touches a socket, a file or a clock.
"""

from __future__ import annotations

import re

MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255
MAX_TARGET_BYTES = 8192
RESERVED_PREFIX = "_edge/"

_HEX = b"0123456789abcdefABCDEF"
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\%]")


class BadKey(ValueError):
    """The request target is not an acceptable key: the client's mistake. The
    message says why; ``status`` is the answer (400, or 414 for a target that
    is too long)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _percent_decode(raw: bytes) -> bytes:
    if b"%" not in raw:
        return raw
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x25:  # '%'
            if i + 2 >= n:
                raise BadKey("truncated percent-encoding")
            hi, lo = raw[i + 1], raw[i + 2]
            if hi not in _HEX or lo not in _HEX:
                raise BadKey("invalid percent-encoding")
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Split a request target into (path, query), accepting absolute-form."""
    if len(target) > MAX_TARGET_BYTES:
        raise BadKey("request target too long", 414)
    if not target.startswith(b"/"):
        lower = target[:8].lower()
        if lower.startswith(b"http://") or lower.startswith(b"https:/"):
            rest = target.split(b"//", 1)[1]
            slash = rest.find(b"/")
            target = rest[slash:] if slash >= 0 else b"/"
        else:
            raise BadKey("request target must be an absolute path")
    path, _, query = target.partition(b"?")
    path = path.partition(b"#")[0]
    return path, query


def parse_key(path: bytes) -> str:
    """Turn the path of a request target (starting with ``/``) into a key.

    Returns ``""`` for ``/`` itself; raises ``BadKey`` for anything hostile.
    """
    if not path.startswith(b"/"):
        raise BadKey("path must start with /")
    decoded = _percent_decode(path[1:])
    if len(decoded) > MAX_KEY_BYTES:
        raise BadKey(f"key longer than {MAX_KEY_BYTES} bytes")
    try:
        key = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise BadKey("key is not valid UTF-8") from None
    if not key:
        return ""
    check_key(key)
    return key


def check_key(key: str) -> str:
    """Raise ``BadKey`` unless ``key`` is a safe object key; return it."""
    if not key:
        raise BadKey("empty key")
    if len(key) > MAX_KEY_BYTES or len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise BadKey(f"key longer than {MAX_KEY_BYTES} bytes")
    bad = _FORBIDDEN.search(key)
    if bad is not None:
        ch = bad.group()
        if ch == "\\":
            raise BadKey("backslash in key")
        if ch == "%":
            raise BadKey("percent sign in decoded key")
        raise BadKey("control character in key")
    segments = key.split("/")
    if "" in segments or "." in segments or ".." in segments:
        raise BadKey("empty, '.' or '..' path segment in key")
    for segment in segments:
        # a character is at most 4 bytes: only a long segment needs encoding
        if len(segment) * 4 > MAX_SEGMENT_BYTES and len(segment.encode()) > MAX_SEGMENT_BYTES:
            raise BadKey(f"path segment longer than {MAX_SEGMENT_BYTES} bytes in key", 414)
    return key


_cache: dict[bytes, str] = {}
_CACHE_MAX = 65536


def key_for_path(path: bytes) -> str:
    """``parse_key`` with a memory of the paths it accepted: popular objects are
    asked for over and over, and the answer for a path never changes."""
    key = _cache.get(path)
    if key is None:
        key = parse_key(path)
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[path] = key
    return key


LOG_CHARS = 160


def loggable(text: str | bytes, limit: int = LOG_CHARS) -> str:
    """A key, target or error text as a log line may show it: escaped (control
    characters, quotes and backslashes as Python writes them; bytes that are
    not UTF-8 as ``\\xNN``) and, past ``limit`` characters, its middle left
    out with a count (the start and the end say the most: where and why). A
    hostile client's 8 KiB target makes ~200 characters of log line, and cannot
    break the line or forge another."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    shown = repr(text)[1:-1] if len(text) <= 4 * limit else ""
    if shown and len(shown) <= limit:
        return shown
    head, tail = limit * 2 // 3, limit // 3
    start, end = repr(text[:head])[1:-1][:head], repr(text[-tail:])[1:-1][-tail:]
    return f"{start}…(+{len(text) - head - tail} chars)…{end}"


def is_reserved(key: str) -> bool:
    return key == RESERVED_PREFIX[:-1] or key.startswith(RESERVED_PREFIX)
