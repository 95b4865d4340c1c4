"""The retention worker (SPEC §5): a first pass at startup, then one every `MAIL_CLEANUP_INTERVAL`.

A pass deletes terminal deliveries finished longer than `MAIL_DELIVERY_RETENTION` ago (with their
children), malformed commands older than `MAIL_MALFORMED_COMMAND_RETENTION`, stream gap/reset
events older than that same retention, and expired idempotency keys. Cut-offs are pure functions
of the `now` the pass is given.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Protocol

from opentelemetry.trace import Status, StatusCode

from mailsvc.errors import StoreUnavailable
from mailsvc.instruments import NO_INSTRUMENTS, Instruments
from mailsvc.loops.base import wait_for_event
from mailsvc.services.acceptance import Clock, utc_now

log = logging.getLogger("mailsvc.retention")


class RetentionStore(Protocol):
    async def delete_finished_deliveries(self, finished_before: datetime, stopping: Callable[[], bool]) -> int: ...

    async def delete_malformed_commands(self, received_before: datetime, stopping: Callable[[], bool]) -> int: ...

    async def delete_expired_idempotency_keys(self, now: datetime, stopping: Callable[[], bool]) -> int: ...

    async def delete_stream_events(self, detected_before: datetime, stopping: Callable[[], bool]) -> int: ...


@dataclass(frozen=True, slots=True)
class RetentionCounts:
    """Rows deleted by one pass, per table (a delivery's children go with it, uncounted)."""

    deliveries: int = 0
    malformed_commands: int = 0
    idempotency_keys: int = 0
    stream_events: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    delivery_retention: timedelta
    malformed_retention: timedelta

    def delivery_cutoff(self, now: datetime) -> datetime:
        return now - self.delivery_retention

    def malformed_cutoff(self, now: datetime) -> datetime:
        return now - self.malformed_retention


class RetentionLoop:
    name = "retention"

    def __init__(
        self,
        *,
        store: RetentionStore,
        policy: RetentionPolicy,
        interval: timedelta,
        retry_interval: timedelta = timedelta(minutes=1),
        clock: Clock = utc_now,
        on_pass: Callable[[RetentionCounts], None] = lambda counts: None,
        instruments: Instruments = NO_INSTRUMENTS,
    ) -> None:
        self.store = store
        self.policy = policy
        self.interval = interval.total_seconds()
        self.retry_interval = min(retry_interval.total_seconds(), self.interval)
        self.clock = clock
        self.on_pass = on_pass
        self.instruments = instruments
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Pass, wait, pass... until stopped. An unreachable database is retried sooner."""
        while not self._stop.is_set():
            try:
                await self.run_once()
                wait = self.interval
            except StoreUnavailable as exc:
                log.warning("retention_store_unavailable", extra={"error_class": type(exc).__name__})
                wait = self.retry_interval
            await wait_for_event(self._stop, wait)

    async def run_once(self, now: datetime | None = None) -> RetentionCounts:
        """One full pass with cut-offs computed from `now` (default: the clock), in its own span."""
        with self.instruments.tracer.start_as_current_span(
            "mail.retention pass", record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                counts = await self._pass(now)
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            if span.is_recording():
                span.set_attributes({f"mail.retention.deleted.{table}": n for table, n in counts.as_dict().items()})
        for table, deleted in counts.as_dict().items():
            # zero too: every table's series exists from the first pass
            self.instruments.retention_deleted.add(deleted, {"table": table})
        self.on_pass(counts)
        return counts

    async def _pass(self, now: datetime | None) -> RetentionCounts:
        now = self.clock() if now is None else now
        started = time.monotonic()
        stopping = self._stop.is_set
        counts = RetentionCounts(
            deliveries=await self.store.delete_finished_deliveries(self.policy.delivery_cutoff(now), stopping),
            malformed_commands=await self.store.delete_malformed_commands(self.policy.malformed_cutoff(now), stopping),
            idempotency_keys=await self.store.delete_expired_idempotency_keys(now, stopping),
            stream_events=await self.store.delete_stream_events(self.policy.malformed_cutoff(now), stopping),
        )
        log.info(
            "retention_pass",
            extra={**counts.as_dict(), "duration_ms": int((time.monotonic() - started) * 1000)},
        )
        return counts
