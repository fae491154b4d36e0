"""edge.core.inventory: the Bloom filter of held keys, and /_edge/inventory?format=bloom."""

from __future__ import annotations

import http.client

from conftest import exchange, wait_for
from hypothesis import given
from hypothesis import strategies as st

from edge.core.inventory import FP_RATE, KeyFilter, build, etag

KEY = "titles/81234/movie.mp4"


@given(st.sets(st.text(min_size=1, max_size=40), max_size=200))
def test_no_false_negatives_and_round_trip(keys: set[str]) -> None:
    f = KeyFilter.from_bytes(build(keys, len(keys)).to_bytes())
    assert f.count == len(keys)
    assert all(k in f for k in keys)


def test_false_positive_rate() -> None:
    f = build((f"in/{i}" for i in range(10_000)), 10_000)
    fp = sum(f"out/{i}" in f for i in range(20_000)) / 20_000
    assert fp < 2 * FP_RATE


def test_etag_is_content() -> None:
    a = build(["a", "b"], 2).to_bytes()
    assert etag(a) == etag(build(["b", "a"], 2).to_bytes()) != etag(build(["a"], 1).to_bytes())


def get(port: int, path: str, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    return exchange(conn, "GET", path, headers)


def test_bloom_endpoint(appliance, catalog) -> None:
    status, headers, body = get(appliance.port, "/_edge/inventory?format=bloom")
    assert status == 200 and headers["content-type"] == "application/vnd.edgefleet.bloom"
    assert KEY not in KeyFilter.from_bytes(body)
    appliance.get("/" + KEY)

    def held():  # type: ignore[no-untyped-def]
        _, h, b = get(appliance.port, "/_edge/inventory?format=bloom")
        return (h["etag"], b) if KEY in KeyFilter.from_bytes(b) else None

    tag, body = wait_for(held)
    assert KeyFilter.from_bytes(body).count == 1
    status, headers, body = get(
        appliance.port, "/_edge/inventory?format=bloom", {"If-None-Match": tag}
    )
    assert status == 304 and body == b"" and headers["etag"] == tag
    # the JSON-lines form is unchanged
    assert b'"key": "titles/81234/movie.mp4"' in appliance.get("/_edge/inventory")[2]
