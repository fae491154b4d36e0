"""A plain HTTP origin for the miss-path tests, with a log of what it was asked.

Real HTTP on loopback (aiohttp's server in a thread of the test process), serving
objects from memory with the few things an origin does: ``HEAD``, ``GET`` with a
single ``Range``, ``ETag``/``Last-Modified``, ``If-Match``,
``If-Unmodified-Since``, ``If-None-Match``, ``If-Modified-Since`` and
``Cache-Control``, any status and headers, Vary'd variants, queries (a key
``a?x=1`` is its own object), and unsafe methods (recorded, answered 200).
Faults on demand: answer 500, hang, or drop the connection
after some bytes; hold a body after its first bytes until released.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web

from edge.core.httpdate import format_http_date, parse_http_date


@dataclass
class Obj:
    data: bytes
    etag: str
    last_modified: int = 1_700_000_000
    cache_control: str | None = None
    content_type: str = "video/mp4"
    status: int = 200  # an answer that is not the object (a redirect, a 404 page)
    headers: dict[str, str] = field(default_factory=dict)  # more response headers
    vary: str | None = None  # with ``variants``: the request header choosing the body
    variants: dict[str, bytes] = field(default_factory=dict)  # that header's value -> body
    validators: bool = True  # False: no ETag, no Last-Modified


@dataclass
class Asked:
    method: str
    path: str
    range: str | None
    headers: dict[str, str]
    status: int = 0
    body: bytes = b""
    conn: int = 0  # which connection it came on


@dataclass
class Faults:
    fail: int = 0  # answer this many requests with 500
    fail_gets: int = 0  # answer this many GETs (not HEADs) with 500
    hang: bool = False  # accept, never answer
    drop_after: int | None = None  # send this many body bytes, then cut (a longer body)
    hold: threading.Event | None = None  # send 1 KiB of a body, wait for this
    no_head: bool = False  # 405 to HEAD
    head_without_length: bool = False  # a HEAD answer without Content-Length
    ignore_preconditions: bool = False  # If-Match and friends, as some origins do


@dataclass
class OriginServer:
    objects: dict[str, Obj] = field(default_factory=dict)
    log: list[Asked] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    port: int = 0

    def put(self, key: str, data: bytes, **kw: object) -> Obj:
        etag = kw.pop("etag", None) or f'"v{len(self.objects)}-{len(data)}-{hash(data) & 0xFFFF:x}"'
        obj = Obj(data, str(etag), **kw)  # type: ignore[arg-type]
        self.objects[key] = obj
        return obj

    def asked(self, method: str | None = None, path: str | None = None) -> list[Asked]:
        return [
            a
            for a in list(self.log)
            if (method is None or a.method == method) and (path is None or a.path == path)
        ]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- serving -----------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        if request.query_string:
            key += "?" + request.query_string
        asked = Asked(
            request.method,
            "/" + key,
            request.headers.get("Range"),
            dict(request.headers),
            conn=id(request.transport),
        )
        self.log.append(asked)
        if request.method not in ("GET", "HEAD"):
            asked.body = await request.read()
            asked.status = 200
            return web.Response(status=200, text=f"{request.method} done\n")
        faults = self.faults
        if faults.hang:
            await asyncio.sleep(3600)
        if faults.fail_gets and request.method == "GET":
            faults.fail_gets -= 1
            asked.status = 500
            return web.Response(status=500, text="origin trouble\n")
        if faults.fail:
            faults.fail -= 1
            asked.status = 500
            return web.Response(status=500, text="origin trouble\n")
        if faults.no_head and request.method == "HEAD":
            asked.status = 405
            return web.Response(status=405)
        obj = self.objects.get(key)
        if obj is None:
            asked.status = 404
            return web.Response(status=404, text="no such object\n")
        headers = {
            "ETag": obj.etag,
            "Last-Modified": format_http_date(obj.last_modified),
            "Content-Type": obj.content_type,
            "Accept-Ranges": "bytes",
            "Date": format_http_date(time.time()),
        }
        if not obj.validators:
            del headers["ETag"], headers["Last-Modified"]
        if obj.cache_control:
            headers["Cache-Control"] = obj.cache_control
        headers.update(obj.headers)
        if obj.vary is not None:
            headers["Vary"] = obj.vary
        if obj.status != 200:
            asked.status = obj.status
            return web.Response(status=obj.status, headers=headers, body=obj.data)
        h = {} if faults.ignore_preconditions else request.headers
        if "If-Match" in h and h["If-Match"] not in ("*", obj.etag):
            asked.status = 412
            return web.Response(status=412, headers=headers)
        ius = parse_http_date(h.get("If-Unmodified-Since"))
        if ius is not None and obj.last_modified > ius:
            asked.status = 412
            return web.Response(status=412, headers=headers)
        inm = h.get("If-None-Match")
        ims = parse_http_date(h.get("If-Modified-Since"))
        if (inm is not None and inm == obj.etag) or (
            inm is None and ims is not None and obj.last_modified <= ims
        ):
            asked.status = 304
            return web.Response(status=304, headers=headers)
        data = obj.data
        if obj.vary is not None and obj.variants:
            data = obj.variants.get(request.headers.get(obj.vary, ""), data)
        status = 200
        rng = request.headers.get("Range")
        if rng and request.method == "GET":
            m = re.fullmatch(r"bytes=(\d+)-(\d+)", rng)
            if m is None:
                return web.Response(status=416)
            a, b = int(m.group(1)), min(int(m.group(2)), len(data) - 1)
            if a >= len(data):  # RFC 9110 14.1.1: unsatisfiable
                asked.status = 416
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {a}-{b}/{len(data)}"
            data = data[a : b + 1]
            status = 206
        asked.status = status
        if request.method == "HEAD":
            if faults.head_without_length:
                resp = web.StreamResponse(status=200, headers=headers)
                resp.enable_chunked_encoding()
                await resp.prepare(request)
                return resp
            headers["Content-Length"] = str(len(obj.data))
            return web.Response(status=200, headers=headers)
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = len(data)
        await resp.prepare(request)
        if faults.hold is not None:
            await resp.write(data[:1024])
            hold = faults.hold
            await asyncio.get_running_loop().run_in_executor(None, hold.wait, 30)
            data = data[1024:]
        if faults.drop_after is not None and len(data) > faults.drop_after:
            await resp.write(data[: faults.drop_after])
            faults.drop_after = None
            assert request.transport is not None
            request.transport.abort()
            return resp
        for i in range(0, len(data), 65536):
            await resp.write(data[i : i + 65536])
        await resp.write_eof()
        return resp

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> OriginServer:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_route("*", "/{key:.+}", self.handle)
            runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self._runner = runner
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        self.faults = Faults()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
