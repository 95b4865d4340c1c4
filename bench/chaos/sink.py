"""The chaos run's SMTP sink: a real server in its own process that records every message it took.

    python -m bench.chaos.sink --record FILE [--port 0]

Every message whose final "." arrived is one line of FILE (JSON, flushed at once, so a crash of
the harness loses nothing): its `Message-ID`, the `X-Chaos-Id` header the harness puts on every
command, the verdict and the time. A `Message-ID` sent many times appears many times. Scripted
by recipient local part, so the service meets a realistic provider:

- `…+bounce@…`: `550 5.1.1` at RCPT (permanent; never recorded: no message was taken);
- `…+defer@…`: the first time a `Message-ID` arrives, `451` after the final "." (verdict
  `deferred`: not taken), then accepted;
- `…+drop@…`: the first time a `Message-ID` arrives, the connection is dropped after the final
  "." without a reply (verdict `dropped`: the server may well have taken it — it counts as an
  acceptance), then accepted.

Control (stdin/stdout, one JSON object per line): at start `{"event": "ready", "port": P}`;
`{"op": "stats"}` → `{"ok": true, "taken": n, "last_taken": t}` (taken = accepted + dropped).
The sink exits on end of input or SIGTERM.
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
from collections import Counter
from pathlib import Path
from typing import IO, Any

from bench.chaos.facts import TAKEN

_HEADER = re.compile(rb"(?im)^(Message-ID|X-Chaos-Id):[ \t]*(\S+)[ \t]*\r?$")


def _headers(content: bytes) -> dict[str, str]:
    end = content.find(b"\r\n\r\n")
    found: dict[str, str] = {}
    for match in _HEADER.finditer(content, 0, end if end >= 0 else len(content)):
        found[match.group(1).decode().lower()] = match.group(2).decode(errors="replace")
    return found


class RecordingHandler:
    """aiosmtpd handler: scripted refusals, and a durable line per message received."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.arrivals: Counter[str] = Counter()
        self.taken = 0
        self.last_taken: float | None = None

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if "+bounce@" in address:
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.time()
        content = envelope.original_content or b""
        headers = _headers(content)
        message_id = headers.get("message-id", "")
        first = self.arrivals[message_id] == 0
        self.arrivals[message_id] += 1
        verdict = "accepted"
        if first and any("+defer@" in rcpt for rcpt in envelope.rcpt_tos):
            verdict = "deferred"
        elif first and any("+drop@" in rcpt for rcpt in envelope.rcpt_tos):
            verdict = "dropped"
        record = {"t": now, "mid": message_id, "chaos": headers.get("x-chaos-id"), "verdict": verdict}
        self.out.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.out.flush()
        if verdict in TAKEN:
            self.taken += 1
            self.last_taken = now
        if verdict == "deferred":
            return "451 4.3.0 try again later"
        if verdict == "dropped":
            server.transport.close()
            await asyncio.sleep(3600)  # cancelled when the connection is gone: no reply is ever sent
        return "250 2.0.0 OK taken"


def read_records(path: Path) -> list[dict[str, Any]]:
    """The sink's records (a torn last line, from a crash mid-write, is skipped)."""
    records = []
    with path.open() as lines:
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def serve(record: Path, host: str, port: int) -> int:
    from aiosmtpd.smtp import SMTP

    logging.getLogger("mail.log").setLevel(logging.CRITICAL)  # dropped connections are on purpose
    loop = asyncio.get_running_loop()
    with record.open("a") as out:
        handler = RecordingHandler(out)
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="chaos-sink", ident="mailsvc-chaos-sink", decode_data=False, timeout=60),
            host,
            port,
            backlog=1024,
        )
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        _emit({"event": "ready", "port": server.sockets[0].getsockname()[1]})
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

        async def commands() -> None:
            while line := await reader.readline():
                if json.loads(line or b"{}").get("op") == "stats":
                    _emit({"ok": True, "taken": handler.taken, "last_taken": handler.last_taken})
                else:
                    _emit({"ok": False, "error": "unknown op"})
            stop.set()

        task = asyncio.create_task(commands())
        try:
            await stop.wait()
        finally:
            task.cancel()
            server.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos.sink", description=__doc__)
    parser.add_argument("--record", required=True, type=Path, help="JSON-lines file of every message received")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from mailsvc.cli import run_async

    return run_async(serve(args.record, args.host, args.port))


if __name__ == "__main__":
    sys.exit(main())
