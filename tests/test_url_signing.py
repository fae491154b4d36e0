"""Signed URLs at a real appliance: 403 with the reason, counted; the query is not the key."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SLICE, Appliance, wait_for

from edge.core.signing import sign, sign_directory

KEY = "titles/81234/movie.mp4"
OLD = "old-secret-0123456789"
NEW = "new-secret-0123456789"


@pytest.fixture
def signed(tmp_path: Path, origin_dir: Path, catalog: dict[str, bytes]):
    app = Appliance(
        [
            "--store", str(tmp_path / "store"),
            "--capacity", "64MiB",
            "--origin", f"file://{origin_dir}",
            "--slice-size", str(SLICE),
            "--url-signing-key", f"old={OLD}",
            "--url-signing-key", f"new={NEW}",
        ]
    ).start()  # fmt: skip
    yield app
    app.stop()


def url(key: str, kid: str, secret: str, expires: int, prefix: str = "", extra: str = "") -> str:
    return f"/{key}?{extra}token={sign(key, kid, secret.encode(), expires, prefix)}"


def test_tokens(signed: Appliance, catalog: dict[str, bytes]) -> None:
    later = int(time.time()) + 600
    status, _, body = signed.get(url(KEY, "new", NEW, later))
    assert status == 200 and body == catalog[KEY]
    # rotation: both keys at once
    assert signed.get(url(KEY, "old", OLD, later))[0] == 200
    # bound to the client's prefix: loopback is inside 127.0.0.0/8, not 10/8
    assert signed.get(url(KEY, "new", NEW, later, "127.0.0.0/8"))[0] == 200
    refused = {
        "missing": f"/{KEY}",
        "malformed": f"/{KEY}?token=new~x~~y",
        "unknown_key": url(KEY, "gone", "gone-secret-0123456789", later),
        "bad_signature": url(KEY, "new", NEW, later).replace(KEY, "titles/81234/master.m3u8", 1),
        "expired": url(KEY, "new", NEW, int(time.time()) - 1),
        "wrong_prefix": url(KEY, "new", NEW, later, "10.0.0.0/8"),
    }
    for reason, path in refused.items():
        status, headers, body = signed.get(path)
        assert status == 403, reason
        assert headers["content-type"].startswith("text/plain")
        assert body.startswith(b"403 Forbidden: "), body
    assert b"wrong client prefix" in signed.get(refused["wrong_prefix"])[2]
    assert b"expired" in signed.get(refused["expired"])[2]
    # tampering with the key: signed for one object, asked for another
    status, _, _ = signed.get(refused["bad_signature"])
    assert status == 403
    # operational endpoints need no token
    assert signed.get("/_edge/health")[0] == 200

    def counted():  # type: ignore[no-untyped-def]
        text = signed.get("/_edge/metrics")[2].decode()
        got = dict(re.findall(r'edgefleet_token_rejections_total\{reason="(\w+)"\} (\S+)', text))
        return got if len(got) == 6 else None

    got = wait_for(counted)
    assert float(got["missing"]) == 1 and float(got["bad_signature"]) == 2
    assert float(got["expired"]) == 2 and float(got["wrong_prefix"]) == 2


def test_a_path_token_covers_a_titles_directory(
    signed: Appliance, catalog: dict[str, bytes]
) -> None:
    """What HLS players need: relative URLs resolved against a playlist's URL keep
    a token that sits in the path, for every object under the title's directory."""
    later = int(time.time()) + 600
    token = sign_directory("titles/81234/", "new", NEW.encode(), later)
    for key in ("titles/81234/master.m3u8", "titles/81234/720p/seg_00002.m4s"):
        status, _, body = signed.get(f"/_edge/t/{token}/{key}")
        assert status == 200 and body == catalog[key], key
    status, _, body = signed.get(
        f"/_edge/t/{token}/titles/81234/720p/seg_00002.m4s", Range="bytes=0-99"
    )
    assert status == 206 and body == catalog["titles/81234/720p/seg_00002.m4s"][:100]
    # the same object as without the token: one store entry, logged by its key
    assert signed.get(f"/{KEY}?token={sign(KEY, 'new', NEW.encode(), later)}")[0] == 200
    assert signed.get(f"/_edge/t/{token}/{KEY}")[0] == 200
    refused = [
        f"/_edge/t/{token}/empty.ts",  # outside the directory
        f"/_edge/t/{token.replace('~', '~1', 1)}/{KEY}",  # another expiry
        f"/_edge/t/{sign_directory('titles/81234/', 'new', NEW.encode(), 1)}/{KEY}",  # expired
        f"/_edge/t/{sign_directory('titles/81234/', 'new', NEW.encode(), later, '10.0.0.0/8')}"
        f"/{KEY}",  # another client prefix
    ]
    for path in refused:
        assert signed.get(path)[0] == 403, path
    # the reserved namespace stays reserved behind a token
    assert signed.get(f"/_edge/t/{token}/_edge/health")[0] == 404


def test_query_does_not_change_the_cache_key(signed: Appliance, catalog: dict) -> None:
    later = int(time.time()) + 600
    signed.get(url(KEY, "new", NEW, later, extra="a=1&"))
    wait_for(lambda: KEY.encode() in signed.get("/_edge/inventory")[2])
    # another token, other parameters: the same stored object, a hit
    status, _, body = signed.get(url(KEY, "old", OLD, later + 1, extra="b=2&"))
    assert status == 200 and body == catalog[KEY]
    hit = r'edgefleet_requests_total\{cache="hit",status="200"\} [1-9]'
    wait_for(lambda: re.search(hit, signed.get("/_edge/metrics")[2].decode()))
    assert len(signed.get("/_edge/inventory")[2].splitlines()) == 1


def test_short_secret_is_a_config_error(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edge.cli", "serve", "--store", str(tmp_path / "s"),
         "--capacity", "1GiB", "--url-signing-key", "k1=short"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert "--url-signing-key / url_signing_keys" in out.stderr
    assert "shorter than 16 bytes" in out.stderr and "short" not in out.stderr.split(":")[1]


def test_keys_from_toml(tmp_path: Path) -> None:
    from edge.cli import build_parser
    from edge.config import ConfigError, load_serve_config

    conf = tmp_path / "edge.toml"
    conf.write_text(
        f'store = ["{tmp_path}/s"]\ncapacity = "1GiB"\n'
        f'[url_signing_keys]\nold = "{OLD}"\nnew = "{NEW}"\n'
    )
    cfg = load_serve_config(build_parser().parse_args(["serve", "--config", str(conf)]))
    assert cfg.url_signing_keys == {"old": OLD.encode(), "new": NEW.encode()}
    conf.write_text(f'store = ["{tmp_path}/s"]\ncapacity = "1GiB"\nurl_signing_keys = {{a="x"}}\n')
    with pytest.raises(ConfigError, match="url_signing_keys"):
        load_serve_config(build_parser().parse_args(["serve", "--config", str(conf)]))
