"""The appliance's operational endpoints, under the reserved ``/_edge/`` prefix.

- ``GET /_edge/health``: JSON for steering and load balancers (200 when ok,
  503 when draining or failing);
- ``GET /_edge/metrics``: Prometheus text, summed over workers;
- ``GET /_edge/status``: an HTML page for the operator at 3 a.m. (``?format=json``:
  the document it shows; ``edge.appliance.status``);
- ``GET /_edge/verify?key=K&token=T``: whether the token is valid for K (JSON);
- ``GET /_edge/inventory[?prefix=P]``: complete objects, one JSON object a line;
  ``?format=bloom``: the same keys as a Bloom filter (``edge.core.inventory``) with an
  ETag, rebuilt at most once a second, 304 for a matching ``If-None-Match``;
- ``POST /_edge/admin/{drain,undrain,purge,scrub}``: need
  ``Authorization: Bearer <admin_token>``; disabled (403) without a token.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from edge import __version__
from edge.appliance import metrics as m
from edge.appliance.status import Status
from edge.appliance.status import render as render_status
from edge.core import cachepolicy
from edge.core import inventory as inv
from edge.core.keys import BadKey, check_key
from edge.http.wire import Request, Response

if TYPE_CHECKING:
    from edge.appliance.appliance import Appliance

JSON = "application/json"
PURGE_SETTLE_SECONDS = 0.3
BLOOM_MAX_AGE = 1.0  # seconds an inventory filter is reused before it is rebuilt
_STARTED = time.time()


class Ops:
    def __init__(self, app: Appliance, workers: int) -> None:
        self.app = app
        self.workers = workers
        self._bloom: tuple[float, bytes, str] | None = None  # (built at, body, ETag)
        self._bloom_building: asyncio.Future[tuple[float, bytes, str]] | None = None
        self.status_page = Status(app)

    def handle(self, req: Request, key: str, query: bytes) -> Response | Awaitable[Response]:
        app = self.app
        name = key[len("_edge/") :] if key.startswith("_edge/") else ""
        params = {k: v[-1] for k, v in parse_qs(query.decode("latin-1")).items()}
        reads = {
            "health": self.health,
            "metrics": self.metrics,
            "status": self.status,
            "inventory": self.inventory,
            "verify": self.verify,
        }
        if name in reads:
            if req.method not in ("GET", "HEAD"):
                return app.error(req, 405, f"{req.method} not allowed", "Allow: GET, HEAD\r\n")
            return reads[name](req, params)
        if name.startswith("admin/"):
            action = name[len("admin/") :]
            actions = {
                "drain": self.drain,
                "undrain": self.undrain,
                "purge": self.purge,
                "scrub": self.scrub,
            }
            if action not in actions:
                return app.error(req, 404, f"no admin action {action!r}")
            if req.method != "POST":
                return app.error(req, 405, "admin actions take POST", "Allow: POST\r\n")
            denied = self._authorize(req)
            if denied is not None:
                return denied
            return actions[action](req, params)
        return app.error(req, 404, f"no endpoint /{key}")

    def _authorize(self, req: Request) -> Response | None:
        token = self.app.cfg.admin_token
        if not token:
            return self.app.error(req, 403, "admin actions are disabled: set admin_token")
        given = req.headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode(), token.encode()
        ):
            return self.app.error(
                req, 401, "a valid bearer token is required", "WWW-Authenticate: Bearer\r\n"
            )
        return None

    def _reply(self, req: Request, status: int, body: bytes, ctype: str, key: str = "") -> Response:
        lines = (
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nCache-Control: no-store\r\n"
        )
        head = self.app.head(req, status, lines.encode())
        return Response(status, head, [body], body_length=len(body), key=key)

    # -- reads ---------------------------------------------------------------

    def _health_doc(self, live: dict[str, float] | None = None) -> dict[str, Any]:
        """The health document (runs in a thread); ``live``: the live gauges when
        the caller has read the metrics already."""
        app = self.app
        usage = app.store.usage()
        if live is None:
            live = m.live_totals()
        usable = [u for u in usage if not u.failed]
        draining = app.store.get_state("draining") == "1"
        status = "failing" if not usable else "draining" if draining else "ok"
        return {
            "id": app.cfg.id,
            "site": app.cfg.site,
            "status": status,
            "draining": draining,
            "version": __version__,
            "uptime_seconds": round(time.time() - _STARTED, 1),
            "workers": self.workers,
            "store": {
                "used_bytes": sum(u.used for u in usable),
                "capacity_bytes": sum(u.capacity for u in usable),
                "objects": sum(u.objects for u in usable),
                "roots": [
                    {
                        "path": u.path,
                        "used_bytes": u.used,
                        "capacity_bytes": u.capacity,
                        "objects": u.objects,
                        "state": "failed" if u.failed else "ok",
                    }
                    for u in usage
                ],
            },
            "origins": app.origin_states.as_json(),
            "connections": int(live.get("edgefleet_open_connections", 0)),
            "egress_bytes_per_second": round(live.get("edgefleet_egress_bytes_per_second", 0.0)),
        }

    async def health(self, req: Request, params: dict[str, str]) -> Response:
        doc = await self.app.run(self._health_doc)
        tls_status = getattr(self.app, "tls_status", None)  # set by serve with TLS listeners
        if tls_status is not None:
            doc["tls"] = tls_status()
        body = (json.dumps(doc, indent=1) + "\n").encode()
        return self._reply(req, 200 if doc["status"] == "ok" else 503, body, JSON, "_edge/health")

    async def metrics(self, req: Request, params: dict[str, str]) -> Response:
        self.app.metrics.flush()
        body = await self.app.run(m.render, self.app.store)
        return self._reply(req, 200, body, m.CONTENT_TYPE, "_edge/metrics")

    async def status(self, req: Request, params: dict[str, str]) -> Response:
        self.app.metrics.flush()

        def document() -> dict[str, Any]:  # the metrics files read once for both
            totals = m.totals()
            return self.status_page.document(self._health_doc(m.live_of(totals)), totals)

        doc = await self.app.run(document)
        if params.get("format") == "json":
            body = (json.dumps(doc, indent=1) + "\n").encode()
            return self._reply(req, 200, body, JSON, "_edge/status")
        return self._reply(req, 200, render_status(doc), "text/html; charset=utf-8", "_edge/status")

    def verify(self, req: Request, params: dict[str, str]) -> Response:
        """``?key=K&token=T``: would this token let K through? Nothing is read
        or fetched; ``edgefleet steer check`` asks it to learn whether steering
        and the appliance share signing keys."""
        verifier = self.app.verifier
        if verifier is None:
            doc: dict[str, Any] = {"checked": False}
        else:
            token = params.get("token")
            query = f"token={token}" if token is not None else ""
            reason = verifier.check(params.get("key", ""), query, req.client, time.time())
            doc = {"checked": True, "valid": reason is None}
            if reason is not None:
                doc["reason"] = reason
        body = (json.dumps(doc) + "\n").encode()
        status = 403 if doc.get("valid") is False else 200
        return self._reply(req, status, body, JSON, "_edge/verify")

    async def inventory(self, req: Request, params: dict[str, str]) -> Response:
        if params.get("format") == "bloom":
            return await self.inventory_bloom(req)
        prefix = params.get("prefix", "")

        def listing() -> bytes:
            objs = self.app.store.list_objects(prefix, complete_only=True)
            return "".join(
                json.dumps(
                    {"key": o.key, "size": o.meta.size, "etag": o.meta.etag, "pinned": o.pinned}
                )
                + "\n"
                for o in objs
            ).encode()

        body = await self.app.run(listing)
        return self._reply(req, 200, body, "application/x-ndjson", "_edge/inventory")

    async def inventory_bloom(self, req: Request) -> Response:
        cached = self._bloom
        if cached is None or time.monotonic() - cached[0] > BLOOM_MAX_AGE:
            if self._bloom_building is None:  # one build, however many pollers ask

                def build() -> tuple[float, bytes, str]:
                    keys = [o.key for o in self.app.store.list_objects(complete_only=True)]
                    body = inv.build(keys, len(keys)).to_bytes()
                    return time.monotonic(), body, inv.etag(body)

                self._bloom_building = self.app.run(build)
            building = self._bloom_building
            try:
                cached = self._bloom = await building
            finally:
                if self._bloom_building is building:
                    self._bloom_building = None
        _, body, tag = cached
        lines = f"ETag: {tag}\r\nCache-Control: no-cache\r\n"
        given = req.headers.get(b"if-none-match", b"").decode("latin-1")
        if tag in (t.strip() for t in given.split(",")):
            head = self.app.head(req, 304, lines.encode())
            return Response(304, head, key="_edge/inventory")
        lines = f"Content-Type: {inv.CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n" + lines
        head = self.app.head(req, 200, lines.encode())
        return Response(200, head, [body], body_length=len(body), key="_edge/inventory")

    # -- admin ---------------------------------------------------------------

    async def drain(self, req: Request, params: dict[str, str]) -> Response:
        await self.app.run(self.app.store.set_state, "draining", "1")
        return self._reply(req, 200, b'{"draining": true}\n', JSON, "_edge/admin/drain")

    async def undrain(self, req: Request, params: dict[str, str]) -> Response:
        await self.app.run(self.app.store.set_state, "draining", "0")
        return self._reply(req, 200, b'{"draining": false}\n', JSON, "_edge/admin/undrain")

    async def purge(self, req: Request, params: dict[str, str]) -> Response:
        store = self.app.store
        if "key" in params:
            try:
                # keys are written as the URL path (/show/movie.mp4) as often as
                # without its slash: both name the same object
                key = check_key(params["key"].removeprefix("/"))
            except BadKey as exc:
                return self.app.error(req, 400, f"key: {exc}")
            # the object, its queries (?a, ?b) and its Vary variants
            prefixes = cachepolicy.purged_prefixes(key)
            await self.app.miss.indexed(key)  # an object just learnt is in the index
            purged = await self.app.run(store.remove_with, key, prefixes)
            self.app.views.forget(key)
            for prefix in prefixes:
                self.app.views.forget_prefix(prefix)
        elif "prefix" in params:
            prefix = params["prefix"].removeprefix("/")
            await self.app.miss.indexed(prefix)
            purged = await self.app.run(store.purge_prefix, prefix)
            self.app.views.forget_prefix(prefix)
        else:
            return self.app.error(req, 400, "purge needs ?key=K or ?prefix=P")
        if self.workers > 1 and purged:
            # the other workers drop their views when they next read the
            # change table (every 100 ms): answer once they have
            await asyncio.sleep(PURGE_SETTLE_SECONDS)
        body = (json.dumps({"purged": purged}) + "\n").encode()
        return self._reply(req, 200, body, JSON, "_edge/admin/purge")

    async def scrub(self, req: Request, params: dict[str, str]) -> Response:
        report = await self.app.run(self.app.store.scrub)
        for key in set(report.failed_keys):  # the other workers learn it from the index
            self.app.views.forget(key)
        body = (
            json.dumps(
                {
                    "slices_checked": report.slices_checked,
                    "bytes_checked": report.bytes_checked,
                    "failures": report.failures,
                    "failed_keys": sorted(set(report.failed_keys)),
                }
            ).encode()
            + b"\n"
        )
        return self._reply(req, 200, body, JSON, "_edge/admin/scrub")
