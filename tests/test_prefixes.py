"""steering.prefixes: longest-prefix match, against a brute-force reference."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from steering.prefixes import PrefixTable, address, parse_network


def v4_networks():  # type: ignore[no-untyped-def]
    return st.builds(
        lambda a, n: ipaddress.IPv4Network((a, n), strict=False),
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
    )


def v6_networks():  # type: ignore[no-untyped-def]
    return st.builds(
        lambda a, n: ipaddress.IPv6Network((a, n), strict=False),
        st.integers(0, 2**128 - 1),
        st.integers(0, 128),
    )


def brute(nets: list, ip: ipaddress.IPv4Address | ipaddress.IPv6Address):  # type: ignore[no-untyped-def]
    best = None
    for net in nets:
        if (
            net.version == ip.version
            and ip in net
            and (best is None or net.prefixlen > best.prefixlen)
        ):
            best = net
    return best


@settings(max_examples=300)
@given(st.lists(v4_networks(), max_size=40), st.lists(st.integers(0, 2**32 - 1), max_size=20))
def test_v4_matches_brute_force(nets: list, addrs: list[int]) -> None:
    table = PrefixTable((n, str(n)) for n in nets)
    # also probe addresses inside each network, where matches are likely
    probes = [ipaddress.IPv4Address(a) for a in addrs] + [n.network_address for n in nets]
    for ip in probes:
        hit = table.lookup(4, int(ip))
        expected = brute(nets, ip)
        assert (hit[0] if hit else None) == expected


@settings(max_examples=200)
@given(st.lists(v6_networks(), max_size=30), st.lists(st.integers(0, 2**128 - 1), max_size=10))
def test_v6_matches_brute_force(nets: list, addrs: list[int]) -> None:
    table = PrefixTable((n, str(n)) for n in nets)
    probes = [ipaddress.IPv6Address(a) for a in addrs] + [n.broadcast_address for n in nets]
    for ip in probes:
        hit = table.lookup(6, int(ip))
        assert (hit[0] if hit else None) == brute(nets, ip)


def test_examples() -> None:
    t = PrefixTable(
        [
            (parse_network("10.0.0.0/8"), "wide"),
            (parse_network("10.1.0.0/16"), "narrow"),
            (parse_network("2001:db8::/32"), "v6"),
            (parse_network("0.0.0.0/0"), "default"),
        ]
    )
    assert t.lookup_text("10.1.2.3")[1] == "narrow"
    assert t.lookup_text("10.2.2.3")[1] == "wide"
    assert t.lookup_text("192.0.2.1")[1] == "default"
    assert t.lookup_text("::ffff:10.1.0.1")[1] == "narrow"  # IPv4-mapped is IPv4
    assert t.lookup_text("2001:db8::1")[1] == "v6"
    assert t.lookup_text("2001:db9::1") is None
    assert address("::ffff:10.1.0.1") == (4, int(ipaddress.IPv4Address("10.1.0.1")))
    assert len(t) == 4


def test_host_bits_are_an_error() -> None:
    import pytest

    with pytest.raises(ValueError, match="CIDR"):
        parse_network("10.1.2.3/16")
