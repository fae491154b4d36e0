"""The ``edgefleet`` command line: each command's help, its errors, ``scrub``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, Appliance, wait_for

from edge.cli import build_parser

SERVE_ONLY = (
    "--listen", "--workers", "--access-log", "--admin-token", "--grace", "--cors-origin",
    "--max-ranges", "--keepalive-timeout", "--negative-ttl", "--breaker-failures",
    "--breaker-cooldown", "--admission", "--request-cache-control",
)  # fmt: skip


def help_of(command: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if hasattr(a, "choices") and a.choices)
    return sub.choices[command].format_help()


def edgefleet(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *argv],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


@pytest.mark.parametrize("command", ["fill", "scrub"])
def test_a_command_lists_only_the_flags_it_reads(command: str) -> None:
    text = help_of(command)
    shown = [flag for flag in SERVE_ONLY if re.search(rf"{flag}\b", text)]
    assert shown == []
    assert "--store" in text and "--index" in text


def test_serve_lists_every_serve_flag() -> None:
    text = help_of("serve")
    assert all(flag in text for flag in SERVE_ONLY)


@pytest.mark.parametrize("command", ["serve", "fill", "scrub", "steer", "demo"])
def test_placeholders_are_readable(command: str) -> None:
    text = help_of(command)
    # argparse's default placeholder is the destination: FILL_MANIFEST, URL_SIGNING_KEYS;
    # no flag may show its own name shouted back as its placeholder
    assert not re.search(r"\bFILL_[A-Z_]+", text)
    assert "URL_SIGNING_KEYS" not in text
    shouted = [
        f"{flag} {value}"
        for flag, value in re.findall(r"(--[a-z0-9-]+) ([A-Z][A-Z0-9_]+)\b", text)
        if value == flag[2:].upper().replace("-", "_")
    ]
    assert shouted == []


def test_fixed_choices_are_listed() -> None:
    serve = help_of("serve")
    assert "--eviction {popularity,lru}" in serve
    assert "--admission {off,doorkeeper}" in serve
    assert "--url-signing-key KID=SECRET" in serve
    assert "--token-in {query,path}" in help_of("steer")


def test_a_bad_number_names_its_flag(tmp_path: Path) -> None:
    out = edgefleet("serve", "--store", str(tmp_path), "--capacity", "1GiB", "--workers", "many")
    assert out.returncode == 2
    assert "--workers / workers" in out.stderr and "'many' is not a whole number" in out.stderr
    assert "int()" not in out.stderr


def test_scrub_a_store_as_the_readme_writes_it(tmp_path: Path, origin_dir: Path, catalog) -> None:
    store = tmp_path / "store"
    app = Appliance(
        ["--store", f"{store}=64MiB", "--origin", f"file://{origin_dir}", "--slice-size", "64KiB"]
    ).start()
    try:
        key = "titles/81234/movie.mp4"
        app.get("/" + key)
        wait_for(lambda: app.health()["store"]["used_bytes"] == len(catalog[key]))
    finally:
        app.stop()
    out = edgefleet("scrub", "--store", str(store))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["slices_checked"] == 5 and report["failures"] == 0


def test_scrub_without_its_index_says_so_and_makes_none(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    elsewhere = tmp_path / "elsewhere.sqlite"
    out = edgefleet("scrub", "--store", str(store), "--index", str(elsewhere))
    assert out.returncode == 2
    assert f"no index at {elsewhere}" in out.stderr and "--index" in out.stderr
    assert not elsewhere.exists() and list(store.iterdir()) == []
    out = edgefleet("scrub", "--store", str(store))
    assert out.returncode == 2 and list(store.iterdir()) == []
