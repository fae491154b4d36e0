"""The public HTTP caching test suite (cache-tests.fyi) against the appliance,
with nginx's proxy_cache as the peer, in one run.

The suite (npm ``http-cache-tests``, installed on first use under
``--suite-dir``) brings a Node origin server whose answers each test
configures, and a client that sends each test's requests to a cache in front
of that origin and checks what comes back. This script starts the origin, the
appliance (``edgefleet serve --origin http://…``, its own store) and nginx
(``proxy_cache`` with ``proxy_cache_revalidate on``, the suite's own nginx
setup) in front of the same origin, runs the client against both at once and
prints, per cache, how many tests of each kind pass:

- required: what the suite takes as conformance (RFC 9111's MUSTs);
- optimal: what a good cache does where it may choose;
- check: behaviour recorded, neither pass nor fail.

A test passes when its result is ``true`` and every test it depends on passes,
as the suite's own result pages count it. Tests only a browser can run are left
out. Every request goes through the cache: the suite's ``/config/`` PUTs reach
the origin as forwarded unsafe methods, its ``/state/`` GETs as uncacheable
responses. The appliance runs without retries and with a breaker that never
opens: the suite's origin answers 5xx on purpose. ``--json`` writes every
test's result for both caches.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchlib import (
    HOST,
    Server,
    add_executable_args,
    free_port,
    launch_listening,
    log,
    run_in_workdir,
    spawn_edgefleet,
    write_json,
)

from demo.processes import start

SUITE = "http-cache-tests"
SUITE_VERSION = "0.4.5"
KINDS = ("required", "optimal", "check")

NGINX_PEER = """\
worker_processes 1;
daemon off;
master_process off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-tmp/body;
    proxy_temp_path {work}/nginx-tmp/proxy;
    fastcgi_temp_path {work}/nginx-tmp/fastcgi;
    uwsgi_temp_path {work}/nginx-tmp/uwsgi;
    scgi_temp_path {work}/nginx-tmp/scgi;
    proxy_cache_path {work}/nginx-cache levels=1:2 keys_zone=peer:8m max_size=1g inactive=600m;
    server {{
        listen {host}:{port};
        location / {{
            proxy_pass http://{host}:{origin};
            proxy_cache peer;
            proxy_cache_revalidate on;
        }}
    }}
}}
"""

# the list of tests with their kind and dependencies, from the suite's own modules
LIST_TESTS = """
import tests from './tests/index.mjs'
import surrogate from './tests/surrogate-control.mjs'
tests.push(surrogate)
const out = {}
for (const suite of tests) {
  for (const t of suite.tests) {
    out[t.id] = { kind: t.kind || 'required', deps: t.depends_on || [],
                  browser_only: t.browser_only === true }
  }
}
console.log(JSON.stringify(out))
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="cache_tests.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add_executable_args(p)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    p.add_argument(
        "--suite-dir",
        default=str(cache / "edgefleet" / "cache-tests"),
        help="where the suite is installed (npm install on first use)",
    )
    p.add_argument("--node", default=shutil.which("node") or "node", help="node")
    p.add_argument("--npm", default=shutil.which("npm") or "npm", help="npm")
    p.add_argument("--id", default="", help="run this one test, with the suite's dump of it")
    p.add_argument("--only", choices=("edgefleet", "nginx"), help="run one cache, not both")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a client may take")
    p.add_argument("--json", help="write every test's result here")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p.parse_args(argv)


def suite_package(args: argparse.Namespace) -> Path:
    """The installed suite's directory, installed with npm if need be."""
    prefix = Path(args.suite_dir)
    pkg = prefix / "node_modules" / SUITE
    if not (pkg / "package.json").exists():
        prefix.mkdir(parents=True, exist_ok=True)
        log(f"installing {SUITE}@{SUITE_VERSION} into {prefix}")
        subprocess.run(
            [args.npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
             f"{SUITE}@{SUITE_VERSION}"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return pkg


def start_origin(work: Path, pkg: Path, node: str) -> Server:
    """The suite's Node origin; its settings come as npm would pass them."""
    port = free_port()
    env = {
        "npm_config_port": str(port),
        "npm_config_protocol": "http",
        "npm_config_pidfile": str(work / "origin.pid"),
    }
    proc = start("origin", [node, str(pkg / "server" / "server.mjs")], work / "origin.log",
                 parent_death=signal.SIGKILL, env=env, cwd=pkg)  # fmt: skip
    server = Server(**vars(proc), kind="node")
    try:
        server.wait_port(port, 30)
    except BaseException:
        server.stop()
        raise
    server.port = port
    return server


def start_nginx_peer(work: Path, exe: str, origin: int) -> Server:
    port = free_port()
    (work / "nginx-tmp").mkdir()
    conf = work / "nginx.conf"
    conf.write_text(NGINX_PEER.format(work=work, host=HOST, port=port, origin=origin))
    cmd = [exe, "-p", str(work), "-c", str(conf), "-e", str(work / "nginx-error.log")]
    server = launch_listening("nginx", cmd, work / "nginx.log", "nginx", port)
    server.port = port
    return server


def start_appliance(work: Path, exe: str, origin: int) -> Server:
    store = work / "store"
    cmd = [
        exe, "serve", "--listen", f"{HOST}:0", "--store", str(store), "--capacity", "1GiB",
        "--origin", f"http://{HOST}:{origin}", "--workers", "1", "--log-level", "warning",
        "--origin-retries", "0",
        # the suite's origin answers 5xx on purpose, dozens at once: with the
        # default breaker (5 in a row) every test after them would get 502
        "--breaker-failures", "1000000",
    ]  # fmt: skip
    return spawn_edgefleet("edgefleet", cmd, work / "edgefleet.log", store=store)


def run_client(pkg: Path, node: str, base: str, test_id: str, out: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "npm_config_base": base, "npm_config_id": test_id,
           "npm_package_config_id": ""}  # fmt: skip
    with open(out, "wb") as f:
        return subprocess.Popen(
            [node, "--no-warnings", "cli.mjs"], cwd=pkg, env=env, stdout=f,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip


def list_tests(pkg: Path, node: str) -> dict[str, dict[str, Any]]:
    out = subprocess.run(
        [node, "--input-type=module", "-e", LIST_TESTS], cwd=pkg, check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def passes(tests: dict[str, dict[str, Any]], results: dict[str, Any], tid: str) -> bool:
    """The suite's own rule: ``true``, and every test it depends on passes."""
    if results.get(tid) is not True:
        return False
    return all(passes(tests, results, d) for d in tests[tid]["deps"])


def count(tests: dict[str, dict[str, Any]], results: dict[str, Any]) -> dict[str, list[int]]:
    """kind -> [passed, total] over the tests a cache in front of an origin runs."""
    out = {k: [0, 0] for k in KINDS}
    for tid, t in tests.items():
        if t["browser_only"]:
            continue
        out[t["kind"]][1] += 1
        out[t["kind"]][0] += passes(tests, results, tid)
    return out


def bench(args: argparse.Namespace, work: Path, servers: list[Server]) -> int:
    pkg = suite_package(args)
    tests = list_tests(pkg, args.node)
    origin = start_origin(work, pkg, args.node)
    servers.append(origin)
    caches: dict[str, Server] = {}
    if args.only in (None, "nginx"):
        caches["nginx"] = start_nginx_peer(work, args.nginx, origin.port)
        servers.append(caches["nginx"])
    if args.only in (None, "edgefleet"):
        caches["edgefleet"] = start_appliance(work, args.edgefleet, origin.port)
        servers.append(caches["edgefleet"])
    log(f"origin :{origin.port}; " + ", ".join(f"{n} :{s.port}" for n, s in caches.items()))
    clients = {
        name: run_client(pkg, args.node, f"http://{HOST}:{s.port}", args.id, work / f"{name}.out")
        for name, s in caches.items()
    }
    try:
        for proc in clients.values():
            proc.wait(timeout=args.timeout)
    finally:
        for proc in clients.values():
            if proc.poll() is None:
                proc.kill()
    if args.id:
        for name in clients:
            print(f"==== {name}")
            print((work / f"{name}.out").read_text(errors="replace"))
        return 0
    results: dict[str, dict[str, Any]] = {}
    for name in clients:
        text = (work / f"{name}.out").read_text(errors="replace")
        try:
            results[name] = json.loads(text[text.index("{") :])
        except ValueError:
            raise RuntimeError(
                f"{name}: the suite's client printed no results:\n{text[-2000:]}"
            ) from None
    print(f"http-cache-tests {SUITE_VERSION}: tests passed / run, per kind")
    print(f"{'cache':<10} " + " ".join(f"{k:>10}" for k in KINDS))
    counts = {name: count(tests, r) for name, r in results.items()}
    for name, c in counts.items():
        print(f"{name:<10} " + " ".join(f"{c[k][0]:>5}/{c[k][1]:<4}" for k in KINDS))
    failed = 0
    if len(results) == 2:
        missed = sorted(
            tid for tid, t in tests.items()
            if t["kind"] == "required" and not t["browser_only"]
            and passes(tests, results["nginx"], tid)
            and not passes(tests, results["edgefleet"], tid)
        )  # fmt: skip
        print(f"required tests nginx passes and edgefleet does not: {len(missed)}")
        for tid in missed:
            print(f"  {tid}: {results['edgefleet'].get(tid)}")
        failed = len(missed)
    if args.json:
        write_json(args.json, {"suite": f"{SUITE}@{SUITE_VERSION}", "counts": counts,
                               "results": results})  # fmt: skip
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_in_workdir(
        "cache_tests", "edgefleet-cache-tests-", args.keep, lambda w, s: bench(args, w, s)
    )


if __name__ == "__main__":
    sys.exit(main())
