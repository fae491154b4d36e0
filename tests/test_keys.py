"""edge.core.keys: request targets to safe keys; nothing hostile gets through."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.core.keys import BadKey, check_key, is_reserved, parse_key, split_target


def key_of(target: bytes) -> str:
    path, _ = split_target(target)
    return parse_key(path)


def test_ordinary_keys() -> None:
    assert key_of(b"/titles/81234/720p/seg_00042.m4s") == "titles/81234/720p/seg_00042.m4s"
    assert key_of(b"/a%20b/%C3%BC.ts?token=x#frag") == "a b/ü.ts"
    assert key_of(b"http://edge.example/titles/x.ts") == "titles/x.ts"
    assert key_of(b"/") == ""


@pytest.mark.parametrize(
    "target",
    [
        b"/../etc/passwd",
        b"/titles/../../etc/passwd",
        b"/titles/./x.ts",
        b"/%2e%2e/etc/passwd",
        b"/%2E%2E%2Fetc%2Fpasswd",
        b"/titles/%2e/x",
        b"//etc/passwd",
        b"/titles//x.ts",
        b"/titles/",
        b"/a%00b",
        b"/a%0ab",
        b"/a%7fb",
        b"/a\\b",
        b"/a%5cb",
        b"/%252e%252e/x",
        b"/a%zz",
        b"/a%4",
        b"/a%",
        b"/%ff%fe",
        b"/" + b"a" * 1025,
        b"*",
        b"relative/path",
    ],
)
def test_hostile_targets_are_rejected(target: bytes) -> None:
    with pytest.raises(BadKey):
        key_of(target)


def test_over_long_target() -> None:
    with pytest.raises(BadKey, match="too long"):
        split_target(b"/" + b"a" * 9000)


def test_reserved_namespace() -> None:
    assert is_reserved("_edge/health")
    assert is_reserved("_edge")
    assert not is_reserved("_edges/x")
    assert not is_reserved("titles/_edge/x")


@given(st.binary(max_size=200))
def test_any_target_is_a_safe_key_or_rejected(raw: bytes) -> None:
    try:
        key = key_of(b"/" + raw)
    except BadKey:
        return
    if key == "":
        return
    segments = key.split("/")
    assert ".." not in segments and "." not in segments and "" not in segments
    assert "\\" not in key and "\x00" not in key and "%" not in key
    assert not key.startswith("/")
    assert len(key.encode()) <= 1024
    assert check_key(key) == key


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=100))
def test_check_key_agrees_with_parse(text: str) -> None:
    from urllib.parse import quote

    try:
        parsed = key_of(b"/" + quote(text, safe="/").encode())
    except BadKey:
        parsed = None
    try:
        checked = check_key(text)
    except BadKey:
        checked = None
    if text:
        assert parsed == checked


def test_long_segments_are_the_clients_mistake() -> None:
    """A segment over 255 bytes cannot name a file at a file origin: a 414 here,
    before any origin is asked (it was a 502 after three origin tries, counted
    against the origin's circuit breaker)."""
    assert key_of(b"/" + b"a" * 255 + b"/x.ts") == "a" * 255 + "/x.ts"
    for target in (b"/" + b"a" * 256, b"/t/" + b"b" * 300 + b".ts", b"/t/" + b"%C3%BC" * 128):
        with pytest.raises(BadKey) as err:
            key_of(target)
        assert err.value.status == 414 and "255 bytes" in str(err.value)
    assert check_key("ü" * 127) and check_key("x/" + "ü" * 127)  # 254 bytes a segment


@given(
    st.lists(
        st.text(
            st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=300
        ),
        min_size=1,
        max_size=3,
    )
)
def test_segment_limit_in_bytes(segments: list[str]) -> None:
    key = "/".join(segments)
    try:
        check_key(key)
    except BadKey:
        longest = max(len(s.encode()) for s in segments)
        assert (
            longest > 255
            or len(key.encode()) > 1024
            or any(
                s in ("", ".", "..") or "/" in s or "\\" in s or "%" in s or "\x7f" in s
                for s in segments
            )
        )
    else:
        assert all(len(s.encode()) <= 255 for s in key.split("/"))


def test_loggable_keys_are_bounded_and_escaped() -> None:
    from edge.core.keys import loggable

    assert loggable("titles/a.ts") == "titles/a.ts"
    line = loggable("a" * 7000 + "the cause")
    assert len(line) < 200 and "…(+6850 chars)…" in line and line.endswith("the cause")
    assert "\n" not in loggable("x\ny\r\n") and loggable("x\ny") == "x\\ny"
    assert loggable(b"/\xff\x00%2e") == "/\\\\xff\\x00%2e"


@given(st.one_of(st.text(max_size=3000), st.binary(max_size=3000)))
def test_loggable_is_one_short_printable_line(text: str | bytes) -> None:
    from edge.core.keys import loggable

    line = loggable(text)
    assert len(line) <= 160 + 20
    assert line.isprintable()
