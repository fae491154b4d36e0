"""deploy/: the systemd units start on a fresh box.

A fresh Debian box has no /var/lib/GeoIP, maybe no /srv/edgefleet, and
``ProtectSystem=strict`` makes everything read-only that the unit does not
open up: a path the sandbox names must be optional (``-``) or the unit fails
with 226/NAMESPACE, and every file the example configurations write must be
writable inside the sandbox. ``systemd-analyze verify`` checks the units'
syntax where systemd is installed.
"""

from __future__ import annotations

import itertools
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT

DEPLOY = ROOT / "deploy"
UNITS = sorted(DEPLOY.glob("*.service")) + sorted(DEPLOY.glob("*.timer"))
SANDBOX_PATHS = ("ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "ExecPaths")


def settings(unit: Path) -> dict[str, list[str]]:
    """Each key's values (a key may repeat; continued lines are joined)."""
    text = unit.read_text().replace("\\\n", " ")
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def writable(unit: dict[str, list[str]]) -> list[str]:
    dirs = [f"/var/lib/{d}" for v in unit.get("StateDirectory", []) for d in v.split()]
    dirs += [f"/var/log/{d}" for v in unit.get("LogsDirectory", []) for d in v.split()]
    dirs += [p.lstrip("-") for v in unit.get("ReadWritePaths", []) for p in v.split()]
    if unit.get("PrivateTmp") == ["true"]:
        dirs.append("/tmp")
    return dirs


def written_by(name: str, unit: dict[str, list[str]]) -> list[str]:
    """The files the unit's command writes, from the example configurations."""
    edge = tomllib.loads((DEPLOY / "edge.toml").read_text())
    steer = tomllib.loads((DEPLOY / "steer.toml").read_text())
    store = [r["path"] for r in edge["store"]] + [edge["index"]]
    argv = shlex.split(unit["ExecStart"][0])
    flags = {a: b for a, b in itertools.pairwise(argv) if a.startswith("--")}
    if name == "edgefleet-fill.service":
        return [*store, flags["--report"], flags["--metrics-file"]]
    return {
        "edgefleet-serve.service": [*store, edge["access_log"]],
        "edgefleet-steer.service": [steer["access_log"]],
        "edgefleet-scrub.service": store,
    }[name]


@pytest.mark.parametrize("path", [u for u in UNITS if u.suffix == ".service"], ids=lambda p: p.name)
def test_the_sandbox_lets_the_service_start_and_write(path: Path) -> None:
    unit = settings(path)
    for key in SANDBOX_PATHS:
        for value in unit.get(key, []):
            required = [p for p in value.split() if not p.startswith("-")]
            assert required == [], f"{key}: a missing path fails the unit (226/NAMESPACE): use -"
    if unit.get("ProtectSystem") == ["strict"]:
        dirs = writable(unit)
        for target in written_by(path.name, unit):
            assert any(target == d or target.startswith(d.rstrip("/") + "/") for d in dirs), (
                f"{target} is read-only under ProtectSystem=strict"
            )


def test_the_service_user_comes_from_sysusers() -> None:
    conf = (DEPLOY / "sysusers.d/edgefleet.conf").read_text()
    users = {
        line.split()[1] for line in conf.splitlines() if line.strip() and line.split()[0] == "u"
    }
    for path in UNITS:
        for user in settings(path).get("User", []):
            assert user in users
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is not None:
        out = subprocess.run(
            [sysusers, "--dry-run", str(DEPLOY / "sysusers.d/edgefleet.conf")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_systemd_analyze_verifies_every_unit(tmp_path: Path) -> None:
    edgefleet = str(Path(sys.executable).parent / "edgefleet")
    if not Path(edgefleet).exists():
        pytest.skip("the edgefleet command is not installed (pip install -e .)")
    # the units name /usr/local/bin/edgefleet: verify checks the binary is there
    for unit in UNITS:
        text = unit.read_text().replace("/usr/local/bin/edgefleet", edgefleet)
        (tmp_path / unit.name).write_text(text)
    out = subprocess.run(
        ["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.iterdir())],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr
