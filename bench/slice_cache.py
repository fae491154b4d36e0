"""nginx's own slice cache in front of an origin: the fair peer for cold misses.

nginx's ``slice`` module splits every request into ranged subrequests of one
slice each, caches each slice under its own key and fetches a missing slice
once however many clients ask for it (``proxy_cache_lock``): the same job as
the appliance's miss path. The benchmarks start it the way the appliance is
started (one worker, a fresh cache directory each time, the same slice size,
the same origin), so the two are compared cold against cold in the same run.

Its freshness comes from ``proxy_cache_valid``: nginx has no heuristic
freshness, and the origin's objects carry only a Last-Modified.
"""

from __future__ import annotations

from pathlib import Path

from benchlib import HOST, Server, start_nginx

ZONE = "slices"


def directives(cache: Path, origin_port: int, capacity: int) -> str:
    """The ``http`` block's part: the cache's directory and the origin, kept alive."""
    return f"""access_log off;
    proxy_cache_path {cache} levels=1:2 keys_zone={ZONE}:16m max_size={capacity}
                     inactive=1d use_temp_path=off;
    upstream origin {{
        server {HOST}:{origin_port};
        keepalive 32;
    }}"""


def location(slice_size: int) -> str:
    """``location /``: every request as slices, each cached under its own key."""
    return f"""slice {slice_size};
            proxy_cache {ZONE};
            proxy_cache_key $uri$is_args$args$slice_range;
            proxy_set_header Range $slice_range;
            proxy_cache_valid 200 206 1d;
            proxy_cache_lock on;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://origin;"""


def start_slice_cache(
    work: Path,
    name: str,
    exe: str,
    origin_port: int,
    slice_size: int,
    capacity: int,
    cpu: int | None,
) -> Server:
    """nginx as a slice cache on an empty cache directory (its ``store``)."""
    cache = work / f"{name}-cache"
    server = start_nginx(
        work,
        name,
        exe,
        cpu,
        directives(cache, origin_port, capacity),
        location=location(slice_size),
    )
    server.store = cache
    return server


def cached_slices(server: Server) -> int:
    """How many slices the cache holds on disk (one file each)."""
    if server.store is None or not server.store.exists():
        return 0
    return sum(1 for p in server.store.rglob("*") if p.is_file())
