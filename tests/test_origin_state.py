"""edge.origin.state: each origin's state, ok or failing, for /_edge/health."""

from __future__ import annotations

from edge.origin.state import FAILING, OK, OriginStates


def test_failing_until_it_answers() -> None:
    s = OriginStates(["file:///a", "s3://b"], {"s3://b": "no S3 credentials"}, now=100.0)
    doc = {d["url"]: d for d in s.as_json()}
    assert doc["file:///a"]["state"] == OK and doc["file:///a"]["last_error"] is None
    assert doc["s3://b"]["state"] == FAILING
    assert doc["s3://b"]["last_error"] == "at start: no S3 credentials"
    assert doc["s3://b"]["since"] == doc["s3://b"]["last_error_at"] == 100.0
    s.failed("file:///a", "cannot connect " * 100, now=200.0)
    s.failed("file:///a", "again", now=210.0)
    a = {d["url"]: d for d in s.as_json()}["file:///a"]
    assert a["state"] == FAILING and a["since"] == 200.0  # since it began failing
    assert a["last_error"] == "again" and a["last_error_at"] == 210.0
    s.answered("file:///a", now=220.0)
    a = {d["url"]: d for d in s.as_json()}["file:///a"]
    assert a["state"] == OK and a["since"] == 220.0 and a["last_ok_at"] == 220.0
    assert a["last_error"] == "again"  # kept: when and what failed last
    assert s.failing() == ["s3://b"]
    s.failed("http://unknown", "x", now=1.0)  # not one of ours: ignored
    assert len(s.as_json()) == 2
    s.failed("s3://b", "y" * 1000, now=300.0)
    assert len({d["url"]: d for d in s.as_json()}["s3://b"]["last_error"]) == 300


def test_credentials_are_not_shown() -> None:
    s = OriginStates(["http://user:s3cret@origin.example:8080/v"], {}, now=0.0)
    assert s.as_json()[0]["url"] == "http://origin.example:8080/v"


def test_workers_share_what_they_saw(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two workers, one directory: the most recent event for an origin wins, in
    both workers' answers."""
    from edge.origin.state import SharedOriginStates

    urls = ["http://o1", "http://o2"]
    a = SharedOriginStates(urls, {}, 100.0, str(tmp_path), "1")
    b = SharedOriginStates(urls, {}, 100.0, str(tmp_path), "2")
    a.failed("http://o1", "connection refused", 110.0)
    for view in (a, b):
        doc = {d["url"]: d for d in view.as_json()}
        assert doc["http://o1"]["state"] == "failing" and doc["http://o2"]["state"] == "ok"
    b.answered("http://o1", 120.0)  # later: the other worker got an answer
    for view in (a, b):
        doc = {d["url"]: d for d in view.as_json()}
        assert doc["http://o1"]["state"] == "ok"
    (tmp_path / "origins-3.json").write_text("{not json")  # being written: skipped
    assert len(a.as_json()) == 2


async def test_an_origins_errors_never_carry_its_credentials() -> None:
    """An HTTP origin's URL may hold a user and password: what it raises goes to
    logs, /_edge/health and the status page, so it names the origin without them."""
    import socket

    import pytest

    from edge.origin import OriginError, OriginSettings
    from edge.origin.http import HTTPOrigin

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    origin = HTTPOrigin(f"http://user:s3cret@127.0.0.1:{port}/videos", OriginSettings())
    try:
        with pytest.raises(OriginError) as caught:
            await origin.head("show/seg.ts")
    finally:
        await origin.close()
    assert "s3cret" not in str(caught.value) and f"127.0.0.1:{port}" in str(caught.value)
