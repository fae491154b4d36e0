"""Steering over HTTPS (docs/tls.md): https appliances verified against a CA
file, a certificate that does not verify is a failed poll with its reason, and
curl and ffmpeg play through steering's https redirect with the test CA trusted."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest
import trustme
from conftest import SLICE, Appliance, Service, wait_for
from test_tls import https_port, issue

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(
    FFMPEG is None and not os.environ.get("EDGEFLEET_REQUIRE_FFMPEG"),
    reason="ffmpeg is not installed (apt-get install ffmpeg; .ci/run installs it)",
)
TITLE = "titles/tls/index.m3u8"


class Steering(Service):
    command = "steer"


def make_hls(origin: Path) -> None:
    """Two seconds of a test pattern as HLS (made by ffmpeg), else a tiny playlist."""
    out = origin / "titles" / "tls"
    out.mkdir(parents=True)
    if FFMPEG is None:
        (out / "index.m3u8").write_text("#EXTM3U\n#EXT-X-ENDLIST\n")
        return
    subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x90:rate=10",
         "-t", "2", "-c:v", "mpeg2video", "-f", "hls", "-hls_time", "1",
         "-hls_playlist_type", "vod", str(out / "index.m3u8")],
        check=True, timeout=60,
    )  # fmt: skip


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls-steer")
    ca, stranger = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    issue(ca, tmp / "good.pem", "localhost", "127.0.0.1")
    issue(stranger, tmp / "bad.pem", "localhost", "127.0.0.1")
    make_hls(tmp / "origin")
    apps = {}
    for name in ("good", "bad"):
        apps[name] = Appliance(
            [
                "--tls-listen", "127.0.0.1:0",
                "--tls-cert", str(tmp / f"{name}.pem"),
                "--store", str(tmp / f"store-{name}"),
                "--capacity", "64MiB",
                "--origin", f"file://{tmp / 'origin'}",
                "--slice-size", str(SLICE),
            ]
        ).start()  # fmt: skip
    config = tmp / "steer.toml"
    config.write_text(
        'health_interval = "0.3s"\nhealth_timeout = "0.3s"\nfall = 2\nrise = 1\n'
        + "".join(
            f'[[appliance]]\nid = "{name}"\nurl = "https://127.0.0.1:{https_port(app)}"\n'
            f'site = "{name}"\nlatitude = {50 if name == "good" else 10}\nlongitude = 10.0\n'
            for name, app in apps.items()
        )
    )
    steering = Steering(
        [
            "--config", str(config),
            "--tls-listen", "127.0.0.1:0",
            "--tls-cert", str(tmp / "good.pem"),
            "--ca-file", str(tmp / "ca.pem"),
            "--access-log", str(tmp / "steer-access.log"),
        ]
    ).start()  # fmt: skip
    yield steering, apps, tmp
    assert steering.stop() == 0
    for app in apps.values():
        app.stop()


def fleet_page(steering: Steering, ctx: ssl.SSLContext) -> dict[str, dict]:
    url = f"https://127.0.0.1:{https_port(steering)}/_steer/fleet"
    with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
        return {a["id"]: a for a in json.load(r)["appliances"]}


def test_an_appliance_whose_certificate_does_not_verify_is_down_with_the_reason(fleet) -> None:
    steering, _, tmp = fleet
    ctx = ssl.create_default_context(cafile=str(tmp / "ca.pem"))
    page = wait_for(
        lambda: (
            (p := fleet_page(steering, ctx))["good"]["candidate"] and p["bad"]["last_error"] and p
        )
    )
    assert page["bad"]["state"] == "down" and not page["bad"]["candidate"]
    assert "certificate verify failed" in page["bad"]["last_error"]
    # answers point at the https appliance that verifies, never at the other
    url = f"https://127.0.0.1:{https_port(steering)}/steer?object={TITLE}"
    with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
        doc = json.load(r)
    assert [a["id"] for a in doc["appliances"]] == ["good"]
    assert doc["urls"][0].startswith("https://127.0.0.1:")


def test_curl_follows_the_https_redirect_with_the_test_ca(fleet) -> None:
    steering, _, tmp = fleet
    ctx = ssl.create_default_context(cafile=str(tmp / "ca.pem"))
    wait_for(lambda: fleet_page(steering, ctx)["good"]["candidate"])
    url = f"https://127.0.0.1:{https_port(steering)}/r/{TITLE}"
    ca = str(tmp / "ca.pem")
    out = subprocess.run(
        ["curl", "-sSfL", "--cacert", ca, url], capture_output=True, check=True, timeout=30
    ).stdout
    assert out == (tmp / "origin" / TITLE).read_bytes()
    # steering's access log names the TLS version (curl sends no SNI for an IP)
    wait_for(lambda: '"tls":"TLSv1.3"' in (tmp / "steer-access.log").read_text(), timeout=5)
    # without the CA, curl refuses steering's certificate
    refused = subprocess.run(["curl", "-sS", url], capture_output=True, timeout=30)
    assert refused.returncode != 0


@needs_ffmpeg
def test_ffmpeg_plays_through_the_https_redirect(fleet) -> None:
    steering, _, tmp = fleet
    ctx = ssl.create_default_context(cafile=str(tmp / "ca.pem"))
    wait_for(lambda: fleet_page(steering, ctx)["good"]["candidate"])
    assert FFMPEG is not None
    url = f"https://127.0.0.1:{https_port(steering)}/r/{TITLE}"
    done = subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-xerror", "-tls_verify", "1",
         "-ca_file", str(tmp / "ca.pem"), "-i", url, "-f", "null", "-"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_the_demo_runs_its_fleet_on_https_with_a_throwaway_ca(tmp_path: Path) -> None:
    from test_demo import Demo

    d = Demo(tmp_path, "--tls", "--workdir", str(tmp_path / "w"), "--titles", "1",
             "--duration", "4", "--synthetic")  # fmt: skip
    try:
        ca = d.state["ca_file"]
        assert d.steer.startswith("https://")
        assert all(a["url"].startswith("https://") for a in d.state["appliances"])
        # the peers' fill came over https, verified against the demo's CA
        report = json.loads((tmp_path / "w" / "isp-a-2" / "fill-report.json").read_text())
        assert list(report["added"]["from"]) == [f"peer {d.appliance('isp-a-1')['url']}"]
        out = subprocess.run(
            ["curl", "-sSfL", "--cacert", ca, d.state["play"][0]],
            capture_output=True, check=True, timeout=30,
        ).stdout  # fmt: skip
        assert out.startswith(b"#EXTM3U")
    finally:
        assert d.stop() == 0, d.log.read_text()
