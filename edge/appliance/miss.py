"""The appliance's slow path: what is not a hit in memory.

Theory of operation: ``_slow`` finds the object in the index, or learns it from
the origins (``_learn``: one origin request and one index entry for concurrent
misses; the answer to the GET of the first slice the request needs tells what
the object is, and its bytes go on to the request),
revalidates it when stale (``_revalidated``, RFC 9111), and answers: from the
store when the slices are there, else with a ``MissStream`` that sends stored
slices from their files and missing ones as their ``SliceFetch`` delivers them
(``edge.origin.chain``), storing what admission lets in. ``MissPath`` is a part of
``Appliance``; it is kept here because it is a job of its own.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from edge.appliance.view import SMALL_OBJECT_MAX, View
from edge.core.freshness import is_fresh, may_serve_stale_on_error
from edge.core.meta import ObjectMeta
from edge.http.wire import FileSpan, OpenFile, Part, Request, Response
from edge.origin import OriginChanged, OriginError, OriginTimeout
from edge.origin.chain import SliceFetch, shared
from edge.store import StoredObject

if TYPE_CHECKING:
    from edge.appliance.appliance import Appliance

log = logging.getLogger("edgefleet.appliance")

READ_AHEAD = 2  # slices fetched ahead of the one being sent


class MissPath:
    async def _stream(
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
                f = fetches[idx] = self._start_fetch(view, idx, admit)
            return f

        ahead: list[int] = list(dict.fromkeys(missing))
        for idx in ahead[1:READ_AHEAD]:
            if self._stored(view, idx) is None:
                fetch(idx)
        for p in pieces:
            if type(p) is bytes:
                yield p
                continue
            idx, offset, count = p
            stored = self._stored(view, idx)
            if stored is not None:
                path = stored.paths[idx]
                assert path is not None
                try:
                    f: OpenFile | None = stored.file(idx)
                except FileNotFoundError:
                    # dropped since (scrub, eviction) and not yet in the change
                    # table's news: fetch it like any missing slice
                    self._forget_slice(stored, idx)
                    f = None
                except OSError:
                    f = None  # the connection opens it, and reports what went wrong
                else:
                    view = stored
                if stored.paths[idx] is not None:
                    yield FileSpan(path, offset, count, f, self._on_disk_error(stored))
                    continue
            pos = ahead.index(idx) if idx in ahead else -1
            if pos >= 0 and pos + READ_AHEAD < len(ahead):
                nxt = ahead[pos + READ_AHEAD]
                if self._stored(view, nxt) is None:
                    fetch(nxt)
            try:
                async for part in fetch(idx).read(offset, count):
                    yield part
            except OriginChanged:
                await self._invalidate(view)
                raise

    # -- the slow path -------------------------------------------------------

    async def _slow(self, req: Request, key: str, again: bool = True) -> Response:
        resp: Response | None = None
        asked_origin = False
        try:
            view = self.views.get(key)
            if view is None:
                obj = await self.run(self.store.lookup, key)
                if obj is None:
                    if not self.origins:
                        return self.error(req, 404, "not in the store, and no origin", key=key)
                    if self.puller.known_missing(key):
                        return self.error(req, 404, "not found at the origin", key=key)
                    learnt = await self._learn(key, first_slice(req, self.store.slice_size))
                    asked_origin = True
                    if learnt is None:
                        return self.error(req, 404, "not found at the origin", key=key)
                    if isinstance(learnt, ObjectMeta):
                        resp = self._answer_unstored(req, key, learnt)
                        if isinstance(resp.stream, MissStream):
                            await resp.stream.first_fetch().started()
                        return resp
                    obj = learnt
                view = await self._load(obj)
            if not is_fresh(view.fresh_until, time.time()):
                fresh = await self._revalidated(view)
                if fresh is None:
                    return self.error(req, 404, "gone from the origin", key=key)
                view = fresh
            resp = self._answer(req, view, fetch=False, check_fresh=False)
            if resp is None:
                # Slices may have arrived from another process: look again
                # (not for an object this request has just learnt of).
                obj = None if asked_origin else await self.run(self.store.lookup, key)
                if obj is not None and obj.gen == view.obj.gen and self.views.get(key) is view:
                    view.add_slices(obj)
                elif obj is not None:
                    view = await self._load(obj)
                resp = self._answer(req, view, fetch=True, check_fresh=False)
                if resp is None:
                    return self.error(req, 503, "store changed under the request; retry", key=key)
                if isinstance(resp.stream, MissStream):
                    # The first missing slice decides the status: wait for its
                    # first byte (not the whole slice) before answering.
                    try:
                        await resp.stream.first_fetch().started()
                    except OriginChanged:
                        await self._invalidate(view)
                        raise
            if asked_origin and resp.cache == "hit":
                resp.cache = "miss"  # an empty object, or a HEAD: still learnt from the origin
            return resp
        except (OriginError, asyncio.CancelledError) as exc:
            if resp is not None and resp.stream is not None:
                await resp.stream.aclose()  # type: ignore[attr-defined]
            if isinstance(exc, OriginChanged) and again:
                return await self._slow(req, key, again=False)
            if isinstance(exc, OriginTimeout):
                return self.error(req, 504, f"origin timed out: {exc}", key=key)
            if isinstance(exc, OriginError):
                return self.error(req, 502, f"origin failed: {exc}", key=key)
            raise

    async def _learn(self, key: str, idx: int | None) -> StoredObject | ObjectMeta | None:
        """Ask the origins what ``key`` is and index it (``ObjectMeta`` alone for
        what may not be stored; ``None``: no origin has it). Concurrent misses
        share one: until the index has the object, a second request would be
        waste. With ``idx`` (the slice the request starts with), the answer to
        that slice's GET tells, and its bytes keep coming for the request."""
        return await shared(self.learning, key, lambda: self._learn_now(key, idx))

    async def _learn_now(self, key: str, idx: int | None) -> StoredObject | ObjectMeta | None:
        if idx is None:
            meta = await self.puller.head(key)
        else:
            meta = await self.puller.learn(key, idx, self.store.slice_size)
        if meta is None or not meta.storable:
            return meta
        return await self.run(self.store.ensure_object, key, meta)

    def _answer_unstored(self, req: Request, key: str, meta: ObjectMeta) -> Response:
        """``no-store``/``private`` content: fetched for this request only."""
        root = self.store.usable_roots()[0]
        obj = StoredObject(key, "u" + secrets.token_hex(8), root, meta, self.store.slice_size)
        resp = self._answer(req, View(obj, self.cors), fetch=True, check_fresh=False)
        assert resp is not None
        return resp

    async def _revalidated(self, view: View) -> View | None:
        """A stale view made fresh (304), replaced (200), or ``None`` (gone);
        on an origin error, the stale view when RFC 9111 allows it."""
        key, meta = view.key, view.obj.meta
        try:
            new = await shared(self.revalidations, key, lambda: self.puller.revalidate(key, meta))
        except OriginError:
            if may_serve_stale_on_error(
                meta.fresh_until, meta.stale_if_error, meta.must_revalidate, time.time()
            ):
                log.warning("serving stale %r: the origin failed to revalidate it", key)
                return view
            raise
        if new is None:
            await self._invalidate(view)
            return None
        current = self.views.get(key)
        if (
            current is not None
            and current is not view
            and is_fresh(current.fresh_until, time.time())
        ):
            return current  # another request renewed it meanwhile
        if new.etag == meta.etag and new.size == meta.size:
            obj = view.obj
            if new.storable and not await self.run(self.store.renew, key, obj.gen, new):
                obj = await self.run(self.store.ensure_object, key, new)
            obj.meta = new
            return await self._load(obj)
        if not new.storable:
            return View(
                StoredObject(key, "u" + secrets.token_hex(8), view.obj.root, new, view.slice_size),
                self.cors,
            )
        obj = await self.run(self.store.ensure_object, key, new)
        return await self._load(obj)

    def _stored(self, view: View, idx: int) -> View | None:
        """A view of this version that has slice ``idx`` stored, if any: the
        slice may have landed since ``view`` was made."""
        if view.paths[idx] is not None:
            return view
        current = self.views.get(view.key)
        if current is not None and current.obj.gen == view.obj.gen and current.paths[idx]:
            return current
        gen, landed = self.landed.get(view.key, ("", ()))
        if gen == view.obj.gen and idx in landed:
            # stored by this process while the view was out of ``views``
            view.paths[idx] = view.obj.slice_path(idx)
            return view
        return None

    def _admit(self, key: str) -> bool:
        """Store what this miss fetches? Always, unless the store is full and
        the admission filter says the object has not earned a place yet."""
        return not self.store_full or self.admission.admit(key)

    def _forget_slice(self, view: View, idx: int) -> None:
        view.paths[idx] = None
        gen, landed = self.landed.get(view.key, ("", set()))
        if gen == view.obj.gen:
            landed.discard(idx)

    def _start_fetch(self, view: View, idx: int, admit: bool = True) -> SliceFetch:
        obj = view.obj

        async def store(chunks: list[bytes]) -> None:
            await self._store_slice(obj, idx, chunks)

        return self.puller.fetch(
            obj.key,
            obj.gen,
            idx,
            obj.meta,
            obj.slice_size,
            store if obj.meta.storable and admit else None,
        )

    async def _store_slice(self, obj: StoredObject, idx: int, chunks: list[bytes]) -> None:
        try:
            stored = await self.run(self.store.put_slice, obj, idx, chunks)
        except Exception as exc:
            log.error("storing slice %d of %r failed: %s", idx, obj.key, exc)
            stored = False
        if not stored:
            self.metrics.store_write_failed()
            return
        gen, landed = self.landed.get(obj.key, ("", set()))
        if gen != obj.gen:
            landed = set()
        landed.add(idx)
        if len(self.landed) > 10_000:
            self.landed.clear()
        self.landed[obj.key] = (obj.gen, landed)
        current = self.views.get(obj.key)
        if current is not None and current.obj.gen == obj.gen:
            current.paths[idx] = obj.slice_path(idx)
            if obj.slice_count == 1 and obj.meta.size <= SMALL_OBJECT_MAX:
                current.keep_small(b"".join(chunks))

    async def _invalidate(self, view: View) -> None:
        """The origin changed the object: forget this version everywhere."""
        if self.views.get(view.key) is view:
            del self.views[view.key]
        if view.obj.meta.storable:
            await self.run(self.store.remove, view.key, view.obj.gen)


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
        self, view: View, pieces: list[Any], missing: list[int], admit: bool, app: Appliance
    ) -> None:
        self.view = view
        self.first = missing[0]
        self.admit = admit
        self.app = app
        self.fetches: dict[int, SliceFetch] = {}
        self.gen = app._stream(view, pieces, missing, admit, self.fetches)

    def first_fetch(self) -> SliceFetch:
        """The fetch of the first missing slice, started now: its first byte
        (or its error) decides the status line."""
        f = self.fetches.get(self.first)
        if f is None:
            f = self.fetches[self.first] = self.app._start_fetch(self.view, self.first, self.admit)
        return f

    def __aiter__(self) -> AsyncIterator[Part]:
        return self.gen

    async def aclose(self) -> None:
        await self.gen.aclose()  # type: ignore[attr-defined]
