#!/usr/bin/env python3
"""A TCP relay that makes a loopback origin look like one across a WAN.

Real appliances sit in an ISP network and fetch from S3 (or a parent) far
away: every request's first byte comes at least one round trip later, a new
connection costs one more round trip (its handshake), and each TCP connection
moves a bounded number of bytes per second (window / RTT, the path, the
store's own per-connection limit). ``tc netem`` would model that in the
kernel; where it is not available this relay does it in front of nginx, for
every client alike (a player downloading straight from the origin and the
appliance fetching slices):

- every byte is delivered ``rtt / 2`` after the relay read it, in both
  directions, so a request's first response byte comes one RTT after the
  request was sent;
- a new connection's first request bytes are held one more RTT (the handshake
  the loopback connect did not pay);
- bytes towards the client leave through a token bucket per connection
  (``--conn-rate``) and, if given, one shared by all connections
  (``--link-rate``: the uplink the whole site shares).

Rules it keeps: bytes are never reordered, dropped or changed; a side that
closes closes the other once what was in flight has been delivered; the relay
reads ahead of the client at most about one bandwidth-delay product plus
``BUFFER`` bytes, so the origin's socket pushes back as it would over a WAN.

Run by ``miss_vs_origin.py``; standalone:
``python bench/shaped_origin.py --port 8081 --upstream-port 8080 --rtt 20ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import signal
import socket
import sys

HOST = "127.0.0.1"
READ_SIZE = 256 * 1024  # bytes per read from a socket
BURST = (
    256 * 1024
)  # bytes a token bucket lets through at once (about rate x RTT / 2 at 200 Mbit/s, 20 ms)
BUFFER = 1024 * 1024  # read ahead of the client beyond the bytes in flight


class Bucket:
    """A token bucket as virtual time: ``when(n)`` is the moment ``n`` more
    bytes may leave, ``take(n, at)`` spends them. ``rate`` in bytes per second."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.free_at = 0.0  # when the bytes let through so far have drained

    def when(self) -> float:
        return self.free_at - BURST / self.rate

    def take(self, n: int, at: float) -> None:
        self.free_at = max(self.free_at, at) + n / self.rate


class Pipe:
    """One direction of one connection: what was read, when, and delivering it
    ``delay`` seconds later through the buckets."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        delay: float,
        not_before: float,
        buckets: list[Bucket],
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.delay = delay
        self.not_before = not_before  # nothing leaves before this (the handshake)
        self.buckets = buckets
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        rate = min((b.rate for b in buckets), default=0.0)
        self.limit = BUFFER + (int(rate * delay) if rate else READ_SIZE)
        self.more = asyncio.Event()  # something queued, or the end
        self.room = asyncio.Event()  # the queue is below its limit
        self.room.set()
        self.eof = False

    async def pull(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self.room.wait()
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                self.queue.append((loop.time(), data))
                self.queued += len(data)
                if self.queued >= self.limit:
                    self.room.clear()
                self.more.set()
        except (ConnectionError, OSError):
            pass
        finally:
            self.eof = True
            self.more.set()

    async def push(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self.queue:
                    if self.eof:
                        break
                    self.more.clear()
                    await self.more.wait()
                    continue
                read_at, data = self.queue.popleft()
                due = max(read_at + self.delay, self.not_before)
                view = memoryview(data)
                while view:
                    piece = view[:BURST] if self.buckets else view
                    at = max([due, *(b.when() for b in self.buckets)])
                    wait = at - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    now = loop.time()
                    for b in self.buckets:
                        b.take(len(piece), now)
                    self.writer.write(piece)
                    await self.writer.drain()
                    view = view[len(piece) :]
                self.queued -= len(data)
                if self.queued < self.limit:
                    self.room.set()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                self.writer.close()


class Relay:
    def __init__(self, upstream: int, rtt: float, conn_rate: float, link_rate: float) -> None:
        self.upstream = upstream
        self.rtt = rtt
        self.conn_rate = conn_rate
        self.link = Bucket(link_rate) if link_rate else None
        self.connections = 0

    async def serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        self.connections += 1
        try:
            u_reader, u_writer = await asyncio.open_connection(HOST, self.upstream, limit=READ_SIZE)
        except OSError:
            c_writer.close()
            return
        for w in (c_writer, u_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        half = self.rtt / 2
        down: list[Bucket] = [Bucket(self.conn_rate)] if self.conn_rate else []
        if self.link is not None:
            down.append(self.link)
        # the request leaves the client once the handshake is done (one RTT) and
        # takes half an RTT to arrive; the answer takes the other half back
        up = Pipe(c_reader, u_writer, half, accepted + self.rtt + half, [])
        dn = Pipe(u_reader, c_writer, half, 0.0, down)
        await asyncio.gather(up.pull(), up.push(), dn.pull(), dn.push())


def parse_seconds(text: str) -> float:
    t = text.strip().lower()
    if t.endswith("ms"):
        return float(t[:-2]) / 1e3
    return float(t[:-1] if t.endswith("s") else t)


def parse_mbit(text: str) -> float:
    """Mbit/s (``200``, ``200Mbit``, ``1Gbit``) to bytes per second; 0: no limit."""
    t = text.strip().lower().removesuffix("/s").removesuffix("bit")
    scale = 1e6
    if t.endswith("g"):
        t, scale = t[:-1], 1e9
    elif t.endswith("m"):
        t = t[:-1]
    return float(t) * scale / 8


async def main_async(args: argparse.Namespace) -> None:
    relay = Relay(args.upstream_port, args.rtt, args.conn_rate, args.link_rate)
    server = await asyncio.start_server(relay.serve, HOST, args.port, limit=READ_SIZE, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"shaped origin on {HOST}:{args.port} -> {HOST}:{args.upstream_port}", flush=True)
    async with server:
        await stop.wait()
    print(f"{relay.connections} connections", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="A WAN-shaped TCP relay in front of an origin.")
    p.add_argument("--port", type=int, required=True, help="port to listen on (127.0.0.1)")
    p.add_argument("--upstream-port", type=int, required=True, help="the origin's port")
    p.add_argument("--rtt", type=parse_seconds, default=0.02, help="round trip (default 20ms)")
    p.add_argument(
        "--conn-rate", type=parse_mbit, default=parse_mbit("200"), help="Mbit/s per connection"
    )
    p.add_argument("--link-rate", type=parse_mbit, default=0.0, help="Mbit/s for all (0: none)")
    args = p.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_async(args))
    else:
        uvloop.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
