"""``edgefleet steer``: the HTTP server, signals and reloads around the decision.

The handler turns a request into the decision's input (key, client address,
location), calls ``steering.decide`` and ``steering.answer``, counts the
answer and writes it. It is served by edge's lean HTTP/1.1 connection layer
(``edge.http``: llhttp through httptools, raw sockets on uvloop), the
same one the appliance's content port uses: aiohttp's server measured about
150 us of CPU per answer on top of the ~35 us the answer itself costs, which
kept one process under the 5,000 answers/s target (docs/steering.md). aiohttp
still polls the appliances (``steering.poller``).

SIGHUP reloads the configuration beside the running one and swaps it in, and
rereads the TLS certificates (docs/tls.md);
SIGTERM/SIGINT stop listening, let in-flight requests finish and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import socket
import sys
import time
from typing import Any

from edge import __version__
from edge.core.keys import BadKey, is_reserved, parse_key, split_target
from edge.http.accesslog import AccessLog
from edge.http.response import DateCache, build_head, cors_lines, text_body
from edge.http.server import (
    ContentServer,
    ListenError,
    after_stop,
    bind_listeners,
    limits,
    socket_url,
    stop_signal,
)
from edge.http.tls import CertError, CertSet
from edge.http.wire import Request, Response
from steering import answer, status
from steering.config import ConfigError, SteerConfig, load_steer_config
from steering.decide import NO_APPLIANCE, decide
from steering.fleet import Fleet, compile_fleet
from steering.health import UP
from steering.metrics import CONTENT_TYPE, SteerMetrics, registry, render
from steering.poller import Poller
from steering.prefixes import address

log = logging.getLogger("edgefleet.steer")

JSON_LINES = b"Content-Type: application/json\r\nCache-Control: no-store\r\n"
TEXT_LINES = b"Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n"
GRACE_SECONDS = 10.0


class Steering:
    """The request handler (``edge.http.wire.Handler``) and the reload logic."""

    def __init__(
        self, args: argparse.Namespace, fleet: Fleet, access_log: AccessLog | None = None
    ) -> None:
        self.args = args
        self.metrics = SteerMetrics()
        self.poller = Poller(fleet, self.metrics)
        self.registry = registry(self.metrics, self._fleet_gauges)
        self.reload_lock = asyncio.Lock()
        self.loaded_at = time.time()
        self.dates = DateCache()
        self.access_log = access_log
        self.pages = {
            "/_steer/health": self.health,
            "/_steer/metrics": self.metrics_page,
            "/_steer/fleet": self.fleet_page,
            "/_steer/status": self.status_page,
        }

    def _fleet_gauges(self) -> list[tuple[str, str, bool, bool]]:
        fleet, state = self.poller.current
        records = self.poller.records
        return [
            (a.id, a.site, records[a.id].health.state == UP, state.candidate[i])
            for i, a in enumerate(fleet.specs)
            if a.id in records
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
            old = self.poller.fleet.cfg
            if (cfg.listen, cfg.tls_listen, cfg.tls_cert) != (
                old.listen,
                old.tls_listen,
                old.tls_cert,
            ):
                log.warning(
                    "reload: listen, tls_listen or tls_cert changed; "
                    "it takes effect at the next start (the certificate files are reread now)"
                )
            await self.poller.swap(fleet)
            settle()
            self.loaded_at = time.time()
            self.metrics.reload("ok")
            log.info(
                "reloaded: %d appliances, %d sites, %d prefixes",
                len(fleet.specs), len(fleet.sites), fleet.prefix_count,
            )  # fmt: skip

    # -- responses -----------------------------------------------------------

    def reply(self, req: Request | None, status: int, lines: bytes, body: bytes = b"") -> Response:
        keep = req is not None and req.keep_alive
        head = build_head(
            status,
            self.dates.refresh(),
            lines + b"Content-Length: %d\r\n" % len(body),
            keep_alive=keep,
            http10=req is not None and req.version == "1.0",
        )
        return Response(status, head, [body] if body else [], body_length=len(body), close=not keep)

    def error(self, req: Request | None, status: int, message: str, extra: bytes = b"") -> Response:
        # a web player reads why it was refused only when its origin is allowed
        cors = cors_lines(self.poller.current[0].cfg.cors_origin)
        return self.reply(req, status, TEXT_LINES + extra + cors, text_body(status, message))

    def finished(self, req: Request, resp: Response, sent: int, now: float) -> None:
        """``now`` is the connection's monotonic clock (``req.started``'s): it
        times the request; the log line's ``time`` is the wall clock's."""
        endpoint = resp.key or "other"
        timed = endpoint in ("steer", "redirect")
        self.metrics.request(endpoint, resp.status, now - req.started if timed else None)
        if self.access_log is not None:
            self.access_log.write(self._log_line(self.access_log, req, resp, now, time.time()))

    @staticmethod
    def _log_line(log: AccessLog, req: Request, resp: Response, now: float, wall: float) -> str:
        """One JSON line (docs/steering.md, Access log)."""
        note: dict[str, Any] = resp.note or {}
        target = req.target.decode("latin-1")
        doc = {
            "time": log.timestamp(wall),
            "client": note.get("client", req.client),
            "method": req.method,
            "key": note.get("key", target.split("?", 1)[0]),
            "status": resp.status,
            "class": note.get("class"),
            "site": note.get("site"),
            "to": note.get("to"),
            "location": note.get("location"),
            "duration_ms": round((now - req.started) * 1000, 3),
        }
        if req.tls is not None:
            doc["tls"], doc["sni"] = req.tls, req.sni
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n"

    # -- dispatch --------------------------------------------------------------

    def handle(self, req: Request) -> Response:
        try:
            path_b, query_b = split_target(req.target)
        except BadKey as exc:
            return self.error(req, exc.status, str(exc))
        if req.method not in ("GET", "HEAD"):
            return self.error(req, 405, f"method {req.method} not allowed", b"Allow: GET, HEAD\r\n")
        if path_b == b"/steer":
            resp = self.steer(req, query_b)
            resp.key = resp.key or "steer"
            return resp
        if path_b.startswith(b"/r/"):
            resp = self.redirect(req, path_b[2:])
            resp.key = resp.key or "redirect"
            return resp
        page = self.pages.get(path_b.decode("latin-1"))
        if page is not None:
            resp = page(req)
            resp.key = "ops"
            return resp
        return self.error(req, 404, "ask for /steer?object=KEY or /r/KEY")

    def steer(self, req: Request, query: bytes) -> Response:
        raw = None
        for part in query.split(b"&"):
            if part.startswith(b"object="):
                raw = part[len(b"object=") :]
        if not raw:
            return self.error(req, 400, "give the object key: /steer?object=KEY")
        return self._object(req, b"/" + raw, "object: ", redirect=False)

    def redirect(self, req: Request, path: bytes) -> Response:
        return self._object(req, path, "", redirect=True)

    def _object(self, req: Request, path: bytes, where: str, redirect: bool) -> Response:
        """The key as the appliance reads a path (``parse_key``: percent-decoded
        once, ``+`` is a plus), in ``/steer?object=`` as in ``/r/``; the
        appliance's own ``_edge/`` namespace is no object."""
        try:
            key = parse_key(path)
        except BadKey as exc:
            return self.error(req, exc.status, f"{where}{exc}")
        if not key:
            return self.error(req, 400, "give the object key: /steer?object=KEY or /r/KEY")
        if is_reserved(key):
            return self.error(req, 400, f"{where}_edge/ is the appliances' own namespace")
        return self.answer(req, key, redirect=redirect)

    # -- the decision ---------------------------------------------------------

    def answer(self, req: Request, key: str, redirect: bool) -> Response:
        fleet, state = self.poller.current
        cfg = fleet.cfg
        client = req.client
        if cfg.trusted_proxies:
            forwarded = req.headers.get(b"x-forwarded-for")
            if forwarded is not None:
                client = answer.client_address(
                    client, forwarded.decode("latin-1"), cfg.trusted_proxies
                )
        try:
            version, n = address(client)
        except ValueError:
            version, n = 4, 0
        location = fleet.localizer.locate(version, n, client)
        decision = decide(fleet, state, key, location, cfg.answers)
        self.metrics.answer(decision.klass, decision.site)
        now = time.time()
        note: dict[str, Any] = {
            "client": client,
            "key": key,
            "class": decision.klass,
            "site": decision.site or None,
            "to": fleet.specs[decision.chosen[0]].id if decision.chosen else None,
            "location": location.source,
        }
        if decision.klass == NO_APPLIANCE:
            fallback = answer.origin_url(cfg, key)
            if fallback is None:
                resp = self._no_appliance(req, fleet)
                resp.note = note
                return resp
            note["to"] = "origin"
            urls, expires = [fallback], int(now + cfg.token_ttl)
        else:
            urls, expires = answer.urls(decision, fleet, cfg, client, now)
        cors = cors_lines(cfg.cors_origin)  # a web player asks from its page's origin
        if redirect:
            lines = f"Location: {urls[0]}\r\nCache-Control: no-store\r\n"
            if len(urls) > 1:
                links = ", ".join(
                    f"<{u}>; rel=duplicate; pri={n}" for n, u in enumerate(urls[1:], 2)
                )
                lines += f"Link: {links}\r\n"
            resp = self.reply(req, 302, lines.encode("latin-1") + cors)
            resp.note = note
            return resp
        doc = answer.document(decision, fleet, urls, expires)
        if decision.klass == NO_APPLIANCE:
            doc["origin"] = True
        resp = self.reply(req, 200, JSON_LINES + cors, json.dumps(doc).encode())
        resp.note = note
        return resp

    def _no_appliance(self, req: Request, fleet: Fleet) -> Response:
        reasons: dict[str, int] = {}
        for rec in self.poller.records.values():
            why = rec.health.why_not(rec.spec.capacity, fleet.cfg.max_utilization) or "candidate"
            reasons[why] = reasons.get(why, 0) + 1
        summary = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
        body = text_body(
            503, f"no appliance can serve this object ({len(fleet.specs)} configured: {summary})"
        )
        cors = cors_lines(fleet.cfg.cors_origin)
        return self.reply(req, 503, TEXT_LINES + b"Retry-After: 5\r\n" + cors, body)

    # -- operational pages ---------------------------------------------------

    def health(self, req: Request) -> Response:
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
        return self.reply(req, 200, JSON_LINES, _dumps(doc))

    def metrics_page(self, req: Request) -> Response:
        lines = f"Content-Type: {CONTENT_TYPE}\r\nCache-Control: no-store\r\n".encode()
        return self.reply(req, 200, lines, render(self.registry))

    def status_page(self, req: Request) -> Response:
        fleet, _ = self.poller.current
        records = list(self.poller.records.values())
        doc = status.document(records, self.metrics.answers, fleet.cfg, time.time())
        if req.target.partition(b"?")[2] == b"format=json":
            return self.reply(req, 200, JSON_LINES, _dumps(doc))
        lines = b"Content-Type: text/html; charset=utf-8\r\nCache-Control: no-store\r\n"
        return self.reply(req, 200, lines, status.render(doc))

    def fleet_page(self, req: Request) -> Response:
        return self.reply(req, 200, JSON_LINES, _dumps({"appliances": self.poller.view()}))


def _dumps(doc: Any) -> bytes:
    return (json.dumps(doc, indent=1) + "\n").encode()


def settle() -> None:
    """The fleet's tables are large and live until the next reload: keep them out
    of the collector's full passes, which would otherwise stall answers."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _bind(host: str, port: int, option: str = "--listen / listen") -> socket.socket:
    try:
        return bind_listeners(host, port)[0]
    except ListenError as exc:
        raise ConfigError(f"{option}: {exc}") from None


class Listening:
    """Steering's sockets: plain HTTP (at most one), HTTPS, and the certificates."""

    def __init__(self, cfg: SteerConfig) -> None:
        self.certs = CertSet(cfg.tls_cert) if cfg.tls_cert else None
        self.plain = _bind(*cfg.listen) if cfg.listen is not None else None
        self.tls = [_bind(h, p, "--tls-listen / tls_listen") for h, p in cfg.tls_listen]

    def banner(self) -> str:
        urls = [socket_url("http", self.plain)] if self.plain is not None else []
        return " and ".join(urls + [socket_url("https", s) for s in self.tls])


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_steer_config(args)
        logging.basicConfig(
            level=getattr(logging, cfg.log_level.upper()),
            format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
            stream=sys.stderr,
        )
        fleet = compile_fleet(cfg)
        access_log = None
        if cfg.access_log:
            try:
                access_log = AccessLog(cfg.access_log)
            except OSError as exc:
                raise ConfigError(
                    f"--access-log / access_log: cannot open {cfg.access_log}: "
                    f"{exc.strerror or exc}"
                ) from None
        sock = Listening(cfg)
    except (ConfigError, CertError) as exc:
        print(f"edgefleet steer: {exc}", file=sys.stderr)
        return 2
    import uvloop

    try:
        return uvloop.run(_main(args, fleet, sock, access_log))
    finally:
        after_stop()
        if access_log is not None:
            access_log.close()


async def _flush_every_second(log: AccessLog) -> None:
    while True:
        await asyncio.sleep(1.0)
        log.flush()


async def _main(
    args: argparse.Namespace, fleet: Fleet, sock: Listening, access_log: AccessLog | None
) -> int:
    loop = asyncio.get_running_loop()
    service = Steering(args, fleet, access_log)
    stop = stop_signal(loop)
    reloads: set[asyncio.Task[None]] = set()
    flusher = asyncio.ensure_future(_flush_every_second(access_log)) if access_log else None

    def on_hup() -> None:
        if access_log is not None:
            access_log.reopen()  # logrotate
        if sock.certs is not None:
            sock.certs.reload()
        task = asyncio.ensure_future(service.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await service.poller.start()
    settle()
    # the connection limits as started: a reload does not change them
    server = ContentServer(
        loop, sock.plain, service, tls_socks=sock.tls, certs=sock.certs, **limits(fleet.cfg)
    )
    server.start()
    fleet, state = service.poller.current
    print(
        f"edgefleet steer: listening on {sock.banner()} "
        f"({len(fleet.specs)} appliances in {len(fleet.sites)} sites, "
        f"{sum(state.candidate)} candidates, {fleet.prefix_count} prefixes)",
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()
    log.info("stopping")
    await server.shutdown(GRACE_SECONDS)
    if flusher is not None:
        flusher.cancel()
    for task in list(reloads):
        task.cancel()
    await service.poller.stop()
    return 0
