"""edge.config and the CLI: a bad value stops start-up naming the option."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import build_parser
from edge.config import ConfigError, load_serve_config
from edge.core.sizes import parse_duration, parse_size


def load(*argv: str):
    return load_serve_config(build_parser().parse_args(["serve", *argv]))


def test_sizes_and_durations() -> None:
    assert parse_size("2MiB") == 2 * 1024 * 1024
    assert parse_size("50GiB") == 50 * 1024**3
    assert parse_size("1.5TB") == 1_500_000_000_000
    assert parse_size("4096") == 4096
    assert parse_size(4096) == 4096
    assert parse_duration("250ms") == 0.25
    assert parse_duration("1d") == 86400
    for bad in ("2 MiBs", "-1", "lots", True):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_flags(tmp_path: Path) -> None:
    cfg = load(
        "--store", str(tmp_path / "a") + "=1GiB",
        "--store", str(tmp_path / "b"),
        "--capacity", "3GiB",
        "--slice-size", "4MiB",
        "--workers", "2",
        "--origin", "file:///srv/videos",
        "--listen", "0.0.0.0:9000",
        "--origin-pool-size", "16",
        "--header-timeout", "500ms",
    )  # fmt: skip
    assert cfg.root_capacities() == [
        (str(tmp_path / "a"), 1024**3),
        (str(tmp_path / "b"), 2 * 1024**3),
    ]
    assert cfg.slice_size == 4 * 1024 * 1024 and cfg.workers == 2
    assert cfg.listen == ("0.0.0.0", 9000)
    assert cfg.origin_settings().pool_size == 16
    assert cfg.header_timeout == 0.5
    assert load("--store", str(tmp_path), "--capacity", "1GiB").header_timeout == 15.0


def test_toml_with_flag_overrides(tmp_path: Path) -> None:
    conf = tmp_path / "edge.toml"
    conf.write_text(
        f"""
listen = "127.0.0.1:8080"
origin = ["file:///srv/videos"]
slice_size = "1MiB"
workers = 4
header_timeout = "20s"
[[store]]
path = "{tmp_path / "disk1"}"
capacity = "10GiB"
"""
    )
    cfg = load("--config", str(conf), "--workers", "2")
    assert cfg.workers == 2 and cfg.slice_size == 1024 * 1024
    assert cfg.header_timeout == 20.0
    assert cfg.root_capacities() == [(str(tmp_path / "disk1"), 10 * 1024**3)]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--slice-size", "3 parsecs"], "--slice-size / slice_size"),
        (["--slice-size", "1KiB"], "--slice-size / slice_size"),
        (["--workers", "0"], "--workers / workers"),
        (["--listen", "localhost"], "--listen / listen"),
        (["--capacity", "huge"], "--capacity / capacity"),
        (["--origin", "ftp://x"], "--origin / origin"),
        (["--origin", "file://relative"], "--origin / origin"),
        (["--eviction", "random"], "--eviction / eviction"),
        (["--admin-token", "short"], "--admin-token / admin_token"),
        (["--request-cache-control", "most"], "--request-cache-control / request_cache_control"),
        (["--origin-pool-size", "0"], "--origin-pool-size / origin_pool_size"),
        (["--store-backlog", "1MiB"], "--store-backlog / store_backlog"),
        (["--store-backlog", "lots"], "--store-backlog / store_backlog"),
        (["--header-timeout", "0"], "--header-timeout / header_timeout"),
        (["--header-timeout", "0s"], "--header-timeout / header_timeout"),
        (["--header-timeout", "soon"], "--header-timeout / header_timeout"),
        (["--tls-handshake-timeout", "0s"], "--tls-handshake-timeout / tls_handshake_timeout"),
    ],
)
def test_bad_values_name_the_option(tmp_path: Path, argv: list[str], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("/", "/")):
        load("--store", str(tmp_path), "--capacity", "1GiB", *argv)


def test_missing_store_and_capacity(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no store"):
        load()
    with pytest.raises(ConfigError, match="capacity"):
        load("--store", str(tmp_path))


def test_unknown_toml_key(tmp_path: Path) -> None:
    conf = tmp_path / "edge.toml"
    conf.write_text('slice_sise = "2MiB"\n')
    with pytest.raises(ConfigError, match="unknown option 'slice_sise'"):
        load("--config", str(conf))
    conf.write_text("not toml [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load("--config", str(conf))


def test_cli_exits_2_with_one_clear_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edge.cli", "serve", "--store", str(tmp_path), "--capacity",
         "1GiB", "--slice-size", "banana"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert "--slice-size / slice_size" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_reports_a_busy_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "edge.cli", "serve", "--store", str(tmp_path), "--capacity",
             "1GiB", "--listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert out.returncode != 0
    assert "--listen" in out.stderr and "Traceback" not in out.stderr


def test_the_example_configuration_loads() -> None:
    example = Path(__file__).resolve().parent.parent / "deploy" / "edge.toml"
    cfg = load("--config", str(example))
    assert cfg.workers == 4 and len(cfg.store) == 2 and cfg.origin
    assert all(cap > 0 for _, cap in cfg.root_capacities())


def test_a_key_after_a_store_table_is_explained(tmp_path: Path) -> None:
    conf = tmp_path / "edge.toml"
    conf.write_text(f'[[store]]\npath = "{tmp_path}"\ncapacity = "1GiB"\nworkers = 2\n')
    with pytest.raises(ConfigError, match="before the first"):
        load("--config", str(conf))
