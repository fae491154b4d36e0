"""``edgefleet steer check``: a fleet's problems named before it goes live."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT, free_port, make_catalog
from steer_fleet import SECRET, start_appliance


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", "steer", "check", "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


def box(name: str, port: int, site: str, prefixes: list[str], coords: bool = True) -> str:
    where = "latitude = 52.0\nlongitude = 4.0\n" if coords else ""
    return (
        f'[[appliance]]\nid = "{name}"\nurl = "http://127.0.0.1:{port}"\nsite = "{site}"\n'
        f"{where}prefixes = {prefixes!r}\n".replace("'", '"')
    )


def test_a_sound_fleet_passes(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    make_catalog(origin)
    port = free_port()
    app = start_appliance(tmp_path, "a1", origin, port)
    try:
        config = tmp_path / "steer.toml"
        config.write_text(
            f'url_signing_keys = {{k1 = "{SECRET}"}}\n'
            + box("a1", port, "ams", ["10.0.0.0/8"])
            # nested prefixes are fine; a box without coordinates takes its site's
            + box("a2", free_port(), "ams", ["10.1.0.0/16"], coords=False)
        )
        out = check(config)
    finally:
        app.stop()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "sound (2 appliances in 1 sites)" in out.stdout
    assert "problem" not in out.stdout
    assert "appliance 'a2'" in out.stdout and "did not answer" in out.stdout  # said, not failed


def test_every_problem_is_named(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    make_catalog(origin)
    port = free_port()
    app = start_appliance(tmp_path, "a1", origin, port)  # holds k1=SECRET
    try:
        config = tmp_path / "steer.toml"
        config.write_text(
            'url_signing_keys = {k9 = "another-secret-0123456789"}\n'
            + box("a1", port, "ams", ["10.0.0.0/8"])
            + box("f1", free_port(), "fra", ["10.0.0.0/8"])
            + box("lost", free_port(), "nowhere", [], coords=False)
            + box("f1", free_port(), "fra", [])
        )
        out = check(config)
        # the same file, keys aside, once the ids and sites are right
        config.write_text(
            'url_signing_keys = {k9 = "another-secret-0123456789"}\n'
            + box("a1", port, "ams", ["10.0.0.0/8"])
        )
        keys = check(config)
    finally:
        app.stop()
    assert out.returncode == 1, out.stdout + out.stderr
    problems = [line for line in out.stdout.splitlines() if line.startswith("problem: ")]
    text = "\n".join(problems)
    assert "'f1' is configured twice" in text
    assert "'lost' has no latitude/longitude" in text and "'nowhere'" in text
    assert "prefix 10.0.0.0/8 is announced by appliances of different sites" in text
    assert "site 'ams': a1" in text and "site 'fra': f1" in text
    assert keys.returncode == 1
    assert "problem: appliance 'a1' does not accept steering's signing key 'k9'" in keys.stdout


def test_an_appliance_that_wants_tokens_steering_does_not_sign(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    port = free_port()
    app = start_appliance(tmp_path, "a1", origin, port)
    try:
        config = tmp_path / "steer.toml"
        config.write_text(box("a1", port, "ams", []))
        out = check(config)
    finally:
        app.stop()
    assert out.returncode == 1
    assert "'a1' requires signed URLs but steering has no url_signing_keys" in out.stdout


def test_an_unreadable_file_exits_2(tmp_path: Path) -> None:
    out = check(tmp_path / "missing.toml")
    assert out.returncode == 2 and "cannot read" in out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[[appliance]\n")
    out = check(bad)
    assert out.returncode == 2 and "not valid TOML" in out.stderr
