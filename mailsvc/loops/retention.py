"""The retention worker (SPEC §5): a first pass at startup, then one every `MAIL_CLEANUP_INTERVAL`.

A pass runs each step of `retention_steps` in turn: terminal deliveries finished longer than
`MAIL_DELIVERY_RETENTION` ago (with their children), malformed commands older than
`MAIL_MALFORMED_COMMAND_RETENTION`, expired idempotency keys, stream gap/reset events older than
that same retention, published delivery events older than `MAIL_EVENT_RETENTION`, and expired
suppressions. Cut-offs are pure functions of the `now` the pass is given.

Steps are independent: one that fails — an unreachable database, a statement past its timeout, one
the database refuses, any error — is logged with its name, ends only that step for this pass, and
is reported; the other steps still run. A failed batch is never retried on the spot: the next pass
comes after `retry_interval`, doubling while passes keep failing, never later than the interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from opentelemetry.trace import Status, StatusCode

from mailsvc.domain.clock import Clock, utc_now
from mailsvc.errors import StoreUnavailable
from mailsvc.instruments import NO_INSTRUMENTS, Instruments
from mailsvc.waiting import wait_any

log = logging.getLogger("mailsvc.retention")


class RetentionStore(Protocol):
    """Each method deletes one batch of at most `limit` rows older than the cutoff; the count."""

    async def delete_finished_deliveries(self, finished_before: datetime, limit: int) -> int: ...

    async def delete_malformed_commands(self, received_before: datetime, limit: int) -> int: ...

    async def delete_expired_idempotency_keys(self, now: datetime, limit: int) -> int: ...

    async def delete_stream_events(self, detected_before: datetime, limit: int) -> int: ...

    async def delete_published_events(self, written_before: datetime, limit: int) -> int: ...

    async def delete_expired_suppressions(self, now: datetime, limit: int) -> int: ...


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    delivery_retention: timedelta
    malformed_retention: timedelta
    event_retention: timedelta = timedelta(hours=168)

    def delivery_cutoff(self, now: datetime) -> datetime:
        return now - self.delivery_retention

    def malformed_cutoff(self, now: datetime) -> datetime:
        return now - self.malformed_retention

    def event_cutoff(self, now: datetime) -> datetime:
        return now - self.event_retention

    def key_cutoff(self, now: datetime) -> datetime:
        """Keys (and suppressions) carry their own expiry: one is gone once `expires_at <= now`."""
        return now


@dataclass(frozen=True, slots=True)
class RetentionStep:
    """One cleanup. `table` names it in logs, span attributes and the `mail.retention.deleted`
    metric; `delete(cutoff, limit)` removes one batch of its rows older than `cutoff(now)`."""

    table: str
    delete: Callable[[datetime, int], Awaitable[int]]
    cutoff: Callable[[datetime], datetime]


def retention_steps(store: RetentionStore, policy: RetentionPolicy) -> tuple[RetentionStep, ...]:
    """Every step of a pass, in order. A new cleanup is one more line here (and its store method)."""
    return (
        RetentionStep("deliveries", store.delete_finished_deliveries, policy.delivery_cutoff),
        RetentionStep("malformed_commands", store.delete_malformed_commands, policy.malformed_cutoff),
        RetentionStep("idempotency_keys", store.delete_expired_idempotency_keys, policy.key_cutoff),
        RetentionStep("stream_events", store.delete_stream_events, policy.malformed_cutoff),
        RetentionStep("delivery_events", store.delete_published_events, policy.event_cutoff),
        RetentionStep("suppressions", store.delete_expired_suppressions, policy.key_cutoff),
    )


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What one pass did: rows deleted per step's table, zeros included (a delivery's children go
    with it, uncounted), and the tables whose step failed (their count is what committed first)."""

    deleted: Mapping[str, int]
    failed: tuple[str, ...] = ()


def retry_delay(failed_passes: int, first: float, cap: float) -> float:
    """Seconds to wait after `failed_passes` (>= 1) failed passes in a row: `first`, doubling, at
    most `cap`."""
    return min(cap, first * 2.0 ** min(failed_passes - 1, 32))


def _root_cause(exc: BaseException) -> BaseException:
    for _ in range(8):  # adapters wrap driver errors once or twice; a cycle cannot keep us here
        if exc.__cause__ is None:
            break
        exc = exc.__cause__
    return exc


class RetentionLoop:
    name = "retention"

    def __init__(
        self,
        *,
        store: RetentionStore,
        policy: RetentionPolicy,
        interval: timedelta,
        retry_interval: timedelta = timedelta(minutes=1),
        batch_size: int = 1000,
        clock: Clock = utc_now,
        on_pass: Callable[[RetentionReport], None] = lambda report: None,
        instruments: Instruments = NO_INSTRUMENTS,
    ) -> None:
        self.steps = retention_steps(store, policy)
        self.interval = interval.total_seconds()
        self.retry_interval = min(retry_interval.total_seconds(), self.interval)
        self.batch_size = batch_size
        self.clock = clock
        self.on_pass = on_pass
        self.instruments = instruments
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Pass, wait, pass... until stopped; sooner again after a pass in which a step failed."""
        failed_passes = 0
        while not self._stop.is_set():
            report = await self.run_once()
            failed_passes = failed_passes + 1 if report.failed else 0
            wait = retry_delay(failed_passes, self.retry_interval, self.interval) if failed_passes else self.interval
            await wait_any(self._stop, timeout=wait)

    async def run_once(self, now: datetime | None = None) -> RetentionReport:
        """One full pass with cut-offs computed from `now` (default: the clock), in its own span.
        A failing step does not raise: it is logged and named in the report's `failed`."""
        with self.instruments.tracer.start_as_current_span(
            "mail.retention pass", record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                report = await self._pass(now)
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            if span.is_recording():
                span.set_attributes({f"mail.retention.deleted.{table}": n for table, n in report.deleted.items()})
                if report.failed:
                    span.set_attribute("mail.retention.failed", report.failed)
            if report.failed:
                span.set_status(Status(StatusCode.ERROR, "failed: " + ", ".join(report.failed)))
        for table, deleted in report.deleted.items():
            # zero too: every table's series exists from the first pass
            self.instruments.retention_deleted.add(deleted, {"table": table})
        self.on_pass(report)
        return report

    async def _pass(self, now: datetime | None) -> RetentionReport:
        now = self.clock() if now is None else now
        started = time.monotonic()
        deleted: dict[str, int] = {}
        failed: list[str] = []
        for step in self.steps:
            if self._stop.is_set():
                break
            deleted[step.table], ok = await self._run_step(step, now)
            if not ok:
                failed.append(step.table)
        report = RetentionReport(deleted, tuple(failed))
        log.log(
            logging.WARNING if failed else logging.INFO,
            "retention_pass",
            extra={"deleted": deleted, "failed": failed, "duration_ms": int((time.monotonic() - started) * 1000)},
        )
        return report

    async def _run_step(self, step: RetentionStep, now: datetime) -> tuple[int, bool]:
        """Batch after batch until one comes back short (or the loop is stopping): the rows
        deleted, and False when a batch failed — which ends the step for this pass."""
        cutoff = step.cutoff(now)
        deleted = 0
        try:
            while True:
                batch = await step.delete(cutoff, self.batch_size)
                deleted += batch
                if batch < self.batch_size or self._stop.is_set():
                    return deleted, True
        except Exception as exc:
            # classes only: a database error's text can quote the row it refused
            log.log(
                logging.WARNING if isinstance(exc, StoreUnavailable) else logging.ERROR,
                "retention_step_failed",
                extra={
                    "step": step.table,
                    "error_class": type(exc).__name__,
                    "cause_class": type(_root_cause(exc)).__name__,
                    "deleted": deleted,
                },
            )
            return deleted, False
