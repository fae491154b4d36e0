"""Signing keys in a fleet: reloaded on SIGHUP, and used by appliances and the
fill when they ask a signing parent or peer (they are appliances too)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SLICE, Appliance, wait_for

from edge.core.signing import sign

KEY = "titles/81234/movie.mp4"
A = "first-secret-0123456789"
B = "second-secret-0123456789"


def signed(key: str, kid: str, secret: str) -> str:
    return f"/{key}?token={sign(key, kid, secret.encode(), int(time.time()) + 600)}"


def config(path: Path, store: Path, origin: str, keys: dict[str, str], extra: str = "") -> Path:
    table = ", ".join(f'{kid} = "{secret}"' for kid, secret in keys.items())
    path.write_text(
        f'origin = "{origin}"\nslice_size = {SLICE}\nurl_signing_keys = {{ {table} }}\n{extra}'
        f'[[store]]\npath = "{store}"\ncapacity = "64MiB"\n'
    )
    return path


def hup(app: Appliance) -> None:
    assert app.proc is not None
    os.kill(app.proc.pid, signal.SIGHUP)


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_the_signing_keys(
    tmp_path: Path, origin_dir: Path, catalog: dict[str, bytes], workers: int
) -> None:
    conf = config(tmp_path / "edge.toml", tmp_path / "store", f"file://{origin_dir}", {"a": A},
                  f"workers = {workers}\n")  # fmt: skip
    app = Appliance(["--config", str(conf)]).start()
    try:
        assert app.get(signed(KEY, "a", A))[0] == 200
        assert app.get(signed(KEY, "b", B))[0] == 403
        # rotation: the new key beside the old, then the old one gone
        config(conf, tmp_path / "store", f"file://{origin_dir}", {"a": A, "b": B},
               f"workers = {workers}\n")  # fmt: skip
        hup(app)
        # every worker answers with the new key (the port spreads connections)
        wait_for(lambda: all(app.get(signed(KEY, "b", B))[0] == 200 for _ in range(8)))
        assert app.get(signed(KEY, "a", A))[0] == 200
        config(conf, tmp_path / "store", f"file://{origin_dir}", {"b": B},
               f"workers = {workers}\n")  # fmt: skip
        hup(app)
        wait_for(lambda: all(app.get(signed(KEY, "a", A))[0] == 403 for _ in range(8)))
        # a file that no longer loads changes nothing, and says so
        conf.write_text(conf.read_text() + "bogus = 1\n")
        hup(app)
        wait_for(lambda: any("signing keys not reloaded" in line for line in app.stderr))
        assert all(app.get(signed(KEY, "b", B))[0] == 200 for _ in range(8))
        assert any("signing keys reloaded (b)" in line for line in app.stderr)
    finally:
        assert app.stop() == 0


def test_an_appliance_signs_what_it_asks_a_signing_parent(
    tmp_path: Path, origin_dir: Path, catalog: dict[str, bytes]
) -> None:
    parent = Appliance(
        ["--store", f"{tmp_path / 'parent'}=64MiB", "--origin", f"file://{origin_dir}",
         "--slice-size", str(SLICE), "--url-signing-key", f"a={A}",
         "--access-log", str(tmp_path / "parent.log")]
    ).start()  # fmt: skip
    try:
        child = Appliance(
            ["--store", f"{tmp_path / 'child'}=64MiB", "--origin", parent.url(""),
             "--slice-size", str(SLICE), "--url-signing-key", f"a={A}"]
        ).start()  # fmt: skip
        try:
            status, _, body = child.get(signed(KEY, "a", A))
        finally:
            child.stop()
        wait_for(lambda: (tmp_path / "parent.log").read_text().strip())
        time.sleep(1.2)  # the access log is flushed every second
        lines = [json.loads(x) for x in (tmp_path / "parent.log").read_text().splitlines()]
    finally:
        parent.stop()
    assert status == 200 and body == catalog[KEY]
    statuses = {line["status"] for line in lines}
    assert 206 in statuses and 403 not in statuses


def test_the_fill_signs_what_it_asks_a_signing_peer(
    tmp_path: Path, origin_dir: Path, catalog: dict[str, bytes]
) -> None:
    keys = ["titles/81234/movie.mp4", "titles/81234/720p/seg_00002.m4s"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"key": k, "size": len(catalog[k]), "rank": i + 1}) + "\n"
            for i, k in enumerate(keys)
        )
    )

    def fill(store: Path, *flags: str) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "edge.cli", "fill", "--store", f"{store}=64MiB",
             "--slice-size", str(SLICE), "--manifest", str(manifest), "--now",
             "--origin", f"file://{origin_dir}", *flags],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    fill(tmp_path / "peer")
    peer = Appliance(
        ["--store", f"{tmp_path / 'peer'}=64MiB", "--slice-size", str(SLICE),
         "--url-signing-key", f"a={A}"]
    ).start()  # fmt: skip
    try:
        report = fill(tmp_path / "store", "--peer", peer.url(""), "--url-signing-key", f"a={A}")
    finally:
        peer.stop()
    assert report["added"]["from"] == {f"peer {peer.url('')}": sum(len(catalog[k]) for k in keys)}
