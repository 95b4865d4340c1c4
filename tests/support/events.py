"""Delivery event tests' tools: a publisher on real PostgreSQL and Redis, and the stream read back."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from mailsvc.adapters.postgres.advisory_lock import AdvisoryLock
from mailsvc.adapters.postgres.engine import create_engine
from mailsvc.adapters.postgres.event_store import EventStore
from mailsvc.adapters.redis_events import RedisEventWriter
from mailsvc.domain.events import FEED_START, EventBatch, EventPosition, StoredEvent
from mailsvc.loops.publisher import EventPublisher
from tests.support.infra import wait_until


def batch_of(events: Sequence[StoredEvent], after: EventPosition = FEED_START) -> EventBatch:
    """`events` as the publisher's store returns them."""
    return EventBatch([event.stream_args() for event in events], events[-1].position if events else after)


class CountingStore(EventStore):
    """The real store, counting the reads the publisher makes (to know it looked)."""

    reads = 0

    async def unpublished(self, after: EventPosition, limit: int) -> EventBatch:
        found = await super().unpublished(after, limit)
        self.reads += 1
        return found


@dataclass
class RunningPublisher:
    publisher: EventPublisher
    store: CountingStore
    lock: AdvisoryLock
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.publisher.stop()
        await asyncio.wait_for(self.task, 10)


@contextlib.asynccontextmanager
async def running_publisher(
    dsn: str, redis: Redis, stream: str, *, maxlen: int = 100_000, batch_size: int = 500
) -> AsyncIterator[RunningPublisher]:
    engine = create_engine(dsn)
    store = CountingStore([engine])
    lock = AdvisoryLock(dsn, f"events:{stream}")
    publisher = EventPublisher(
        source=store,
        sink=RedisEventWriter(redis, stream, maxlen=maxlen),
        stream_key=stream,
        lock=lock,
        batch_size=batch_size,
        standby_interval=0.1,
        max_backoff=0.5,
    )
    running = RunningPublisher(publisher, store, lock, asyncio.create_task(publisher.run(), name="publisher"))
    try:
        yield running
    finally:
        if not running.task.done():
            await running.stop()
        await engine.dispose()


async def stream_events(redis: Redis, stream: str) -> list[dict[str, Any]]:
    """Every entry of the event stream, fields decoded (`data`, `tags` parsed), oldest first."""
    entries = await redis.xrange(stream)
    events = []
    for entry_id, fields in entries:
        event = {k.decode(): v.decode() for k, v in fields.items()}
        event["data"], event["tags"] = orjson.loads(event["data"]), orjson.loads(event["tags"])
        event["_entry"] = entry_id.decode()
        events.append(event)
    return events


async def wait_published(redis: Redis, stream: str, count: int, *, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Wait until the stream holds at least `count` distinct event ids; all of its events."""

    async def enough() -> list[dict[str, Any]] | None:
        events = await stream_events(redis, stream)
        return events if len({e["id"] for e in events}) >= count else None

    found: list[dict[str, Any]] = await wait_until(enough, timeout=timeout, what=f"{count} events in {stream}")
    return found


def per_delivery(events: Sequence[dict[str, Any]]) -> dict[uuid.UUID, list[str]]:
    """Each delivery's event types in stream order, re-publications (same id) counted once."""
    seen: set[str] = set()
    out: dict[uuid.UUID, list[str]] = {}
    for event in events:
        if event["id"] in seen:
            continue
        seen.add(event["id"])
        out.setdefault(uuid.UUID(event["subject"]), []).append(event["type"])
    return out


def assert_duplicates_are_identical(events: Sequence[dict[str, Any]]) -> None:
    """An id that appears twice is the same event both times (a re-publication)."""
    first: dict[str, dict[str, Any]] = {}
    for event in events:
        body = {k: v for k, v in event.items() if k != "_entry"}
        assert first.setdefault(event["id"], body) == body
