"""The scheduler's and result writer's statements never scan `delivery_queue` whole.

PostgreSQL caches the generic plan of a prepared statement after five runs. Made while the queue
holds a few rows, a plan that scans it is the cheapest; kept while a backlog of millions builds up,
every claim and result write reads the whole queue. The queue engine plans without sequential
scans; the default engine shows the trap is real.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from typing import NamedTuple

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from mailsvc.adapters.postgres.db import driver_connection
from mailsvc.adapters.postgres.engine import create_engine, create_queue_engine
from mailsvc.adapters.postgres.queue_store import QueueStore
from tests.support.queue import open_queue, sent

CYCLES = 8  # more than the five custom plans PostgreSQL makes before it caches a generic one
LEASE = timedelta(seconds=30)


class QueueStats(NamedTuple):
    seq_scans: int  # of `delivery_queue`
    deleted: int  # rows deleted from it
    claims_index_scans: int  # of `delivery_queue_claims_idx`


async def queue_stats(dsn: str) -> QueueStats:
    """The queue's counters, as the statistics show them now."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            """
            SELECT t.seq_scan, t.n_tup_del, i.idx_scan
            FROM pg_stat_user_tables t JOIN pg_stat_user_indexes i ON i.relid = t.relid
            WHERE t.relname = 'delivery_queue' AND i.indexrelname = 'delivery_queue_claims_idx'
            """
        )
        return QueueStats(int(row["seq_scan"]), int(row["n_tup_del"]), int(row["idx_scan"]))
    finally:
        await conn.close()


async def stats_after(engine: AsyncEngine, dsn: str, *, deleted: int) -> QueueStats:
    """The counters once they show `deleted` queue rows deleted: the backend that deleted them has
    reported all of its counters by then."""
    async with driver_connection(engine) as conn:  # most likely the connection that ran them
        await conn.execute("SELECT pg_stat_force_next_flush()")
    deadline = time.monotonic() + 30
    while (stats := await queue_stats(dsn)).deleted < deleted:
        assert time.monotonic() < deadline, f"the statistics never showed the deletes: {stats}"
        await asyncio.sleep(0.1)
    return stats


async def scans_while_working(database_dsn: str, make_engine: Callable[[str], AsyncEngine]) -> int:
    """Claim and finish one delivery at a time, CYCLES times; the sequential scans of the queue."""
    engine = make_engine(database_dsn)
    try:
        async with open_queue(database_dsn) as queue:
            store = QueueStore(engine)
            before = await queue_stats(database_dsn)
            for _ in range(CYCLES):
                await queue.accept()
                [claim] = await store.claim(4, LEASE)
                assert await store.finish([sent(claim)]) == {claim.delivery_id}
            after = await stats_after(engine, database_dsn, deleted=CYCLES)
            return after.seq_scans - before.seq_scans
    finally:
        await engine.dispose()


@pytest.fixture
async def quiet_queue(database_dsn: str) -> str:
    """No autovacuum ANALYZE may replan in the middle (it would hide the trap)."""
    conn = await asyncpg.connect(database_dsn)
    try:
        await conn.execute("ALTER TABLE delivery_queue SET (autovacuum_enabled = false)")
    finally:
        await conn.close()
    return database_dsn


async def test_the_queue_engine_never_scans_the_queue_whole(quiet_queue: str) -> None:
    assert await scans_while_working(quiet_queue, create_queue_engine) == 0


async def test_a_default_engine_caches_plans_that_scan_it(quiet_queue: str) -> None:
    assert await scans_while_working(quiet_queue, create_engine) > 0


async def test_a_result_write_finds_its_rows_by_key_not_among_all_claims(quiet_queue: str) -> None:
    """The claims index lists every claimed row — and, until a vacuum, every row claimed since and
    deleted: a bitmap scan of it (which never marks dead entries) read thousands per result write."""
    engine = create_queue_engine(quiet_queue)
    try:
        async with open_queue(quiet_queue) as queue:
            store = QueueStore(engine)
            for _ in range(3):  # dead entries in the claims index, as a backlog leaves them
                for _ in range(40):
                    await queue.accept()
                claims = await store.claim(40, LEASE)
                assert len(await store.finish([sent(claim) for claim in claims])) == len(claims) == 40
            before = await stats_after(engine, quiet_queue, deleted=120)
            for _ in range(CYCLES):
                for _ in range(4):
                    await queue.accept()
                claims = await store.claim(4, LEASE)
                assert len(await store.finish([sent(claim) for claim in claims])) == 4
            after = await stats_after(engine, quiet_queue, deleted=120 + 4 * CYCLES)
            assert after.claims_index_scans == before.claims_index_scans
    finally:
        await engine.dispose()
