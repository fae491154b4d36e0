"""The appliance as a shared HTTP cache (RFC 9111) in front of a real HTTP
origin on loopback: one test per rule of docs/miss-path.md's "A shared HTTP
cache". Most drive the real Appliance in process (fast); the ones about the
wire (request bodies) run the real server process."""

from __future__ import annotations

import asyncio
import http.client
from pathlib import Path

import pytest
from conftest import Appliance
from origin_server import OriginServer
from test_appliance_inprocess import InProcess, ask, body_of, request, settle, status_of


@pytest.fixture
def origin():
    server = OriginServer().start()
    yield server
    server.stop()


def header(resp: object, name: str) -> str | None:
    """A header of a response's head, by name (any case)."""
    for line in resp.head.split(b"\r\n")[1:]:  # type: ignore[attr-defined]
        k, _, v = line.partition(b":")
        if k.strip().lower() == name.lower().encode():
            return v.strip().decode("latin-1")
    return None


async def get(app, target: str, method: str = "GET", **headers: str):  # type: ignore[no-untyped-def]
    resp = await ask(app, request(target, method, **headers))
    body = await body_of(resp)
    await settle(app)
    return resp, body


# -- the cache key ------------------------------------------------------------------


async def test_queries_are_objects_of_their_own_and_the_token_is_not(
    tmp_path: Path, origin: OriginServer
) -> None:
    origin.put("q.js?test=a", b"answer a", cache_control="max-age=60")
    origin.put("q.js?test=b", b"answer b", cache_control="max-age=60")
    async with InProcess(tmp_path, origin.url) as app:
        assert (await get(app, "/q.js?test=a"))[1] == b"answer a"
        assert (await get(app, "/q.js?test=b"))[1] == b"answer b"
        resp, body = await get(app, "/q.js?test=a&token=k1~1~~sig")
        assert body == b"answer a" and resp.cache == "hit"  # the token is not in the key
        assert (await get(app, "/q.js?token=other&test=b"))[1] == b"answer b"
        assert len(origin.asked("GET")) == 2


# -- Vary -------------------------------------------------------------------------------


async def test_a_variant_is_served_only_to_requests_it_matches(
    tmp_path: Path, origin: OriginServer
) -> None:
    origin.put("v.json", b"plain", cache_control="max-age=60", vary="Foo",
               variants={"1": b"for foo 1", "2": b"for foo 2"})  # fmt: skip
    origin.put("star.json", b"any", cache_control="max-age=60", vary="*")
    async with InProcess(tmp_path, origin.url) as app:
        assert (await get(app, "/v.json", foo="1"))[1] == b"for foo 1"
        resp, body = await get(app, "/v.json", foo="1")
        assert body == b"for foo 1" and resp.cache == "hit"
        resp, body = await get(app, "/v.json", foo="2")  # never the Foo: 1 variant
        assert body == b"for foo 2" and header(resp, "Cache-Status") == (
            "edgefleet; fwd=vary-miss; stored"
        )
        sent = {k.lower(): v for k, v in origin.asked("GET", "/v.json")[-1].headers.items()}
        assert sent["foo"] == "2"  # the request's headers go on to the origin
        assert (await get(app, "/v.json"))[1] == b"plain"  # no Foo at all
        for _ in range(2):
            assert (await get(app, "/star.json"))[1] == b"any"
        assert len(origin.asked("GET", "/star.json")) == 2  # Vary: * is never stored


async def test_concurrent_misses_of_two_variants_each_get_their_own(
    tmp_path: Path, origin: OriginServer
) -> None:
    """Concurrent misses share one origin request only when its answer fits
    each of them: a variant another request's headers chose is not served."""
    origin.put("w.json", b"plain", cache_control="max-age=60", vary="Foo",
               variants={"1": b"for foo 1", "2": b"for foo 2"})  # fmt: skip
    origin.put("private.json", b"yours", cache_control="private")
    async with InProcess(tmp_path, origin.url) as app:
        for target, want in (("/w.json", (b"for foo 1", b"for foo 2")),):
            resps = await asyncio.gather(
                ask(app, request(target, foo="1")), ask(app, request(target, foo="2"))
            )
            bodies = [await body_of(r) for r in resps]
            assert tuple(bodies) == want
        resps = await asyncio.gather(*(ask(app, request("/private.json")) for _ in range(2)))
        assert [await body_of(r) for r in resps] == [b"yours", b"yours"]
        # a private answer is for the request that asked for it: each asked the origin
        assert len(origin.asked("GET", "/private.json")) == 2
        await settle(app)


# -- stored headers, no invented validators ------------------------------------------------


async def test_the_origins_headers_are_stored_and_no_validator_is_invented(
    tmp_path: Path, origin: OriginServer
) -> None:
    origin.put("h.txt", b"hello", cache_control="max-age=60", validators=False,
               headers={"X-Custom": "kept", "Connection": "X-Hop", "X-Hop": "dropped",
                        "Content-Disposition": "inline",
                        "Access-Control-Allow-Origin": "https://parent"})  # fmt: skip
    async with InProcess(tmp_path, origin.url) as app:
        await get(app, "/h.txt")
        resp, body = await get(app, "/h.txt")
        assert resp.cache == "hit" and body == b"hello"
        assert header(resp, "X-Custom") == "kept"
        assert header(resp, "Content-Disposition") == "inline"
        assert header(resp, "X-Hop") is None  # named by Connection: hop-by-hop
        assert header(resp, "ETag") is None and header(resp, "Last-Modified") is None
        # the appliance's CORS line, once (a parent appliance sends its own)
        assert resp.head.lower().count(b"access-control-allow-origin:") == 1
        assert header(resp, "Access-Control-Allow-Origin") == "*"


# -- statuses -------------------------------------------------------------------------------


async def test_every_status_is_passed_through_and_stored_when_the_rfc_allows(
    tmp_path: Path, origin: OriginServer
) -> None:
    origin.put("moved", b"see /there", status=301, headers={"Location": "/there"})
    origin.put("gone.ts", b"gone for good", status=410, cache_control="max-age=60")
    origin.put("missing.ts", b"origin's own 404 page", status=404)
    origin.put("conflict", b"busy", status=409)
    origin.put("broken", b"origin trouble", status=503, cache_control="max-age=60")
    async with InProcess(tmp_path, origin.url) as app:
        for target, status, body in [
            ("/moved", 301, b"see /there"),
            ("/gone.ts", 410, b"gone for good"),
            ("/missing.ts", 404, b"origin's own 404 page"),
            ("/conflict", 409, b"busy"),
            ("/broken", 503, b"origin trouble"),
        ]:
            for n in range(2):
                resp, got = await get(app, target)
                assert (status_of(resp), got) == (status, body), (target, n)
        assert header((await get(app, "/moved"))[0], "Location") == "/there"
        asked = {p: len(origin.asked("GET", p)) for p in ("/moved", "/gone.ts", "/conflict")}
        # heuristically cacheable (301; Last-Modified) or explicitly fresh (410): stored;
        # a 409 says nothing: asked each time
        assert asked == {"/moved": 1, "/gone.ts": 1, "/conflict": 2}


# -- freshness and revalidation ---------------------------------------------------------------


async def test_revalidation_is_a_conditional_get_and_a_304_updates_the_headers(
    tmp_path: Path, origin: OriginServer
) -> None:
    obj = origin.put("live.m3u8", b"#EXTM3U\n", cache_control="no-cache",
                     headers={"X-Version": "1"})  # fmt: skip
    async with InProcess(tmp_path, origin.url) as app:
        resp, _ = await get(app, "/live.m3u8")  # no-cache: answered once, not revalidated
        assert len(origin.asked("GET")) == 1 and status_of(resp) == 200
        obj.headers["X-Version"] = "2"
        resp, body = await get(app, "/live.m3u8")
        again = origin.asked("GET")[-1]
        assert again.headers.get("If-None-Match") == obj.etag and again.status == 304
        assert origin.asked("HEAD") == []
        assert body == b"#EXTM3U\n" and header(resp, "X-Version") == "2"
        assert header(resp, "Cache-Status") == "edgefleet; fwd=stale; fwd-status=304; stored"


# -- unsafe methods ---------------------------------------------------------------------------


async def test_an_unsafe_method_is_forwarded_and_invalidates(
    tmp_path: Path, origin: OriginServer
) -> None:
    origin.put("doc.json", b"v1", cache_control="max-age=600")
    async with InProcess(tmp_path, origin.url) as app:
        assert (await get(app, "/doc.json"))[0].cache != "hit"
        assert (await get(app, "/doc.json"))[0].cache == "hit"
        req = request("/doc.json", "PUT", content_type="application/json")
        req.body = b'{"v": 2}'
        resp = await ask(app, req)
        assert status_of(resp) == 200 and await body_of(resp) == b"PUT done\n"
        assert origin.asked("PUT")[0].body == b'{"v": 2}'
        origin.put("doc.json", b"v2", cache_control="max-age=600")
        assert (await get(app, "/doc.json"))[1] == b"v2"  # the stored v1 was dropped


def test_bodies_on_the_wire(tmp_path: Path, origin: OriginServer) -> None:
    app = Appliance(["--store", str(tmp_path / "s"), "--capacity", "64MiB", "--origin",
                     origin.url, "--max-request-body", "1KiB"]).start()  # fmt: skip
    try:
        conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
        conn.request("POST", "/form", body=b"x" * 100)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"POST done\n"
        conn.request("POST", "/form", body=b"x" * 2000)
        assert conn.getresponse().status == 413
        conn.close()
        assert [a.body for a in origin.asked("POST")] == [b"x" * 100]
    finally:
        assert app.stop() == 0


async def test_a_file_origin_keeps_405_for_unsafe_methods(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    async with InProcess(tmp_path, (tmp_path / "files").as_uri()) as app:
        assert status_of(await ask(app, request("/a.ts", "POST"))) == 405


# -- the breaker -------------------------------------------------------------------------------


async def test_definite_answers_and_client_errors_never_open_the_breaker(
    tmp_path: Path, origin: OriginServer
) -> None:
    origin.put("ok.ts", b"fine")
    origin.put("conflict", b"busy", status=409)
    origin.put("moved", b"", status=301, headers={"Location": "/x"}, cache_control="no-store")
    async with InProcess(tmp_path, origin.url) as app:
        app.chain.breakers[id(app.chain.origins[0])].failures = 2
        for _ in range(3):
            assert status_of((await get(app, "/conflict"))[0]) == 409
            assert status_of((await get(app, "/moved"))[0]) == 301
        assert status_of((await get(app, "/ok.ts"))[0]) == 200  # still closed
    files = tmp_path / "files"
    files.mkdir()
    (files / "ok.ts").write_bytes(b"fine")
    long_name = "a" * 256 + ".ts"
    (tmp_path / "f").mkdir()
    async with InProcess(tmp_path / "f", files.as_uri()) as app:
        app.chain.breakers[id(app.chain.origins[0])].failures = 1
        for _ in range(3):
            resp, _ = await get(app, "/" + long_name)
            assert status_of(resp) == 414  # the request's fault, not the origin's
        assert status_of((await get(app, "/ok.ts"))[0]) == 200


# -- Age and Cache-Status -------------------------------------------------------------------------


async def test_age_and_cache_status_on_every_answer(tmp_path: Path, origin: OriginServer) -> None:
    origin.put("a.ts", b"abc", cache_control="max-age=60", headers={"Age": "7"})
    async with InProcess(tmp_path, origin.url) as app:
        miss, _ = await get(app, "/a.ts")
        assert header(miss, "Cache-Status") == "edgefleet; fwd=uri-miss; stored"
        hit, _ = await get(app, "/a.ts")
        assert header(hit, "Cache-Status") == "edgefleet; hit"
        assert int(header(hit, "Age") or 0) >= 7  # the origin's Age counts
        origin.faults.hang = False
        none, _ = await get(app, "/nothing-here.ts")
        assert header(none, "Cache-Status") is not None
        bad = await ask(app, request("/a.ts\x01"))
        assert header(bad, "Cache-Status") == "edgefleet; detail=edge"


async def test_an_answer_to_an_authorized_request_is_not_shared(
    tmp_path: Path, origin: OriginServer
) -> None:
    origin.put("mine.json", b"secret", cache_control="max-age=60")
    origin.put("public.json", b"for all", cache_control="public, max-age=60")
    async with InProcess(tmp_path, origin.url) as app:
        for _ in range(2):
            assert (await get(app, "/mine.json", authorization="Bearer a"))[1] == b"secret"
            assert (await get(app, "/public.json", authorization="Bearer a"))[1] == b"for all"
        assert len(origin.asked("GET", "/mine.json")) == 2  # RFC 9111 §3.5
        assert len(origin.asked("GET", "/public.json")) == 1


async def test_a_5xx_passes_the_question_on_to_the_next_origin(
    tmp_path: Path, origin: OriginServer
) -> None:
    failing = OriginServer().start()
    try:
        failing.put("x.ts", b"never")
        failing.faults.fail = 1000
        origin.put("x.ts", b"from the second origin")
        origin.put("y.ts", b"y")
        async with InProcess(tmp_path, failing.url) as app:
            # only the failing one: its own 500 is the answer
            assert status_of((await get(app, "/x.ts"))[0]) == 500
        (tmp_path / "two").mkdir()
        two = InProcess(tmp_path / "two", failing.url)
        two.cfg.origin.append(origin.url)
        async with two as app:
            resp, body = await get(app, "/x.ts")
            assert status_of(resp) == 200 and body == b"from the second origin"
    finally:
        failing.stop()


async def test_an_answer_head_goes_with_its_object(tmp_path: Path, origin: OriginServer) -> None:
    """The status and headers stored beside an object leave with it (eviction,
    purge, a new version), so keys with queries cannot grow the index for ever."""
    for n in range(5):
        origin.put(f"a.json?n={n}", b"x" * n, cache_control="max-age=60")
    async with InProcess(tmp_path, origin.url) as app:
        for n in range(5):
            assert (await get(app, f"/a.json?n={n}"))[1] == b"x" * n

        def heads() -> int:
            return app.store._conn().execute("SELECT COUNT(*) FROM http_heads").fetchone()[0]

        assert heads() == 5
        for obj in app.store.list_objects():
            app.store.remove(obj.key)
        assert heads() == 0


# -- an answer longer than its Content-Length ------------------------------------------------


class RawOrigin:
    """An origin that writes each answer's bytes as given, in one write: what
    aiohttp's own server would never send (a body longer than its
    Content-Length). Records each request line and whether the connection
    was closed by the appliance after it."""

    def __init__(self, answers: dict[str, bytes]) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self.closed_by_peer = 0
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                line = head.split(b"\r\n", 1)[0].decode()
                self.asked.append(line)
                writer.write(self.answers[line.split()[1].split("?")[0]])
                await writer.drain()
        except asyncio.IncompleteReadError as exc:
            self.closed_by_peer += not exc.partial
        finally:
            writer.close()


async def test_an_answer_longer_than_its_content_length_is_cut_to_it(tmp_path: Path) -> None:
    """The bytes after a complete message are not an answer: the first
    Content-Length bytes are (as nginx takes them), stored, the origin is
    asked once, and the connection they came on is not used again."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nCache-Control: max-age=60\r\n"
    raw = RawOrigin(
        {
            "/long.txt": head + b'ETag: "a"\r\n\r\n' + b"0123456789 and then some more bytes",
            "/exact.txt": head + b"\r\n" + b"0123456789",
        }
    )
    async with raw as url, InProcess(tmp_path, url) as app:
        resp, body = await get(app, "/long.txt")
        assert status_of(resp) == 200 and body == b"0123456789"
        assert header(resp, "ETag") == '"a"'
        assert len(raw.asked) == 1  # one request: the answer already read is the answer
        resp, body = await get(app, "/long.txt")
        assert resp.cache == "hit" and body == b"0123456789"
        assert raw.closed_by_peer == 1  # its connection, closed after its answer
        for n in range(3):  # honest answers: one kept-alive connection
            resp, body = await get(app, f"/exact.txt?n={n}")
            assert status_of(resp) == 200 and body == b"0123456789"
        assert len(raw.asked) == 4 and raw.connections == 2


# -- request Cache-Control ---------------------------------------------------------------------


async def test_safe_request_directives_only_spare_the_origin(
    tmp_path: Path, origin: OriginServer
) -> None:
    """By default only-if-cached and max-stale are honoured; no-cache and
    friends are not: a player cannot send every request to the origin."""
    origin.put("fresh.ts", b"fresh", cache_control="max-age=60")
    origin.put("aged.ts", b"aged", cache_control="max-age=60", headers={"Age": "100"})
    origin.put("strict.ts", b"strict", cache_control="max-age=60, must-revalidate",
               headers={"Age": "100"})  # fmt: skip
    async with InProcess(tmp_path, origin.url) as app:
        resp, _ = await get(app, "/fresh.ts", cache_control="only-if-cached")
        assert status_of(resp) == 504 and not origin.asked("GET", "/fresh.ts")
        assert (await get(app, "/fresh.ts"))[1] == b"fresh"
        resp, body = await get(app, "/fresh.ts", cache_control="only-if-cached")
        assert resp.cache == "hit" and body == b"fresh"
        resp, body = await get(app, "/fresh.ts", cache_control="no-cache, max-age=0")
        assert resp.cache == "hit" and len(origin.asked("GET", "/fresh.ts")) == 1
        for path in ("/aged.ts", "/strict.ts"):
            await get(app, path)  # stored, and stale at once (its Age)
            resp, _ = await get(app, path, cache_control="only-if-cached")
            assert status_of(resp) == 504  # stale: it would need the origin
        resp, body = await get(app, "/aged.ts", cache_control="max-stale=1000")
        assert body == b"aged" and len(origin.asked("GET", "/aged.ts")) == 1
        resp, body = await get(app, "/aged.ts", cache_control="max-stale=10")
        assert body == b"aged" and len(origin.asked("GET", "/aged.ts")) == 2  # too stale
        await get(app, "/strict.ts", cache_control="max-stale")  # must-revalidate wins
        assert len(origin.asked("GET", "/strict.ts")) == 2


async def test_all_request_directives_when_the_operator_says_so(
    tmp_path: Path, origin: OriginServer
) -> None:
    origin.put("f.ts", b"fresh", cache_control="max-age=60")
    origin.put("mine.ts", b"not for the cache", cache_control="max-age=60")
    proc = InProcess(tmp_path, origin.url)
    proc.cfg.request_cache_control = "all"
    async with proc as app:
        await get(app, "/f.ts")
        assert (await get(app, "/f.ts"))[0].cache == "hit"
        for n, directive in enumerate(("no-cache", "max-age=0", "min-fresh=100"), start=2):
            resp, body = await get(app, "/f.ts", cache_control=directive)
            assert body == b"fresh" and len(origin.asked("GET", "/f.ts")) == n
            assert origin.asked("GET", "/f.ts")[-1].headers.get("If-None-Match")  # revalidated
            assert "fwd=stale" in (header(resp, "Cache-Status") or "")
        resp, _ = await get(app, "/f.ts", cache_control="max-age=3600, min-fresh=10")
        assert resp.cache == "hit"
        resp, body = await get(app, "/mine.ts", cache_control="no-store")
        assert body == b"not for the cache"
        assert header(resp, "Cache-Status") == "edgefleet; fwd=uri-miss"  # not stored
        assert app.store.lookup("mine.ts") is None
        await get(app, "/mine.ts")
        assert len(origin.asked("GET", "/mine.ts")) == 2


async def test_request_directives_can_be_ignored(tmp_path: Path, origin: OriginServer) -> None:
    origin.put("i.ts", b"ignored", cache_control="max-age=60")
    proc = InProcess(tmp_path, origin.url)
    proc.cfg.request_cache_control = "ignore"
    async with proc as app:
        resp, body = await get(app, "/i.ts", cache_control="only-if-cached")
        assert status_of(resp) == 200 and body == b"ignored"


# -- several variants per key; purges -----------------------------------------------------------

TOKEN = "t" * 32


async def purge(app, param: str) -> dict:  # type: ignore[no-untyped-def]
    """The admin endpoint's purge, as serve wires it (one worker)."""
    import json

    from edge.appliance.ops import Ops

    if app.ops is None:
        app.ops = Ops(app, 1)
    resp, body = await get(app, f"/_edge/admin/purge?{param}", "POST",
                           authorization=f"Bearer {TOKEN}")  # fmt: skip
    assert status_of(resp) == 200, body
    return json.loads(body)


async def test_several_variants_of_a_key_are_stored_each_for_its_own_requests(
    tmp_path: Path, origin: OriginServer
) -> None:
    values = [str(n) for n in range(12)]
    origin.put("v.json", b"plain", cache_control="max-age=60", vary="Foo",
               variants={v: f"for foo {v}".encode() for v in values})  # fmt: skip
    proc = InProcess(tmp_path, origin.url)
    proc.cfg.admin_token = TOKEN
    async with proc as app:
        for _ in range(2):  # the second round: every variant from store
            for v in ("1", "2", None, "1 "):
                resp, body = await (get(app, "/v.json", foo=v) if v else get(app, "/v.json"))
                assert body == (f"for foo {v.strip()}".encode() if v else b"plain")
        assert len(origin.asked("GET", "/v.json")) == 3  # "1 " is "1", normalised
        resp, _ = await get(app, "/v.json", foo="2")
        assert resp.cache == "hit"
        # bounded: at most MAX_VARIANTS of one key are stored
        for v in values:
            assert (await get(app, "/v.json", foo=v))[1] == f"for foo {v}".encode()
        held = [o.key for o in app.store.list_objects("v.json")]
        assert 2 < len(held) <= 8
        # a purge of the key removes every variant
        assert (await purge(app, "key=v.json"))["purged"] == len(held)
        assert app.store.list_objects("v.json") == []
        asked = len(origin.asked("GET", "/v.json"))
        assert (await get(app, "/v.json", foo="2"))[1] == b"for foo 2"
        assert len(origin.asked("GET", "/v.json")) == asked + 1


async def test_a_purge_of_a_path_removes_its_queries_and_an_unsafe_method_its_variants(
    tmp_path: Path, origin: OriginServer
) -> None:
    for q in ("", "?a=1", "?b=2"):
        origin.put(f"seg.ts{q}", f"seg{q}".encode(), cache_control="max-age=60")
    origin.put("seg.tsx", b"another object", cache_control="max-age=60")
    origin.put("w.json", b"plain", cache_control="max-age=60", vary="Foo",
               variants={"1": b"one", "2": b"two"})  # fmt: skip
    proc = InProcess(tmp_path, origin.url)
    proc.cfg.admin_token = TOKEN
    async with proc as app:
        for target in ("/seg.ts", "/seg.ts?a=1", "/seg.ts?b=2", "/seg.tsx"):
            await get(app, target)
        assert (await purge(app, "key=seg.ts"))["purged"] == 3
        assert [o.key for o in app.store.list_objects("seg.ts")] == ["seg.tsx"]
        resp, body = await get(app, "/seg.ts?a=1")
        assert body == b"seg?a=1" and resp.cache != "hit"
        await get(app, "/w.json", foo="1")
        await get(app, "/w.json", foo="2")
        assert len(app.store.list_objects("w.json")) == 2
        await get(app, "/w.json", "POST")
        assert app.store.list_objects("w.json") == []
        assert (await get(app, "/w.json", foo="2"))[1] == b"two"
