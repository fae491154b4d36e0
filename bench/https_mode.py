"""``serve_vs_nginx.py --https``: edgefleet's HTTPS against nginx's, same files, same core.

Both serve one ECDSA P-256 certificate made here, TLS 1.2 and 1.3
(``ssl_protocols TLSv1.2 TLSv1.3``), session tickets on and OpenSSL's
built-in per-process session cache on both sides (nginx
``ssl_session_cache builtin``), one worker pinned to ``--server-cpu``; wrk
(one thread, ``--client-cpu``) speaks TLS 1.3 to both. Where the kernel has no
``tls`` module, both are userland TLS. Scenarios, in turns (edgefleet, nginx,
...) so drift hits both alike:

- ``range``: 64 KiB ``Range`` requests at random offsets of 2 MiB segments;
- ``small``: full GETs of 1 KiB objects, keep-alive;
- ``handshake``: a 1 KiB object per new TLS connection (``Connection: close``):
  new connections per second, whatever resumption wrk does on both alike.

For each: requests/s, the server's CPU per request (user + system from
/proc/PID/stat over the requests wrk completed), and the ratio edgefleet/nginx
against its target. Kept apart from the plain-HTTP harness on purpose.
"""

from __future__ import annotations

import datetime as dt
import http.client
import re
import ssl
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import HOST, MIB, Server, cpu_ticks, log, pinned, spawn_edgefleet, start_nginx

SEGMENTS, SMALL = 16, 500


@dataclass(frozen=True)
class TlsScenario:
    name: str
    title: str
    connections: int
    target: float
    headers: str  # Lua table of extra headers
    ranged: bool
    paths: str


SCENARIOS = (
    TlsScenario("range", "64 KiB ranges of 2 MiB segments", 32, 0.8, "{}", True, "segments"),
    TlsScenario("small", "1 KiB objects, keep-alive", 32, 0.6, "{}", False, "small"),
    TlsScenario(
        "handshake",
        "new TLS connection per 1 KiB GET",
        32,
        0.6,
        '{["Connection"] = "close"}',
        False,
        "small",
    ),
)

LUA = """\
local reqs, n = {}, 0
function init(args)
  local paths = {}
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  math.randomseed(tonumber(args[2]))
  for i = 1, 5000 do
    local h = %s
    if args[3] == "1" then
      local a = math.random(0, 2 * 1048576 - 65536)
      h["Range"] = "bytes=" .. a .. "-" .. (a + 65535)
    end
    reqs[i] = wrk.format("GET", paths[math.random(#paths)], h)
  end
  n = 5000
end
function request() return reqs[math.random(n)] end
"""


def make_cert(work: Path) -> Path:
    """A self-signed ECDSA P-256 certificate and key for 127.0.0.1, in one PEM."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), False
        )
        .sign(key, hashes.SHA256())
    )
    path = work / "bench-tls.pem"
    pem = serialization.Encoding.PEM
    path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + cert.public_bytes(pem)
    )
    return path


def make_files(work: Path) -> dict[str, Path]:
    import random

    rng = random.Random(7)
    lists = {"segments": work / "segments.txt", "small": work / "small.txt"}
    seg, small = [], []
    for i in range(SEGMENTS):
        p = work / "origin" / "tls" / f"seg_{i:03d}.m4s"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(2 * MIB))
        seg.append(f"/tls/seg_{i:03d}.m4s")
    for i in range(SMALL):
        p = work / "origin" / "tls" / "small" / f"o_{i:04d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(1024))
        small.append(f"/tls/small/o_{i:04d}.bin")
    lists["segments"].write_text("\n".join(seg) + "\n")
    lists["small"].write_text("\n".join(small) + "\n")
    return lists


def start_servers(
    args: Any, work: Path, cert: Path
) -> tuple[tuple[Server, int], tuple[Server, int]]:
    """(edgefleet, its TLS port), (nginx, its TLS port); edgefleet warmed over plain HTTP."""
    from benchlib import free_port

    store = work / "store-tls"
    cmd = [
        args.edgefleet, "serve", "--listen", f"{HOST}:0", "--tls-listen", f"{HOST}:0",
        "--tls-cert", str(cert), "--store", str(store), "--capacity", "4GiB",
        "--origin", f"file://{work / 'origin'}", "--workers", "1", "--log-level", "warning",
    ]  # fmt: skip
    ef = spawn_edgefleet("edgefleet", pinned(cmd, args.server_cpu), work / "ef.log", store=store)
    m = re.search(r"https://127\.0\.0\.1:(\d+)", ef.log.read_text())
    assert m, ef.log.read_text()
    port = free_port()
    tls_server = f"""access_log off;
    server {{
        listen {HOST}:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {cert};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        ssl_session_cache builtin;
        root {work}/origin;
    }}"""
    ng = start_nginx(work, "nginx", args.nginx, args.server_cpu, tls_server)
    return (ef, int(m.group(1))), (ng, port)


def warm(server: Server, lists: dict[str, Path]) -> None:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=60)
    for f in lists.values():
        for path in f.read_text().split():
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            assert r.status == 200, (path, r.status)
    conn.close()


def check_same(ports: list[int], lists: dict[str, Path]) -> None:
    """Both answer the same bytes over TLS."""
    ctx = ssl._create_unverified_context()  # our own throwaway certificate
    path = lists["segments"].read_text().split()[0]
    bodies = []
    for port in ports:
        c = http.client.HTTPSConnection(HOST, port, context=ctx, timeout=30)
        c.request("GET", path, headers={"Range": "bytes=1000-70000"})
        bodies.append(c.getresponse().read())
        c.close()
    assert bodies[0] == bodies[1] and len(bodies[0]) == 69001


def run_wrk(args: Any, work: Path, s: TlsScenario, pid: int, port: int, lists: dict) -> dict:
    lua = work / f"tls-{s.name}.lua"
    lua.write_text(LUA % s.headers)
    cmd = [
        args.wrk, "-t1", f"-c{s.connections}", f"-d{int(args.duration or 5)}s",
        "-s", str(lua), f"https://{HOST}:{port}", "--",
        str(lists[s.paths]), "11", "1" if s.ranged else "0",
    ]  # fmt: skip
    before = cpu_ticks(pid)
    out = subprocess.run(
        pinned(cmd, args.client_cpu), capture_output=True, text=True, check=True
    ).stdout
    ticks = cpu_ticks(pid) - before
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{s.name}: {errors.group(1)} error answers:\n{out}")
    import os

    return {"rps": rps, "cpu_us": ticks / os.sysconf("SC_CLK_TCK") / max(done, 1) * 1e6}


def main(args: Any, work: Path, servers: list[Server]) -> int:
    cert = make_cert(work)
    lists = make_files(work)
    (ef, ef_port), (ng, ng_port) = start_servers(args, work, cert)
    servers += [ef, ng]
    warm(ef, lists)
    check_same([ef_port, ng_port], lists)
    rounds = args.rounds or 2
    log(f"https: {rounds} rounds of {args.duration or 5:.0f}s per server and scenario")
    failed = 0
    print(f"{'scenario':34} {'edgefleet r/s':>14} {'nginx r/s':>10} {'ratio':>6} {'target':>6}"
          f" {'ef CPU/req':>11} {'nginx CPU/req':>14}")  # fmt: skip
    for s in args.scenario_list:
        got: dict[str, list[dict]] = {"edgefleet": [], "nginx": []}
        for _ in range(rounds):
            for name, server, port in (("edgefleet", ef, ef_port), ("nginx", ng, ng_port)):
                got[name].append(run_wrk(args, work, s, server.pid, port, lists))
        e = statistics.median(r["rps"] for r in got["edgefleet"])
        n = statistics.median(r["rps"] for r in got["nginx"])
        ec = statistics.median(r["cpu_us"] for r in got["edgefleet"])
        nc = statistics.median(r["cpu_us"] for r in got["nginx"])
        ratio = e / n if n else 0.0
        failed += ratio < s.target
        print(
            f"{s.title:34} {e:14.0f} {n:10.0f} {ratio:6.2f} {s.target:6.1f}"
            f" {ec:9.1f}us {nc:12.1f}us"
        )
    mode = (
        "ktls" if "tls" in Path("/proc/sys/net/ipv4/tcp_available_ulp").read_text() else "userland"
    )
    print(f"TLS: ECDSA P-256, TLS 1.3 from wrk, tickets on both; {mode} on this kernel")
    return 1 if failed else 0
