"""``edgefleet demo``: a whole fleet on loopback, until Ctrl-C (docs/demo.md).

Registered through the ``edgefleet.commands`` entry point group. Exit status:
0 after a clean stop, 1 when a part of the fleet could not start, 2 for a bad
option.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge.config import parse_listen
from edge.core.sizes import human_size
from edge.store.files import pid_alive


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="run a whole fleet on loopback: origin, three appliances in two ISPs, "
        "steering, a fill",
        description="Generate a small HLS catalog, start three appliances in two ISPs and a "
        "steering service on loopback, fill the appliances from a manifest, print the URLs "
        "to play, and run until Ctrl-C.",
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="steering's address; the appliances take the next three ports "
        "(port 0: any free ports) (default 127.0.0.1:8080)",
    )
    p.add_argument("--workdir", metavar="DIR", help="keep catalog and stores here (default: temp)")
    p.add_argument(
        "--titles", type=_count, default=4, metavar="N", help="titles in the catalog (default 4)"
    )
    p.add_argument(
        "--duration",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="seconds per title (default 30)",
    )
    p.add_argument(
        "--segment",
        type=_seconds,
        default=2.0,
        metavar="SECONDS",
        help="seconds per segment (default 2)",
    )
    p.add_argument(
        "--synthetic", action="store_true", help="synthetic segments even when ffmpeg is installed"
    )
    p.add_argument(
        "--origin",
        metavar="URL",
        help="s3://bucket/prefix: use (and upload the catalog to) an S3-compatible store",
    )
    p.add_argument("--s3-endpoint", metavar="URL", help="S3 endpoint (default: AWS)")
    p.add_argument("--s3-region", metavar="REGION")
    p.add_argument("--s3-addressing-style", choices=("auto", "path", "virtual"))
    p.add_argument("--no-fill", action="store_true", help="start with empty stores")
    p.add_argument(
        "--tls",
        action="store_true",
        help="run the fleet on HTTPS with a throwaway CA (WORKDIR/pki/ca.pem: trust it)",
    )
    p.add_argument("--state-file", metavar="PATH", help="write what runs where as JSON here")
    p.set_defaults(run=main)


def _count(value: str) -> int:
    n = int(value)
    if not 1 <= n <= 1000:
        raise argparse.ArgumentTypeError("must be between 1 and 1000")
    return n


def _seconds(value: str) -> float:
    s = float(value)
    if not 0.5 <= s <= 3600:
        raise argparse.ArgumentTypeError("must be between 0.5 and 3600 seconds")
    return s


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, _frame: object) -> None:
        self.requested = True

    def wanted(self) -> bool:
        return self.requested


def main(args: argparse.Namespace) -> int:
    from demo.fleet import DemoError

    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        print(f"edgefleet demo: --listen: {exc}", file=sys.stderr)
        return 2
    if args.origin is not None and urlsplit(args.origin).scheme != "s3":
        print("edgefleet demo: --origin: give s3://bucket/prefix", file=sys.stderr)
        return 2
    if args.segment > args.duration:
        print("edgefleet demo: --segment: longer than --duration", file=sys.stderr)
        return 2
    stop = _Stop()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    temp = None
    if not args.workdir:
        sweep_stale_temp_dirs()
        temp = tempfile.mkdtemp(prefix=TEMP_PREFIX)
        (Path(temp) / OWNER_FILE).write_text(f"{os.getpid()}\n")
    workdir = Path(args.workdir or temp or ".").resolve()
    try:
        return _run(args, workdir, host, port, stop)
    except DemoError as exc:
        hint = " (--workdir DIR keeps every part's log)" if temp is not None else ""
        print(f"edgefleet demo: {exc}{hint}", file=sys.stderr)
        return 1
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


TEMP_PREFIX = "edgefleet-demo-"
OWNER_FILE = "demo.pid"


def sweep_stale_temp_dirs(tmp: str | None = None) -> list[str]:
    """Remove the temp directories of demos that were killed (SIGKILL leaves
    no chance to clean up): ours carry the owner's pid; a directory whose owner
    is gone is removed, one without the file or with a live owner is left."""
    removed = []
    for d in Path(tmp or tempfile.gettempdir()).glob(TEMP_PREFIX + "*"):
        try:
            pid = int((d / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        if pid_alive(pid):  # still running (or another user's)
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(str(d))
    return removed


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _run(args: argparse.Namespace, workdir: Path, host: str, port: int, stop: _Stop) -> int:
    from demo.fleet import Child, layout, stop_all

    workdir.mkdir(parents=True, exist_ok=True)
    objects, kind, origin, s3 = _catalog(args, workdir)
    lay = layout(workdir, host, port, origin, sum(o.size for o in objects))
    if args.tls:
        from dataclasses import replace

        from demo.pki import make_pki

        lay = replace(lay, tls=make_pki(workdir / "pki", host))
        _say(f"edgefleet demo: HTTPS with a throwaway CA: trust {lay.tls[0]}")
    children: list[Child] = []
    steer: list[Child] = []
    try:
        urls = _start_fleet(lay, s3, children, steer, stop)
        fills = {} if args.no_fill else _fill(lay, objects, urls, stop)
        _wait_for_steering(steer[0].url, urls, stop, lay.tls[0] if lay.tls else None)
        if stop.wanted():
            return 0
        state = _state(lay, children, steer[0], fills, objects, kind)
        if args.state_file:
            Path(args.state_file).write_text(json.dumps(state, indent=2) + "\n")
        _print_table(state)
        _watch([*children, *steer], stop)
        _say("edgefleet demo: stopping ...")
        return 0
    finally:
        # steering first, so no player is sent to an appliance that is going away
        stop_all(steer + children)
        if steer or children:
            _say("edgefleet demo: stopped")


def _catalog(args: argparse.Namespace, workdir: Path) -> tuple[Any, str, str, dict[str, str]]:
    """Generate the titles (uploaded to ``--origin`` when given): the objects,
    what kind of segments they are, the origin URL and its S3 settings."""
    from demo.catalog import generate
    from demo.fleet import DemoError

    origin_dir = workdir / "origin"
    t0 = time.monotonic()
    _say(f"edgefleet demo: generating {args.titles} titles in {origin_dir} ...")
    try:
        objects, kind = generate(
            origin_dir, args.titles, args.duration, args.segment, args.synthetic
        )
    except (OSError, RuntimeError) as exc:
        raise DemoError(f"catalog: {exc}") from None
    _say(
        f"edgefleet demo: catalog: {len(objects)} objects, "
        f"{human_size(sum(o.size for o in objects))} "
        f"({kind} segments, {time.monotonic() - t0:.1f}s)"
    )
    s3 = {n: getattr(args, n) for n in ("s3_endpoint", "s3_region", "s3_addressing_style")}
    s3 = {n: v for n, v in s3.items() if v}
    if args.origin:
        _say(f"edgefleet demo: uploading the catalog to {args.origin} ...")
        try:
            sent = asyncio.run(_upload(args.origin, origin_dir, objects, s3))
        except Exception as exc:  # botocore's errors are many; each names the problem
            raise DemoError(f"--origin {args.origin}: {exc}") from None
        _say(f"edgefleet demo: {sent} objects uploaded, {len(objects) - sent} already there")
    return objects, kind, args.origin or origin_dir.as_uri(), s3


def _start_fleet(
    lay: Any, s3: dict[str, str], children: list[Any], steer: list[Any], stop: _Stop
) -> dict[str, str]:
    """Start the appliances, then steering with their URLs; the children are
    appended to ``children`` and ``steer`` as they start (so they are stopped
    whatever happens next). The appliances' URLs by name."""
    from demo.fleet import appliance_toml, spawn, steer_toml, wait_listening

    for a in lay.appliances:
        d = lay.dir(a.name)
        (d / "store").mkdir(parents=True, exist_ok=True)  # a store root must exist
        (d / "edge.toml").write_text(appliance_toml(lay, a, s3))
        child = spawn(a.name, ["serve", "--config", str(d / "edge.toml")], d / "serve.log")
        child.details = {"isp": a.isp, "site": a.site, "capacity": a.capacity}
        children.append(child)
    urls = {child.name: wait_listening(child, stop.wanted) for child in children}
    (lay.workdir / "steer.toml").write_text(steer_toml(lay, urls))
    cmd = ["steer", "--config", str(lay.workdir / "steer.toml")]
    steer.append(spawn("steer", cmd, lay.workdir / "steer.log"))
    wait_listening(steer[0], stop.wanted)
    return urls


def _watch(children: list[Any], stop: _Stop) -> None:
    """Until asked to stop: report a part that exits; the rest keep running."""
    while not stop.wanted():
        for c in children:
            if c.exited is None and c.proc.poll() is not None:
                c.exited = c.proc.returncode
                _say(
                    f"edgefleet demo: {c.name} exited ({_how(c.exited)}); the rest keep "
                    f"running (its log: {c.log})"
                )
        time.sleep(0.2)


def _fill(lay: Any, objects: Any, urls: dict[str, str], stop: _Stop) -> dict[str, Any]:
    import subprocess

    from demo.fleet import DemoError, edgefleet, manifest_lines, tail

    manifest = lay.workdir / "manifest.jsonl"
    manifest.write_text(manifest_lines(objects))
    out: dict[str, Any] = {}
    for a in lay.appliances:
        if stop.wanted():
            break
        d = lay.dir(a.name)
        cmd = ["fill", "--config", str(d / "edge.toml"), "--manifest", str(manifest), "--now"]
        cmd += ["--report", str(d / "fill-report.json")]
        if a.peer:
            cmd += ["--peer", urls[a.peer]]
        with open(d / "fill.log", "ab") as log:
            done = subprocess.run(edgefleet(*cmd), stdout=subprocess.DEVNULL, stderr=log)
        if stop.wanted():  # Ctrl-C reached the fill too: it stopped cleanly
            break
        if done.returncode != 0:
            raise DemoError(
                f"the fill of {a.name} failed ({done.returncode}): {tail(d / 'fill.log')}"
            )
        report = json.loads((d / "fill-report.json").read_text())
        out[a.name] = report
        _say(f"edgefleet demo: filled {a.name}: {_fill_summary(report)}")
    return out


def _wait_for_steering(
    steer: str, urls: dict[str, str], stop: _Stop, ca: Path | None, timeout: float = 15.0
) -> None:
    """Until steering sees every appliance up and knows all it holds (its next polls)."""
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=str(ca)) if ca else None

    def get(url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=5, context=context) as r:
            return bytes(r.read())

    try:
        held = {
            name: sum(1 for line in get(f"{url}/_edge/inventory").splitlines() if line.strip())
            for name, url in urls.items()
        }
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not stop.wanted():
            fleet = json.loads(get(f"{steer}/_steer/fleet"))["appliances"]
            seen = {a["id"]: (a["state"], (a.get("inventory") or {}).get("keys")) for a in fleet}
            if all(seen.get(name) == ("up", n) for name, n in held.items()):
                return
            time.sleep(0.2)
    except (OSError, ValueError) as exc:
        _say(f"edgefleet demo: cannot compare steering's view with the appliances: {exc}")
        return
    _say("edgefleet demo: steering has not seen every appliance's content yet; going on")


def _how(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"status {code}"


def _added(report: dict[str, Any]) -> int:
    return int(report.get("added", {}).get("objects", 0))


def _fill_summary(report: dict[str, Any]) -> str:
    added = report.get("added", {})
    sources = ", ".join(
        f"{human_size(n)} from {src}" for src, n in sorted(added.get("from", {}).items())
    )
    plan = report.get("plan", {})
    covered = plan.get("demand_covered")
    text = f"{added.get('objects', 0)} objects"
    if sources:
        text += f", {sources}"
    if covered is not None:
        text += f"; covers {float(covered):.0%} of the predicted demand"
    return text


def _state(
    lay: Any, children: list[Any], steer: Any, fills: dict[str, Any], objects: Any, kind: str
) -> dict[str, Any]:
    titles = sorted({o.key.rsplit("/", 1)[0] for o in objects if o.key.endswith("master.m3u8")})
    return {
        "workdir": str(lay.workdir),
        "origin": lay.origin,
        "ca_file": str(lay.tls[0]) if lay.tls else None,  # trust it to play over HTTPS
        "catalog": {"objects": len(objects), "bytes": sum(o.size for o in objects), "kind": kind},
        "steer": {
            "url": steer.url,
            "pid": steer.proc.pid,
            "log": str(steer.log),
            "config": str(lay.workdir / "steer.toml"),
        },
        "appliances": [
            {
                "name": c.name,
                "url": c.url,
                "pid": c.proc.pid,
                **c.details,
                "config": str(lay.dir(c.name) / "edge.toml"),
                "log": str(c.log),
                "access_log": str(lay.dir(c.name) / "access.log"),
                "filled": _added(fills.get(c.name, {})),
                "held": _added(fills.get(c.name, {}))
                + fills.get(c.name, {}).get("plan", {}).get("keep", {}).get("objects", 0),
            }
            for c in children
        ],
        "play": [f"{steer.url}/r/{t}/master.m3u8" for t in titles],
        "players": f"{as_typed('locust')} -f {as_typed_path(LOCUSTFILE)} --host {steer.url}",
    }


LOCUSTFILE = Path(__file__).resolve().parent.parent / "bench" / "locustfile.py"


def as_typed(name: str, bindir: Path | None = None, cwd: Path | None = None) -> str:
    """A command installed beside this Python as the user can type it here: its
    bare name when the shell finds this very one, else its path (relative under
    the current directory: ``.venv/bin/locust`` after ``python -m venv .venv``)."""
    bindir = bindir or Path(sys.executable).parent  # not resolved: the venv's own bin
    beside = bindir / name
    if not beside.exists():
        return name
    found = shutil.which(name)
    if found is not None and Path(found).resolve() == beside.resolve():
        return name
    return as_typed_path(beside, cwd)


def as_typed_path(path: Path, cwd: Path | None = None) -> str:
    """``path`` relative to the current directory when under it, else absolute."""
    try:
        return str(path.relative_to(cwd or Path.cwd()))
    except ValueError:
        return str(path)


def _print_table(state: dict[str, Any]) -> None:
    rows = [("steer", "steering", state["steer"]["url"], state["steer"]["pid"], "", "")]
    for a in state["appliances"]:
        rows.append(
            (a["name"], f"{a['isp']} site {a['site']}", a["url"], a["pid"],
             human_size(a["capacity"]), f"{a['held']} objects")
        )  # fmt: skip
    out = ["", "edgefleet demo: the fleet is up", ""]
    out.append(f"  {'name':10} {'role':18} {'url':26} {'pid':>7}  {'store capacity':>14}  holds")
    for name, role, url, pid, capacity, held in rows:
        out.append(f"  {name:10} {role:18} {url:26} {pid:>7}  {capacity:>14}  {held}")
    ca = state.get("ca_file")
    curl = f"curl --cacert {ca}" if ca else "curl"
    ffplay = f"ffplay -ca_file {ca} -tls_verify 1" if ca else "ffplay"
    out += [
        "",
        f"  origin   {state['origin']}",
        f"  workdir  {state['workdir']} (configs, stores, logs)",
        *([f"  CA       {ca} (throwaway: trust it in the player)"] if ca else []),
        "",
        "Play a title (steering redirects to the nearest appliance that holds it):",
        f"  {ffplay} {state['play'][0]}",
        f"  {curl} -sL {state['play'][0]}",
        f"Ask steering:   {curl} '{state['steer']['url']}/steer?object="
        f"{state['play'][0].split('/r/', 1)[1]}'",
        f"Fleet state:    {curl} {state['steer']['url']}/_steer/fleet",
        f"Players:        {state['players']}",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(out), flush=True)


async def _upload(url: str, origin_dir: Path, objects: Any, s3: dict[str, str]) -> int:
    """Put the catalog into the bucket, skipping objects already there with the same size."""
    from edge.origin import OriginSettings
    from edge.origin.s3 import S3Origin

    origin = S3Origin(url, OriginSettings(**s3))  # type: ignore[arg-type]
    try:
        client = await origin.client()
        sent = 0
        for o in objects:
            held = await origin.head(o.key)
            if held is not None and held.size == o.size:
                continue
            body = (origin_dir / o.key).read_bytes()
            await client.put_object(Bucket=origin.bucket, Key=origin.object_key(o.key), Body=body)
            sent += 1
        return sent
    finally:
        await origin.close()
