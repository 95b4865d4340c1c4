"""SIGKILL in the middle of a backlog loses nothing and accepts nothing twice; and how fast a
backlog is accepted (printed, never asserted: these machines are noisy)."""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from redis.asyncio import Redis

from tests.support.infra import wait_until
from tests.support.intake import connect, malformed_by_entry, stored_offset, wait_for_offset
from tests.support.payloads import login_code_payload, numbered_payload
from tests.support.process import start_service
from tests.support.stream import Fields, command, xadd_all

BACKLOG = 20_000
FUTURE = "2099-01-01T00:00:00Z"  # nothing becomes due: the workers stay out of the measurement


@dataclass
class Backlog:
    entries: list[Fields] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)  # one delivery each
    duplicates: int = 0
    malformed_at: dict[int, str] = field(default_factory=dict)  # entry index → reason


def backlog(size: int, *, with_bad: bool) -> Backlog:
    plan = Backlog()
    created: dict[str, dict[str, Any]] = {}
    for n in range(size):
        key = f"crash-{n}"
        earlier = f"crash-{n - 100}"
        if with_bad and n % 97 == 5:
            plan.malformed_at[n] = "invalid_json"
            plan.entries.append(command(b'{"to": [', key))
        elif with_bad and n % 101 == 7 and earlier in created:
            plan.duplicates += 1
            plan.entries.append(command(created[earlier], earlier))
        elif with_bad and n % 103 == 9 and earlier in created:
            plan.malformed_at[n] = "idempotency_conflict"
            plan.entries.append(command({**created[earlier], "priority": "low"}, earlier))
        else:
            payload = numbered_payload(n, send_at=FUTURE) if n % 2 else {**login_code_payload(n), "send_at": FUTURE}
            created[key] = payload
            plan.entries.append(command(payload, key))
    plan.keys = set(created)
    return plan


async def _offset_moves(db: asyncpg.Connection, stream_key: str, since: str | None) -> bool:
    return await stored_offset(db, stream_key) != since


async def test_sigkill_mid_backlog_loses_nothing_and_accepts_nothing_twice(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, database_dsn: str
) -> None:
    plan = backlog(BACKLOG, with_bad=True)
    assert len(plan.malformed_at) > 300
    assert plan.duplicates > 100
    ids = await xadd_all(redis_client, stream_key, plan.entries)
    env = {**service_env, "MAIL_STREAM_BATCH_SIZE": "250"}
    kills = 0
    async with connect(database_dsn) as db:
        for _ in range(8):
            before = await stored_offset(db, stream_key)
            if before == ids[-1]:
                break
            service = await start_service(env)
            try:
                moved = functools.partial(_offset_moves, db, stream_key, before)
                await wait_until(moved, timeout=30, what="a committed batch")
                service.process.kill()  # SIGKILL wherever it is: reading, rendering, committing
                assert await service.wait_exit() == -signal.SIGKILL
            finally:
                if service.process.returncode is None:
                    service.process.kill()
                    await service.wait_exit()
            kills += 1
        offset_after_kills = await stored_offset(db, stream_key)
        assert kills >= 5
        assert offset_after_kills != ids[-1], "the backlog ran out before the kills did"

        service = await start_service(env)
        try:
            await wait_for_offset(db, stream_key, ids[-1], timeout=120)
            service.send_signal(signal.SIGTERM)
            assert await service.wait_exit() == 0
        finally:
            if service.process.returncode is None:
                service.process.kill()
                await service.wait_exit()

        keys = [row["idempotency_key"] for row in await db.fetch("SELECT idempotency_key FROM deliveries")]
        assert len(keys) == len(set(keys)), "an idempotency key has two deliveries"
        assert set(keys) == plan.keys  # nothing lost, nothing extra
        malformed = await malformed_by_entry(db)  # each malformed entry recorded once
        assert malformed == {ids[n]: reason for n, reason in plan.malformed_at.items()}
        assert len(keys) + plan.duplicates + len(malformed) == len(ids) == BACKLOG
        # whole deliveries only: every one with its payload and recipient
        assert await db.fetchval("SELECT count(*) FROM delivery_payloads") == len(keys)
        assert await db.fetchval("SELECT count(*) FROM delivery_recipients") == len(keys)
        assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == len(keys)
        assert await db.fetch("SELECT * FROM stream_events") == []  # restarts are not gaps


async def test_backlog_acceptance_rate(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, database_dsn: str
) -> None:
    plan = backlog(BACKLOG, with_bad=False)
    ids = await xadd_all(redis_client, stream_key, plan.entries)
    service = await start_service(service_env)
    try:
        await service.wait_for_event("consumer_started")
        started = time.monotonic()
        async with connect(database_dsn) as db:
            await wait_for_offset(db, stream_key, ids[-1], timeout=120)
            elapsed = time.monotonic() - started
            assert await db.fetchval("SELECT count(*) FROM deliveries") == BACKLOG
            first, last = await db.fetchrow("SELECT min(created_at), max(created_at) FROM deliveries")
        service.send_signal(signal.SIGTERM)
        assert await service.wait_exit() == 0
    finally:
        if service.process.returncode is None:
            service.process.kill()
            await asyncio.wait_for(service.process.wait(), 10)
    accepted_span = (last - first).total_seconds()
    print(
        f"\nstream acceptance: {BACKLOG} commands in {elapsed:.2f}s = {BACKLOG / elapsed:,.0f} commands/s "
        f"(first to last acceptance: {accepted_span:.2f}s = {BACKLOG / max(accepted_span, 1e-6):,.0f}/s)"
    )
