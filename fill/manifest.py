"""Manifests: the ranked list of objects a fill plans from.

Rules it keeps: ``parse`` is pure (text in, entries or a ``ManifestError``
naming the line out); a manifest with any error yields nothing, so a truncated
download never becomes a smaller plan; keys pass the same check as request
paths, so a manifest can never name a file outside the store or smuggle a key
to the origin. ``load`` fetches the text from a file, an http(s) URL or an
``s3://bucket/key`` object. The format is in docs/fill.md.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from edge.core.keys import BadKey, check_key, is_reserved
from edge.origin import OriginSettings
from fill.plan import Entry

_HEX16 = re.compile(r"[0-9a-f]{16}")
FIELDS = {"key", "size", "score", "rank", "etag", "xxh3"}


class ManifestError(ValueError):
    """The manifest cannot be used; the message names the source and line."""


def parse(text: str, source: str = "manifest") -> list[Entry]:
    """Entries from JSON-lines, a JSON list, or ``{"objects": [...]}``."""
    stripped = text.lstrip()
    items: Iterable[tuple[int, Any]]
    if stripped.startswith("[") or (stripped.startswith("{") and _is_document(stripped)):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{source}:{exc.lineno}: not valid JSON: {exc.msg}") from None
        if isinstance(doc, dict):
            if not isinstance(doc.get("objects"), list):
                raise ManifestError(f'{source}: a JSON manifest is a list or {{"objects": [...]}}')
            doc = doc["objects"]
        items = ((n, item) for n, item in enumerate(doc, 1))
        where = "object"
    else:
        items = _lines(text, source)
        where = "line"
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    for n, item in items:
        try:
            entry = _entry(item)
        except ValueError as exc:
            raise ManifestError(f"{source}:{n}: {exc}") from None
        if entry.key in seen:
            raise ManifestError(
                f"{source}:{n}: duplicate key {entry.key!r} (first at {where} {seen[entry.key]})"
            )
        seen[entry.key] = n
        entries.append(entry)
    return entries


def _is_document(text: str) -> bool:
    """A ``{"objects": ...}`` document, not JSON lines (a one-line manifest is
    both a JSON object and a JSON line: it is a line unless it names objects)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(doc, dict) and "objects" in doc


def _lines(text: str, source: str) -> Iterable[tuple[int, Any]]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{source}:{n}: not valid JSON: {exc.msg}") from None


def _number(item: dict[str, Any], name: str) -> float | None:
    value = item.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def _entry(item: Any) -> Entry:
    if not isinstance(item, dict):
        raise ValueError(f'expected an object like {{"key": ..., "size": ...}}, got {item!r}')
    unknown = sorted(set(item) - FIELDS)
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(FIELDS))})")
    key = item.get("key")
    if not isinstance(key, str):
        raise ValueError("missing key (a string)")
    try:
        check_key(key)
    except BadKey as exc:
        raise ValueError(f"key {key!r}: {exc}") from None
    if is_reserved(key):
        raise ValueError(f"key {key!r} cannot be stored")
    size = item.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"{key!r}: size must be a whole number of bytes >= 0, got {size!r}")
    score = _number(item, "score")
    rank = _number(item, "rank")
    if score is None and rank is None:
        raise ValueError(f"{key!r}: needs a score or a rank")
    if score is not None and score < 0:
        raise ValueError(f"{key!r}: score cannot be negative")
    if score is None:
        assert rank is not None
        if rank < 1:
            raise ValueError(f"{key!r}: rank starts at 1")
        score = 1.0 / rank
    etag = item.get("etag")
    if etag is not None and (not isinstance(etag, str) or not etag):
        raise ValueError(f"{key!r}: etag must be a non-empty string")
    xxh3 = item.get("xxh3")
    if xxh3 is not None and (not isinstance(xxh3, str) or not _HEX16.fullmatch(xxh3.lower())):
        raise ValueError(f"{key!r}: xxh3 must be 16 hex digits (xxh3-64 of the object)")
    return Entry(key, size, score, etag, xxh3.lower() if xxh3 else None)


def dump(entries: Iterable[Entry]) -> str:
    """JSON-lines text that ``parse`` reads back to the same entries."""
    out = []
    for e in entries:
        item: dict[str, Any] = {"key": e.key, "size": e.size, "score": e.score}
        if e.etag is not None:
            item["etag"] = e.etag
        if e.xxh3 is not None:
            item["xxh3"] = e.xxh3
        out.append(json.dumps(item, ensure_ascii=False) + "\n")
    return "".join(out)


async def load(where: str, settings: OriginSettings | None = None) -> list[Entry]:
    """The manifest at a path, an http(s) URL or ``s3://bucket/key``."""
    return parse(await fetch_text(where, settings), where)


async def fetch_text(where: str, settings: OriginSettings | None = None) -> str:
    scheme = urlsplit(where).scheme
    if scheme in ("http", "https"):
        import aiohttp

        settings = settings or OriginSettings()
        timeout = aiohttp.ClientTimeout(
            sock_connect=settings.connect_timeout, sock_read=settings.read_timeout
        )
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(where) as resp,
            ):
                if resp.status != 200:
                    raise ManifestError(f"{where}: HTTP {resp.status}")
                return (await resp.read()).decode("utf-8")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ManifestError(f"{where}: {exc or type(exc).__name__}") from None
        except UnicodeDecodeError:
            raise ManifestError(f"{where}: not UTF-8 text") from None
    if scheme == "s3":
        from edge.origin import OriginError
        from edge.origin.s3 import S3Origin

        bucket_part, _, key = where[len("s3://") :].partition("/")
        if not key:
            raise ManifestError(f"{where}: name the object, s3://bucket/path/manifest.jsonl")
        origin = S3Origin(f"s3://{bucket_part}", settings or OriginSettings())
        try:
            meta = await origin.head(key)
            if meta is None:
                raise ManifestError(f"{where}: no such object")
            data = b"".join([c async for c in origin.read(key, meta, 0, meta.size)])
        except OriginError as exc:
            raise ManifestError(f"{where}: {exc}") from None
        finally:
            await origin.close()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ManifestError(f"{where}: not UTF-8 text") from None
    path = where[len("file://") :] if scheme == "file" else where
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise ManifestError(f"{where}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{where}: not UTF-8 text") from None
