"""edge.core.signing: tokens sign and verify, and every tampering is caught."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.core.signing import (
    Verifier,
    client_prefix,
    directory_of,
    parse_keys,
    sign,
    sign_directory,
    split_path_token,
    token_param,
)

K1 = b"first-secret-0123456789"
K2 = b"second-secret-0123456789"
KEY = "titles/81234/720p/seg_00001.m4s"
NOW = 1_700_000_000


def q(token: str) -> str:
    return f"token={token}"


def test_valid_and_rotated() -> None:
    v = Verifier({"k1": K1, "k2": K2})
    assert v.check(KEY, q(sign(KEY, "k1", K1, NOW + 60)), "192.0.2.7", NOW) is None
    assert v.check(KEY, q(sign(KEY, "k2", K2, NOW + 60)), "192.0.2.7", NOW) is None
    # the old key retired: its URLs stop working, the new key's keep working
    retired = Verifier({"k2": K2})
    assert retired.check(KEY, q(sign(KEY, "k1", K1, NOW + 60)), "x", NOW) == "unknown_key"
    assert retired.check(KEY, q(sign(KEY, "k2", K2, NOW + 60)), "x", NOW) is None


def test_reasons() -> None:
    v = Verifier({"k1": K1})
    good = sign(KEY, "k1", K1, NOW + 60, "192.0.2.0/24")
    assert v.check(KEY, "", "192.0.2.7", NOW) == "missing"
    assert v.check(KEY, "other=1", "192.0.2.7", NOW) == "missing"
    assert v.check(KEY, "token=abc", "192.0.2.7", NOW) == "malformed"
    assert v.check(KEY, q(good.replace("~192", "~999")), "192.0.2.7", NOW) == "malformed"
    assert v.check(KEY, q("zz" + good[2:]), "192.0.2.7", NOW) == "unknown_key"
    assert v.check("titles/other.m4s", q(good), "192.0.2.7", NOW) == "bad_signature"
    assert v.check(KEY, q(good.replace("/24", "/25")), "192.0.2.7", NOW) == "bad_signature"
    assert v.check(KEY, q(sign(KEY, "k1", K2, NOW + 60)), "192.0.2.7", NOW) == "bad_signature"
    assert v.check(KEY, q(good), "192.0.2.7", NOW + 61) == "expired"
    assert v.check(KEY, q(good), "198.51.100.1", NOW) == "wrong_prefix"
    assert v.check(KEY, q(good), "2001:db8::1", NOW) == "wrong_prefix"
    assert v.check(KEY, q(good), "::ffff:192.0.2.9", NOW) is None
    # other parameters ride along unsigned; a percent-encoded prefix is the same token
    assert v.check(KEY, "a=1&" + q(good) + "&b=2", "192.0.2.7", NOW) is None
    assert v.check(KEY, q(good.replace("/", "%2F")), "192.0.2.7", NOW) is None


def test_client_prefix() -> None:
    assert client_prefix("192.0.2.77", 24, 48) == "192.0.2.0/24"
    assert client_prefix("2001:db8:1:2::5", 24, 48) == "2001:db8:1::/48"
    assert client_prefix("::ffff:192.0.2.77", 24, 48) == "192.0.2.0/24"
    assert client_prefix("192.0.2.77", 0, 48) == ""


def test_parse_keys() -> None:
    assert parse_keys({"k1": "0123456789abcdef"}) == {"k1": b"0123456789abcdef"}
    assert parse_keys(["a=0123456789abcdef", "b=0123456789abcdefg"]) == {
        "a": b"0123456789abcdef",
        "b": b"0123456789abcdefg",
    }
    for bad in ({"k1": "short"}, ["nokey"], {"bad id": "0123456789abcdef"}, {"k": 5}):
        with pytest.raises(ValueError):
            parse_keys(bad)
    with pytest.raises(ValueError):
        parse_keys(["a=0123456789abcdef", "a=0123456789abcdef"])


keys = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF), min_size=1, max_size=60)
secrets_ = st.binary(min_size=16, max_size=64)
kids = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)


@given(keys, kids, secrets_, st.integers(0, 10**11), st.integers(0, 10**6))
def test_round_trip(key: str, kid: str, secret: bytes, expires: int, before: int) -> None:
    v = Verifier({kid: secret})
    query = token_param(key, kid, secret, expires)
    assert v.check(key, query, "192.0.2.1", expires - before) is None


@given(keys, secrets_, st.integers(0, 10**11), st.data())
def test_any_tampering_is_refused(key: str, secret: bytes, expires: int, data) -> None:  # type: ignore[no-untyped-def]
    token = sign(key, "k", secret, expires, "192.0.2.0/24")
    i = data.draw(st.integers(0, len(token) - 1))
    c = data.draw(st.sampled_from("0123456789abcdefABCDEF-_~./:"))
    tampered = token[:i] + c + token[i + 1 :]
    if tampered == token:
        return
    got = Verifier({"k": secret}).check(key, q(tampered), "192.0.2.1", 0)
    assert got is not None


# -- directory tokens in the path -------------------------------------------------


def test_a_directory_token_covers_its_directory_and_nothing_else() -> None:
    v = Verifier({"k1": K1})
    token = sign_directory("titles/81234/", "k1", K1, NOW + 60)
    for key in (
        "titles/81234/master.m3u8",
        "titles/81234/720p/index.m3u8",
        "titles/81234/720p/seg_00001.m4s",
    ):
        assert v.check_path(key, token, "192.0.2.7", NOW) is None, key
    for key in ("titles/81235/master.m3u8", "titles/master.m3u8", "master.m3u8"):
        assert v.check_path(key, token, "192.0.2.7", NOW) == "bad_signature", key
    assert v.check_path(KEY, token, "192.0.2.7", NOW + 61) == "expired"
    assert v.check_path(KEY, "", "x", NOW) == "missing"
    assert v.check_path(KEY, "k1~nonsense", "x", NOW) == "malformed"
    # a key token is no directory token, nor the other way round
    key_token = sign("titles/81234/", "k1", K1, NOW + 60)
    assert v.check_path(KEY, key_token, "x", NOW) == "bad_signature"
    assert v.check("titles/81234/", q(token), "x", NOW) == "bad_signature"


def test_a_directory_token_can_be_bound_to_a_client_prefix() -> None:
    v = Verifier({"k1": K1})
    for prefix, inside, outside in (
        ("192.0.2.0/24", "192.0.2.7", "198.51.100.1"),
        ("2001:db8::/48", "2001:db8::5", "2001:db9::5"),
    ):
        token = sign_directory("titles/81234/", "k1", K1, NOW + 60, prefix)
        assert "/" not in token  # one path segment
        assert v.check_path(KEY, token, inside, NOW) is None
        assert v.check_path(KEY, token, outside, NOW) == "wrong_prefix"


@given(st.lists(st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), min_size=2, max_size=6))
def test_every_key_under_the_signed_directory_and_no_other(parts: list[str]) -> None:
    v = Verifier({"k1": K1})
    key = "/".join(parts)
    directory = directory_of(key)
    token = sign_directory(directory, "k1", K1, NOW + 60)
    assert v.check_path(key, token, "x", NOW) is None
    assert v.check_path(directory + "deeper/" + parts[-1], token, "x", NOW) is None
    assert v.check_path("other-" + key, token, "x", NOW) == "bad_signature"
    assert split_path_token(f"_edge/t/{token}/{key}") == (token, key)
    assert split_path_token(key) is None
    with pytest.raises(ValueError):
        sign_directory(parts[0], "k1", K1, NOW)
