"""The event publisher (SPEC §11) on real PostgreSQL and Redis: CloudEvents fields, commit order and
the outbox trap, Redis outages, one publisher at a time."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from redis.asyncio import Redis

from mailsvc.adapters.postgres.engine import create_engine
from mailsvc.adapters.postgres.event_store import EventStore
from mailsvc.adapters.redis_events import RedisEventWriter
from mailsvc.domain.events import FEED_START, EventBatch, EventPosition, StoredEvent
from mailsvc.domain.model import SendResult
from mailsvc.errors import StreamUnavailable
from tests.support.events import (
    assert_duplicates_are_identical,
    batch_of,
    per_delivery,
    running_publisher,
    stream_events,
    wait_published,
)
from tests.support.infra import closed_port, redis_host_port, unique_name, wait_until
from tests.support.queue import Queue, attempted, sent
from tests.support.tcp_proxy import TcpProxy

LEASE = timedelta(seconds=30)


@pytest.fixture
async def events_key(redis_addr: str) -> AsyncIterator[str]:
    key = f"mailsvc-test:{unique_name('ev')}:events"
    yield key
    host, port = redis_host_port(redis_addr)
    client = Redis(host=host, port=port)
    await client.delete(key)
    await client.aclose()


@pytest.fixture
async def redis(redis_addr: str) -> AsyncIterator[Redis]:
    host, port = redis_host_port(redis_addr)
    client = Redis(host=host, port=port)
    yield client
    await client.aclose()


async def finish_all(queue: Queue, result: SendResult | None = None) -> list[uuid.UUID]:
    claims = await queue.store.claim(100, LEASE)
    records = [sent(c) if result is None else attempted(c, result) for c in claims]
    return sorted(await queue.store.finish(records))


async def test_an_event_is_published_as_cloudevents_attributes(
    queue: Queue, database_dsn: str, redis: Redis, events_key: str
) -> None:
    delivery_id = await queue.accept(tags={"tenant": "acme"})
    await finish_all(queue)
    async with running_publisher(database_dsn, redis, events_key):
        queued, sent_event = await wait_published(redis, events_key, 2)
    rows = await queue.db.conn.fetch("SELECT event_id, created_at FROM delivery_events ORDER BY xid, seq")
    row = await queue.row(delivery_id)
    assert [queued["id"], sent_event["id"]] == [str(r["event_id"]) for r in rows]
    assert {k: v for k, v in queued.items() if k not in ("id", "time", "data", "_entry", "traceparent")} == {
        "specversion": "1.0",
        "source": "mailsvc",
        "type": "delivery.queued",
        "subject": str(delivery_id),
        "datacontenttype": "application/json",
        "deliverysource": "notification",
        "idempotencykey": row["idempotency_key"],
        "tags": {"tenant": "acme"},
    }
    assert queued["data"]["priority"] == "normal"
    assert sent_event["type"] == "delivery.sent"
    assert sent_event["data"]["smtp_code"] == 250
    assert datetime.fromisoformat(queued["time"]) == rows[0]["created_at"]
    assert queued["time"].endswith("Z")
    cursor = await queue.db.conn.fetchrow("SELECT xid::text, seq FROM event_cursors WHERE stream_key = $1", events_key)
    assert cursor["seq"] == (await queue.db.conn.fetchval("SELECT max(seq) FROM delivery_events"))


async def test_an_event_whose_transaction_commits_late_is_published_in_its_place(
    queue: Queue, database_dsn: str, redis: Redis, events_key: str
) -> None:
    first = await queue.accept()
    late = await asyncpg.connect(database_dsn)
    try:
        transaction = late.transaction()
        await transaction.start()
        # its seq and xid are taken now; it becomes visible only at commit, after later ones
        await late.execute(
            "INSERT INTO delivery_events (delivery_id, type, data) VALUES ($1, 'delivery.cancelled', $2)",
            first,
            '{"by": "operator"}',
        )
        async with running_publisher(database_dsn, redis, events_key) as running:
            await wait_published(redis, events_key, 1)
            later = [await queue.accept() for _ in range(3)]
            seqs = await queue.db.conn.fetch("SELECT seq FROM delivery_events ORDER BY seq")
            assert len(seqs) == 4  # the open one's row is invisible here, its seq is below these
            reads = running.store.reads

            async def looked_twice() -> bool:
                return running.store.reads >= reads + 2

            await wait_until(looked_twice, what="two reads of the feed after the later commits")
            published = await stream_events(redis, events_key)
            assert [e["subject"] for e in published] == [str(first)]  # the later ones wait for it
            await transaction.commit()
            events = await wait_published(redis, events_key, 5)
    finally:
        await late.close()
    assert [(e["subject"], e["type"]) for e in events] == [
        (str(first), "delivery.queued"),
        (str(first), "delivery.cancelled"),
        *[(str(d), "delivery.queued") for d in later],
    ]


async def test_events_wait_out_a_redis_outage_and_flow_in_order_after_it(
    queue: Queue, database_dsn: str, redis: Redis, redis_addr: str, events_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = redis_host_port(redis_addr)
    proxy = TcpProxy(host, port)
    await proxy.start()
    through = Redis(host="127.0.0.1", port=proxy.port, socket_timeout=1, socket_connect_timeout=1)
    try:
        with caplog.at_level(logging.WARNING, logger="mailsvc.publisher"):
            async with running_publisher(database_dsn, through, events_key):
                before = await queue.accept()
                await wait_published(redis, events_key, 1)
                await proxy.stop()
                deliveries = [await queue.accept() for _ in range(5)]
                await finish_all(queue, SendResult("transient_failure", 451, "later"))
                await queue.db.conn.execute("UPDATE delivery_queue SET next_attempt_at = now()")
                await finish_all(queue)

                async def failed() -> bool:
                    return any(r.getMessage() == "publisher_dependency_unavailable" for r in caplog.records)

                await wait_until(failed, what="a failed publish")
                await proxy.start()
                events = await wait_published(redis, events_key, 6 * 3, timeout=30)
    finally:
        await through.aclose()
        await proxy.stop()
    assert_duplicates_are_identical(events)
    order = per_delivery(events)
    assert order[before] == ["delivery.queued", "delivery.deferred", "delivery.sent"]
    for delivery_id in deliveries:
        assert order[delivery_id] == ["delivery.queued", "delivery.deferred", "delivery.sent"]
    stored = await queue.db.conn.fetch("SELECT event_id FROM delivery_events ORDER BY xid, seq")
    first_seen = list(dict.fromkeys(e["id"] for e in events))
    assert first_seen == [str(r["event_id"]) for r in stored]  # the feed's order, nothing skipped


async def test_one_publisher_at_a_time_and_the_other_takes_over_when_its_session_dies(
    queue: Queue, database_dsn: str, redis: Redis, events_key: str
) -> None:
    async with running_publisher(database_dsn, redis, events_key) as one:
        await wait_until(lambda: _held(one), what="the first publisher leading")
        async with running_publisher(database_dsn, redis, events_key) as two:
            for _ in range(5):
                await queue.accept()
            await wait_published(redis, events_key, 5)
            await wait_until(lambda: _counted(one, 5), what="the cursor moved past the first five")
            assert (one.publisher.published, two.publisher.published) == (5, 0)
            assert not two.lock.held
            pid = one.lock._conn.get_server_pid()
            # the holder's session dies, and the holder with it (it never tries again)
            assert await queue.db.conn.fetchval("SELECT pg_terminate_backend($1)", pid)
            one.publisher.stop()
            await wait_until(lambda: _held(two), timeout=10, what="the second publisher leading")
            for _ in range(5):
                await queue.accept()
            events = await wait_published(redis, events_key, 10)
            await wait_until(lambda: _counted(two, 5), what="the second publisher's cursor moved")
            assert not one.lock.held
    assert_duplicates_are_identical(events)
    stored = await queue.db.conn.fetch("SELECT event_id FROM delivery_events ORDER BY xid, seq")
    assert list(dict.fromkeys(e["id"] for e in events)) == [str(r["event_id"]) for r in stored]


async def _held(running: object) -> bool:
    return bool(running.lock.held)  # type: ignore[attr-defined]


async def _counted(running: object, at_least: int) -> bool:
    return running.publisher.published >= at_least  # type: ignore[attr-defined,no-any-return]


def _event(n: int) -> StoredEvent:
    return StoredEvent(
        position=EventPosition(1, n),
        event_id=uuid.uuid4(),
        delivery_id=uuid.uuid4(),
        type="delivery.sent",
        data_json=f'{{"n": {n}}}',
        time=datetime.now(UTC),
        source="notification",
        idempotency_key=f"key-{n}",
        tags_json="{}",
        traceparent=None,
    )


def _batch(*numbers: int) -> EventBatch:
    return batch_of([_event(n) for n in numbers])


TRACE = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"


async def test_the_publisher_reads_each_event_as_the_stream_fields_the_feed_row_makes(
    queue: Queue, database_dsn: str
) -> None:
    """The publisher reads each event's XADD fields without a `StoredEvent` (its SELECT formats the
    values as text): they are `StoredEvent.stream_args` of the same event read from the feed, field
    for field — a time with microseconds (trailing zeros
    kept) and one on a whole second (no fraction, like `isoformat`), a trace and none, tags."""
    traced, plain = await queue.accept(), await queue.accept()
    conn = queue.db.conn
    await conn.execute(
        """UPDATE deliveries SET traceparent = $1, tags = '{"tenant": "acme", "n": 1}' WHERE delivery_id = $2""",
        TRACE,
        traced,
    )
    at = "UPDATE delivery_events SET created_at = CAST(CAST($1 AS text) AS timestamptz) WHERE delivery_id = $2"
    await conn.execute(at, "2026-12-04 10:00:00.000120+02", traced)
    await conn.execute(at, "2026-12-04 10:00:01+00", plain)
    engine = create_engine(database_dsn)
    try:
        store = EventStore([engine])
        batch = await store.unpublished(FEED_START, 100)
        feed = await store.feed(FEED_START, delivery_id=None, types=(), limit=100)
    finally:
        await engine.dispose()
    assert [tuple(fields) for fields in batch.fields] == [event.stream_args() for event in feed]
    assert batch.last == feed[-1].position
    times = {event.delivery_id: event.stream_fields()["time"] for event in feed}
    assert times == {traced: "2026-12-04T08:00:00.000120Z", plain: "2026-12-04T10:00:01Z"}
    assert [event.traceparent for event in feed] == [TRACE, None]
    assert await store.unpublished(batch.last, 100) == EventBatch((), batch.last)  # nothing after it


async def test_an_error_reply_is_a_refusal_and_leaves_the_connection_in_step(redis: Redis, events_key: str) -> None:
    """Every XADD of a batch goes out in one write: an error reply for them (here WRONGTYPE) is
    `refused`, every reply is still read, so the same connection carries the next batch in step."""
    writer = RedisEventWriter(redis, events_key, maxlen=1000)
    await redis.set(events_key, "not a stream")
    with pytest.raises(StreamUnavailable) as refused:
        await writer.publish(_batch(1, 2, 3))
    assert refused.value.refused
    assert "WRONGTYPE" in str(refused.value)
    await redis.delete(events_key)
    events = [_event(4), _event(5)]
    await writer.publish(batch_of(events))
    assert [e["id"] for e in await stream_events(redis, events_key)] == [str(e.event_id) for e in events]
    assert await redis.ping()  # a reply left unread would answer this PING instead


async def test_an_unreachable_redis_is_unavailable_not_refused() -> None:
    gone = Redis(host="127.0.0.1", port=closed_port(), socket_connect_timeout=1)
    try:
        with pytest.raises(StreamUnavailable) as unavailable:
            await RedisEventWriter(gone, "nowhere", maxlen=10).publish(_batch(1))
        assert not unavailable.value.refused
    finally:
        await gone.aclose()


async def test_a_redis_that_stops_answering_is_unavailable_within_the_socket_timeout(
    redis_addr: str, events_key: str
) -> None:
    """The batch's replies share one deadline (the client's socket timeout): a server that goes
    silent on an open connection fails the publish, it never hangs the publisher."""
    proxy = TcpProxy(*redis_host_port(redis_addr))
    through = Redis(host="127.0.0.1", port=await proxy.start(), socket_timeout=0.5)
    writer = RedisEventWriter(through, events_key, maxlen=10)
    try:
        await writer.publish(_batch(1))  # the pooled connection is open and in use
        proxy.blackhole()
        with pytest.raises(StreamUnavailable) as unavailable:
            await asyncio.wait_for(writer.publish(_batch(2, 3)), 10)
        assert not unavailable.value.refused
    finally:
        await through.aclose()
        await proxy.stop()
