"""The appliance's request handling: hits from the store, misses from the origin.

Theory of operation: ``handle`` parses the key and, for content, looks for the
object's ``View`` (the stored object with its header lines built once) in the
``ViewCache``. A view whose slices cover the request is a hit and is answered
synchronously with ``FileSpan``s (sendfile), or from memory for a small object.
Anything else goes down the slow path (``MissPath.answer``, a coroutine): look
the object up in the index or learn it from the origin, then fetch the missing
slices, each once however many requests want it, stream them and store them.
What to answer (304, 412, 416, 200, 206 and its ranges) is planned by the pure
``edge.core.plan``; this module turns the plan into bytes and spans. The
operational endpoints live in ``ops``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from edge.appliance.miss import MissPath, MissStream
from edge.appliance.view import CACHE_NAME, HIT_STATUS, HotHead, View
from edge.appliance.viewcache import ViewCache
from edge.config import ServeConfig
from edge.core import plan as plans
from edge.core import ranges
from edge.core.admission import make_admission
from edge.core.cachepolicy import cache_key
from edge.core.keys import BadKey, is_reserved, key_for_path, split_target
from edge.core.signing import MESSAGES as TOKEN_MESSAGES
from edge.core.signing import Verifier, split_path_token
from edge.http.accesslog import AccessLog
from edge.http.response import (
    ALLOW,
    ALLOWED_REQUEST_HEADERS,
    DateCache,
    build_head,
    connection_line,
    cors_lines,
    status_line,
    text_body,
)
from edge.http.wire import FileSpan, Part, Request, Response
from edge.origin import Origin
from edge.origin.chain import OriginChain
from edge.origin.state import OriginStates
from edge.store import Store

log = logging.getLogger("edgefleet.appliance")

T = TypeVar("T")

FORWARDED_METHODS = frozenset(("POST", "PUT", "PATCH", "DELETE"))
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")

HITS_FLUSH_SECONDS = 2.0
CHANGES_POLL_SECONDS = 0.1
PRESSURE = 0.97  # the store counts as full from here: admission applies
PLAIN_TARGETS_MAX = 65536  # targets remembered with their keys (then forgotten at once)


class Appliance:
    def __init__(
        self,
        cfg: ServeConfig,
        store: Store,
        origins: list[Origin],
        executor: ThreadPoolExecutor,
        access_log: AccessLog | None,
        metrics: Any,
        origin_states: OriginStates | None = None,
        store_executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.origins = origins
        self.executor = executor
        # slice writes and index commits (fsyncs) queue here, never in front
        # of the lookups and file opens a request waits for
        self.store_executor = store_executor or executor
        self.access_log = access_log
        self.metrics = metrics
        self.loop = asyncio.get_running_loop()
        self.cors_bytes = cors_lines(cfg.cors_origin)
        self.views = ViewCache(self.run, cfg.cors_origin)
        self.hits: dict[str, list[float]] = {}
        self.plain_targets: dict[bytes, str] = {}  # see handle
        # a shared HTTP cache (docs/miss-path.md) when every origin is an HTTP one
        self.shared_cache = bool(origins) and all(
            getattr(o, "shared_cache", False) for o in origins
        )
        self.key_ignore = frozenset(cfg.cache_key_ignore)
        self.max_request_body = cfg.max_request_body
        # each origin's state (ok/failing, last error, when) for /_edge/health
        self.origin_states = origin_states or OriginStates(
            [o.url for o in origins], {}, time.time()
        )
        self.chain = OriginChain(
            origins,
            retries=cfg.origin_retries,
            negative_ttl=cfg.negative_ttl,
            breaker_failures=cfg.breaker_failures,
            breaker_cooldown=cfg.breaker_cooldown,
            on_origin=metrics.origin,
            on_bytes=metrics.origin_bytes,
            on_state=self._origin_state,
        )
        # Admission: sized to about the objects the store holds (a window much
        # smaller than that costs hit ratio; see bench/policy_trace.py).
        capacity = sum(cap for _, cap in cfg.root_capacities())
        self.admission = make_admission(cfg.admission, max(10_000, capacity // cfg.slice_size))
        self.store_full = False
        self.miss = MissPath(
            self.views,
            store,
            self.chain,
            self.run,
            self,
            self._on_disk_error,
            metrics.store_write_failed,
            cfg.request_cache_control if self.shared_cache else "ignore",
            write=self.run_store,
            store_backlog=cfg.store_backlog,
            on_store_skipped=metrics.store_skipped,
        )
        # players' no-cache, max-age, min-fresh can make a fresh hit a revalidation
        self.hits_heed_requests = self.miss.request_cache_control == "all"
        self.background: set[asyncio.Future[Any]] = set()
        self.change_seq = 0
        self.dates = DateCache()  # refreshed once a second by _tick
        self.sent_window: list[tuple[float, int]] = []
        self.egress_rate = 0.0
        self.ops: Any = None  # set by serve (edge.appliance.ops.Ops)
        # signed URLs: checked only when keys are configured
        self.verifier = Verifier(cfg.url_signing_keys) if cfg.url_signing_keys else None
        self._timers: list[asyncio.TimerHandle] = []
        # bytes/s this process's background scrub rereads (serve gives each
        # worker its share of scrub_rate)
        self.scrub_share = cfg.scrub_rate
        self._scrubbing: asyncio.Future[Any] | None = None

    # -- plumbing ------------------------------------------------------------

    def _origin_state(self, url: str, error: Exception | None) -> None:
        if error is None:
            self.origin_states.answered(url, time.time())
        else:
            self.origin_states.failed(url, str(error), time.time())

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return self.loop.run_in_executor(self.executor, fn, *args)

    def run_store(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``fn`` in the threads that write the store (see ``store_executor``)."""
        return self.loop.run_in_executor(self.store_executor, fn, *args)

    def spawn(self, aw: Awaitable[Any]) -> asyncio.Future[Any]:
        fut = asyncio.ensure_future(aw)
        self.background.add(fut)
        fut.add_done_callback(self.background.discard)
        return fut

    def start(self) -> None:
        self.change_seq = self.store.last_change()
        self._every(1.0, self._tick)
        if self.scrub_share > 0:
            self._every(1.0, self._scrub)
        self._every(HITS_FLUSH_SECONDS, self._flush_hits)
        self._every(CHANGES_POLL_SECONDS, self._poll_changes)

    def _every(self, seconds: float, fn: Callable[[], None]) -> None:
        def fire() -> None:
            try:
                fn()
            finally:
                self._timers.append(self.loop.call_later(seconds, fire))

        self._timers.append(self.loop.call_later(seconds, fire))

    async def stop(self) -> None:
        for t in self._timers:
            t.cancel()
        await self.chain.close()
        self._flush_hits()
        if self.background:
            await asyncio.wait(list(self.background), timeout=10)
        if self.access_log is not None:
            self.access_log.flush()

    def _tick(self) -> None:
        self.dates.refresh()
        now = self.loop.time()
        total = self.metrics.sent_total
        self.sent_window.append((now, total))
        while len(self.sent_window) > 6:
            self.sent_window.pop(0)
        t0, b0 = self.sent_window[0]
        self.egress_rate = (total - b0) / (now - t0) if now > t0 else 0.0
        self.metrics.set_egress(self.egress_rate)
        self.metrics.set_store_backlog(self.miss.backlog)
        self.metrics.flush()
        if self.access_log is not None:
            self.access_log.flush()
        self.spawn(self._check_pressure())

    async def _check_pressure(self) -> None:
        usage = [u for u in await self.run(self.store.usage) if not u.failed]
        used, capacity = sum(u.used for u in usage), sum(u.capacity for u in usage)
        self.store_full = capacity > 0 and used >= PRESSURE * capacity

    def _scrub(self) -> None:
        """A second's share of the background scrub (one step at a time)."""
        if self._scrubbing is None or self._scrubbing.done():
            self._scrubbing = self.spawn(self.run(self.store.scrub_step, self.scrub_share))

    def _flush_hits(self) -> None:
        if not self.hits:
            return
        hits = {k: (int(v[0]), v[1]) for k, v in self.hits.items()}
        self.hits = {}
        self.spawn(self.run(self.store.record_hits, hits))

    def _poll_changes(self) -> None:
        self.spawn(self._read_changes())

    async def _read_changes(self) -> None:
        seq, keys = await self.run(self.store.changes_since, self.change_seq)
        self.change_seq = seq
        if not keys:
            return
        if "" in keys:
            self.views.clear()
            await self.run(self.store.refresh_roots)
        else:
            for k in keys:
                self.views.forget(k)

    # -- responses -----------------------------------------------------------

    def view_head(
        self, req: Request, view: View, status: int, lines: bytes, age: int | None = None
    ) -> bytes:
        """``head`` plus, for content with a freshness lifetime, its ``Age``
        (RFC 9111 §4: a cache that answers from store says how old it is), and
        its ``Cache-Status`` (RFC 9211: a hit; the miss path says otherwise)."""
        if view.born is not None:
            if age is None:
                age = max(0, int(time.time() - view.born))
            lines = f"Age: {age}\r\n".encode() + lines
        return self.head(req, status, lines + HIT_STATUS)

    def whole_hot(self, req: Request, view: View) -> HotHead:
        """The head of a 200 for all of ``view`` on a keep-alive HTTP/1.1
        connection, and it joined to the body when the body is in memory:
        ``view_head``'s bytes, built once per ``Date`` and ``Age`` and kept
        with the view (``View.hot``: Date line, Age, head, head and body, body)."""
        dates = self.dates.with_server
        age = None if view.born is None else max(0, int(time.time() - view.born))
        hot = view.hot
        small = view.small
        if hot is None or hot[0] is not dates or hot[1] != age or hot[4] is not small:
            head = self.view_head(req, view, 200, view.full, age)
            hot = view.hot = (dates, age, head, None if small is None else head + small, small)
        return hot

    def head(self, req: Request, status: int, lines: bytes) -> bytes:
        if req.keep_alive and req.version == "1.1":
            return status_line(status) + self.dates.with_server + lines + b"\r\n"
        return (
            status_line(status)
            + self.dates.with_server
            + lines
            + connection_line(req.keep_alive, req.version == "1.0")
            + b"\r\n"
        )

    def error(
        self, req: Request | None, status: int, message: str, extra: str = "", key: str = ""
    ) -> Response:
        body = text_body(status, message)
        if "Cache-Status:" not in extra:
            extra += f"Cache-Status: {CACHE_NAME}; detail=edge\r\n"  # answered here
        lines = (
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n{extra}"
        ).encode("latin-1") + self.cors_bytes
        keep = req.keep_alive if req is not None else False
        if status in (400, 414, 431):
            keep = False
        head = build_head(
            status,
            self.dates.line,
            lines,
            keep_alive=keep,
            http10=req is not None and req.version == "1.0",
        )
        return Response(status, head, [body], body_length=len(body), key=key, close=not keep)

    def forwarded(
        self,
        req: Request,
        key: str,
        status: int,
        headers: tuple[tuple[str, str], ...],
        body: bytes,
    ) -> Response:
        """The origin's answer to a forwarded unsafe method, as it gave it."""
        # the appliance's own CORS lines replace an origin's (as View does)
        lines = "".join(
            f"{n}: {v}\r\n" for n, v in headers if not n.lower().startswith("access-control-")
        )
        if status not in (204, 304) and not 100 <= status < 200:
            lines += f"Content-Length: {len(body)}\r\n"
        lines += f"Cache-Status: {CACHE_NAME}; fwd=method\r\n"
        head = self.head(req, status, lines.encode("latin-1", "replace") + self.cors_bytes)
        parts: list[Part] = [body] if body and req.method != "HEAD" else []
        return Response(status, head, parts, body_length=len(body) if parts else 0, key=key)

    def finished(self, req: Request, resp: Response, sent: int, now: float) -> None:
        duration = now - req.started
        self.metrics.observe(resp.status, resp.cache, sent, duration)
        if self.access_log is not None:
            self.access_log.record(
                time.time(),
                req.client,
                req.method,
                resp.key,
                resp.range,
                resp.status,
                sent,
                resp.cache,
                duration,
                req.tls,
                req.sni,
            )

    # -- dispatch ------------------------------------------------------------

    def handle(self, req: Request) -> Response | Awaitable[Response]:
        """A GET or HEAD of an object: a hit from its view, else the miss
        path; anything else is answered by ``_name``."""
        method = req.method
        # a target seen before that named an object plainly (no query, no token,
        # not /_edge/): what the checks in _name found then, they find again
        key = self.plain_targets.get(req.target) if method == "GET" or method == "HEAD" else None
        if key is None or self.verifier is not None:
            named = self._name(req)
            if type(named) is not str:
                return named  # type: ignore[return-value]
            key = named
        now = time.time()
        hit = self.hits.get(key)
        if hit is None:
            self.hits[key] = [1.0, now]
        else:
            hit[0] += 1.0
            hit[1] = now
        view = self.views.views.get(key)
        if (
            view is not None
            and req.method == "GET"
            and req.keep_alive
            and req.version == "1.1"
            and view.status == 200
            and not view.obj.meta.vary
            and not self.hits_heed_requests
            and (view.fresh_until is None or now < view.fresh_until)
        ):
            # the commonest hits, answered as ``answer`` would below (a fresh
            # view, no Vary) without its general path
            headers = req.headers
            if view.small is not None and headers.keys().isdisjoint(plans.WHOLE_UNLESS):
                # a small object whole (planned Whole): the head and body
                # ``whole_hot`` joined for this second
                hot = view.hot
                if hot is None or hot[0] is not self.dates.with_server or view.born is not None:
                    hot = self.whole_hot(req, view)
                if hot[4] is view.small:
                    return _joined_hit(view, hot)
            elif b"range" in headers and headers.keys().isdisjoint(plans.RANGE_ALONE_UNLESS):
                resp = self._one_range(req, view, headers[b"range"])
                if resp is not None:
                    return resp
        if self.hits_heed_requests and b"cache-control" in req.headers:
            view = None  # the miss path weighs the request's directives
        if view is not None and (not view.obj.meta.vary or self.miss.selects(view, req)):
            resp = self.answer(req, view, fetch=False)
            if resp is not None:
                return resp
        return self.miss.answer(req, key)

    def _name(self, req: Request) -> str | Response | Awaitable[Response]:
        """The key a GET or HEAD names, once its target, method and token
        passed their checks; for anything else the answer itself (an error, an
        operational endpoint, OPTIONS, a forwarded method)."""
        try:
            path, query = split_target(req.target)
            key = key_for_path(path)
        except BadKey as exc:
            return self.error(req, exc.status, str(exc))
        path_token = None
        if is_reserved(key):
            split = split_path_token(key)
            if split is None:
                return self.ops.handle(req, key, query)
            path_token, key = split  # /_edge/t/TOKEN/KEY: a token for KEY's directory
            if is_reserved(key):
                return self.error(req, 404, "no such object")
        method = req.method
        if method not in ("GET", "HEAD"):
            if method == "OPTIONS":
                return self._options(req)
            if not (self.shared_cache and key and method in FORWARDED_METHODS):
                return self.error(req, 405, f"method {method} not allowed", f"Allow: {ALLOW}\r\n")
        if not key:
            return self.error(req, 404, "no object named; ask for /<key>")
        if self.verifier is not None:
            if path_token is not None:
                reason = self.verifier.check_path(key, path_token, req.client, time.time())
            else:
                reason = self.verifier.check(key, query.decode("latin-1"), req.client, time.time())
            if reason is not None:
                self.metrics.token_rejected(reason)
                return self.error(req, 403, TOKEN_MESSAGES[reason], key=key)
        if self.shared_cache and query:
            if _CONTROL.search(query):
                return self.error(req, 400, "control character in the query string")
            key = cache_key(key, query.decode("latin-1"), self.key_ignore)
        if method not in ("GET", "HEAD"):
            return self.miss.forward(req, key)
        if not query and path_token is None and self.verifier is None:
            plain = self.plain_targets
            if len(plain) >= PLAIN_TARGETS_MAX:
                plain.clear()
            plain[req.target] = key
        return key

    def _options(self, req: Request) -> Response:
        lines = (
            f"Allow: {ALLOW}\r\nAccess-Control-Allow-Methods: {ALLOW}\r\n"
            f"Access-Control-Allow-Headers: {ALLOWED_REQUEST_HEADERS}\r\n"
            "Access-Control-Max-Age: 86400\r\n"
        ).encode() + self.cors_bytes
        return Response(204, self.head(req, 204, lines))

    # -- the answer for a known object ----------------------------------------

    def answer(
        self, req: Request, view: View, fetch: bool, check_fresh: bool = True
    ) -> Response | None:
        """The response for ``view``, as ``edge.core.plan`` plans it. ``None``
        when slices are missing and ``fetch`` is false, or when it is stale;
        with ``fetch``, a response streamed as the missing slices arrive."""
        if check_fresh and view.fresh_until is not None and time.time() >= view.fresh_until:
            return None
        if view.status != 200:
            return self._answer_as_is(req, view, fetch)
        headers = req.headers
        if (
            req.method == "GET"
            and req.keep_alive
            and req.version == "1.1"
            and headers.keys().isdisjoint(plans.WHOLE_UNLESS)
        ):
            # what plans.plan answers (Whole) for a GET without any of these
            hot = self.whole_hot(req, view)
            head = hot[2]
            if hot[3] is not None:
                return _joined_hit(view, hot)
            spans: list[Any] = [(0, view.size - 1)] if view.size else []
            return self._body(req, view, 200, head, spans, view.size, None, fetch)
        p = plans.plan(
            req.method, req.headers, view.size, view.etag, view.last_modified, self.cfg.max_ranges
        )
        size = view.size
        if type(p) is plans.Whole:
            head = self.view_head(req, view, 200, view.full)
            if p.head_only:
                return Response(200, head, key=view.key, cache="hit")
            if view.small is not None:
                return Response(
                    200, head, [view.small], body_length=size, cache="hit", key=view.key
                )
            spans = [(0, size - 1)] if size else []
            return self._body(req, view, 200, head, spans, size, None, fetch)
        if type(p) is plans.Partial:
            return self._partial(req, view, p, fetch)
        if type(p) is plans.NotModified:
            head = self.view_head(req, view, 304, view.common)
            return Response(304, head, key=view.key, cache="hit")
        if type(p) is plans.PreconditionFailed:
            resp = self.error(req, 412, "precondition failed", key=view.key)
        else:
            assert type(p) is plans.Unsatisfiable
            resp = self.error(
                req,
                416,
                f"range not satisfiable for {size} bytes",
                f"Content-Range: bytes */{size}\r\n",
                key=view.key,
            )
            resp.range = p.range_value
        resp.cache = "hit"
        return resp

    def _answer_as_is(self, req: Request, view: View, fetch: bool) -> Response | None:
        """An origin's answer that is not a 200 (a redirect, a 404, a 204):
        replayed whole, status and headers, without ranges or preconditions."""
        head = self.view_head(req, view, view.status, view.full)
        if req.method == "HEAD" or view.size == 0:
            return Response(view.status, head, key=view.key, cache="hit")
        size = view.size
        return self._body(req, view, view.status, head, [(0, size - 1)], size, None, fetch)

    def _one_range(self, req: Request, view: View, value: bytes) -> Response | None:
        """A GET whose ``Range`` (the only header that shapes its answer) is
        one range within one slice whose file is open: the 206 ``answer``
        would plan (``ranges.decide`` alone decides such a GET), without its
        general path; None for anything else, which goes that way."""
        range_value = value.decode("latin-1")
        p = ranges.decide(range_value, view.size, self.cfg.max_ranges)
        if type(p) is not ranges.Partial or len(p.ranges) != 1:
            return None
        a, b = p.ranges[0]
        slice_size = view.slice_size
        idx = a // slice_size
        if b // slice_size != idx or view.files[idx] is None:
            return None  # several slices, or a file to open (and maybe fail): the slow way
        f = view.files[idx]
        n = b - a + 1
        head = self.view_head(req, view, 206, _one_range_lines(view, a, b))
        span = FileSpan(view.paths[idx], a - idx * slice_size, n, f, self._on_disk_error(view, idx))  # type: ignore[arg-type]
        return Response(
            206, head, [span], body_length=n, cache="hit", key=view.key, range_=range_value
        )

    def _partial(self, req: Request, view: View, p: plans.Partial, fetch: bool) -> Response | None:
        """206: one range with its Content-Range, or several as multipart/byteranges."""
        size = view.size
        segments: list[Any]
        if len(p.ranges) == 1:
            a, b = p.ranges[0]
            segments = [(a, b)]
            body_length = b - a + 1
            lines = _one_range_lines(view, a, b)
        else:
            boundary = secrets.token_hex(12)
            segments, body_length = plans.multipart(p.ranges, size, view.ctype, boundary)
            lines = (
                view.common
                + (
                    f"Content-Type: multipart/byteranges; boundary={boundary}\r\n"
                    f"Content-Length: {body_length}\r\n"
                ).encode()
            )
        head = self.view_head(req, view, 206, lines)
        if p.head_only:
            return Response(206, head, key=view.key, cache="hit", range_=p.range_value)
        return self._body(req, view, 206, head, segments, body_length, p.range_value, fetch)

    def _body(
        self,
        req: Request,
        view: View,
        status: int,
        head: bytes,
        segments: list[Any],
        body_length: int,
        range_value: str | None,
        fetch: bool,
    ) -> Response | None:
        """Send byte ranges: from memory, from open slice files, or, for missing
        slices, as they arrive from the origin (only with ``fetch``)."""
        small = view.small
        if small is not None:
            body: list[Part] = [
                seg if type(seg) is bytes else memoryview(small)[seg[0] : seg[1] + 1]
                for seg in segments
            ]
            return Response(
                status, head, body, body_length=body_length, cache="hit", key=view.key,
                range_=range_value,
            )  # fmt: skip
        pieces = plans.slice_pieces(segments, view.slice_size)
        paths = view.paths
        missing = [p[0] for p in pieces if type(p) is tuple and paths[p[0]] is None]
        if not missing:
            body = self._spans(view, pieces)  # type: ignore[arg-type]
            if body is not None:
                return Response(
                    status, head, body, body_length=body_length, cache="hit", key=view.key,
                    range_=range_value,
                )  # fmt: skip
            if not fetch:
                return None
            # a slice file could not be opened: a dropped slice is fetched again
            # like any missing one; with nothing dropped (no descriptor to spare)
            # there is nothing to fetch, and the caller answers 503
            missing = [p[0] for p in pieces if type(p) is tuple and paths[p[0]] is None]
            if not missing:
                return None
        if not fetch:
            return None
        slices = sum(1 for p in pieces if type(p) is not bytes)
        absent = sum(1 for i in missing if i not in view.unverified)  # not stored at all
        cache = "hit" if not absent else "miss" if absent == slices else "partial"
        admit = self._admit(view.key)  # once per request: the doorkeeper counts asks
        return Response(
            status,
            head,
            body_length=body_length,
            cache=cache,
            key=view.key,
            range_=range_value,
            stream=MissStream(view, pieces, missing, admit, self.miss),
        )

    def _spans(self, view: View, pieces: list[bytes | tuple[int, int, int]]) -> list[Part] | None:
        """The body as ``FileSpan``s over the view's open slice files (bytes for
        framing); ``None`` when a file cannot be opened (evicted or purged by
        another process since the view was made, or no descriptor to spare):
        the caller looks again on the slow path."""
        body: list[Part] = []
        paths = view.paths
        disk_error = self._on_disk_error
        for p in pieces:
            if type(p) is bytes:
                body.append(p)
                continue
            idx, offset, count = p  # type: ignore[misc]
            on_error = disk_error(view, idx)
            try:
                f = view.file(idx)
            except OSError as exc:
                on_error(exc)
                return None
            body.append(FileSpan(paths[idx], offset, count, f, on_error))  # type: ignore[arg-type]
        return body

    def _admit(self, key: str) -> bool:
        """Store what this miss fetches? Always, unless the store is full and
        the admission filter says the object has not earned a place yet."""
        return not self.store_full or self.admission.admit(key)

    def _on_disk_error(self, view: View, idx: int) -> Callable[[OSError], None]:
        """What to do when slice ``idx`` of ``view`` cannot be sent: out of file
        descriptors, shed views; else forget the view and let the store judge
        the slice (a missing, short, unreadable one is dropped and fetched
        again; device errors on several files fail its root)."""

        def on_error(exc: OSError) -> None:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self.views.drop(view)
                self.views.shed_files()
                return
            self.views.drop(view)
            self.views.forget_slice(view, idx)
            obj = view.obj
            dropping = self.spawn(self.run(self.store.slice_damaged, obj.key, obj.gen, idx, exc))
            self.views.damaged(obj.key, dropping)

        return on_error


def _one_range_lines(view: View, a: int, b: int) -> bytes:
    """The header lines of a 206 for bytes ``a``-``b`` of ``view``."""
    return view.typed + b"Content-Range: bytes %d-%d/%d\r\nContent-Length: %d\r\n" % (
        a,
        b,
        view.size,
        b - a + 1,
    )


def _joined_hit(view: View, hot: HotHead) -> Response:
    """The 200 for all of a small ``view`` from its head and body joined
    (``Appliance.whole_hot``), sent as one buffer."""
    resp = Response(200, hot[2], [hot[4]], body_length=view.size, cache="hit", key=view.key)  # type: ignore[list-item]
    resp.wire = hot[3]
    return resp
