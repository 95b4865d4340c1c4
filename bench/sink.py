"""The Python SMTP sink: a separate process that accepts every message, counts it and stamps its arrival.

    python -m bench.sink [--host 127.0.0.1] [--port 0]

Protocol (one JSON object per line on stdout, commands one per line on stdin):

- at start: `{"event": "ready", "port": P}`
- `stats` → `{"event": "stats", "count", "first_ns", "last_ns", "bytes", "latency"}`; `latency`
  summarises arrival minus `X-Bench-Sent-Ns` (the producer's XADD time, `time.time_ns()`) over the
  messages that carried the header, or is null
- `reset` → `{"event": "reset"}`: counters and latency samples start again from zero

The sink exits on end of input (so it never outlives its driver) or SIGTERM. Arrival is stamped
when the final "." has been received, before the 250 reply.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import signal
import sys
import time
from typing import Any

from bench.stats import histogram_ms, summarize_ns

_SENT_HEADER = re.compile(rb"(?im)^X-Bench-Sent-Ns:[ \t]*(\d+)")


class Counter:
    """What the sink has received since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.bytes = 0
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.latencies_ns: list[int] = []

    def record(self, content: bytes, arrived_ns: int) -> None:
        self.count += 1
        self.bytes += len(content)
        if self.first_ns is None:
            self.first_ns = arrived_ns
        self.last_ns = arrived_ns
        head_end = content.find(b"\r\n\r\n")
        match = _SENT_HEADER.search(content, 0, head_end if head_end >= 0 else len(content))
        if match:
            self.latencies_ns.append(arrived_ns - int(match.group(1)))

    def stats(self) -> dict[str, Any]:
        return {
            "event": "stats",
            "count": self.count,
            "bytes": self.bytes,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "latency": summarize_ns(self.latencies_ns),
            "histogram": histogram_ms(self.latencies_ns) if self.latencies_ns else None,
        }


class CountingHandler:
    """aiosmtpd handler: every message is accepted."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        arrived = time.time_ns()
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        self.counter.record(content, arrived)
        return "250 2.0.0 OK"


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _commands(counter: Counter, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while not stop.is_set():
        line = await reader.readline()
        if not line:
            break
        command = line.decode().strip()
        if command == "stats":
            _emit(counter.stats())
        elif command == "reset":
            counter.reset()
            _emit({"event": "reset"})
        elif command:
            _emit({"event": "error", "message": f"unknown command {command!r}"})
    stop.set()


async def serve(host: str, port: int) -> int:
    from aiosmtpd.smtp import SMTP

    logging.getLogger("mail.log").setLevel(logging.WARNING)
    counter = Counter()
    handler = CountingHandler(counter)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="bench-sink", ident="mailsvc-bench-sink", decode_data=False, timeout=60),
        host,
        port,
        backlog=1024,
    )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    bound = server.sockets[0].getsockname()[1]
    _emit({"event": "ready", "port": bound})
    commands = asyncio.create_task(_commands(counter, stop))
    try:
        await stop.wait()
    finally:
        commands.cancel()
        server.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sink", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (reported in the ready line)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when we stop
    from mailsvc.cli import run_async

    return run_async(serve(args.host, args.port))


if __name__ == "__main__":
    sys.exit(main())
