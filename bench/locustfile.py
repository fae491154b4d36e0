"""Locust users that behave as video players against an edgefleet fleet (docs/demo.md).

    locust -f bench/locustfile.py --host http://127.0.0.1:8080            # web UI
    locust -f bench/locustfile.py --host http://127.0.0.1:8080 --headless \\
        -u 20 -r 5 -t 60s --csv out/players                                # CSV summary

``--host`` is the steering service. One session: ask steering for a title's
master playlist, fetch it and a rendition's media playlist from the first URL,
then the segments in order with Range requests while a simulated playback
buffer drains (``demo.player.Player`` keeps the books); a failed request moves
the player to the next URL steering gave. Locust's statistics get the requests
and ``player`` entries (``startup``, ``rebuffer``, ``failover``); at the end a
summary line is printed and, with ``--csv PREFIX``, written to
``PREFIX_players.csv``.
"""

from __future__ import annotations

import csv
import itertools
import random
import statistics
import time
from typing import Any
from urllib.parse import urljoin

import gevent
import m3u8
from locust import HttpUser, events, task
from requests.adapters import HTTPAdapter

from demo.catalog import title_prefix
from demo.player import DEFAULT_BUFFER_TARGET, Player, base_of, buffer_for

TIMEOUT = (2.0, 5.0)  # connect, read: a dead appliance must not hold a player long


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--player-titles", type=int, default=4, help="titles to choose from")
    parser.add_argument(
        "--player-rendition", choices=("hi", "lo", "any"), default="any", help="rendition"
    )
    parser.add_argument("--playback-speed", type=float, default=1.0, help="media s per wall s")
    parser.add_argument(
        "--buffer-target",
        type=float,
        default=DEFAULT_BUFFER_TARGET,
        help="seconds to buffer ahead (at most a third of the title)",
    )
    parser.add_argument(
        "--watch-seconds", type=float, default=0.0, help="stop a session after this much (0: all)"
    )
    parser.add_argument(
        "--client-ips", default="", help="comma-separated source addresses for the players"
    )


class _Summary:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.players: list[Player] = []
        self.sessions = 0
        self.failed_sessions = 0
        self.peak_users = 0
        self.started = time.monotonic()

    def rows(self, now: float) -> dict[str, Any]:
        for p in self.players:
            p.advance(now)
        startups = sorted(p.startup * 1000 for p in self.players if p.startup is not None)
        played = sum(p.played for p in self.players)
        stalled = sum(p.stalled for p in self.players)
        segments = sum(p.segments for p in self.players)
        elapsed = max(1e-9, now - self.started)

        def pct(q: float) -> float:
            if not startups:
                return 0.0
            return round(startups[min(len(startups) - 1, int(q * len(startups)))], 1)

        return {
            "players": self.peak_users,
            "sessions": self.sessions,
            "failed_sessions": self.failed_sessions,
            "segments": segments,
            "segments_per_s": round(segments / elapsed, 2),
            "startup_p50_ms": round(statistics.median(startups), 1) if startups else 0.0,
            "startup_p99_ms": pct(0.99),
            "rebuffer_events": sum(p.rebuffers for p in self.players),
            "rebuffer_ratio": round(stalled / (played + stalled), 5) if played + stalled else 0.0,
            "failovers": sum(p.failovers for p in self.players),
        }


SUMMARY = _Summary()
_ips = itertools.count()


@events.test_start.add_listener
def _start(environment: Any, **_: Any) -> None:
    SUMMARY.reset()


@events.test_stop.add_listener
def _stop(environment: Any, **_: Any) -> None:
    row = SUMMARY.rows(time.monotonic())
    print("players " + " ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if prefix:
        with open(f"{prefix}_players.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            w.writeheader()
            w.writerow(row)


class _SourceAdapter(HTTPAdapter):
    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def _fire(name: str, ms: float, exc: BaseException | None = None) -> None:
    events.request.fire(
        request_type="player",
        name=name,
        response_time=ms,
        response_length=0,
        exception=exc,
        context={},
    )


class _AllFailed(Exception):
    pass


class VideoPlayer(HttpUser):
    def on_start(self) -> None:
        opts = self.environment.parsed_options
        ips = [ip.strip() for ip in (opts.client_ips or "").split(",") if ip.strip()]
        if ips:
            adapter = _SourceAdapter(ips[next(_ips) % len(ips)])
            self.client.mount("http://", adapter)
        SUMMARY.peak_users = max(SUMMARY.peak_users, self.environment.runner.user_count)

    def wait_time(self) -> float:
        return random.uniform(0.2, 1.0)

    @task
    def watch(self) -> None:
        opts = self.environment.parsed_options
        titles = max(1, opts.player_titles)
        # Zipf: title n is asked for in proportion to 1/n
        n = random.choices(range(1, titles + 1), weights=[1 / i for i in range(1, titles + 1)])[0]
        key = f"{title_prefix(n)}/master.m3u8"
        started = time.monotonic()
        SUMMARY.sessions += 1
        with self.client.get(
            "/steer", params={"object": key}, name="steer", catch_response=True, timeout=TIMEOUT
        ) as r:
            if r.status_code != 200:
                r.failure(f"steering answered {r.status_code}")
                SUMMARY.failed_sessions += 1
                return
            answer = r.json()
        player = Player(
            [base_of(u, key) for u in answer["urls"]],
            started,
            buffer_target=opts.buffer_target,
            speed=opts.playback_speed,
        )
        SUMMARY.players.append(player)
        try:
            self._play(player, key, opts)
        except _AllFailed:
            SUMMARY.failed_sessions += 1

    def _get(self, player: Player, url: str, name: str, headers: dict[str, str]) -> bytes:
        """GET ``url`` under the player's current appliance, failing over until one answers."""
        while True:
            target = player.rebase(url)
            with self.client.get(
                target, name=name, headers=headers, catch_response=True, timeout=TIMEOUT
            ) as r:
                ok = r.status_code in (200, 206)
                if ok and "Range" in headers and r.status_code != 206:
                    r.failure(f"{target}: a Range request answered {r.status_code}")
                elif ok:
                    r.success()
                    return r.content
                else:
                    r.failure(f"{target}: {r.status_code or 'no answer'}")
                    if 400 <= r.status_code < 500:  # every appliance would say the same
                        raise _AllFailed(url)
            if player.fail() is None:
                raise _AllFailed(url)
            _fire("failover", 0)

    def _play(self, player: Player, key: str, opts: Any) -> None:
        master_url = player.base + key
        master = m3u8.loads(self._get(player, master_url, "master", {}).decode(), uri=master_url)
        variants = sorted(master.playlists, key=lambda p: p.stream_info.bandwidth)
        if not variants:
            raise _AllFailed(master_url)
        pick = {"lo": variants[0], "hi": variants[-1]}.get(opts.player_rendition)
        variant = pick or random.choice(variants)
        media_url = urljoin(master_url, variant.uri)
        media = m3u8.loads(self._get(player, media_url, "playlist", {}).decode(), uri=media_url)
        title = sum(float(seg.duration or 0) for seg in media.segments)
        player.buffer_target = buffer_for(opts.buffer_target, title)
        watched = 0.0
        next_offset = 0
        for seg in media.segments:
            if opts.watch_seconds and watched >= opts.watch_seconds:
                break
            duration = float(seg.duration or 0)
            gevent.sleep(player.wait(time.monotonic(), duration))
            if seg.byterange:
                length, _, offset = seg.byterange.partition("@")
                start = int(offset) if offset else next_offset  # no offset: right after the last
                next_offset = start + int(length)
                headers = {"Range": f"bytes={start}-{start + int(length) - 1}"}
            else:
                headers = {"Range": "bytes=0-"}  # as ExoPlayer asks for a whole segment
            self._get(player, urljoin(media_url, seg.uri), "segment", headers)
            stall = player.arrived(time.monotonic(), duration)
            if player.segments == 1 and player.startup is not None:
                _fire("startup", player.startup * 1000)
            if stall is not None:
                _fire("rebuffer", stall * 1000)
            watched += duration
        # the title plays to its end before the player starts another one
        gevent.sleep(player.remaining(time.monotonic()))
        player.finish(time.monotonic())
