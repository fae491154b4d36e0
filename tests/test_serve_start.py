"""``edgefleet serve`` start-up against careless configuration: one clear
message and exit status 2 for what can be checked before listening, a stop
(not a restart loop) for workers that cannot start, a warning for origins that
cannot work. Real processes throughout."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SLICE, Appliance

NO_AWS = {
    "AWS_ACCESS_KEY_ID": "",
    "AWS_SECRET_ACCESS_KEY": "",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def serve(tmp: Path, *flags: str, env: dict[str, str] | None = None, timeout: float = 60):  # type: ignore[no-untyped-def]
    """Run ``edgefleet serve`` to its end; (exit status, stderr, seconds)."""
    run_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "edge.cli", "serve", "--listen", "127.0.0.1:0",
         "--store", str(tmp / "store"), "--capacity", "64MiB", *flags],
        cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return out.returncode, out.stderr, time.monotonic() - t0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_access_log_that_cannot_be_opened(tmp_path: Path, workers: str) -> None:
    (tmp_path / "file").write_text("not a directory")
    code, said, _ = serve(
        tmp_path, "--access-log", str(tmp_path / "file" / "access.log"), "--workers", workers
    )
    assert code == 2, said
    assert "--access-log / access_log: cannot open" in said and str(tmp_path / "file") in said
    assert "Traceback" not in said and "listening" not in said


def test_workers_that_die_at_start_stop_the_service(tmp_path: Path) -> None:
    """A dependency that breaks in the workers only (here the file origin's
    aiofiles, imported after the fork): three failed starts per worker, then one
    message and exit status 1, not a restart every half second for ever."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "aiofiles.py").write_text(
        "raise ImportError('aiofiles: undefined symbol (a broken install)')\n"
    )
    env = {"PYTHONPATH": f"{broken}{os.pathsep}{ROOT}"}
    code, said, _ = serve(tmp_path, "--workers", "2", "--origin", f"file://{tmp_path}", env=env)
    assert code == 1, said
    assert "a worker exited 3 times in a row within 10s of its start" in said
    assert said.count("starting another") <= 2 * 2  # at most two restarts a worker
    assert "undefined symbol" in said  # the cause is in the log


def test_origins_that_cannot_work_are_warned_about(tmp_path: Path) -> None:
    app = Appliance(
        [
            "--store", str(tmp_path / "store"), "--capacity", "64MiB",
            "--slice-size", str(SLICE),
            "--origin", f"file://{tmp_path / 'not-mounted'}",
            "--origin", "s3://videos/prefix",
            "--s3-endpoint", "http://127.0.0.1:9",
        ],
        env={**NO_AWS, "AWS_CONFIG_FILE": str(tmp_path / "none"),
             "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")},
    ).start()  # fmt: skip
    try:
        said = "".join(app.stderr)
        assert f"origin file://{tmp_path / 'not-mounted'} cannot work: the directory" in said
        assert "does not exist" in said
        assert "origin s3://videos/prefix cannot work: no S3 credentials" in said
        assert app.get("/_edge/health")[0] == 200  # it serves what it holds meanwhile
        states = {o["url"]: o for o in app.health()["origins"]}
        assert states["s3://videos/prefix"]["state"] == "failing"
        assert states["s3://videos/prefix"]["last_error"].startswith("at start: no S3 credentials")
        assert states[f"file://{tmp_path / 'not-mounted'}"]["state"] == "failing"
    finally:
        app.stop()
