"""The event publisher (SPEC §11): committed delivery events, in feed order, onto the event stream.

One replica at a time publishes: the one that can prove it holds the advisory lock (the same
machinery as the stream consumer's leadership). Each round reads the events after the stored
cursor that no open transaction can still precede, XADDs them in one pipeline, and moves the cursor
with a compare-and-set — so a crash between the two publishes them again with the same `id`s (at
least once), and a former holder that has not noticed yet can never move the cursor back. While
Redis or PostgreSQL is unreachable the events wait in PostgreSQL and the round is retried with
capped backoff. Commits wake the loop (`wake`); a short poll catches those of other replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from mailsvc.domain.events import FEED_START, EventBatch, EventPosition
from mailsvc.errors import OffsetMoved, StoreUnavailable, StreamUnavailable
from mailsvc.instruments import NO_INSTRUMENTS, Instruments
from mailsvc.loops.leadership import LeaderLock, lead_or_stand_by
from mailsvc.waiting import wait_any

log = logging.getLogger("mailsvc.publisher")

AGE_SAMPLE_INTERVAL_S = 1.0


class EventSource(Protocol):
    async def load_cursor(self, stream_key: str) -> EventPosition | None: ...

    async def unpublished(self, after: EventPosition, limit: int) -> EventBatch: ...

    async def advance_cursor(self, stream_key: str, expected: EventPosition | None, new: EventPosition) -> None: ...

    async def oldest_unpublished_age(self, after: EventPosition) -> float: ...


class EventSink(Protocol):
    async def publish(self, batch: EventBatch) -> None:
        """Append the batch's events in order; raise `StreamUnavailable`."""
        ...


class EventPublisher:
    name = "event-publisher"

    def __init__(
        self,
        *,
        source: EventSource,
        sink: EventSink,
        stream_key: str,
        lock: LeaderLock,
        batch_size: int = 500,
        poll_interval: float = 0.25,
        linger: float = 0.02,
        standby_interval: float = 1.0,
        max_backoff: float = 5.0,
        instruments: Instruments = NO_INSTRUMENTS,
    ) -> None:
        self.source = source
        self.sink = sink
        self.stream_key = stream_key
        self.lock = lock
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.linger = linger  # after a short batch: let a few more commits gather into the next one
        self.standby_interval = standby_interval
        self.max_backoff = max_backoff
        self.instruments = instruments
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self.published = 0  # events published by this process (observable in tests)
        # seconds since the oldest unpublished event was written; None while not publishing
        self.oldest_unpublished_age: float | None = None
        self._age_sampled_at = float("-inf")
        if instruments.metering:
            instruments.watch("events_oldest_unpublished_age", lambda: self.oldest_unpublished_age)

    def wake(self) -> None:
        """Something committed events: publish soon (any thread-free caller, any number of times)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        try:
            await lead_or_stand_by(
                self.lock,
                self._stopping,
                self._publish_while_leading,
                standby_interval=self.standby_interval,
                unavailable_event="publisher_lock_unavailable",
            )
        finally:
            self.oldest_unpublished_age = None

    async def _publish_while_leading(self) -> None:
        try:
            cursor = await self.source.load_cursor(self.stream_key)
        except StoreUnavailable:
            await wait_any(self._stopping, timeout=self.standby_interval)
            return
        position = cursor or FEED_START
        log.info("publisher_started", extra={"stream": self.stream_key, "cursor": position.token()})
        backoff = 0.1
        try:
            while not self._stopping.is_set() and self.lock.held:
                try:
                    await self._sample_age(position)
                    self._wake.clear()
                    batch = await self.source.unpublished(position, self.batch_size)
                    if not batch:
                        backoff = 0.1
                        await wait_any(self._stopping, self._wake, timeout=self.poll_interval)
                        # at most one read per `linger` however often commits wake it: while an
                        # open transaction holds the horizon back, every read comes back empty
                        await wait_any(self._stopping, timeout=self.linger)
                        continue
                    await self.sink.publish(batch)
                    if not self.lock.held:  # published, but the cursor moves only under a proven lock
                        return
                    new = batch.last
                    await self.source.advance_cursor(self.stream_key, cursor, new)
                    cursor = position = new
                    self.published += len(batch)
                    self.instruments.events_published.add(len(batch))
                    backoff = 0.1
                    if len(batch) < self.batch_size:
                        await wait_any(self._stopping, timeout=self.linger)
                except OffsetMoved:
                    log.warning("publisher_cursor_moved", extra={"stream": self.stream_key})
                    return
                except (StreamUnavailable, StoreUnavailable) as exc:
                    log.warning(
                        "publisher_dependency_unavailable",
                        extra={
                            "error_class": getattr(exc, "error_class", type(exc).__name__),
                            "dependency": "redis" if isinstance(exc, StreamUnavailable) else "postgresql",
                            "retry_in_s": backoff,
                        },
                    )
                    if await wait_any(self._stopping, timeout=backoff):
                        return
                    backoff = min(backoff * 2, self.max_backoff)
        finally:
            self.oldest_unpublished_age = None
            log.info("publisher_stopped", extra={"stream": self.stream_key, "cursor": position.token()})

    async def _sample_age(self, position: EventPosition) -> None:
        """Refresh the oldest-unpublished gauge, at most once per `AGE_SAMPLE_INTERVAL_S`."""
        if not self.instruments.metering or time.monotonic() < self._age_sampled_at + AGE_SAMPLE_INTERVAL_S:
            return
        self._age_sampled_at = time.monotonic()
        # unreachable: the gauge keeps its last value; the round that follows reports the outage
        with contextlib.suppress(StoreUnavailable):
            self.oldest_unpublished_age = await self.source.oldest_unpublished_age(position)
