"""A directory as origin (``file:///srv/videos``): the embedded default.

The key is joined under the directory after ``edge.core.keys`` validated it, and
the resolved path must still be inside the directory, so a symlink cannot
lead a request out of it either. The validator is the one nginx uses: a
strong ETag from mtime and size. A read checks the open file against the
version it was asked for: a file replaced or removed since is a change
(``OriginChanged``: learn the object again), not a failure of the origin.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator

import aiofiles
import aiofiles.os

from edge.core.mediatypes import guess_type
from edge.core.meta import ObjectMeta
from edge.origin import OriginChanged, OriginError, OriginRefused

CHUNK = 256 * 1024


class FileOrigin:
    def __init__(self, directory: str) -> None:
        self.directory = os.path.realpath(directory)
        self.url = "file://" + self.directory

    def _path(self, key: str) -> str | None:
        path = os.path.realpath(os.path.join(self.directory, key))
        if not path.startswith(self.directory + os.sep):
            return None
        return path

    async def head(self, key: str, current: ObjectMeta | None = None) -> ObjectMeta | None:
        path = self._path(key)
        if path is None:
            return None
        try:
            st = await aiofiles.os.stat(path)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise OriginRefused(f"{key!r}: a name too long for the origin", 414) from None
            raise OriginError(f"{self.url}: cannot stat {key!r}: {exc.strerror}") from None
        if not os.path.isfile(path):
            return None
        return ObjectMeta(st.st_size, _etag(st), int(st.st_mtime), guess_type(key))

    async def read(
        self, key: str, meta: ObjectMeta, start: int, length: int
    ) -> AsyncIterator[bytes]:
        path = self._path(key)
        if path is None:
            raise OriginError(f"{key!r} is outside the origin directory")
        try:
            async with aiofiles.open(path, "rb") as f:
                st = await asyncio.to_thread(os.fstat, f.fileno())
                if st.st_size != meta.size or _etag(st) != meta.etag:
                    raise OriginChanged(
                        f"{key!r} changed at the origin: {st.st_size} bytes, ETag {_etag(st)}"
                        f" (asked for {meta.size} bytes, ETag {meta.etag})"
                    )
                await f.seek(start)
                left = length
                while left > 0:
                    chunk = await f.read(min(CHUNK, left))
                    if not chunk:
                        raise OriginError(f"{key!r}: short read at the origin")
                    left -= len(chunk)
                    yield chunk
        except FileNotFoundError:
            raise OriginChanged(f"{key!r} disappeared from the origin") from None
        except OSError as exc:
            raise OriginError(f"{self.url}: cannot read {key!r}: {exc.strerror}") from None

    async def close(self) -> None:
        return None


def _etag(st: os.stat_result) -> str:
    return f'"{st.st_mtime_ns // 1_000_000_000:x}-{st.st_size:x}"'
