"""A TCP forwarder the test can cut: PostgreSQL "unreachable" on demand, then back on the same port;
blackholed, as a vanished host or a partition would leave it; every connection half-open (bytes
accepted, never answered) or reset."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

_SSL_REQUEST, _GSSENC_REQUEST, _PROTOCOL_3 = 80877103, 80877104, 196608


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    first_bytes: bytearray = field(default_factory=bytearray)  # what the client sent first (64 KiB at most)
    heard_at: float = 0.0  # loop time of the last byte forwarded from the client


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._blackholed = False
        self._timers: list[asyncio.TimerHandle] = []
        self.half_open = False  # forward nothing, either way, on every connection, old and new
        self.cut_on: bytes | None = None  # a request holding these bytes resets its connection, unsent

    async def start(self) -> int:
        """Listen (on the same port as before, after a `stop`); the port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Refuse new connections and break every open one, as a crashed server would."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._blackholed = False
        for link in list(self._links):
            for writer in (link.client, link.upstream):
                if writer is not None:
                    writer.transport.abort()
        self._links.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def reset(self) -> None:
        """Reset (RST, not FIN) every open connection, as a crashed peer or a middlebox does; the
        proxy keeps listening."""
        for link in list(self._links):
            for writer in (link.client, link.upstream):
                if writer is None:
                    continue
                sock = writer.transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
        self._links.clear()

    def blackhole(self, abort_after: Callable[[bytes], float | None] = lambda _: None) -> None:
        """From now on nothing gets through, either way, and no connection is closed: the client's
        bytes vanish, as they would towards a host that lost power. New connections are accepted
        and never answered.

        A server's kernel gives up on a peer that stopped acknowledging after its user timeout;
        ours cannot stop acknowledging (the proxy's kernel does), so the proxy plays that part:
        each upstream connection is aborted `abort_after(first bytes the client sent)` seconds
        after the last byte it forwarded, or never when that is None.
        """
        self._blackholed = True
        loop = asyncio.get_running_loop()
        for link in self._links:
            timeout = abort_after(bytes(link.first_bytes))
            if link.upstream is not None and timeout is not None:
                self._timers.append(loop.call_at(link.heard_at + timeout, link.upstream.transport.abort))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer)
        self._links.add(link)
        if self._blackholed:
            self._spawn(self._pipe(reader, None, link))
            return
        try:
            up_reader, link.upstream = await asyncio.open_connection(*self.target)
        except OSError:
            self._links.discard(link)
            writer.transport.abort()
            return
        self._spawn(self._pipe(reader, link.upstream, link))
        self._spawn(self._pipe(up_reader, writer, None))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter | None, link: _Link | None) -> None:
        """Forward `source` to `sink`; `link` is given for the client-to-server direction."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await source.read(65536):
                if link is not None and self.cut_on is not None and self.cut_on in data:
                    self.reset()
                    return
                if self._blackholed or self.half_open or sink is None:  # swallowed
                    continue
                if link is not None:
                    link.heard_at = loop.time()
                    if len(link.first_bytes) < 65536:
                        link.first_bytes += data[: 65536 - len(link.first_bytes)]
                sink.write(data)
                await sink.drain()
        if sink is not None and not self._blackholed:  # a blackhole carries no close either
            sink.transport.abort()
            if link is not None:
                self._links.discard(link)


def postgres_user_timeout(first_bytes: bytes) -> float | None:
    """The `tcp_user_timeout` (seconds) a PostgreSQL client asked for in its StartupMessage (after
    an SSLRequest the server refused); None when it asked for none (or the startup was encrypted)."""
    data = first_bytes
    while len(data) >= 8:
        length, code = struct.unpack("!II", data[:8])
        if code in (_SSL_REQUEST, _GSSENC_REQUEST):
            data = data[8:]
            continue
        if code != _PROTOCOL_3 or len(data) < length:
            return None
        parts = data[8:length].split(b"\0")
        parameters = {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts) - 1, 2) if parts[i]}
        milliseconds = int(parameters.get("tcp_user_timeout", "0"))
        return milliseconds / 1000 if milliseconds else None
    return None


def proxy_to(dsn: str) -> TcpProxy:
    """A proxy (not yet started) in front of the server a DSN names."""
    target = urlsplit(dsn)
    return TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)


def dsn_through(dsn: str, port: int) -> str:
    """The same DSN, pointed at a proxy listening on 127.0.0.1:`port`."""
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"))
