"""The bounded attempt worker pool, and the group-commit writer for attempt results.

Workers only run already-claimed deliveries. A worker keeps its slot until its result is durably
written, so the scheduler never claims more than can run. Results from many workers are written
together in one statement (group commit) while the previous batch is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol
from uuid import UUID

from mailsvc.domain.model import TERMINAL_STATUSES, ClaimedDelivery
from mailsvc.errors import StoreUnavailable
from mailsvc.instruments import NO_INSTRUMENTS, Instruments
from mailsvc.services.execution import AttemptRecord, ExecutionService

log = logging.getLogger("mailsvc.workers")


class ResultStore(Protocol):
    async def finish(self, records: list[AttemptRecord]) -> set[UUID]: ...


class ResultWriter:
    """Collects attempt records and writes them in batches; `write` returns once durable."""

    def __init__(
        self,
        store: ResultStore,
        *,
        max_batch: int = 500,
        retry_delay: float = 0.5,
        instruments: Instruments = NO_INSTRUMENTS,
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.retry_delay = retry_delay
        self.instruments = instruments
        self._pending: list[tuple[AttemptRecord, asyncio.Future[bool]]] = []
        self._ready = asyncio.Event()
        self.on_written: Callable[[AttemptRecord, bool], None] = lambda record, applied: None

    async def write(self, record: AttemptRecord) -> bool:
        """True when the result was applied, False when the claim had been lost (a late worker)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        self._ready.set()
        return await asyncio.shield(future)

    async def run(self, stopping: asyncio.Event) -> None:
        """Flush until `stopping` is set and nothing is pending."""
        while True:
            if not self._pending:
                if stopping.is_set():
                    return
                self._ready.clear()
                waiter = asyncio.ensure_future(self._ready.wait())
                stopper = asyncio.ensure_future(stopping.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                continue
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            try:
                applied = await self.store.finish([record for record, _ in batch])
            except Exception as exc:
                if isinstance(exc, StoreUnavailable):
                    log.warning("result_write_failed", extra={"error_class": type(exc).__name__, "pending": len(batch)})
                else:
                    log.exception("result_write_failed", extra={"pending": len(batch)})
                self._pending[:0] = batch  # keep order; the claims stay valid until their deadline
                await asyncio.sleep(self.retry_delay)
                continue
            for record, future in batch:
                ok = record.delivery_id in applied
                if not ok:
                    log.warning(
                        "late_result_discarded",
                        extra={"delivery_id": str(record.delivery_id), "attempt": record.attempt_number},
                    )
                elif record.status in TERMINAL_STATUSES:  # counted once durable, never for a late worker
                    self.instruments.deliveries_finished.add(1, {"status": record.status})
                self.on_written(record, ok)
                if not future.done():
                    future.set_result(ok)


class WorkerPool:
    name = "workers"

    def __init__(self, *, execution: ExecutionService, writer: ResultWriter, concurrency: int) -> None:
        self.execution = execution
        self.writer = writer
        self.concurrency = concurrency
        self.on_slot_freed: Callable[[], None] = lambda: None  # the scheduler claims again
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._writer_stop = asyncio.Event()
        self.accepting = True

    @property
    def free_slots(self) -> int:
        return 0 if not self.accepting else self.concurrency - len(self._tasks)

    def submit(self, claim: ClaimedDelivery) -> bool:
        """Start an attempt; False when the pool is stopping (the caller releases the claim)."""
        if not self.accepting or len(self._tasks) >= self.concurrency:
            return False
        task = asyncio.create_task(self._attempt(claim), name=f"attempt-{claim.delivery_id}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return True

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.on_slot_freed()

    async def _attempt(self, claim: ClaimedDelivery) -> None:
        try:
            record = await self.execution.execute(claim)
            await self.writer.write(record)
        except asyncio.CancelledError:
            raise
        except Exception:
            # the claim stays; stale-claim recovery will return it to the queue
            log.exception("attempt_crashed", extra={"delivery_id": str(claim.delivery_id)})

    def stop(self) -> None:
        self.accepting = False
        self._stopping.set()

    async def run(self) -> None:
        self.accepting = True
        self._stopping.clear()
        self._writer_stop.clear()
        writer = asyncio.create_task(self.writer.run(self._writer_stop), name="result-writer")
        try:
            await self._stopping.wait()
            self.accepting = False
            if self._tasks:
                log.info("workers_draining", extra={"in_flight": len(self._tasks)})
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            for task in list(self._tasks):  # cancelled at the shutdown deadline
                task.cancel()
            self._writer_stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(writer)
