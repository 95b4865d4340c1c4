"""The fault proxy: a TCP forwarder between every replica and PostgreSQL, Redis and the SMTP sink.

    python -m bench.chaos.proxy --routes '[{"name": "r0-pg", "host": "127.0.0.1", "port": 5432}, …]'

It runs in its own process so that neither the load nor the harness's bookkeeping can slow the
traffic it forwards. One route per (replica, server): a fault hits one replica's path or all of
them. Control: one JSON object per line on stdin, one answer per line on stdout.

- at start: `{"event": "ready", "ports": {route: port}}`
- `{"op": "mode", "routes": [...], "mode": M, "delay": s}` with M one of
  - `pass`: forward as is;
  - `latency`: every chunk held `delay` seconds in each direction (order kept);
  - `blackhole`: nothing moves either way, new connections are accepted and held; what was held
    moves on when the mode changes (the network came back, TCP retransmitted);
  - `halfopen`: every open connection, and every new one while the mode lasts, accepts bytes and
    never answers — for good: it stays that way until the client gives up and closes it (then the
    server side is closed too, as the server's keepalive would eventually).
- `{"op": "reset", "routes": [...]}`: every open connection is reset (RST) on both sides.
- `{"op": "stats"}`: open connections per route.

The proxy exits on end of input (it never outlives the harness) or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import socket
import struct
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

MODES = ("pass", "latency", "blackhole", "halfopen")
_HELD_LIMIT = 4 * 1024 * 1024  # bytes held per direction before the sender is paused
_RST = struct.pack("ii", 1, 0)


@dataclass
class Route:
    name: str
    host: str
    port: int
    mode: str = "pass"
    delay: float = 0.0
    links: set[Link] = field(default_factory=set)
    server: asyncio.Server | None = None


class _Side(asyncio.Protocol):
    """One socket of a link: the client's or the upstream server's."""

    def __init__(self, link: Link, upstream: bool) -> None:
        self.link = link
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        if not self.upstream:
            self.link.accepted()

    def data_received(self, data: bytes) -> None:
        self.link.received(self, data)

    def eof_received(self) -> bool:
        self.link.side_closed(self)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.side_closed(self)

    def pause_writing(self) -> None:  # our peer is slow: stop reading from the other side
        other = self.link.other(self)
        if other is not None and other.transport is not None:
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.link.other(self)
        if other is not None and other.transport is not None:
            other.transport.resume_reading()


class _Direction:
    """Bytes on their way to one side, each with the moment it may be written (inf: held)."""

    def __init__(self) -> None:
        self.queue: deque[tuple[float, bytes]] = deque()
        self.held = 0
        self.timer: asyncio.TimerHandle | None = None


class Link:
    """A client connection and its upstream connection, forwarded under the route's mode."""

    def __init__(self, route: Route, loop: asyncio.AbstractEventLoop) -> None:
        self.route = route
        self.loop = loop
        self.client = _Side(self, upstream=False)
        self.server: _Side | None = None
        self.frozen = route.mode == "halfopen"  # accepts bytes, never answers
        self.closed = False
        self.draining = False  # one side is gone: close once the other has what was on its way
        self.to_server, self.to_client = _Direction(), _Direction()

    def other(self, side: _Side) -> _Side | None:
        return self.server if side is self.client else self.client

    def accepted(self) -> None:
        self.route.links.add(self)
        if not self.frozen and self.route.mode != "blackhole":
            self.connect()

    def connect(self) -> None:
        if self.server is None and not self.closed and not self.frozen:
            self.server = _Side(self, upstream=True)
            self.loop.create_task(self._connect(self.server))

    async def _connect(self, side: _Side) -> None:
        try:
            async with asyncio.timeout(5):
                await self.loop.create_connection(lambda: side, self.route.host, self.route.port)
        except (OSError, TimeoutError):
            self.reset()  # the server is down: the client sees its connection broken
            return
        self._flush(self.to_server)

    def received(self, side: _Side, data: bytes) -> None:
        if self.frozen or self.closed:
            return  # swallowed
        direction = self.to_server if side is self.client else self.to_client
        now = self.loop.time()
        mode = self.route.mode
        due = math.inf if mode == "blackhole" else now + self.route.delay if mode == "latency" else now
        direction.queue.append((due, data))
        direction.held += len(data)
        if direction.held > _HELD_LIMIT and side.transport is not None:
            side.transport.pause_reading()
        self._flush(direction)

    def _target(self, direction: _Direction) -> _Side | None:
        return self.server if direction is self.to_server else self.client

    def _flush(self, direction: _Direction) -> None:
        target = self._target(direction)
        if target is None or target.transport is None or self.closed:
            return
        now = self.loop.time()
        while direction.queue and direction.queue[0][0] <= now:
            _, data = direction.queue.popleft()
            direction.held -= len(data)
            target.transport.write(data)
        source = self.other(target)
        if direction.held <= _HELD_LIMIT and source is not None and source.transport is not None:
            source.transport.resume_reading()
        if direction.timer is not None:
            direction.timer.cancel()
            direction.timer = None
        if direction.queue and direction.queue[0][0] < math.inf:
            direction.timer = self.loop.call_at(direction.queue[0][0], self._flush, direction)
        elif self.draining and not direction.queue:
            self.close()

    def mode_changed(self, previous: str) -> None:
        """The route's mode changed: release held bytes, freeze, or connect a held connection."""
        mode = self.route.mode
        if mode == "halfopen":
            self.frozen = True
            for direction in (self.to_server, self.to_client):
                direction.queue.clear()
                direction.held = 0
            for side in (self.client, self.server):
                if side is not None and side.transport is not None:
                    side.transport.resume_reading()  # keep accepting bytes, to swallow them
            return
        if previous == "blackhole":
            release = self.loop.time() + (self.route.delay if mode == "latency" else 0.0)
            for direction in (self.to_server, self.to_client):
                direction.queue = deque((min(due, release), data) for due, data in direction.queue)
                self._flush(direction)
            self.connect()

    def side_closed(self, side: _Side) -> None:
        """One side went away: the other is closed once what is on its way to it was written."""
        if self.closed:
            return
        self.draining = True
        toward = self.to_client if side is self.server else self.to_server
        if self.frozen or self.other(side) is None or not toward.queue:
            self.close()

    def close(self) -> None:
        self.closed = True
        self.route.links.discard(self)
        for direction in (self.to_server, self.to_client):
            if direction.timer is not None:
                direction.timer.cancel()
        for side in (self.client, self.server):
            if side is not None and side.transport is not None:
                side.transport.close()

    def reset(self) -> None:
        """RST both connections: linger 0, then abort."""
        self.closed = True
        self.route.links.discard(self)
        for side in (self.client, self.server):
            if side is None or side.transport is None:
                continue
            sock = side.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
            side.transport.abort()


class FaultProxy:
    def __init__(self, routes: list[Route]) -> None:
        self.routes = {route.name: route for route in routes}

    async def start(self, ports: dict[str, int] | None = None) -> dict[str, int]:
        loop = asyncio.get_running_loop()
        bound: dict[str, int] = {}
        for route in self.routes.values():

            def factory(route: Route = route) -> _Side:
                return Link(route, loop).client

            route.server = await loop.create_server(factory, "127.0.0.1", (ports or {}).get(route.name, 0))
            bound[route.name] = route.server.sockets[0].getsockname()[1]
        return bound

    def set_mode(self, names: list[str], mode: str, delay: float = 0.0) -> int:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        affected = 0
        for name in names:
            route = self.routes[name]
            previous, route.mode, route.delay = route.mode, mode, delay
            for link in list(route.links):
                link.mode_changed(previous)
                affected += 1
        return affected

    def reset(self, names: list[str]) -> int:
        links = [link for name in names for link in list(self.routes[name].links) if not link.frozen]
        for link in links:
            link.reset()
        return len(links)

    def stats(self) -> dict[str, Any]:
        return {
            name: {"mode": route.mode, "links": len(route.links), "frozen": sum(link.frozen for link in route.links)}
            for name, route in self.routes.items()
        }

    def close(self) -> None:
        for route in self.routes.values():
            if route.server is not None:
                route.server.close()
            for link in list(route.links):
                link.reset()


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def answer(proxy: FaultProxy, command: dict[str, Any]) -> dict[str, Any]:
    op = command.get("op")
    try:
        if op == "mode":
            affected = proxy.set_mode(list(command["routes"]), str(command["mode"]), float(command.get("delay", 0)))
            return {"ok": True, "affected": affected}
        if op == "reset":
            return {"ok": True, "reset": proxy.reset(list(command["routes"]))}
        if op == "stats":
            return {"ok": True, "routes": proxy.stats()}
    except (KeyError, ValueError, TypeError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": False, "error": f"unknown op {op!r}"}


async def serve(routes: list[Route]) -> int:
    proxy = FaultProxy(routes)
    _emit({"event": "ready", "ports": await proxy.start()})
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands() -> None:
        while line := await reader.readline():
            if line.strip():
                _emit(answer(proxy, json.loads(line)))
        stop.set()

    task = asyncio.create_task(commands())
    try:
        await stop.wait()
    finally:
        task.cancel()
        proxy.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos.proxy", description=__doc__)
    parser.add_argument("--routes", required=True, help="JSON list of {name, host, port}")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the harness decides when we stop
    routes = [Route(str(r["name"]), str(r["host"]), int(r["port"])) for r in json.loads(args.routes)]
    from mailsvc.cli import run_async

    return run_async(serve(routes))


if __name__ == "__main__":
    sys.exit(main())
