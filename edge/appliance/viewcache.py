"""The views this process holds, and the slices it stored lately.

Rules it keeps:
- at most one view per key, of one generation (version) of the object; a view
  made from an older look at the index inherits the slices stored since;
- the oldest views are forgotten past ``MAX_VIEWS`` or when open slice files
  pass ``max_open_files`` (their files close once no response sends from them);
- ``landed`` remembers the slices this process stored per key and generation,
  so a stream whose view was dropped meanwhile does not fetch them again; a
  deletion (the index's change table) forgets the key in both.
Nothing here asks the origin or writes the index: the miss path and the
appliance do, and tell the cache what changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any

from edge.appliance.view import SMALL_OBJECT_MAX, View
from edge.http.wire import OpenFile
from edge.store.store import StoredObject

log = logging.getLogger("edgefleet.appliance")

MAX_VIEWS = 200_000
MAX_LANDED = 10_000


class ViewCache:
    def __init__(self, run: Callable[..., asyncio.Future[Any]], cors: str) -> None:
        self.run = run  # runs a blocking function in the appliance's threads
        self.cors = cors
        self.views: dict[str, View] = {}
        self.landed: dict[str, tuple[str, set[int]]] = {}
        # keys with a damaged slice the store is dropping right now: the slow
        # path waits for it before it looks the key up again
        self.damage: dict[str, asyncio.Future[Any]] = {}
        self.max_open_files = 4096

    def get(self, key: str) -> View | None:
        return self.views.get(key)

    def __len__(self) -> int:
        return len(self.views)

    async def load(self, obj: StoredObject) -> View:
        """A view of ``obj``, its first slice file opened (in a thread), remembered."""
        view = View(obj, self.cors)
        if obj.slices:  # nothing to open for an object just learnt from the origin
            with contextlib.suppress(OSError):  # a file gone meanwhile: found again when sent
                await self.run(view.load)
        self.remember(view)
        return view

    def remember(self, view: View) -> None:
        views = self.views
        old = views.get(view.key)
        if old is not None and old.obj.gen == view.obj.gen:
            # made from an older look at the index: keep what was stored since
            for idx, path in enumerate(old.paths):
                if path is not None and view.paths[idx] is None:
                    view.paths[idx] = path
                    view.unverified.discard(idx)
            if old.small is not None:
                view.keep_small(old.small)
        if len(views) >= MAX_VIEWS or OpenFile.count > self.max_open_files:
            self.forget_oldest(len(views) // 10 + 1)
        views[view.key] = view

    def drop(self, view: View) -> None:
        """Forget ``view`` if it is still the key's current one."""
        if self.views.get(view.key) is view:
            del self.views[view.key]

    def forget(self, key: str) -> None:
        """The key changed in the index (deleted, replaced): forget all of it."""
        self.views.pop(key, None)
        self.landed.pop(key, None)

    def forget_prefix(self, prefix: str) -> None:
        for key in [k for k in self.views if k.startswith(prefix)]:
            self.forget(key)

    def clear(self) -> None:
        self.views.clear()
        self.landed.clear()

    def forget_oldest(self, count: int) -> None:
        """Drop the ``count`` oldest views (insertion order)."""
        for key in list(itertools.islice(self.views, count)):
            del self.views[key]

    def shed_files(self) -> None:
        """Out of file descriptors: forget half the views (their files close)."""
        log.error("out of file descriptors: forgetting half of %d views", len(self.views))
        self.forget_oldest(len(self.views) // 2 + 1)
        self.max_open_files = max(64, OpenFile.count // 2)

    def stored(self, view: View, idx: int) -> View | None:
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
            view.unverified.discard(idx)
            return view
        return None

    def damaged(self, key: str, dropping: asyncio.Future[Any]) -> None:
        """The store is dropping a damaged slice of ``key`` (``dropping``)."""
        self.damage[key] = dropping
        dropping.add_done_callback(
            lambda f: self.damage.pop(key, None) if self.damage.get(key) is f else None
        )

    async def settled(self, key: str) -> None:
        """Wait until no damaged slice of ``key`` is being dropped."""
        dropping = self.damage.get(key)
        if dropping is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(dropping)

    def forget_slice(self, view: View, idx: int) -> None:
        """Slice ``idx`` of ``view``'s version is gone from disk (or failed its check)."""
        view.paths[idx] = None
        view.unverified.discard(idx)
        gen, landed = self.landed.get(view.key, ("", set()))
        if gen == view.obj.gen:
            landed.discard(idx)

    def landed_slice(self, obj: StoredObject, idx: int, chunks: list[bytes]) -> None:
        """Slice ``idx`` of ``obj`` was just stored by this process."""
        gen, landed = self.landed.get(obj.key, ("", set()))
        if gen != obj.gen:
            landed = set()
        landed.add(idx)
        if len(self.landed) > MAX_LANDED:
            self.landed.clear()
        self.landed[obj.key] = (obj.gen, landed)
        current = self.views.get(obj.key)
        if current is not None and current.obj.gen == obj.gen:
            current.paths[idx] = obj.slice_path(idx)
            current.unverified.discard(idx)
            if obj.slice_count == 1 and obj.meta.size <= SMALL_OBJECT_MAX:
                current.keep_small(b"".join(chunks))
