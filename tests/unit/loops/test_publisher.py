"""EventPublisher through its Protocols (EventSource, EventSink, LeaderLock): in-memory fakes, no I/O."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

from mailsvc.domain.events import EventBatch, EventPosition, StoredEvent
from mailsvc.errors import OffsetMoved, StreamUnavailable
from mailsvc.loops.publisher import EventPublisher
from tests.support.events import batch_of
from tests.support.infra import wait_until


def event(xid: int, seq: int = 0) -> StoredEvent:
    return StoredEvent(
        position=EventPosition(xid, seq),
        event_id=uuid.uuid4(),
        delivery_id=uuid.uuid4(),
        type="delivery.sent",
        data_json="{}",
        time=datetime(2026, 1, 1, tzinfo=UTC),
        source="notification",
        idempotency_key=f"k-{xid}-{seq}",
        tags_json="{}",
        traceparent=None,
    )


class FakeLock:
    def __init__(self) -> None:
        self.held = False
        self.acquired = 0
        self.released = 0

    async def try_acquire(self) -> bool:
        await asyncio.sleep(0)  # like any I/O: let the test's task run
        self.held = True
        self.acquired += 1
        return True

    async def release(self) -> None:
        self.held = False
        self.released += 1

    async def wait_lost(self) -> None:
        await asyncio.Event().wait()


class FakeSource:
    """The event feed and its cursor, with the compare-and-set `advance_cursor` the store promises."""

    def __init__(self, events: Sequence[StoredEvent], cursor: EventPosition | None = None) -> None:
        self.events = list(events)
        self.cursor = cursor

    async def load_cursor(self, stream_key: str) -> EventPosition | None:
        return self.cursor

    async def unpublished(self, after: EventPosition, limit: int) -> EventBatch:
        key = (after.xid, after.seq)
        return batch_of([e for e in self.events if (e.position.xid, e.position.seq) > key][:limit], after)

    async def advance_cursor(self, stream_key: str, expected: EventPosition | None, new: EventPosition) -> None:
        if self.cursor != expected:
            raise OffsetMoved()
        self.cursor = new

    async def oldest_unpublished_age(self, after: EventPosition) -> float:
        return 0.0


class FakeSink:
    def __init__(self, failures: int = 0) -> None:
        self.batches: list[list[str]] = []  # idempotency keys of each successful publish
        self.failures = failures  # the first `failures` publishes raise StreamUnavailable
        self.refused = 0

    async def publish(self, batch: EventBatch) -> None:
        await asyncio.sleep(0)  # like any I/O: let the test's task run
        if self.refused < self.failures:
            self.refused += 1
            raise StreamUnavailable(ConnectionError("redis down"), refused=False)
        self.batches.append([dict(zip(f[::2], f[1::2], strict=True))["idempotencykey"] for f in batch.fields])


@contextlib.asynccontextmanager
async def running(publisher: EventPublisher) -> AsyncIterator[EventPublisher]:
    task = asyncio.create_task(publisher.run())
    try:
        yield publisher
    finally:
        publisher.stop()
        await asyncio.wait_for(task, 10)


def publisher(source: FakeSource, sink: FakeSink, lock: FakeLock, batch_size: int = 2) -> EventPublisher:
    return EventPublisher(
        source=source, sink=sink, stream_key="events", lock=lock, batch_size=batch_size, poll_interval=0.01, linger=0
    )


async def test_publishes_the_feed_in_order_in_batches_and_moves_the_cursor_after_each() -> None:
    events = [event(1), event(1, 1), event(2), event(5)]
    source, sink, lock = FakeSource(events), FakeSink(), FakeLock()
    async with running(publisher(source, sink, lock)) as pub:

        async def done() -> bool:
            return source.cursor == EventPosition(5, 0)

        await wait_until(done, timeout=10, what="cursor at the last event")
        assert pub.published == 4
    assert sink.batches == [["k-1-0", "k-1-1"], ["k-2-0", "k-5-0"]]
    assert lock.released == 1
    assert not lock.held


async def test_starts_after_the_stored_cursor() -> None:
    source, sink, lock = FakeSource([event(1), event(2), event(3)], cursor=EventPosition(2, 0)), FakeSink(), FakeLock()
    async with running(publisher(source, sink, lock)):

        async def done() -> bool:
            return source.cursor == EventPosition(3, 0)

        await wait_until(done, timeout=10, what="cursor at the last event")
    assert sink.batches == [["k-3-0"]]


async def test_while_the_stream_is_unavailable_the_cursor_stays_and_the_same_batch_is_retried() -> None:
    source, sink, lock = FakeSource([event(1), event(2)]), FakeSink(failures=2), FakeLock()
    async with running(publisher(source, sink, lock)):

        async def done() -> bool:
            return source.cursor == EventPosition(2, 0)

        await wait_until(done, timeout=10, what="cursor at the last event")
    assert sink.refused == 2
    assert sink.batches == [["k-1-0", "k-2-0"]]  # published once it could be, nothing skipped


async def test_a_publisher_that_lost_the_lock_while_publishing_does_not_move_the_cursor() -> None:
    source, lock = FakeSource([event(1)]), FakeLock()

    class LosingSink(FakeSink):
        async def publish(self, batch: EventBatch) -> None:
            await super().publish(batch)
            lock.held = False  # another replica took over meanwhile

    sink = LosingSink()
    async with running(publisher(source, sink, lock)):

        async def published_twice() -> bool:
            return len(sink.batches) >= 2  # it re-acquires the lock and publishes again (at least once)

        await wait_until(published_twice, timeout=10, what="the batch published again")
        assert source.cursor is None
    assert sink.batches[:2] == [["k-1-0"], ["k-1-0"]]


async def test_when_another_replica_moved_the_cursor_it_resumes_from_the_stored_one() -> None:
    source, lock = FakeSource([event(1), event(2), event(3)]), FakeLock()

    class RacedSink(FakeSink):
        async def publish(self, batch: EventBatch) -> None:
            await super().publish(batch)
            if len(self.batches) == 1:
                source.cursor = EventPosition(2, 0)  # a former holder published event 2 meanwhile

    sink = RacedSink()
    async with running(publisher(source, sink, lock, batch_size=1)):

        async def done() -> bool:
            return source.cursor == EventPosition(3, 0)

        await wait_until(done, timeout=10, what="cursor at the last event")
    # the compare-and-set failed on event 1: the cursor was not moved back, and it went on from 2
    assert sink.batches == [["k-1-0"], ["k-3-0"]]
    assert lock.acquired == 2
