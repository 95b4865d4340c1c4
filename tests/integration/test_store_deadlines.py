"""A PostgreSQL connection that accepts bytes and never answers (half-open: a partition, a
vanished host, a NAT that dropped its state) costs one operation timeout, never forever."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import pytest

from mailsvc.adapters.postgres.engine import create_engine
from mailsvc.adapters.postgres.intake_store import IntakeStore
from mailsvc.adapters.postgres.queue_store import QueueStore
from mailsvc.errors import StoreUnavailable
from tests.support.tcp_proxy import TcpProxy, dsn_through, proxy_to

TIMEOUT = 1.0


@pytest.fixture
async def proxy(database_dsn: str) -> AsyncIterator[TcpProxy]:
    running = proxy_to(database_dsn)
    await running.start()
    yield running
    await running.stop()


async def test_a_half_open_connection_fails_within_the_operation_timeout_and_is_not_reused(
    database_dsn: str, proxy: TcpProxy
) -> None:
    """Found by the chaos run: asyncpg waits forever for an answer unless told otherwise, and the
    server's `statement_timeout` cannot help when the server never got the statement. One
    half-open moment wedged the consumer's commit, the scheduler's claim, the result writer and
    every HTTP request of that replica until it was killed (a SIGTERM ran past its deadline)."""
    engine = create_engine(dsn_through(database_dsn, proxy.port), operation_timeout_s=TIMEOUT)
    queue, intake = QueueStore(engine), IntakeStore(engine)
    try:
        assert await queue.claim(10, timedelta(seconds=30)) == []  # the pooled connections are open
        assert await intake.load_offset("s") is None
        proxy.half_open = True
        operations: list[Callable[[], Awaitable[object]]] = [
            lambda: queue.claim(10, timedelta(seconds=30)),  # straight through asyncpg
            lambda: intake.load_offset("s"),  # through SQLAlchemy
        ]
        for operation in operations:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                async with asyncio.timeout(TIMEOUT * 15):  # the test's own guard: "forever"
                    await operation()
            assert time.monotonic() - started < TIMEOUT * 8  # a statement and its rollback, each bounded
        proxy.half_open = False
        # the connections that went half-open are gone from the pool: the next calls answer
        assert await queue.claim(10, timedelta(seconds=30)) == []
        assert await intake.load_offset("s") is None
    finally:
        await engine.dispose()
