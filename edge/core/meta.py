"""What the appliance knows about an object, and the slice arithmetic on it.

Pure: no I/O. A slice is the fixed-size unit of storage and of origin fetches;
slice ``i`` of an object of ``size`` bytes cut at ``slice_size`` covers bytes
``[i * slice_size, min(size, (i + 1) * slice_size))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    size: int
    etag: str  # a full entity-tag, quotes included: '"abc"'
    last_modified: int  # POSIX seconds
    content_type: str
    cache_control: str | None = None
    # Freshness (RFC 9111), for objects from HTTP origins; see edge.core.freshness.
    fresh_until: float | None = None  # POSIX time; None: fresh until purged
    stale_if_error: float = 0.0  # seconds past fresh_until an origin error allows
    must_revalidate: bool = False
    born: float | None = None  # when the origin made this response (now - its age)
    storable: bool = True  # False: served to the one request, never stored (not indexed)
    # From HTTP origins only (``None``/defaults elsewhere): the answer as the
    # origin gave it (edge.core.cachepolicy): its status, its end-to-end
    # headers, and the request's values of the headers its Vary names.
    status: int = 200
    headers: tuple[tuple[str, str], ...] | None = None
    vary: tuple[tuple[str, str | None], ...] = ()


class Versioned(Protocol):
    """Anything that names a version of an object: stored meta, a manifest
    entry (whose ETag may be unknown: ``None``), a held object."""

    @property
    def size(self) -> int: ...

    @property
    def etag(self) -> str | None: ...


def same_version(a: Versioned, b: Versioned) -> bool:
    """The same version of an object: same size and same ETag (an ETag that
    is not known, ``None``, matches any)."""
    return a.size == b.size and (a.etag is None or b.etag is None or a.etag == b.etag)


def slice_count(size: int, slice_size: int) -> int:
    return -(-size // slice_size)


def slice_bounds(idx: int, size: int, slice_size: int) -> tuple[int, int]:
    """``(offset, length)`` of slice ``idx``."""
    start = idx * slice_size
    return start, max(0, min(slice_size, size - start))
