"""Longest-prefix match over IPv4 and IPv6 prefixes.

What it decides: which of a set of CIDR prefixes is the most specific one
containing an address, as a router does with its routes. Rules it keeps:
- one dict per prefix length, keyed by the network's integer address shifted
  right by the host bits; a lookup tries the lengths present, longest first,
  so it costs at most one dict probe per distinct length (a handful in
  practice), whatever the number of prefixes;
- IPv4 and IPv6 are separate tables; an IPv4-mapped IPv6 address is looked
  up as IPv4;
- a prefix is stored once; adding it again replaces its value (callers merge);
- pure: built once, read many times, never mutated after ``freeze``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Generic, TypeVar

V = TypeVar("V")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: str) -> Network:
    """A CIDR, strictly: host bits set is an error (it is usually a typo)."""
    try:
        return ipaddress.ip_network(str(text).strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a CIDR prefix: {exc}") from None


def address(text: str) -> tuple[int, int]:
    """(IP version, integer address) of a textual address; IPv4-mapped IPv6
    addresses come back as IPv4. ``ValueError`` for anything else. (The C
    parser: ``ipaddress`` costs several microseconds an address, on every request.)"""
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError):  # ValueError: a NUL in the text
        pass
    try:
        n = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except (OSError, ValueError):
        raise ValueError(f"{text!r} is not an IP address") from None
    if n >> 32 == 0xFFFF:
        return 4, n & 0xFFFFFFFF
    return 6, n


class PrefixTable(Generic[V]):
    """Prefixes with a value each; ``lookup`` finds the longest match."""

    def __init__(self, items: Iterable[tuple[Network, V]] = ()) -> None:
        self._tables: dict[int, dict[int, dict[int, tuple[Network, V]]]] = {4: {}, 6: {}}
        self._levels: dict[int, tuple[tuple[int, dict[int, tuple[Network, V]]], ...]] = {
            4: (),
            6: (),
        }
        for net, value in items:
            self.add(net, value)
        self.freeze()

    def add(self, net: Network, value: V) -> None:
        bits = 32 if net.version == 4 else 128
        shift = bits - net.prefixlen
        by_len = self._tables[net.version].setdefault(net.prefixlen, {})
        by_len[int(net.network_address) >> shift] = (net, value)

    def freeze(self) -> None:
        for version, bits in ((4, 32), (6, 128)):
            self._levels[version] = tuple(
                (bits - length, table)
                for length, table in sorted(self._tables[version].items(), reverse=True)
            )

    def __len__(self) -> int:
        return sum(len(t) for v in self._tables.values() for t in v.values())

    def lookup(self, version: int, addr: int) -> tuple[Network, V] | None:
        """The longest prefix containing the address, with its value, or ``None``."""
        for shift, table in self._levels[version]:
            hit = table.get(addr >> shift)
            if hit is not None:
                return hit
        return None

    def lookup_text(self, text: str) -> tuple[Network, V] | None:
        return self.lookup(*address(text))
