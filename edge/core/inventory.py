"""The compact inventory: a Bloom filter of the keys an appliance holds.

What it decides: how an appliance tells steering what it holds in a few
hundred kilobytes, and how steering asks the filter about one key. Rules it
keeps:
- only complete objects go in (the caller's choice: ``list_objects(complete_only=True)``);
- no false negatives: a key that went in is always reported held; a key that
  did not is reported held with probability about ``FP_RATE``;
- the wire format is fixed and documented (docs/steering.md): a 24-byte header
  (magic, positions per key, bits, keys) and the bits; a key's positions come
  from one xxh3-128 of it by double hashing, so steering hashes a key once for
  every appliance's filter (the filter holds at least ``MIN_KEYS`` keys' worth
  of bits, where double hashing's correlations do not matter);
- ``etag`` is a digest of the bytes: the same content gives the same ETag on
  every worker and every rebuild, so an unchanged inventory polls as a 304;
- pure: no sockets, files or clocks.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import xxhash

from edge.core.admission import bloom_size

__all__ = ["FP_RATE", "MAGIC", "KeyFilter", "build", "etag", "key_hash", "key_hash_bytes"]

MAGIC = b"EFB1"
FP_RATE = 0.01
MIN_KEYS = 1024
CONTENT_TYPE = "application/vnd.edgefleet.bloom"
_HEADER = struct.Struct(">4sB3xQQ")
_MASK64 = (1 << 64) - 1
MAX_BITS = 1 << 34  # 2 GiB of filter: far beyond any store, a guard against garbage


class KeyFilter:
    """A Bloom filter of object keys, in the inventory wire format."""

    __slots__ = ("bits", "count", "data", "hashes")

    def __init__(self, bits: int, hashes: int, data: bytearray | bytes, count: int = 0) -> None:
        if not 8 <= bits <= MAX_BITS or not 1 <= hashes <= 32:
            raise ValueError("filter parameters out of range")
        if len(data) != (bits + 7) // 8:
            raise ValueError("filter length does not match its bit count")
        self.bits = bits
        self.hashes = hashes
        self.data = data
        self.count = count

    @classmethod
    def empty(cls, expected_keys: int) -> KeyFilter:
        bits, hashes = bloom_size(max(MIN_KEYS, expected_keys), FP_RATE)
        return cls(bits, hashes, bytearray((bits + 7) // 8))

    def positions(self, key: str) -> list[int]:
        h1, h2 = key_hash(key)
        m = self.bits
        return [(h1 + i * h2) % m for i in range(self.hashes)]

    def add(self, key: str) -> None:
        d = self.data
        assert isinstance(d, bytearray)
        for p in self.positions(key):
            d[p >> 3] |= 1 << (p & 7)
        self.count += 1

    def __contains__(self, key: str) -> bool:
        return self.holds(*key_hash(key))

    def holds(self, h1: int, h2: int) -> bool:
        """Membership by the key's ``key_hash``: one hash of the key serves every
        appliance's filter, whatever their sizes."""
        d = self.data
        m = self.bits
        for i in range(self.hashes):
            p = (h1 + i * h2) % m
            if not d[p >> 3] & (1 << (p & 7)):
                return False
        return True

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


def key_hash(key: str) -> tuple[int, int]:
    """The two 64-bit hashes a key's positions derive from (Kirsch-Mitzenmacher:
    position ``i`` is ``(h1 + i*h2) mod m``; ``h2`` is odd)."""
    return key_hash_bytes(key.encode("utf-8", "surrogatepass"))


def key_hash_bytes(data: bytes) -> tuple[int, int]:
    """``key_hash`` of a key already encoded as UTF-8."""
    h = xxhash.xxh3_128_intdigest(data)
    return h & _MASK64, (h >> 64) | 1


def build(keys: Iterable[str], expected: int) -> KeyFilter:
    """A filter of ``keys``, sized for ``expected`` of them."""
    f = KeyFilter.empty(expected)
    for k in keys:
        f.add(k)
    return f


def etag(body: bytes) -> str:
    return f'"{xxhash.xxh3_64_hexdigest(body)}"'
