"""hls.js in headless Chromium plays HLS from an https page, cross-origin, from
an appliance over HTTPS (docs/tls.md). The page and the appliance have
certificates from a test CA; Chromium trusts exactly those keys
(``--ignore-certificate-errors-spki-list``).

Needs Chromium and the hls.js package (``npm pack hls.js``, or a path to
``hls.min.js`` in ``EDGEFLEET_HLSJS``); skipped with the reason otherwise.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import signal
import ssl
import subprocess
import tarfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import trustme
from conftest import SLICE, Appliance
from test_tls import https_port, issue

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
FFMPEG = shutil.which("ffmpeg")

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>edgefleet hls.js test</title></head>
<body><video id="v" muted autoplay playsinline></video>
<script src="hls.min.js"></script>
<script>
const v = document.getElementById("v");
let said = false;
function report(what) {
  if (said) return;
  said = true;
  fetch("/report?" + new URLSearchParams({what: what, t: v.currentTime}));
}
if (!Hls.isSupported()) report("unsupported");
const hls = new Hls();
hls.on(Hls.Events.ERROR, (e, d) => { if (d.fatal) report("fatal " + d.type + " " + d.details); });
hls.loadSource("SOURCE");
hls.attachMedia(v);
v.play().catch(() => {});
v.addEventListener("timeupdate", () => { if (v.currentTime > 1.5) report("played"); });
</script></body></html>
"""


def hls_js(cache: Path) -> Path:
    given = os.environ.get("EDGEFLEET_HLSJS")
    if given:
        return Path(given)
    if shutil.which("npm") is None:
        pytest.skip("hls.js is not at hand: no npm (or set EDGEFLEET_HLSJS to hls.min.js)")
    done = subprocess.run(
        ["npm", "pack", "hls.js@1", "--pack-destination", str(cache)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    packs = list(cache.glob("hls.js-*.tgz"))
    if done.returncode != 0 or not packs:
        pytest.skip(f"hls.js could not be fetched with npm: {done.stderr.strip()[-200:]}")
    with tarfile.open(packs[0]) as tar:
        tar.extract("package/dist/hls.min.js", cache, filter="data")
    return cache / "package" / "dist" / "hls.min.js"


def spki_hash(pem: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    cert = x509.load_pem_x509_certificates(pem.read_bytes())[0]
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


class PageServer:
    """The https page's own origin: the page, hls.min.js, and /report."""

    def __init__(self, root: Path, cert: Path) -> None:
        self.reports: list[dict[str, list[str]]] = []
        outer = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw) -> None:  # type: ignore[no-untyped-def]
                super().__init__(*a, directory=str(root), **kw)

            def do_GET(self) -> None:
                if self.path.startswith("/report?"):
                    outer.reports.append(parse_qs(urlsplit(self.path).query))
                    self.send_response(204)
                    self.end_headers()
                    return
                super().do_GET()

            def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(cert))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is needed to make the H.264/AAC test stream")
def test_hls_js_plays_from_an_https_page_cross_origin(tmp_path: Path) -> None:
    assert CHROMIUM is not None and FFMPEG is not None
    script = hls_js(tmp_path)
    ca = trustme.CA()
    app_pem = issue(ca, tmp_path / "app.pem", "127.0.0.1")
    page_pem = issue(ca, tmp_path / "page.pem", "localhost")
    title = tmp_path / "origin" / "titles" / "web"
    title.mkdir(parents=True)
    subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x180:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440", "-t", "6", "-c:v", "libx264",
         "-pix_fmt", "yuv420p", "-g", "25", "-c:a", "aac", "-f", "hls", "-hls_time", "1",
         "-hls_playlist_type", "vod", str(title / "index.m3u8")],
        check=True, timeout=120,
    )  # fmt: skip
    app = Appliance(
        [
            "--tls-listen", "127.0.0.1:0", "--tls-cert", str(app_pem),
            "--store", str(tmp_path / "store"), "--capacity", "64MiB",
            "--origin", f"file://{tmp_path / 'origin'}", "--slice-size", str(SLICE),
            "--access-log", str(tmp_path / "access.log"),
        ]
    ).start()  # fmt: skip
    www = tmp_path / "www"
    www.mkdir()
    shutil.copy(script, www / "hls.min.js")
    source = f"https://127.0.0.1:{https_port(app)}/titles/web/index.m3u8"
    (www / "index.html").write_text(PAGE.replace("SOURCE", source))
    page = PageServer(www, page_pem)
    trusted = ",".join(spki_hash(p) for p in (app_pem, page_pem))
    browser = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={tmp_path / 'profile'}",
         f"--ignore-certificate-errors-spki-list={trusted}",
         f"https://localhost:{page.port}/index.html"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not page.reports and time.monotonic() < deadline and browser.poll() is None:
            time.sleep(0.2)
        assert page.reports, "the page reported nothing within 90 s"
        assert page.reports[0]["what"] == ["played"], page.reports
        log = (tmp_path / "access.log").read_text()
        assert '"tls":"TLSv1.3"' in log and ".ts" in log  # segments came over HTTPS
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(browser.pid, signal.SIGKILL)
        browser.wait(10)
        page.close()
        assert app.stop() == 0
