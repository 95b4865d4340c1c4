"""Retention (SPEC §5): old terminal deliveries go with all their children; nothing else does."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from devtools.embedded import free_port
from mailsvc.adapters.postgres.engine import create_engine
from mailsvc.adapters.postgres.retention_store import RetentionStore
from mailsvc.loops.retention import RetentionCounts, RetentionLoop, RetentionPolicy
from tests.support.infra import wait_until
from tests.support.operator_api import in_process, operator_env

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
POLICY = RetentionPolicy(delivery_retention=timedelta(hours=720), malformed_retention=timedelta(hours=168))
CHILDREN = ("delivery_recipients", "delivery_payloads", "attempts", "dead_letters", "idempotency_keys")


@pytest.fixture
async def conn(database_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_dsn)
    yield connection
    await connection.close()


@pytest.fixture
async def engine(database_dsn: str) -> AsyncIterator[AsyncEngine]:
    created = create_engine(database_dsn)
    yield created
    await created.dispose()


async def delivery(
    conn: asyncpg.Connection,
    status: str,
    age: timedelta,
    *,
    key_expires_in: timedelta = timedelta(hours=24),
    resend_of: uuid.UUID | None = None,
    now: datetime = NOW,
) -> uuid.UUID:
    """A delivery created (and, when terminal, finished) `age` before `now`, with every kind of child."""
    delivery_id = uuid.uuid4()
    at = now - age
    terminal = status in ("sent", "dead_lettered", "suppressed")
    await conn.execute(
        """
        INSERT INTO deliveries (delivery_id, source, status, send_at, idempotency_key, message_id, next_attempt_at,
                                claim_token, claim_deadline, resend_of, created_at, updated_at, finished_at)
        VALUES ($1, CASE WHEN $6::uuid IS NULL THEN 'notification' ELSE 'resend' END, $2::text, $3::timestamptz,
                $4, $5, CASE WHEN $2 = 'queued' THEN $3::timestamptz END,
                CASE WHEN $2 = 'sending' THEN gen_random_uuid() END, CASE WHEN $2 = 'sending' THEN $3::timestamptz END,
                $6, $3, $3, $7)
        """,
        delivery_id, status, at, f"k-{delivery_id}", f"<{delivery_id}@test>", resend_of, at if terminal else None,
    )  # fmt: skip
    await conn.execute(
        "INSERT INTO delivery_recipients (delivery_id, position, kind, address) VALUES ($1, 0, 'to', 'a@example.com'),"
        " ($1, 1, 'bcc', 'b@example.com')",
        delivery_id,
    )
    await conn.execute(
        "INSERT INTO delivery_payloads (delivery_id, subject, text_body, mime) VALUES ($1, 's', 't', '\\x00')",
        delivery_id,
    )
    await conn.execute(
        "INSERT INTO attempts (delivery_id, number, started_at, finished_at, outcome) VALUES ($1, 1, $2, $2, $3)",
        delivery_id, at, "permanent_failure" if status == "dead_lettered" else "transient_failure",
    )  # fmt: skip
    if status == "dead_lettered":
        await conn.execute(
            "INSERT INTO dead_letters (delivery_id, reason, created_at) VALUES ($1, 'permanent_failure', $2)",
            delivery_id,
            at,
        )
    await conn.execute(
        "INSERT INTO idempotency_keys (source, key, request_hash, delivery_id, created_at, expires_at) "
        "VALUES ('notification', $1, '\\x01', $2, $3, $4)",
        f"k-{delivery_id}", delivery_id, at, now + key_expires_in,
    )  # fmt: skip
    return delivery_id


async def malformed(conn: asyncpg.Connection, age: timedelta) -> int:
    row_id: int = await conn.fetchval(
        "INSERT INTO malformed_commands (stream_key, stream_entry_id, reason, message, raw_fields, received_at) "
        "VALUES ('s', '1-0', 'invalid_json', 'm', '\\xff00', $1) RETURNING malformed_id",
        NOW - age,
    )
    return row_id


async def stream_event(conn: asyncpg.Connection, age: timedelta) -> int:
    row_id: int = await conn.fetchval(
        "INSERT INTO stream_events (stream_key, kind, from_offset, to_offset, detail, detected_at) "
        "VALUES ('s', 'gap', '1-0', '5-0', 'trimmed', $1) RETURNING event_id",
        NOW - age,
    )
    return row_id


async def remaining(conn: asyncpg.Connection, table: str, column: str = "delivery_id") -> set[object]:
    return {row[0] for row in await conn.fetch(f"SELECT {column} FROM {table}")}


async def test_a_pass_deletes_exactly_what_has_expired(conn: asyncpg.Connection, engine: AsyncEngine) -> None:
    days = timedelta(days=1)
    old_sent = await delivery(conn, "sent", 31 * days, key_expires_in=-30 * days)
    old_dead = await delivery(conn, "dead_lettered", 45 * days)
    old_suppressed = await delivery(conn, "suppressed", 400 * days)
    young_sent = await delivery(conn, "sent", 29 * days, key_expires_in=-days)  # key expired, delivery kept
    young_resend = await delivery(conn, "sent", 2 * days, resend_of=old_sent)
    ancient_queued = await delivery(conn, "queued", 400 * days, key_expires_in=-399 * days)
    ancient_sending = await delivery(conn, "sending", 400 * days)
    old_malformed, young_malformed = await malformed(conn, 8 * days), await malformed(conn, 6 * days)
    old_event, young_event = await stream_event(conn, 8 * days), await stream_event(conn, days)

    loop = RetentionLoop(store=RetentionStore(engine, batch_size=2), policy=POLICY, interval=timedelta(hours=1))
    counts = await loop.run_once(NOW)

    assert counts == RetentionCounts(deliveries=3, malformed_commands=1, idempotency_keys=2, stream_events=1)
    kept = {young_sent, young_resend, ancient_queued, ancient_sending}
    assert await remaining(conn, "deliveries") == kept
    for table in CHILDREN[:3]:
        assert await remaining(conn, table) == kept, table
    assert await remaining(conn, "dead_letters") == set()
    assert {old_dead, old_sent, old_suppressed}.isdisjoint(await remaining(conn, "idempotency_keys"))
    # expired keys go on their own clock: the deliveries they named stay
    assert await remaining(conn, "idempotency_keys") == {young_resend, ancient_sending}
    assert await conn.fetchval("SELECT resend_of FROM deliveries WHERE delivery_id = $1", young_resend) is None
    assert await remaining(conn, "malformed_commands", "malformed_id") == {young_malformed}
    assert await remaining(conn, "stream_events", "event_id") == {young_event}
    assert old_malformed not in await remaining(conn, "malformed_commands", "malformed_id")
    assert old_event not in await remaining(conn, "stream_events", "event_id")

    assert await loop.run_once(NOW) == RetentionCounts()


async def test_large_backlogs_go_in_bounded_batches(conn: asyncpg.Connection, engine: AsyncEngine) -> None:
    for _ in range(11):
        await delivery(conn, "sent", timedelta(days=60))
    keep = await delivery(conn, "sent", timedelta(days=1))
    store = RetentionStore(engine, batch_size=4)
    assert await store.delete_finished_deliveries(NOW - timedelta(days=30), lambda: False) == 11
    assert await remaining(conn, "deliveries") == {keep}


async def test_the_loop_passes_at_once_then_waits_for_the_interval(
    conn: asyncpg.Connection, engine: AsyncEngine
) -> None:
    old = await delivery(conn, "dead_lettered", timedelta(days=90))
    passes: list[RetentionCounts] = []
    loop = RetentionLoop(
        store=RetentionStore(engine),
        policy=POLICY,
        interval=timedelta(hours=1),
        clock=lambda: NOW,
        on_pass=passes.append,
    )
    task = asyncio.create_task(loop.run())

    async def passed() -> bool:
        return bool(passes)

    await wait_until(passed, what="the first retention pass")
    assert passes == [RetentionCounts(deliveries=1)]
    assert old not in await remaining(conn, "deliveries")
    loop.stop()
    await asyncio.wait_for(task, 5)
    assert len(passes) == 1


async def test_an_unreachable_database_is_retried_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    engine = create_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing", operation_timeout_s=1)
    loop = RetentionLoop(
        store=RetentionStore(engine),
        policy=POLICY,
        interval=timedelta(hours=1),
        retry_interval=timedelta(milliseconds=20),
    )
    try:
        with caplog.at_level(logging.WARNING, logger="mailsvc.retention"):
            task = asyncio.create_task(loop.run())

            async def retried() -> bool:
                return sum(r.getMessage() == "retention_store_unavailable" for r in caplog.records) >= 2

            await wait_until(retried, what="two failed passes")
            assert not task.done()
            loop.stop()
            await asyncio.wait_for(task, 5)
    finally:
        await engine.dispose()


async def test_the_service_runs_a_pass_at_startup(database_dsn: str, redis_addr: str, conn: asyncpg.Connection) -> None:
    expired = await delivery(conn, "sent", timedelta(days=3), now=datetime.now(UTC))
    young = await delivery(conn, "sent", timedelta(hours=1), now=datetime.now(UTC))
    async with in_process(operator_env(database_dsn, redis_addr, MAIL_DELIVERY_RETENTION="48h")):

        async def cleaned() -> bool:
            return expired not in await remaining(conn, "deliveries")

        await wait_until(cleaned, what="the startup retention pass")
        assert young in await remaining(conn, "deliveries")
