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

from edge.core.meta import ObjectMeta
from edge.store import Store, StoredObject


def lookup_with_head(store: Store, key: str) -> StoredObject | None:
    obj = store.lookup(key)
    if obj is None:
        return None
    head = store.http_head(key, obj.gen)
    if head is not None:
        status, headers, vary = head
        obj.meta = dataclasses.replace(
            obj.meta,
            status=status,
            headers=tuple((n, v) for n, v in json.loads(headers)),
            vary=tuple((n, v) for n, v in json.loads(vary)),
        )
    return obj


def index_with_head(store: Store, key: str, meta: ObjectMeta) -> StoredObject:
    obj = store.ensure_object(key, meta)  # the answer head in the same transaction
    if meta.headers is not None:  # the index row has no room for them: carry them on
        obj.meta = dataclasses.replace(
            obj.meta, status=meta.status, headers=meta.headers, vary=meta.vary
        )
    return obj


def renew_with_head(store: Store, key: str, gen: str, meta: ObjectMeta) -> bool:
    return store.renew(key, gen, meta)  # the answer head in the same transaction
