"""Retention (SPEC §5): old terminal deliveries go with all their children; nothing else does."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from devtools.embedded import free_port
from mailsvc.adapters.postgres.engine import create_engine
from mailsvc.adapters.postgres.retention_store import RetentionStore
from mailsvc.loops.retention import RetentionLoop, RetentionPolicy, RetentionReport, retry_delay
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
    terminal = status in ("sent", "dead_lettered", "suppressed", "cancelled", "superseded")
    await conn.execute(
        """
        INSERT INTO deliveries (delivery_id, source, status, send_at, idempotency_key, message_id,
                                resend_of, created_at, updated_at, finished_at)
        VALUES ($1, CASE WHEN $6::uuid IS NULL THEN 'notification' ELSE 'resend' END,
                CASE WHEN $2::text = 'sending' THEN 'queued' ELSE $2::text END, $3::timestamptz,
                $4, $5, $6, $3, $3, $7)
        """,
        delivery_id, status, at, f"k-{delivery_id}", f"<{delivery_id}@test>", resend_of, at if terminal else None,
    )  # fmt: skip
    if not terminal:  # queued, or sending: a claimed queue row
        await conn.execute(
            "INSERT INTO delivery_queue (delivery_id, priority, next_attempt_at, claim_token, claim_deadline,"
            " created_at) VALUES ($1, 1, $2::timestamptz, CASE WHEN $3 THEN gen_random_uuid() END,"
            " CASE WHEN $3 THEN $2::timestamptz END, $2::timestamptz)",
            delivery_id, at, status == "sending",
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


async def suppression(conn: asyncpg.Connection, address: str, expires_in: timedelta | None) -> str:
    await conn.execute(
        "INSERT INTO suppressions (address, reason, created_at, expires_at) VALUES ($1, 'hard_bounce', $2, $3)",
        address, NOW - timedelta(days=40), None if expires_in is None else NOW + expires_in,
    )  # fmt: skip
    return address


async def remaining(conn: asyncpg.Connection, table: str, column: str = "delivery_id") -> set[object]:
    return {row[0] for row in await conn.fetch(f"SELECT {column} FROM {table}")}


def report(*, failed: tuple[str, ...] = (), **deleted: int) -> RetentionReport:
    """The report of a pass that deleted `deleted` (zero for every other table)."""
    tables = (
        "deliveries",
        "malformed_commands",
        "idempotency_keys",
        "stream_events",
        "delivery_events",
        "suppressions",
    )
    return RetentionReport({table: deleted.get(table, 0) for table in tables}, failed)


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

    loop = RetentionLoop(store=RetentionStore(engine), policy=POLICY, interval=timedelta(hours=1), batch_size=2)
    result = await loop.run_once(NOW)

    assert result == report(deliveries=3, malformed_commands=1, idempotency_keys=2, stream_events=1)
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

    assert await loop.run_once(NOW) == report()


async def test_cancelled_and_superseded_deliveries_and_expired_suppressions_go(
    conn: asyncpg.Connection, engine: AsyncEngine
) -> None:
    days = timedelta(days=1)
    cancelled = await delivery(conn, "cancelled", 31 * days)
    superseded = await delivery(conn, "superseded", 31 * days)
    young_cancelled = await delivery(conn, "cancelled", days)
    expired = [await suppression(conn, f"gone-{i}@example.com", -timedelta(seconds=i + 1)) for i in range(3)]
    lasting = await suppression(conn, "lasting@example.com", days)
    forever = await suppression(conn, "forever@example.com", None)

    loop = RetentionLoop(store=RetentionStore(engine), policy=POLICY, interval=timedelta(hours=1), batch_size=2)
    result = await loop.run_once(NOW)

    assert result.deleted["deliveries"] == 2
    assert result.deleted["suppressions"] == len(expired)
    assert {cancelled, superseded}.isdisjoint(await remaining(conn, "deliveries"))
    assert young_cancelled in await remaining(conn, "deliveries")
    assert await remaining(conn, "suppressions", "address") == {lasting, forever}


async def test_large_backlogs_go_in_bounded_batches(conn: asyncpg.Connection, engine: AsyncEngine) -> None:
    for _ in range(11):
        await delivery(conn, "sent", timedelta(days=60))
    keep = await delivery(conn, "sent", timedelta(days=1))
    store = RetentionStore(engine)
    assert await store.delete_finished_deliveries(NOW - timedelta(days=30), 4) == 4  # one statement, at most 4
    loop = RetentionLoop(store=store, policy=POLICY, interval=timedelta(hours=1), batch_size=4)
    assert (await loop.run_once(NOW)).deleted["deliveries"] == 7
    assert await remaining(conn, "deliveries") == {keep}


# Deliveries for the volume test, built in one statement: `live` queued ones (never deleted) and
# `expired` sent ones finished long ago, each of those with its own key.
SCALE_DELIVERIES = """
INSERT INTO deliveries (delivery_id, source, status, send_at, idempotency_key, message_id,
                        created_at, updated_at, finished_at)
SELECT gen_random_uuid(), 'notification', CASE WHEN g <= $1::int THEN 'queued' ELSE 'sent' END, $3::timestamptz,
       'scale-' || g, '<' || g || '@scale.test>', $3, $3,
       CASE WHEN g > $1::int THEN $3::timestamptz END
FROM generate_series(1, $1::int + $2::int) AS g
"""

# `$1` keys spread over the live deliveries in runs (so each index is filled in order), plus the
# expired deliveries' own keys, none of them expired: the cascade is the only thing deleting keys.
SCALE_KEYS = """
WITH live AS (SELECT delivery_id, row_number() OVER () - 1 AS n FROM deliveries WHERE status = 'queued')
INSERT INTO idempotency_keys (source, key, request_hash, delivery_id, expires_at)
SELECT 'notification', lpad(g::text, 7, '0'), '\\x00'::bytea, live.delivery_id, $2::timestamptz
FROM generate_series(0, $1::int - 1) AS g JOIN live ON live.n = g / ($1::int / (SELECT count(*) FROM live))
UNION ALL
SELECT 'auth', idempotency_key, '\\x00'::bytea, delivery_id, $2::timestamptz FROM deliveries WHERE status = 'sent'
"""

KEY_TABLE_STATS = "SELECT seq_scan, n_tup_del FROM pg_stat_user_tables WHERE relname = 'idempotency_keys'"


async def test_a_pass_over_a_million_idempotency_keys_scans_none_of_them(
    conn: asyncpg.Connection, database_dsn: str
) -> None:
    live, expired, keys = 100, 1000, 1_000_000
    async with conn.transaction():
        # bulk load: every key names a delivery inserted above by construction, so the per-row
        # foreign key checks (half of the load time) are skipped for this one transaction
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(SCALE_DELIVERIES, live, expired, NOW - timedelta(days=60))
        await conn.execute(SCALE_KEYS, keys, NOW + timedelta(days=1))
    before = await conn.fetchrow(KEY_TABLE_STATS)

    # the service's own statement timeout: an unindexed cascade runs past it
    engine = create_engine(database_dsn, operation_timeout_s=20)
    try:
        loop = RetentionLoop(store=RetentionStore(engine), policy=POLICY, interval=timedelta(hours=1))
        result = await loop.run_once(NOW)
    finally:
        await engine.dispose()  # its sessions end, and with them their statistics reach the server
    assert result == report(deliveries=expired)

    async def flushed() -> asyncpg.Record | None:
        # the cascade deleted the expired deliveries' keys: once those deletes are counted, the
        # same session's scans of the table are too
        stats = await conn.fetchrow(KEY_TABLE_STATS)
        return stats if stats["n_tup_del"] - before["n_tup_del"] >= expired else None

    after = await wait_until(flushed, what="the retention session's table statistics")
    assert after["seq_scan"] - before["seq_scan"] < 10, "the cascade scanned idempotency_keys per deleted delivery"
    assert await conn.fetchval("SELECT count(*) FROM deliveries") == live
    assert await conn.fetchval("SELECT count(*) FROM idempotency_keys") == keys


async def refuse_deleting_deliveries(conn: asyncpg.Connection) -> None:
    """From now on the database refuses to delete any delivery (a trigger raises)."""
    await conn.execute(
        """
        CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'deliveries are not to be deleted today'; END $$;
        CREATE TRIGGER refuse_delete BEFORE DELETE ON deliveries FOR EACH ROW EXECUTE FUNCTION refuse_delete();
        """
    )


async def stall_deleting_deliveries(conn: asyncpg.Connection) -> None:
    """From now on deleting a delivery outlasts any statement timeout (`StoreUnavailable`)."""
    await conn.execute(
        """
        CREATE FUNCTION stall_delete() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN PERFORM pg_sleep(60); RETURN OLD; END $$;
        CREATE TRIGGER stall_delete BEFORE DELETE ON deliveries FOR EACH ROW EXECUTE FUNCTION stall_delete();
        """
    )


@pytest.mark.parametrize("break_deliveries", [refuse_deleting_deliveries, stall_deleting_deliveries])
async def test_a_failing_step_does_not_stop_the_others(
    break_deliveries: Callable[[asyncpg.Connection], Awaitable[None]],
    conn: asyncpg.Connection,
    database_dsn: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    days = timedelta(days=1)
    old = await delivery(conn, "sent", 60 * days, key_expires_in=-59 * days)
    young = await delivery(conn, "sent", days, key_expires_in=-days)
    await malformed(conn, 8 * days)
    await stream_event(conn, 8 * days)
    await break_deliveries(conn)
    engine = create_engine(database_dsn, operation_timeout_s=0.5)
    try:
        loop = RetentionLoop(store=RetentionStore(engine), policy=POLICY, interval=timedelta(hours=1))
        with caplog.at_level(logging.WARNING, logger="mailsvc.retention"):
            result = await loop.run_once(NOW)
    finally:
        await engine.dispose()

    assert result == report(failed=("deliveries",), malformed_commands=1, idempotency_keys=2, stream_events=1)
    assert await remaining(conn, "deliveries") == {old, young}
    assert await remaining(conn, "malformed_commands", "malformed_id") == set()
    assert await remaining(conn, "stream_events", "event_id") == set()
    assert await remaining(conn, "idempotency_keys") == set()
    failures = [r for r in caplog.records if r.getMessage() == "retention_step_failed"]
    assert [r.__dict__["step"] for r in failures] == ["deliveries"]
    assert "deliveries are not to be deleted" not in caplog.text  # classes are logged, not the database's text


async def test_a_failing_step_is_retried_by_later_passes_not_on_the_spot(
    conn: asyncpg.Connection, engine: AsyncEngine
) -> None:
    old = await delivery(conn, "sent", timedelta(days=60))
    await refuse_deleting_deliveries(conn)
    passes: list[RetentionReport] = []
    loop = RetentionLoop(
        store=RetentionStore(engine),
        policy=POLICY,
        interval=timedelta(hours=1),
        retry_interval=timedelta(milliseconds=20),
        clock=lambda: NOW,
        on_pass=passes.append,
    )
    task = asyncio.create_task(loop.run())

    async def failed_twice() -> bool:
        return len(passes) >= 2

    await wait_until(failed_twice, what="a second pass after the failed one")
    assert all(p.failed == ("deliveries",) for p in passes)
    await conn.execute("DROP TRIGGER refuse_delete ON deliveries")

    async def recovered() -> bool:
        return bool(passes[-1].deleted.get("deliveries"))

    await wait_until(recovered, what="a pass that deletes once the database lets it")
    assert passes[-1].failed == ()
    assert old not in await remaining(conn, "deliveries")
    settled = len(passes)
    loop.stop()
    await asyncio.wait_for(task, 5)
    assert len(passes) == settled  # a clean pass waits the whole interval


@pytest.mark.parametrize(
    ("failed_passes", "expected"),
    [(1, 60.0), (2, 120.0), (3, 240.0), (6, 1920.0), (7, 3600.0), (10_000, 3600.0)],
)
def test_failed_passes_back_off_to_the_interval(failed_passes: int, expected: float) -> None:
    assert retry_delay(failed_passes, 60.0, 3600.0) == expected


async def test_the_loop_passes_at_once_then_waits_for_the_interval(
    conn: asyncpg.Connection, engine: AsyncEngine
) -> None:
    old = await delivery(conn, "dead_lettered", timedelta(days=90))
    passes: list[RetentionReport] = []
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
    assert passes == [report(deliveries=1)]
    assert old not in await remaining(conn, "deliveries")
    loop.stop()
    await asyncio.wait_for(task, 5)
    assert len(passes) == 1


async def test_an_unreachable_database_is_retried_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    engine = create_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing", operation_timeout_s=1)
    passes: list[RetentionReport] = []
    loop = RetentionLoop(
        store=RetentionStore(engine),
        policy=POLICY,
        interval=timedelta(hours=1),
        retry_interval=timedelta(milliseconds=20),
        on_pass=passes.append,
    )
    try:
        with caplog.at_level(logging.WARNING, logger="mailsvc.retention"):
            task = asyncio.create_task(loop.run())

            async def retried() -> bool:
                return len(passes) >= 2

            await wait_until(retried, what="two failed passes")
            assert not task.done()
            loop.stop()
            await asyncio.wait_for(task, 5)
    finally:
        await engine.dispose()
    assert passes[0].failed == (
        "deliveries",
        "malformed_commands",
        "idempotency_keys",
        "stream_events",
        "delivery_events",
        "suppressions",
    )
    failures = [r for r in caplog.records if r.getMessage() == "retention_step_failed"]
    assert {r.__dict__["error_class"] for r in failures} == {"StoreUnavailable"}


async def test_the_service_runs_a_pass_at_startup(database_dsn: str, redis_addr: str, conn: asyncpg.Connection) -> None:
    expired = await delivery(conn, "sent", timedelta(days=3), now=datetime.now(UTC))
    young = await delivery(conn, "sent", timedelta(hours=1), now=datetime.now(UTC))
    async with in_process(operator_env(database_dsn, redis_addr, MAIL_DELIVERY_RETENTION="48h")):

        async def cleaned() -> bool:
            return expired not in await remaining(conn, "deliveries")

        await wait_until(cleaned, what="the startup retention pass")
        assert young in await remaining(conn, "deliveries")


async def delivery_event(conn: asyncpg.Connection, delivery_id: uuid.UUID, age: timedelta) -> int:
    """An event written `age` before NOW, in a transaction of its own (so feed order is insertion order)."""
    seq: int = await conn.fetchval(
        "INSERT INTO delivery_events (delivery_id, type, data, created_at) "
        "VALUES ($1, 'delivery.queued', '{}', $2) RETURNING seq",
        delivery_id,
        NOW - age,
    )
    return seq


async def test_only_published_events_past_their_retention_are_deleted(
    conn: asyncpg.Connection, engine: AsyncEngine
) -> None:
    days = timedelta(days=1)
    owner = await delivery(conn, "queued", days)  # a delivery retention never touches: events go on their own
    old = [await delivery_event(conn, owner, 9 * days) for _ in range(3)]
    old_unpublished = [await delivery_event(conn, owner, 8 * days) for _ in range(2)]
    young = await delivery_event(conn, owner, days)
    policy = RetentionPolicy(POLICY.delivery_retention, POLICY.malformed_retention, event_retention=7 * days)
    on = RetentionLoop(
        store=RetentionStore(engine, event_stream="mail:events"), policy=policy, interval=timedelta(hours=1)
    )

    assert (await on.run_once(NOW)).deleted["delivery_events"] == 0  # never published: nothing is gone
    await conn.execute(
        "INSERT INTO event_cursors (stream_key, xid, seq) "
        "SELECT 'mail:events', xid, seq FROM delivery_events WHERE seq = $1",
        old[-1],
    )
    # another stream's cursor, further behind, holds back what it has not published
    await conn.execute(
        "INSERT INTO event_cursors (stream_key, xid, seq) SELECT 'other', xid, seq FROM delivery_events WHERE seq = $1",
        old[0],
    )
    assert (await on.run_once(NOW)).deleted["delivery_events"] == 1
    await conn.execute("DELETE FROM event_cursors WHERE stream_key = 'other'")
    assert (await on.run_once(NOW)).deleted["delivery_events"] == 2
    assert await remaining(conn, "delivery_events", "seq") == {*old_unpublished, young}

    off = RetentionLoop(store=RetentionStore(engine, event_stream=""), policy=policy, interval=timedelta(hours=1))
    assert (await off.run_once(NOW)).deleted["delivery_events"] == 2  # publishing off: every old event goes
    assert await remaining(conn, "delivery_events", "seq") == {young}
    assert await remaining(conn, "deliveries") == {owner}
