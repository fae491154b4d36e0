"""An object from an HTTP origin and its answer head, read and written together.

The store keeps an HTTP origin's status, end-to-end headers and Vary selection
beside the object, written in the object's own transaction
(``Store.ensure_object``, ``Store.renew``); these functions run in the store's
threads and join the two when read, so the miss path sees one ``StoredObject`` whose
``meta`` carries what the origin said.
"""

from __future__ import annotations

import dataclasses
import json

from edge.core import cachepolicy
from edge.core.meta import ObjectMeta
from edge.store import Store, StoredObject


def lookup_with_head(store: Store, key: str, quick: bool = False) -> StoredObject | None:
    """``quick``: read on the event loop (``IndexBusy`` rather than a wait)."""
    obj = store.lookup(key, quick)
    if obj is None:
        return None
    head = store.http_head(key, obj.gen, quick)
    if head is not None:
        status, headers, vary = head
        obj.meta = dataclasses.replace(
            obj.meta,
            status=status,
            headers=tuple((n, v) for n, v in json.loads(headers)),
            vary=tuple((n, v) for n, v in json.loads(vary)),
        )
    return obj


def index_with_head(
    store: Store, key: str, meta: ObjectMeta, gen: str | None = None
) -> StoredObject:
    if cachepolicy.VARIANT_MARK in key:
        bound_variants(store, key)
    obj = store.ensure_object(key, meta, gen=gen)  # the answer head in the same transaction
    if meta.headers is not None:  # the index row has no room for them: carry them on
        obj.meta = dataclasses.replace(
            obj.meta, status=meta.status, headers=meta.headers, vary=meta.vary
        )
    return obj


def bound_variants(store: Store, key: str) -> None:
    """Room for variant ``key``: the least recently used of its key's other
    variants go, so a key holds at most ``MAX_VARIANTS`` (its first
    included; about, when workers store variants of one key at once)."""
    base = cachepolicy.base_key(key)
    others = [o for o in store.list_objects(base + cachepolicy.VARIANT_MARK) if o.key != key]
    for obj in sorted(others, key=lambda o: o.last_access)[: max(0, len(others) - MAX_OTHERS + 1)]:
        store.remove(obj.key, obj.gen)


MAX_OTHERS = cachepolicy.MAX_VARIANTS - 1  # beside the first, under the key itself


def renew_with_head(store: Store, key: str, gen: str, meta: ObjectMeta) -> bool:
    return store.renew(key, gen, meta)  # the answer head in the same transaction
