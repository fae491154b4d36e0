"""``edgefleet steer``: the aiohttp server, signals and reloads around the decision.

The handlers turn a request into the decision's input (key, client address,
location), call ``steering.decide`` and ``steering.answer``, count the answer
and write it. The poller keeps the health state current. SIGHUP reloads the
configuration beside the running one and swaps it in; SIGTERM/SIGINT stop
listening, let in-flight requests finish and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import socket
import sys
import time
from typing import Any
from urllib.parse import unquote_plus

from aiohttp import web

from edge import __version__
from edge.keys import KeyError400, check_key, parse_key, split_target
from steering import answer
from steering.config import ConfigError, SteerConfig, load_steer_config
from steering.decide import NO_APPLIANCE, decide
from steering.fleet import Fleet, compile_fleet
from steering.health import UP
from steering.metrics import CONTENT_TYPE, SteerMetrics, registry, render
from steering.poller import Poller
from steering.prefixes import address

log = logging.getLogger("edgefleet.steer")

JSON_TYPE = "application/json"
NO_STORE = {"Cache-Control": "no-store"}


class Steering:
    def __init__(self, args: argparse.Namespace, fleet: Fleet) -> None:
        self.args = args
        self.metrics = SteerMetrics()
        self.poller = Poller(fleet, self.metrics)
        self.registry = registry(self.metrics, self._fleet_gauges)
        self.reload_lock = asyncio.Lock()
        self.loaded_at = time.time()

    # -- plumbing ------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/steer", self.steer)
        app.router.add_get("/r/{tail:.+}", self.redirect)
        app.router.add_get("/_steer/health", self.health)
        app.router.add_get("/_steer/metrics", self.metrics_page)
        app.router.add_get("/_steer/fleet", self.fleet_page)
        return app

    def _fleet_gauges(self) -> list[tuple[str, str, bool, bool]]:
        fleet, state = self.poller.current
        return [
            (a.id, a.site, self.poller.records[a.id].health.state == UP, state.candidate[i])
            for i, a in enumerate(fleet.specs)
            if a.id in self.poller.records
        ]

    async def reload(self) -> None:
        async with self.reload_lock:
            try:
                cfg = load_steer_config(self.args)
                fleet = compile_fleet(cfg)
            except ConfigError as exc:
                self.metrics.reload("error")
                log.error("reload failed, keeping the running configuration: %s", exc)
                return
            if cfg.listen != self.poller.fleet.cfg.listen:
                log.warning("reload: listen changed; it takes effect at the next start")
            await self.poller.swap(fleet)
            self.loaded_at = time.time()
            self.metrics.reload("ok")
            log.info(
                "reloaded: %d appliances, %d sites, %d prefixes",
                len(fleet.specs), len(fleet.sites), fleet.prefix_count,
            )  # fmt: skip

    # -- the decision ---------------------------------------------------------

    def _client(self, request: web.Request, cfg: SteerConfig) -> str:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        addr = peer[0] if isinstance(peer, tuple) else "0.0.0.0"
        if cfg.trusted_proxies:
            return answer.client_address(
                addr, request.headers.get("X-Forwarded-For"), cfg.trusted_proxies
            )
        return addr

    def _answer(self, request: web.Request, key: str, endpoint: str) -> web.Response:
        started = time.perf_counter()
        fleet, state = self.poller.current
        cfg = fleet.cfg
        client = self._client(request, cfg)
        try:
            version, n = address(client)
        except ValueError:
            version, n = 4, 0
        location = fleet.localizer.locate(version, n, client)
        decision = decide(fleet, state, key, location, cfg.answers)
        self.metrics.answer(decision.klass, decision.site)
        now = time.time()
        if decision.klass == NO_APPLIANCE:
            fallback = answer.origin_url(cfg, key)
            if fallback is None:
                resp = self._no_appliance(fleet)
                self.metrics.request(endpoint, 503, time.perf_counter() - started)
                return resp
            urls, expires = [fallback], int(now + cfg.token_ttl)
        else:
            urls, expires = answer.urls(decision, fleet, cfg, client, now)
        if endpoint == "redirect":
            headers = {"Location": urls[0], **NO_STORE}
            if len(urls) > 1:
                headers["Link"] = ", ".join(
                    f"<{u}>; rel=duplicate; pri={n}" for n, u in enumerate(urls[1:], 2)
                )
            resp = web.Response(status=302, headers=headers)
        else:
            doc = answer.document(decision, fleet, urls, expires)
            if decision.klass == NO_APPLIANCE:
                doc["origin"] = True
            resp = web.Response(
                body=json.dumps(doc).encode(), content_type=JSON_TYPE, headers=NO_STORE
            )
        self.metrics.request(endpoint, resp.status, time.perf_counter() - started)
        return resp

    def _no_appliance(self, fleet: Fleet) -> web.Response:
        reasons: dict[str, int] = {}
        for rec in self.poller.records.values():
            why = rec.health.why_not(rec.spec.capacity, fleet.cfg.max_utilization) or "candidate"
            reasons[why] = reasons.get(why, 0) + 1
        summary = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
        return web.Response(
            status=503,
            text=f"503 Service Unavailable: no appliance can serve this object "
            f"({len(fleet.specs)} configured: {summary})\n",
            headers={"Retry-After": "5", **NO_STORE},
        )

    def _bad_request(self, endpoint: str, message: str, status: int = 400) -> web.Response:
        self.metrics.request(endpoint, status, 0.0)
        return web.Response(
            status=status, text=f"{status} Bad Request: {message}\n", headers=NO_STORE
        )

    # -- handlers ------------------------------------------------------------

    async def steer(self, request: web.Request) -> web.Response:
        raw = None
        for part in request.query_string.split("&"):
            if part.startswith("object="):
                raw = part[len("object=") :]
        if not raw:
            return self._bad_request("steer", "give the object key: /steer?object=KEY")
        try:
            key = check_key(unquote_plus(raw, errors="strict"))
        except (KeyError400, UnicodeDecodeError) as exc:
            return self._bad_request("steer", f"object: {exc}")
        return self._answer(request, key, "steer")

    async def redirect(self, request: web.Request) -> web.Response:
        try:
            path, _ = split_target(request.raw_path.encode("latin-1", "replace")[2:])
            key = parse_key(path)
        except (KeyError400, UnicodeEncodeError) as exc:
            return self._bad_request("redirect", str(exc))
        if not key:
            return self._bad_request("redirect", "give the object key: /r/KEY")
        return self._answer(request, key, "redirect")

    async def health(self, request: web.Request) -> web.Response:
        fleet, state = self.poller.current
        up = sum(1 for r in self.poller.records.values() if r.health.state == UP)
        doc = {
            "status": "ok",
            "version": __version__,
            "appliances": len(fleet.specs),
            "sites": len(fleet.sites),
            "up": up,
            "candidates": sum(state.candidate),
            "prefixes": fleet.prefix_count,
            "coverage_zones": fleet.zone_count,
            "config_loaded_at": self.loaded_at,
        }
        return web.json_response(doc, headers=NO_STORE, dumps=_dumps)

    async def metrics_page(self, request: web.Request) -> web.Response:
        body = render(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, **NO_STORE})

    async def fleet_page(self, request: web.Request) -> web.Response:
        return web.json_response({"appliances": self.poller.view()}, headers=NO_STORE, dumps=_dumps)


def _dumps(doc: Any) -> str:
    return json.dumps(doc, indent=1) + "\n"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError as exc:
        s.close()
        raise ConfigError(
            f"--listen / listen: cannot listen on {host}:{port}: {exc.strerror}"
        ) from None
    s.listen(1024)
    s.setblocking(False)
    return s


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_steer_config(args)
        logging.basicConfig(
            level=getattr(logging, cfg.log_level.upper()),
            format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
            stream=sys.stderr,
        )
        fleet = compile_fleet(cfg)
        sock = _bind(*cfg.listen)
    except ConfigError as exc:
        print(f"edgefleet steer: {exc}", file=sys.stderr)
        return 2
    import uvloop

    return uvloop.run(_main(args, fleet, sock))


async def _main(args: argparse.Namespace, fleet: Fleet, sock: socket.socket) -> int:
    loop = asyncio.get_running_loop()
    service = Steering(args, fleet)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        task = asyncio.ensure_future(service.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await service.poller.start()
    runner = web.AppRunner(service.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.SockSite(runner, sock, shutdown_timeout=10.0)
    await site.start()
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    fleet, state = service.poller.current
    print(
        f"edgefleet steer: listening on http://{shown}:{port} "
        f"({len(fleet.specs)} appliances in {len(fleet.sites)} sites, "
        f"{sum(state.candidate)} candidates, {fleet.prefix_count} prefixes)",
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()
    log.info("stopping")
    await runner.cleanup()
    for task in list(reloads):
        task.cancel()
    await service.poller.stop()
    return 0
