"""The appliance's slow path: what is not a hit in memory.

Theory of operation: ``MissPath.answer`` finds the object in the index, or
learns it from the origins (``learn``: one origin request and one index entry
for concurrent misses; the answer to the GET of the first slice the request
needs tells what the object is, and its bytes go on to the request),
revalidates it when stale (``revalidated``, RFC 9111), and answers: from the
store when the slices are there, else with a ``MissStream`` that sends stored
slices from their files and missing ones as their ``SliceFetch`` delivers them
(``edge.origin.chain``), storing what admission lets in.

``MissPath`` is composed, not inherited: it is handed the view cache, the
store, the origin chain and the appliance's answers (``Answers``: the planned
response for a view, and error responses), and it never reaches into the
appliance.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from edge.appliance import heads
from edge.appliance.view import CACHE_NAME, HIT_STATUS, View
from edge.appliance.viewcache import ViewCache
from edge.core import cachepolicy
from edge.core.freshness import is_fresh, may_serve_stale_on_error
from edge.core.keys import loggable
from edge.core.meta import ObjectMeta, same_version
from edge.http.wire import FileSpan, OpenFile, Part, Request, Response
from edge.origin import OriginChanged, OriginError, OriginRefused, OriginTimeout
from edge.origin.chain import TAKE_WAIT, OriginChain
from edge.origin.slicefetch import SliceFetch, shared
from edge.store import IndexBusy, Store, StoredObject, new_gen

log = logging.getLogger("edgefleet.appliance")

READ_AHEAD = 2  # slices fetched ahead of the one being sent
VERIFY_AHEAD = 4  # stored slices verified before the status line, at most


class Answers(Protocol):
    """What the miss path asks of the appliance: its responses."""

    def answer(
        self, req: Request, view: View, fetch: bool, check_fresh: bool = True
    ) -> Response | None: ...

    def error(
        self, req: Request | None, status: int, message: str, extra: str = "", key: str = ""
    ) -> Response: ...

    def forwarded(
        self,
        req: Request,
        key: str,
        status: int,
        headers: tuple[tuple[str, str], ...],
        body: bytes,
    ) -> Response: ...


class MissPath:
    def __init__(
        self,
        views: ViewCache,
        store: Store,
        chain: OriginChain,
        run: Callable[..., asyncio.Future[Any]],
        answers: Answers,
        on_disk_error: Callable[[View, int], Callable[[OSError], None]],
        on_store_failed: Callable[[], None],
        request_cache_control: str = "ignore",
        write: Callable[..., asyncio.Future[Any]] | None = None,
        store_backlog: int = 256 * 1024 * 1024,
        on_store_skipped: Callable[[], None] = lambda: None,
    ) -> None:
        self.views = views
        # which of a request's Cache-Control directives count (edge.core.cachepolicy)
        self.request_cache_control = request_cache_control
        self.store = store
        self.chain = chain
        self.run = run  # lookups, file opens, checks
        self.write = write or run  # slice writes and index commits
        self.answers = answers
        self.on_disk_error = on_disk_error
        self.on_store_failed = on_store_failed
        # bytes of complete slices waiting for the store's writers, at most
        # ``store_backlog``: a slice past it is served and not stored
        # (docs/miss-path.md, "A store that falls behind")
        self.backlog = 0
        self.backlog_max = store_backlog
        self.on_store_skipped = on_store_skipped
        self.revalidations: dict[str, asyncio.Future[ObjectMeta | None]] = {}
        self.learning: dict[str, asyncio.Future[StoredObject | ObjectMeta | None]] = {}
        # (key, gen) -> the index entry of an object just learnt, being committed
        self.indexing: dict[tuple[str, str], asyncio.Future[StoredObject]] = {}

    async def stream(
        self,
        view: View,
        pieces: list[Any],
        missing: list[int],
        admit: bool,
        fetches: dict[int, SliceFetch],
    ) -> AsyncIterator[Part]:
        """The body, slice by slice. ``fetches`` keeps this response's fetches:
        one that is not stored (admission, no-store) is in no registry once
        done, and must not be asked for again."""

        def fetch(idx: int) -> SliceFetch:
            f = fetches.get(idx)
            if f is None:
                f = fetches[idx] = self.start_fetch(view, idx, admit)
            return f

        # stored slices not yet verified in this start are checked as they come
        ahead: list[int] = [i for i in dict.fromkeys(missing) if i not in view.unverified]
        for idx in ahead[1:READ_AHEAD]:
            if self.views.stored(view, idx) is None:
                fetch(idx)
        for p in pieces:
            if type(p) is bytes:
                yield p
                continue
            idx, offset, count = p
            own = fetches.get(idx)
            if own is None or own.error is not None:
                # a slice this response fetched is sent from the bytes in
                # memory even once it is stored: no need to read its file back
                span, view = await self._stored_span(view, idx, offset, count)
                if span is not None:
                    yield span
                    continue
            pos = ahead.index(idx) if idx in ahead else -1
            if pos >= 0 and pos + READ_AHEAD < len(ahead):
                nxt = ahead[pos + READ_AHEAD]
                if self.views.stored(view, nxt) is None:
                    fetch(nxt)
            try:
                async for part in fetch(idx).read(offset, count):
                    yield part
            except OriginChanged:
                await self.invalidate(view)
                raise

    async def _stored_span(
        self, view: View, idx: int, offset: int, count: int
    ) -> tuple[FileSpan | None, View]:
        """Bytes ``offset .. offset+count`` of slice ``idx`` as a span of its
        stored file, when a view of this version has it (checked first if this
        start has not verified it yet), and the view to go on with; no span
        when the slice is to be fetched."""
        stored = self.views.stored(view, idx)
        if stored is None and idx in view.unverified and await self.verified(view, idx):
            stored = view
        if stored is None:
            return None, view
        path = stored.paths[idx]
        assert path is not None
        try:
            f: OpenFile | None = stored.file(idx)
        except FileNotFoundError as exc:
            # gone since (a scrub, an eviction, or lost): fetch it like any
            # missing slice, and let the store drop its row
            self.on_disk_error(stored, idx)(exc)
            f = None
        except OSError:
            f = None  # the connection opens it, and reports what went wrong
        else:
            view = stored
        if stored.paths[idx] is None:
            return None, view
        return FileSpan(path, offset, count, f, self.on_disk_error(stored, idx)), view

    # -- the slow path -------------------------------------------------------

    async def answer(self, req: Request, key: str, again: bool = True) -> Response:
        """The response to ``req`` for ``key`` when it is not a hit in memory:
        the origin's failures become 502/504; an object that changed at the
        origin while it was being fetched is asked for once more."""
        started: list[Response] = []  # the response being made, closed on failure
        try:
            return await self._answer(req, key, started)
        except (OriginError, asyncio.CancelledError) as exc:
            for resp in started:
                if resp.stream is not None:
                    await resp.stream.aclose()  # type: ignore[attr-defined]
            if isinstance(exc, OriginChanged) and again:
                return await self.answer(req, key, again=False)
            if isinstance(exc, OriginRefused):
                return self.answers.error(req, exc.status, str(exc), key=key)
            if isinstance(exc, OriginTimeout):
                return self._failed(req, 504, "the origin did not answer in time", exc, key)
            if isinstance(exc, OriginError):
                return self._failed(req, 502, "the origin failed to answer", exc, key)
            raise

    def _failed(self, req: Request, status: int, reason: str, exc: Exception, key: str) -> Response:
        """The player gets a short reason and a request id; the log gets the
        details (origin URL, bucket, path, exception text) with the same id."""
        rid = secrets.token_hex(6)
        log.warning(
            "request %s: %s %s: %s", rid, req.method, loggable(key), loggable(str(exc), 400)
        )
        extra = f"X-Request-Id: {rid}\r\n{ORIGIN_FAILED}"
        return self.answers.error(req, status, f"{reason} (request {rid})", extra, key=key)

    def directives(self, req: Request) -> cachepolicy.RequestDirectives:
        """The request's Cache-Control directives the operator's mode honours."""
        value = req.headers.get(b"cache-control")
        if value is None or self.request_cache_control == "ignore":
            return cachepolicy.NO_DIRECTIVES
        return cachepolicy.request_directives(value.decode("latin-1"), self.request_cache_control)

    @staticmethod
    def reusable(view: View, d: cachepolicy.RequestDirectives) -> bool:
        """May ``view`` answer a request with directives ``d`` unasked (RFC 9111)?"""
        meta = view.obj.meta
        if d is cachepolicy.NO_DIRECTIVES:
            return is_fresh(view.fresh_until, time.time())
        return cachepolicy.reusable(
            d,
            fresh_until=view.fresh_until,
            born=meta.born,
            now=time.time(),
            stale_forbidden=meta.must_revalidate
            or cachepolicy.has_directive(meta.cache_control, "no-cache"),
        )

    def _not_cached(self, req: Request, key: str) -> Response:
        return self.answers.error(
            req, 504, "not in the store, and the request said only-if-cached", key=key
        )

    async def _answer(self, req: Request, key: str, started: list[Response]) -> Response:
        await self.views.settled(key)
        d = self.directives(req)
        view = self.views.get(key)
        asked_origin = False
        fwd = "miss"
        if view is not None and view.obj.meta.vary and not self.selects(view, req):
            other = self.views.get(_variant_key(key, view.obj.meta, req))
            if other is not None and self.selects(other, req):
                view = other  # another stored variant: the request's own
            else:
                view, fwd = None, "vary-miss"
        if view is None:
            found = await self._find(req, key, started, d)
            if isinstance(found, Response):
                return found
            view, asked_origin = found
            if asked_origin and fwd == "miss":
                fwd = "uri-miss"
        fwd_status: int | None = None
        # a response just fetched answers the request it was fetched for
        if not asked_origin and not self.reusable(view, d):
            if d.only_if_cached:
                return self._not_cached(req, key)
            fresh = await self.revalidated(view, req)
            if fresh is None:
                return self.answers.error(req, 404, "gone from the origin", key=key)
            fwd, fwd_status = "stale", (304 if same_version(fresh.obj.meta, view.obj.meta) else 200)
            view = fresh
        resp = self.answers.answer(req, view, fetch=False, check_fresh=False)
        if resp is None and d.only_if_cached:
            return self._not_cached(req, key)  # slices missing: the origin would be asked
        if resp is None:
            resp = await self._fetching(req, view, asked_origin, started)
        if asked_origin and resp.cache == "hit":
            resp.cache = "miss"  # an empty object, or a HEAD: still learnt from the origin
        if resp.cache == "partial" and fwd == "miss":
            fwd = "partial"
        if asked_origin or fwd_status is not None or resp.cache != "hit":
            _relabel(resp, fwd, fwd_status, view.obj.meta.storable)
        return resp

    def selects(self, view: View, req: Request) -> bool:
        """May ``view`` (a variant: its Vary named request headers) answer ``req``?"""
        return cachepolicy.vary_matches(view.obj.meta.vary, _str_headers(req))

    async def _lookup(self, key: str) -> StoredObject | None:
        """The index's object, with its HTTP origin's answer head when it has
        one. Read on the event loop: a point read takes a few microseconds, a
        trip through the threads 0.2-1.6 ms on a busy box (docs/miss-path.md);
        a thread waits when the index is busy."""
        try:
            return heads.lookup_with_head(self.store, key, quick=True)
        except IndexBusy:
            return await self.run(heads.lookup_with_head, self.store, key)

    async def _index(self, key: str, meta: ObjectMeta, gen: str | None = None) -> StoredObject:
        """Index ``meta`` as the object's version (with its answer head)."""
        return await self.write(heads.index_with_head, self.store, key, meta, gen)

    async def _find(
        self,
        req: Request,
        key: str,
        started: list[Response],
        d: cachepolicy.RequestDirectives = cachepolicy.NO_DIRECTIVES,
    ) -> tuple[View, bool] | Response:
        """The object's view from the index, or learnt from the origins
        (``True``: the origin was asked); a response when there is none, or
        when the object is not to be stored (answered as it streams)."""
        obj = await self._lookup(key)
        if obj is not None and obj.meta.vary and not _selects(obj.meta, req):
            # another variant: the request's own is stored (or learnt) beside it
            key = _variant_key(key, obj.meta, req)
            obj = await self._lookup(key)
            if obj is not None and not _selects(obj.meta, req):
                obj = None  # its digest found it, its values do not match: replaced
        if obj is not None:
            return await self.views.load(obj), False
        error = self.answers.error
        if not self.chain.origins:
            return error(req, 404, "not in the store, and no origin", key=key)
        if self.chain.known_missing(key):
            return error(req, 404, "not found at the origin", NEGATIVE, key=key)
        if d.only_if_cached:
            return self._not_cached(req, key)
        idx = first_slice(req, self.store.slice_size)
        learnt = await self.learn(key, idx, req, store=not d.no_store)
        if learnt is None:
            return error(req, 404, "not found at the origin", key=key)
        if isinstance(learnt, ObjectMeta):
            resp = self.answer_unstored(req, key, learnt)
            _relabel(resp, "uri-miss", None, False)
            started.append(resp)
            if isinstance(resp.stream, MissStream):
                await resp.stream.prepare()
            return resp
        return await self.views.load(learnt), True

    async def _fetching(
        self, req: Request, view: View, asked_origin: bool, started: list[Response]
    ) -> Response:
        """The response for a view with slices missing: stored ones from their
        files, missing ones as they arrive. The status line waits for the first
        missing slice's first byte (or its error)."""
        key = view.key
        # Slices may have arrived from another process: look again (not for an
        # object this request has just learnt of).
        look = not asked_origin and view.obj.meta.storable  # an unstored answer is not there
        obj = await self._lookup(key) if look else None
        if obj is not None and obj.gen == view.obj.gen and self.views.get(key) is view:
            view.add_slices(obj)
        elif obj is not None:
            view = await self.views.load(obj)
        resp = self.answers.answer(req, view, fetch=True, check_fresh=False)
        if resp is None:
            return self.answers.error(req, 503, "store changed under the request; retry", key=key)
        started.append(resp)
        if isinstance(resp.stream, MissStream):
            try:
                await resp.stream.prepare()
            except OriginChanged:
                await self.invalidate(view)
                raise
        return resp

    async def learn(
        self, key: str, idx: int | None, req: Request | None = None, store: bool = True
    ) -> StoredObject | ObjectMeta | None:
        """Ask the origins what ``key`` is and index it (``ObjectMeta`` alone for
        what may not be stored; ``None``: no origin has it). Concurrent misses
        share one: until the index has the object, a second request would be
        waste. With ``idx`` (the slice the request starts with), the answer to
        that slice's GET tells, and its bytes keep coming for the request.
        ``store`` false (a request that said no-store): asked for that request
        alone, and never stored."""
        headers = _str_headers(req) if req is not None else None
        if not store:
            meta = await self._ask_origin(key, idx, headers)
            return None if meta is None else dataclasses.replace(meta, storable=False)
        follower = key in self.learning
        got = await shared(self.learning, key, lambda: self._learn_now(key, idx, headers))
        if follower and req is not None and not _fits(got, req):
            # another request's headers brought this answer: a private one (for
            # that request alone), or another variant: this one's own is
            # learnt and stored beside it, under its variant key
            if isinstance(got, StoredObject):
                vkey = _variant_key(key, got.meta, req)
                own = lambda: self._learn_now(vkey, idx, headers)  # noqa: E731
                return await shared(self.learning, vkey, own)
            got = await self._learn_now(key, idx, headers)
        return got

    async def _ask_origin(
        self, key: str, idx: int | None, headers: dict[str, str] | None
    ) -> ObjectMeta | None:
        if idx is None:
            return await self.chain.head(key, headers)
        return await self.chain.learn(key, idx, self.store.slice_size, headers)

    async def _learn_now(
        self, key: str, idx: int | None, headers: dict[str, str] | None
    ) -> StoredObject | ObjectMeta | None:
        meta = await self._ask_origin(key, idx, headers)
        if meta is None or not meta.storable:
            return meta
        first = self.chain.learnt.get((key, idx)) if idx is not None else None
        return self._index_behind(key, meta, first)

    def _index_behind(
        self, key: str, meta: ObjectMeta, first: SliceFetch | None = None
    ) -> StoredObject:
        """The object just learnt, to answer with now; its index entry is
        committed meanwhile, so the first byte waits neither for the commit's
        fsync nor for the index's write lock (held by slice commits). Its
        slices are stored only once the entry is there (``_entry``). With
        ``first`` (the learnt slice's fetch), the commit starts once a player
        has taken its first bytes (at most ``TAKE_WAIT`` later): its thread's
        work would compete with them for the CPU and the GIL."""
        roots = self.store.usable_roots() or list(self.store.roots.values())
        obj = StoredObject(key, new_gen(), roots[0], meta, self.store.slice_size)
        k = (key, obj.gen)
        fut = asyncio.ensure_future(self._commit(obj, first))
        self.indexing[k] = fut

        def done(f: asyncio.Future[StoredObject]) -> None:
            self.indexing.pop(k, None)
            if not f.cancelled():
                f.exception()  # logged by _commit; retrieved here

        fut.add_done_callback(done)
        self.views.remember(View(obj, self.views.cors))  # found by the next request
        return obj

    async def _commit(self, obj: StoredObject, first: SliceFetch | None = None) -> StoredObject:
        """Index ``obj``; the entry the index has for it (another process's
        entry for the same version, when that one came first)."""
        if first is not None:
            await first.taken(TAKE_WAIT)
        try:
            entry = await self._index(obj.key, obj.meta, obj.gen)
        except Exception as exc:
            log.error("indexing %s failed: %s", loggable(obj.key), exc)
            self._drop_view_of(obj)
            raise
        if entry.gen == obj.gen:
            obj.root = entry.root  # where the index placed it
            return obj
        self._drop_view_of(obj)
        return entry

    def _drop_view_of(self, obj: StoredObject) -> None:
        view = self.views.get(obj.key)
        if view is not None and view.obj.gen == obj.gen:
            self.views.drop(view)

    async def _entry(self, obj: StoredObject) -> StoredObject | None:
        """``obj`` as the index has it, once its entry is committed (``None``
        when that failed)."""
        pending = self.indexing.get((obj.key, obj.gen))
        if pending is None:
            return obj
        try:
            return await asyncio.shield(pending)
        except Exception:
            return None

    async def _remove(self, obj: StoredObject) -> None:
        """Remove ``obj``'s version from the index, once its entry is committed."""
        entry = await self._entry(obj)
        if entry is not None:
            await self.write(self.store.remove, entry.key, entry.gen)

    async def indexed(self, key: str) -> None:
        """Until no entry is being committed for ``key``, its queries or its
        variants (a removal then finds what it must remove)."""
        for k, pending in list(self.indexing.items()):
            if k[0].startswith(key):
                with contextlib.suppress(Exception):
                    await asyncio.shield(pending)

    def answer_unstored(self, req: Request, key: str, meta: ObjectMeta) -> Response:
        """``no-store``/``private`` content: fetched for this request only."""
        roots = self.store.usable_roots() or list(self.store.roots.values())
        root = roots[0]  # an unstored answer writes nothing: any root names it
        obj = StoredObject(key, "u" + secrets.token_hex(8), root, meta, self.store.slice_size)
        resp = self.answers.answer(req, View(obj, self.views.cors), fetch=True, check_fresh=False)
        assert resp is not None
        return resp

    async def revalidated(self, view: View, req: Request | None = None) -> View | None:
        """A stale view made fresh (304), replaced (200), or ``None`` (gone);
        on an origin error, the stale view when RFC 9111 allows it."""
        key, meta = view.key, view.obj.meta
        headers = _str_headers(req) if req is not None else None
        try:
            new = await shared(
                self.revalidations,
                key,
                lambda: self.chain.revalidate(key, meta, headers, self.store.slice_size),
            )
        except OriginError:
            if may_serve_stale_on_error(
                meta.fresh_until, meta.stale_if_error, meta.must_revalidate, time.time()
            ):
                log.warning("serving stale %s: the origin failed to revalidate it", loggable(key))
                return view
            raise
        if new is None:
            await self.invalidate(view)
            return None
        if new.status >= 500 and may_serve_stale_on_error(
            meta.fresh_until, meta.stale_if_error, meta.must_revalidate, time.time()
        ):
            log.warning("serving stale %s: the origin answered %d", loggable(key), new.status)
            return view
        current = self.views.get(key)
        if (
            current is not None
            and current is not view
            and is_fresh(current.fresh_until, time.time())
        ):
            return current  # another request renewed it meanwhile
        if same_version(new, meta) and new.status == meta.status:
            obj = view.obj
            if new.storable and not await self.write(
                heads.renew_with_head, self.store, key, obj.gen, new
            ):
                obj = await self._index(key, new)
            obj.meta = new
            return await self.views.load(obj)
        if not new.storable:
            return View(
                StoredObject(key, "u" + secrets.token_hex(8), view.obj.root, new, view.slice_size),
                self.views.cors,
            )
        obj = await self._index(key, new)
        return await self.views.load(obj)

    async def verified(self, view: View, idx: int) -> bool:
        """Check stored slice ``idx`` of ``view`` (first serve in this start, in a
        thread): true and served from its file when its bytes match the
        checksum recorded at commit; else the store has dropped it (and counted
        it) and it is fetched again like any missing slice."""
        obj = view.obj
        good = idx in await self.run(self.store.verify, obj, [idx])
        view.unverified.discard(idx)
        if not good:
            self.views.forget_slice(view, idx)
            return False
        view.paths[idx] = obj.slice_path(idx)
        if idx == 0 and view.small is None and len(view.paths) == 1:
            with contextlib.suppress(OSError):
                await self.run(view.load)  # a small object: its bytes kept in memory
        return True

    def start_fetch(self, view: View, idx: int, admit: bool = True) -> SliceFetch:
        obj = view.obj

        async def store(chunks: list[bytes]) -> None:
            await self._store_slice(obj, idx, chunks)

        return self.chain.fetch(
            obj.key,
            obj.gen,
            idx,
            obj.meta,
            obj.slice_size,
            store if obj.meta.storable and admit else None,
        )

    async def _store_slice(self, obj: StoredObject, idx: int, chunks: list[bytes]) -> None:
        size = sum(len(c) for c in chunks)
        if self.backlog + size > self.backlog_max:
            self.on_store_skipped()  # the store is behind: served, not held for it
            return
        self.backlog += size
        try:
            stored = await self._write_slice(obj, idx, chunks)
        finally:
            self.backlog -= size
        if not stored:
            self.on_store_failed()

    async def _write_slice(self, obj: StoredObject, idx: int, chunks: list[bytes]) -> bool:
        entry = await self._entry(obj)
        if entry is None:  # its index entry failed (logged)
            return False
        obj = entry
        try:
            stored = await self.write(self.store.put_slice, obj, idx, chunks)
        except Exception as exc:
            log.error("storing slice %d of %s failed: %s", idx, loggable(obj.key), exc)
            return False
        if stored:
            self.views.landed_slice(obj, idx, chunks)
        return stored

    async def invalidate(self, view: View) -> None:
        """The origin changed the object: forget this version everywhere."""
        self.views.drop(view)
        if view.obj.meta.storable:
            await self._remove(view.obj)

    # -- unsafe methods --------------------------------------------------------

    async def forward(self, req: Request, key: str) -> Response:
        """An unsafe method to the first HTTP origin, once (never retried), its
        answer passed back; a non-error answer invalidates what is stored
        under ``key`` (RFC 9111 §4.4)."""
        origin = next(o for o in self.chain.origins if hasattr(o, "forward"))
        try:
            got = await origin.forward(req.method, key, _str_headers(req), req.body)  # type: ignore[attr-defined]
        except OriginTimeout as exc:
            return self._failed(req, 504, "the origin did not answer in time", exc, key)
        except OriginError as exc:
            return self._failed(req, 502, "the origin failed to answer", exc, key)
        if got.status < 400:  # the key and all its variants
            variants = cachepolicy.purged_prefixes(key)[1]
            self.views.forget(key)
            self.views.forget_prefix(variants)
            await self.indexed(key)
            await self.write(self.store.remove_with, key, (variants,))
        return self.answers.forwarded(req, key, got.status, got.headers, got.body)


def _relabel(resp: Response, fwd: str, fwd_status: int | None, stored: bool) -> None:
    """Say in the answer's ``Cache-Status`` that the origin was asked."""
    value = cachepolicy.cache_status(
        CACHE_NAME, fwd=fwd, fwd_status=fwd_status, stored=stored and resp.status < 300
    )
    resp.head = resp.head.replace(HIT_STATUS, f"Cache-Status: {value}\r\n".encode())


NEGATIVE = f"Cache-Status: {CACHE_NAME}; hit; detail=negative-cache\r\n"
ORIGIN_FAILED = f"Cache-Status: {CACHE_NAME}; fwd=miss; detail=origin-error\r\n"


def _str_headers(req: Request) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in req.headers.items()}


def _variant_key(key: str, stored: ObjectMeta, req: Request) -> str:
    """Where the variant ``req`` selects is stored, beside ``stored`` (another)."""
    return cachepolicy.variant_key(key, (n for n, _ in stored.vary), _str_headers(req))


def _selects(meta: ObjectMeta, req: Request) -> bool:
    return cachepolicy.vary_matches(meta.vary, _str_headers(req))


def _fits(got: StoredObject | ObjectMeta | None, req: Request) -> bool:
    """May an answer learnt for a concurrent request answer ``req`` too? Not an
    unstored HTTP answer (private, no-store: that request's alone), nor a
    variant whose Vary selection ``req`` does not match."""
    if got is None:
        return True
    if isinstance(got, ObjectMeta):
        return got.headers is None  # a file or S3 origin's: nothing private in it
    return not got.meta.vary or _selects(got.meta, req)


_FIRST_BYTE = re.compile(rb"\s*bytes\s*=\s*(\d+)\s*-")


def first_slice(req: Request, slice_size: int) -> int | None:
    """The slice a GET starts with, when that is known without the object's
    size; ``None`` (a HEAD, a suffix range): learn the object by a HEAD."""
    if req.method != "GET":
        return None
    value = req.headers.get(b"range")
    if value is None:
        return 0
    m = _FIRST_BYTE.match(value)
    return int(m.group(1)) // slice_size if m else None


class MissStream:
    """The body of a response with missing slices: whether what it fetches is
    to be stored, and the fetches it has started."""

    def __init__(
        self, view: View, pieces: list[Any], missing: list[int], admit: bool, miss: MissPath
    ) -> None:
        self.view = view
        self.missing = missing
        self.first = missing[0]
        self.admit = admit
        self.miss = miss
        self.fetches: dict[int, SliceFetch] = {}
        self.gen = miss.stream(view, pieces, missing, admit, self.fetches)

    async def prepare(self) -> None:
        """Ready to send the status line: the first missing slices that are only
        unverified are checked (``VERIFY_AHEAD`` at most; the stream checks the
        rest as it goes), and the first really missing one has its first byte
        (or its error)."""
        view, miss = self.view, self.miss
        for n, idx in enumerate(dict.fromkeys(self.missing)):
            if idx not in view.unverified:
                if miss.views.stored(view, idx) is None:
                    self.first = idx
                    await self.first_fetch().started()
                return
            if n >= VERIFY_AHEAD:
                return  # the stream checks the rest as it sends them
            if not await miss.verified(view, idx):
                self.first = idx
                await self.first_fetch().started()
                return

    def first_fetch(self) -> SliceFetch:
        """The fetch of the first missing slice, started now: its first byte
        (or its error) decides the status line."""
        f = self.fetches.get(self.first)
        if f is None:
            f = self.fetches[self.first] = self.miss.start_fetch(self.view, self.first, self.admit)
        return f

    def __aiter__(self) -> AsyncIterator[Part]:
        return self.gen

    async def aclose(self) -> None:
        await self.gen.aclose()  # type: ignore[attr-defined]
