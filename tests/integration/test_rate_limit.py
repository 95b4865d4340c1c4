"""The rate limit toward the provider (SPEC §12): one bucket for every replica, so three `mailsvc
serve` processes together never send faster than MAIL_SMTP_RATE_LIMIT (over any 10 s window, at
most 10 % more), and the work waits in `queued` rather than claimed and held."""

from __future__ import annotations

import asyncio
import bisect
import contextlib

import pytest
from redis.asyncio import Redis

from mailsvc.producer import command_fields
from tests.smtp_servers import SinkHandler, SmtpServer
from tests.support.deliveries import Ledger, smtp_env
from tests.support.infra import wait_until
from tests.support.payloads import raw_payload
from tests.support.process import ServiceProcess, running_service

pytestmark = pytest.mark.slow

LIMIT = 40  # messages/s across the replicas
COUNT = 520  # 13 s of work at the limit: more than one 10 s window
WINDOW = 10.0


def busiest_window(times: list[float], window: float = WINDOW) -> int:
    """The most arrivals within any `window` seconds (each window starting at an arrival)."""
    ordered = sorted(times)
    return max((bisect.bisect_left(ordered, t + window) - i for i, t in enumerate(ordered)), default=0)


async def test_three_replicas_share_one_bucket_and_all_mail_arrives(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, database_dsn: str
) -> None:
    keys = [f"rl{i:04d}" for i in range(COUNT)]
    sink = SinkHandler()
    with SmtpServer(sink) as server:
        env = smtp_env(
            service_env,
            server.host_port,
            MAIL_SMTP_RATE_LIMIT=str(LIMIT),
            # three processes and the test share one PostgreSQL with max_connections = 100
            MAIL_POSTGRES_MAX_OPEN_CONNS="10",
            MAIL_POSTGRES_MAX_IDLE_CONNS="5",
        )
        async with Ledger.open(database_dsn) as db, contextlib.AsyncExitStack() as stack:
            replicas: list[ServiceProcess] = list(
                await asyncio.gather(*(stack.enter_async_context(running_service(env)) for _ in range(3)))
            )
            async with redis_client.pipeline(transaction=False) as pipe:
                for key in keys:
                    fields = command_fields(raw_payload(f"{key}@example.org"), key, None)
                    pipe.xadd(stream_key, fields)  # type: ignore[arg-type]
                await pipe.execute()

            held = 0

            async def all_arrived() -> bool:
                nonlocal held
                # never claimed and then held: what is claimed is what the bucket paid for
                claimed = await db.conn.fetchval("SELECT count(*) FROM delivery_queue WHERE claim_token IS NOT NULL")
                held = max(held, claimed)
                return sink.total >= COUNT

            await wait_until(all_arrived, timeout=90, interval=0.1, what="every delivery at the sink")

            async def all_recorded() -> bool:  # the sink's 250 comes before the result is written
                return await db.conn.fetchval("SELECT count(*) FROM deliveries WHERE status = 'sent'") >= COUNT

            await wait_until(all_recorded, timeout=30, what="every result written")
            sent = await db.conn.fetchval("SELECT count(*) FROM deliveries WHERE status = 'sent'")
            senders = [r for r in replicas if r.events("service_started")]
    assert len(senders) == 3
    assert sent == COUNT
    assert len(sink.counts) == COUNT
    assert all(count == 1 for count in sink.counts.values())
    assert busiest_window(sink.times) <= 1.1 * LIMIT * WINDOW, busiest_window(sink.times)
    assert held <= LIMIT  # at most about a bucket's worth in flight at once (the burst is LIMIT / 2)
