"""The compact inventory: a Bloom filter of the keys an appliance holds.

What it decides: how an appliance tells steering what it holds in a few
hundred kilobytes, and how steering asks the filter about one key. Rules it
keeps:
- only complete objects go in (the caller's choice: ``list_objects(complete_only=True)``);
- no false negatives: a key that went in is always reported held; a key that
  did not is reported held with probability about ``FP_RATE``;
- the wire format is fixed and documented (docs/steering.md): a 24-byte header
  (magic, positions per key, bits, keys) and the bits; positions come from
  xxh3-128 as in the admission doorkeeper (``edge.admission``), independent
  even in a small filter;
- ``etag`` is a digest of the bytes: the same content gives the same ETag on
  every worker and every rebuild, so an unchanged inventory polls as a 304;
- pure: no sockets, files or clocks.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import xxhash

from edge.admission import bloom_size

__all__ = ["FP_RATE", "MAGIC", "KeyFilter", "build"]

MAGIC = b"EFB1"
FP_RATE = 0.01
MIN_KEYS = 1024
CONTENT_TYPE = "application/vnd.edgefleet.bloom"
_HEADER = struct.Struct(">4sB3xQQ")
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
MAX_BITS = 1 << 34  # 2 GiB of filter: far beyond any store, a guard against garbage


class KeyFilter:
    """A Bloom filter of object keys, in the inventory wire format."""

    __slots__ = ("_need", "_width", "bits", "count", "data", "hashes")

    def __init__(self, bits: int, hashes: int, data: bytearray | bytes, count: int = 0) -> None:
        if not 8 <= bits <= MAX_BITS or not 1 <= hashes <= 32:
            raise ValueError("filter parameters out of range")
        if len(data) != (bits + 7) // 8:
            raise ValueError("filter length does not match its bit count")
        self.bits = bits
        self.hashes = hashes
        self.data = data
        self.count = count
        self._width = bits.bit_length() + 16
        self._need = self._width * hashes

    @classmethod
    def empty(cls, expected_keys: int) -> KeyFilter:
        bits, hashes = bloom_size(max(MIN_KEYS, expected_keys), FP_RATE)
        return cls(bits, hashes, bytearray((bits + 7) // 8))

    def positions(self, key: str) -> list[int]:
        data = key.encode("utf-8", "surrogatepass")
        width = self._width
        acc = have = seed = 0
        while have < self._need:
            acc |= xxhash.xxh3_128_intdigest(data, seed) << have
            have += 128
            seed = (seed + _GOLDEN) & _MASK64
        chunk = (1 << width) - 1
        m = self.bits
        return [((acc >> (i * width)) & chunk) % m for i in range(self.hashes)]

    def add(self, key: str) -> None:
        d = self.data
        assert isinstance(d, bytearray)
        for p in self.positions(key):
            d[p >> 3] |= 1 << (p & 7)
        self.count += 1

    def __contains__(self, key: str) -> bool:
        d = self.data
        return all(d[p >> 3] & (1 << (p & 7)) for p in self.positions(key))

    def to_bytes(self) -> bytes:
        return _HEADER.pack(MAGIC, self.hashes, self.bits, self.count) + bytes(self.data)

    @classmethod
    def from_bytes(cls, body: bytes) -> KeyFilter:
        """Parse the wire format; ``ValueError`` when it is not one."""
        if len(body) < _HEADER.size:
            raise ValueError("inventory filter too short")
        magic, hashes, bits, count = _HEADER.unpack_from(body)
        if magic != MAGIC:
            raise ValueError("not an edgefleet inventory filter")
        return cls(bits, hashes, body[_HEADER.size :], count)


def build(keys: Iterable[str], expected: int) -> KeyFilter:
    """A filter of ``keys``, sized for ``expected`` of them."""
    f = KeyFilter.empty(expected)
    for k in keys:
        f.add(k)
    return f


def etag(body: bytes) -> str:
    return f'"{xxhash.xxh3_64_hexdigest(body)}"'
