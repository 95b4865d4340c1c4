"""The final write of a delivery is a HOT update: no index of `deliveries` gets an entry (migration 0011).

`n_tup_hot_upd` against `n_tup_upd` of `deliveries`, read after a few hundred deliveries went
through the real service (stub provider). The service's backends flush their statistics when they
exit, so the figures are read after it stopped, on a fresh snapshot.
"""

from __future__ import annotations

import asyncpg
from redis.asyncio import Redis

from tests.support.deliveries import Ledger, in_process_service
from tests.support.infra import wait_until
from tests.support.payloads import numbered_payload
from tests.support.stream import xadd_many

DELIVERIES = 400

_UPDATES = """
SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'deliveries'
"""

# what each end writes; an index naming one of them (key, expression or predicate) makes it non-HOT
_END_COLUMNS = ("status", "finished_at", "updated_at", "attempt_count", "last_error")


async def _updates(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        row = await conn.fetchrow(_UPDATES)
    finally:
        await conn.close()
    assert row is not None
    return int(row["n_tup_upd"]), int(row["n_tup_hot_upd"])


async def test_finishing_deliveries_writes_no_index_entries(
    service_env: dict[str, str], database_dsn: str, redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    updated_before, hot_before = await _updates(database_dsn)
    async with in_process_service({**service_env, "MAIL_SMTP_MODE": "stub"}):
        await xadd_many(redis_client, stream_key, [numbered_payload(n) for n in range(DELIVERIES)])

        async def all_sent() -> bool:
            return await db.count("status = 'sent'") == DELIVERIES

        await wait_until(all_sent, timeout=60, what=f"{DELIVERIES} deliveries sent")
    updated, hot = await _updates(database_dsn)
    assert updated - updated_before == DELIVERIES  # one write at the end, none before
    assert hot - hot_before >= 0.9 * DELIVERIES, f"{hot - hot_before} of {DELIVERIES} final writes were HOT"


async def test_no_index_of_deliveries_names_a_column_an_end_writes(db: Ledger) -> None:
    definitions = await db.conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'deliveries'"
    )
    assert definitions
    offending = [row["indexname"] for row in definitions if any(column in row["indexdef"] for column in _END_COLUMNS)]
    assert offending == []
