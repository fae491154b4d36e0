"""Admission: whether an object fetched on a miss is stored or only served.

What it decides: when storing a missed object would mean evicting others (the
caller decides when that is: "capacity pressure"), whether it is worth it.
Rules it keeps:
- ``off`` (``AdmitAll``) stores every miss, as if there were no filter;
- ``doorkeeper`` (``Doorkeeper``, TinyLFU's doorkeeper) stores a key only from
  its second ask within a window: the first ask is recorded in a Bloom filter
  and served without storing, so one-hit wonders never evict anything;
- a Bloom filter has no false negatives: a key asked before in the same window
  is always admitted; a first ask is admitted by mistake with probability
  about ``fp_rate`` once ``expected_keys`` keys are in, less before;
- the window is ``expected_keys`` recorded keys: the next new key clears the
  filter first, so it never holds more than it was sized for and old asks
  are forgotten;
- pure: no sockets, files or clocks; state is per instance (per process), not
  thread-safe.
"""

from __future__ import annotations

import math
from typing import Protocol

import xxhash

__all__ = ["ADMISSIONS", "Admission", "AdmitAll", "Doorkeeper", "make_admission"]

DEFAULT_EXPECTED_KEYS = 100_000
DEFAULT_FP_RATE = 0.01
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


class Admission(Protocol):
    name: str

    def admit(self, key: str) -> bool:
        """May ``key``, just fetched and not stored, be stored at others' expense?"""
        ...


class AdmitAll:
    """``admission = "off"``: every miss is stored."""

    name = "off"

    def admit(self, key: str) -> bool:
        return True


def bloom_size(expected_keys: int, fp_rate: float) -> tuple[int, int]:
    """Bits and hash functions of a Bloom filter holding ``expected_keys`` at ``fp_rate``."""
    if expected_keys < 1:
        raise ValueError("expected_keys must be at least 1")
    if not 0.0 < fp_rate < 1.0:
        raise ValueError("fp_rate must be between 0 and 1")
    bits = math.ceil(-expected_keys * math.log(fp_rate) / math.log(2) ** 2)
    hashes = max(1, round(bits / expected_keys * math.log(2)))
    return bits, hashes


class Doorkeeper:
    """A Bloom filter of keys asked for, cleared every ``expected_keys`` new keys."""

    name = "doorkeeper"

    def __init__(
        self,
        expected_keys: int = DEFAULT_EXPECTED_KEYS,
        fp_rate: float = DEFAULT_FP_RATE,
        *,
        seed: int = 0,
    ) -> None:
        self.expected_keys = expected_keys
        self.fp_rate = fp_rate
        self.bits, self.hashes = bloom_size(expected_keys, fp_rate)
        self.seed = seed & _MASK64
        self._width = self.bits.bit_length() + 16
        self._chunk_mask = (1 << self._width) - 1
        self._need_bits = self._width * self.hashes
        self._filter = bytearray((self.bits + 7) // 8)
        self.count = 0  # keys recorded in the current window
        self.resets = 0  # windows closed so far

    def _positions(self, key: str) -> list[int]:
        # Each position takes its own run of bits from xxh3-128 digests with
        # successive seeds, 16 bits more than the filter needs (so the modulo's
        # bias is negligible); positions are thus independent even in a small
        # filter, where double hashing's few distinct patterns collide.
        data = key.encode("utf-8", "surrogatepass")
        width, chunk = self._width, self._chunk_mask
        acc = have = 0
        seed = self.seed
        while have < self._need_bits:
            acc |= xxhash.xxh3_128_intdigest(data, seed) << have
            have += 128
            seed = (seed + _GOLDEN) & _MASK64
        m = self.bits
        return [((acc >> (i * width)) & chunk) % m for i in range(self.hashes)]

    def __contains__(self, key: str) -> bool:
        """Seen in the current window (or a false positive); records nothing."""
        f = self._filter
        return all(f[p >> 3] & (1 << (p & 7)) for p in self._positions(key))

    def admit(self, key: str) -> bool:
        """True if ``key`` was seen in this window; else record it and return False."""
        positions = self._positions(key)
        f = self._filter
        if all(f[p >> 3] & (1 << (p & 7)) for p in positions):
            return True
        if self.count >= self.expected_keys:
            self.clear()
            self.resets += 1
        f = self._filter
        for p in positions:
            f[p >> 3] |= 1 << (p & 7)
        self.count += 1
        return False

    def clear(self) -> None:
        """Forget every key: a new window starts."""
        self._filter = bytearray(len(self._filter))
        self.count = 0


ADMISSIONS = ("off", "doorkeeper")


def make_admission(name: str, expected_keys: int = DEFAULT_EXPECTED_KEYS) -> Admission:
    if name == "off":
        return AdmitAll()
    if name == "doorkeeper":
        return Doorkeeper(expected_keys)
    raise ValueError(f"unknown admission {name!r} (choose from {', '.join(ADMISSIONS)})")
