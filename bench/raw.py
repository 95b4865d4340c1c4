"""The raw ceiling: aiosmtplib alone, in this process, sending pre-rendered bytes with `sendmail()`
to the same sink over the same number of connections as the service uses (SPEC §10)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiosmtplib import SMTP

from bench.payloads import PayloadKind, raw_message
from bench.sinks import Sink, wait_for_count


async def _connection(port: int, quota: list[int], sender: str, recipients: list[str], message: bytes) -> None:
    client = SMTP(hostname="127.0.0.1", port=port, use_tls=False, start_tls=False, timeout=30)
    await client.connect()
    try:
        while quota[0] > 0:
            quota[0] -= 1
            await client.sendmail(sender, recipients, message)
    finally:
        with contextlib.suppress(Exception):  # a QUIT failing after the sends changes nothing measured
            await client.quit()


async def raw_ceiling(sink: Sink, count: int, connections: int, kind: PayloadKind) -> dict[str, float]:
    """Send `count` messages over `connections` connections; messages/s as the sink counted them."""
    sender, recipients, message = raw_message(kind)
    await sink.reset()
    quota = [count]
    started = time.time_ns()
    await asyncio.gather(*(_connection(sink.port, quota, sender, recipients, message) for _ in range(connections)))
    last = await wait_for_count(sink, count)
    seconds = (last - started) / 1e9
    return {"messages_per_s": count / seconds, "seconds": seconds, "count": float(count), "bytes": float(len(message))}
