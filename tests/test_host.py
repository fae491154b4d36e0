"""edge.core.host: the Host rule of RFC 9112 §3.2."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge.core.host import host_problem


def test_http11_needs_exactly_one_valid_host() -> None:
    assert host_problem("1.1", None) == "HTTP/1.1 request without a Host header"
    assert host_problem("1.0", None) is None
    for ok in (b"edge.example", b"edge.example:8080", b"127.0.0.1:80", b"[2001:db8::1]:443",
               b"[::1]", b"", b"xn--bcher-kva.example", b"a_b.example"):  # fmt: skip
        assert host_problem("1.1", ok) is None, ok
    # two Host lines reach the rule joined, as the connection joins repeated fields
    assert host_problem("1.1", b"a.example, b.example") == "more than one Host header"
    assert host_problem("1.0", b"a.example, a.example") == "more than one Host header"
    for bad in (b"a b", b"a/b", b"a@b", b"[::1", b"a:b", b"a\x00", b"\xff", b"a?b", b"a#"):
        assert host_problem("1.1", bad) == "invalid Host header", bad


@given(st.ip_addresses(), st.integers(0, 65535))
def test_addresses_and_ports_are_hosts(ip, port) -> None:  # type: ignore[no-untyped-def]
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    assert host_problem("1.1", host.encode()) is None
    assert host_problem("1.1", f"{host}:{port}".encode()) is None


@given(st.binary(max_size=40))
def test_never_raises(value: bytes) -> None:
    assert host_problem("1.1", value) in (None, "more than one Host header", "invalid Host header")
