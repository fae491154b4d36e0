"""Group commit: slices staged at about the same time share one index commit.

A slice's bytes are written and fsynced by the thread that stores it; its
commit (rename into place, the directory's fsync, the index row and the
commit's own fsync, under the index's write lock) is what the store's writers
queue for. The first in the queue commits, in one transaction, every slice
that arrived while the commit before was under way (a leader and its
followers); each waits for the commit that carries its slice and gets its own
answer. Nothing is said stored before that commit returned: the order of
fsync, rename, directory fsync and commit is each slice's as before, one
directory fsync and one index fsync now serving several slices.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class Pending(Generic[T]):
    item: T
    stored: bool = False  # the answer its commit gave
    done: bool = False


class GroupCommit(Generic[T]):
    """``commit(batch)`` sets each pending item's ``stored``; ``submit`` is
    called from any thread and returns its item's answer once committed."""

    def __init__(self, commit: Callable[[list[Pending[T]]], None]) -> None:
        self.commit = commit
        self._cond = threading.Condition()
        self._queue: list[Pending[T]] = []
        self._leading = False

    def submit(self, item: T) -> bool:
        p = Pending(item)
        with self._cond:
            self._queue.append(p)
            while self._leading and not p.done:
                self._cond.wait()
            if p.done:
                return p.stored  # a leader committed it
            self._leading = True
            batch, self._queue = self._queue, []
        try:
            self.commit(batch)
        finally:
            with self._cond:
                self._leading = False
                for q in batch:
                    q.done = True
                self._cond.notify_all()
        return p.stored
