"""The bounded attempt worker pool, and the group-commit writer for attempt results.

Workers only run already-claimed deliveries. A worker keeps its slot until its result is durably
written (or can no longer be), so the scheduler never claims more than can run. Results from many
workers are written together in one statement (group commit) while the previous batch is in flight;
during a backlog that statement also claims the next delivery for each of those workers, which
goes on with it in the same slot (`ResultWriter.claims_wanted`).

Slots and senders are counted apart: at most `concurrency` attempts send at once (the SMTP pool's
size), while a pool may hold more slots (`slots`), so a connection whose attempt's result is being
written goes on with another claim instead of idling for the write. A claim that waited longer
than `start_within` to start sending is given back unattempted: the wait never eats into the lease.
Nor does a claim start into a pause: no attempt starts while the result of an attempt the provider
failed is unwritten (its write may pause the provider), and a claim that waited across a pause this
process recorded is given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Protocol
from uuid import UUID

from mailsvc.domain.clock import Clock, utc_now
from mailsvc.domain.model import TERMINAL_STATUSES, ClaimedDelivery
from mailsvc.domain.provider import ProviderChange
from mailsvc.domain.transitions import AttemptRecord
from mailsvc.errors import DataRefused, StoreUnavailable
from mailsvc.instruments import NO_INSTRUMENTS, Instruments
from mailsvc.services.execution import ExecutionService
from mailsvc.waiting import wait_any

log = logging.getLogger("mailsvc.workers")

# what a worker learns from its result's write: applied or not, and its next claim (or None)
_Written = tuple[bool, ClaimedDelivery | None]
_Entry = tuple[AttemptRecord, asyncio.Future[_Written]]  # a record, and the future its worker awaits


class ResultStore(Protocol):
    async def finish(self, records: list[AttemptRecord]) -> set[UUID]: ...

    async def finish_and_claim(
        self, records: list[AttemptRecord], limit: int, lease: timedelta
    ) -> tuple[set[UUID], list[ClaimedDelivery]]: ...

    async def release(self, claims: list[ClaimedDelivery]) -> None: ...

    async def expire_claims(self, records: list[AttemptRecord]) -> None: ...


class ResultWriter:
    """Collects attempt records and writes them in batches; `write` returns once durable.

    A failure is classified, never retried blindly (SPEC §4):
    - `StoreUnavailable` (the connection): the batch is retried, each record only while its claim
      can still be applied — once `started_at + lease` has passed, stale recovery owns the claim;
    - anything else (one record's data, e.g. `DataRefused`): the batch is halved until the record
      that fails stands alone, so every other record commits; that record is written again without
      its server text, and if even that fails its claim is handed to stale recovery at once.
    """

    def __init__(
        self,
        store: ResultStore,
        *,
        lease: timedelta,
        max_batch: int = 500,
        retry_delay: float = 0.5,
        clock: Clock = utc_now,
        instruments: Instruments = NO_INSTRUMENTS,
    ) -> None:
        self.store = store
        self.lease = lease
        self.max_batch = max_batch
        self.retry_delay = retry_delay
        self.clock = clock
        self.instruments = instruments
        self._pending: list[_Entry] = []
        self._ready = asyncio.Event()
        self.on_written: Callable[[AttemptRecord, bool], None] = lambda record, applied: None
        # how many claims a batch of this many results takes for its workers (the scheduler's
        # call: none outside a backlog), and what it took — claims, asked, started (ns)
        self.claims_wanted: Callable[[int], int] = lambda results: 0
        self.on_claimed: Callable[[list[ClaimedDelivery], int, int], None] = lambda claims, asked, started: None
        self._releases: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        """Records waiting for their batch."""
        return len(self._pending)

    async def write(self, record: AttemptRecord) -> bool:
        """True when the result was applied, False when it was not: the claim had been lost (a late
        worker), or the result could not be written before the claim's deadline."""
        applied, next_claim = await self.write_and_take(record)
        if next_claim is not None:
            await self.release([next_claim])
        return applied

    async def write_and_take(self, record: AttemptRecord) -> _Written:
        """`write`, and the claim the same statement took for this worker's next attempt, if any.
        A claim handed to a worker cancelled meanwhile is given back (its attempt never started)."""
        future: asyncio.Future[_Written] = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        self._ready.set()
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(self._give_back)
            raise

    def _give_back(self, future: asyncio.Future[_Written]) -> None:
        claim = None if future.cancelled() else future.result()[1]
        if claim is not None:
            task = asyncio.create_task(self.release([claim]))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

    async def release(self, claims: list[ClaimedDelivery]) -> None:
        """Give back claims whose attempt never started."""
        try:
            await self.store.release(claims)
        except Exception as exc:  # the claim deadline still hands it to stale recovery
            log.warning("claim_release_failed", extra={"error_class": type(exc).__name__})

    async def run(self, stopping: asyncio.Event) -> None:
        """Flush until `stopping` is set and nothing is pending."""
        while True:
            if not self._pending:
                if stopping.is_set():
                    if self._releases:
                        await asyncio.gather(*self._releases, return_exceptions=True)
                    return
                self._ready.clear()
                await wait_any(self._ready, stopping)
                continue
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            await self._write(batch)

    async def _write(self, batch: list[_Entry]) -> None:
        """Settle every entry of `batch`, or put it back to be retried (connection failures only)."""
        records = [record for record, _ in batch]
        asked = self.claims_wanted(len(batch))
        started = time.time_ns()
        try:
            if asked > 0:
                applied, claims = await self.store.finish_and_claim(records, asked, self.lease)
            else:
                applied, claims = await self.store.finish(records), []
        except StoreUnavailable as exc:
            log.warning("result_write_failed", extra={"error_class": type(exc).__name__, "pending": len(batch)})
            if self._retry_later(batch):
                await asyncio.sleep(self.retry_delay)
            return
        except Exception as exc:
            if len(batch) == 1:
                await self._write_alone(batch[0], exc)
                return
            # one record's data fails the whole statement: halve until it stands alone
            log.warning("result_batch_split", extra={"error_class": type(exc).__name__, "records": len(batch)})
            middle = len(batch) // 2
            await self._write(batch[:middle])
            await self._write(batch[middle:])
            return
        if asked > 0:
            self.on_claimed(claims, asked, started)
        next_claims: list[ClaimedDelivery | None] = [*claims, *[None] * (len(batch) - len(claims))]
        for (record, future), next_claim in zip(batch, next_claims, strict=True):
            ok = record.delivery_id in applied
            if not ok:
                log.warning(
                    "late_result_discarded",
                    extra={"delivery_id": str(record.delivery_id), "attempt": record.attempt_number},
                )
            self._settle(record, future, ok, next_claim)

    def _retry_later(self, batch: list[_Entry]) -> bool:
        """Queue `batch` again in front (keeping its order), except records whose claim deadline
        has passed: those can no longer be applied. True when something was queued."""
        now = self.clock()
        keep: list[_Entry] = []
        for record, future in batch:
            if now < record.started_at + self.lease:
                keep.append((record, future))
                continue
            log.error(
                "result_abandoned",
                extra={
                    "delivery_id": str(record.delivery_id),
                    "attempt": record.attempt_number,
                    "reason": "the store stayed unavailable past the claim deadline",
                },
            )
            self._settle(record, future, False)
        self._pending[:0] = keep
        return bool(keep)

    async def _write_alone(self, entry: _Entry, exc: Exception) -> None:
        """A record the store refused on its own: never retried as it is."""
        record, future = entry
        extra = {
            "delivery_id": str(record.delivery_id),
            "attempt": record.attempt_number,
            "error_class": type(exc).__name__,
            "sqlstate": getattr(exc, "sqlstate", None),
        }
        if isinstance(exc, DataRefused):
            log.error("result_refused", extra=extra)
        else:
            log.error("result_refused", extra=extra, exc_info=exc)
        bare = _without_server_text(record)
        if bare is not record:
            try:
                applied = await self.store.finish([bare])
            except StoreUnavailable:
                self._retry_later([(bare, future)])
                return
            except Exception:
                log.exception("result_refused_without_server_text", extra=extra)
            else:
                self._settle(bare, future, bare.delivery_id in applied)
                return
        # nothing of it can be written: stale recovery records the attempt as abandoned (counted
        # towards the maximum), without waiting for the claim deadline
        try:
            await self.store.expire_claims([record])
        except Exception:
            log.exception("claim_expiry_failed", extra=extra)  # recovery still takes it at the deadline
        self._settle(record, future, False)

    def _settle(
        self,
        record: AttemptRecord,
        future: asyncio.Future[_Written],
        applied: bool,
        next_claim: ClaimedDelivery | None = None,
    ) -> None:
        if applied and record.status in TERMINAL_STATUSES:  # counted once durable, never for a late worker
            self.instruments.deliveries_finished.add(1, {"status": record.status})
        if applied and record.suppressions:
            self.instruments.suppressions_added.add(len(record.suppressions), {"reason": "hard_bounce"})
        self.on_written(record, applied)
        if not future.done():
            future.set_result((applied, next_claim))


def _without_server_text(record: AttemptRecord) -> AttemptRecord:
    """`record` with every piece of server text dropped (the part a server controls), or `record`
    itself when it has none."""
    result = record.result
    if result is None or (result.smtp_reply is None and all(r.smtp_reply is None for r in result.recipients)):
        return record
    recipients = tuple(replace(r, smtp_reply=None) for r in result.recipients)
    bare = replace(result, smtp_reply=None, recipients=recipients)
    return replace(record, result=bare, last_error=None if record.last_error is None else bare.summary)


class WorkerPool:
    name = "workers"

    def __init__(
        self,
        *,
        execution: ExecutionService,
        writer: ResultWriter,
        concurrency: int,
        slots: int | None = None,
        start_within: float = 10.0,
        spare_up_to: int = 64 * 1024,
    ) -> None:
        self.execution = execution
        self.writer = writer
        self.concurrency = concurrency  # attempts sending at once
        self.slots = concurrency if slots is None else max(slots, concurrency)  # claims held at once
        # how long a claim may wait to send and still be attempted: the lease allows one attempt's
        # timeout plus a margin, and this wait must fit in the margin (`bootstrap` sizes both)
        self.start_within = start_within
        # the slots beyond one per sender are for small messages only: their attempts are short, so
        # a result write is a large share of one, and a claim waiting holds little memory; a large
        # message's attempt is its transfer (measured: with the spare slots, HTTP's p99 during a
        # backlog of 256 KiB commands rose by ~45 ms)
        self.spare_up_to = spare_up_to
        self._mean_mime = 0.0  # bytes, a moving mean over the claims started
        self._senders = asyncio.Semaphore(concurrency)
        self.on_slot_freed: Callable[[], None] = lambda: None  # the scheduler claims again
        # no attempt starts while a provider fault's result is unwritten, nor one that waited across
        # a pause this process recorded (`_start`)
        self._faults_unwritten = 0
        self._faults_written = asyncio.Event()
        self._paused = False
        self._pauses = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._writer_stop = asyncio.Event()
        self.accepting = True

    @property
    def held_limit(self) -> int:
        """How many claims the pool holds now: every slot while recent messages are small, one per
        sender otherwise."""
        return self.slots if self._mean_mime <= self.spare_up_to else self.concurrency

    @property
    def free_slots(self) -> int:
        """Slots free for claims; negative while the pool holds more than `held_limit` (large
        messages came): a result write then claims that many fewer, and those slots end."""
        return 0 if not self.accepting else self.held_limit - len(self._tasks)

    def submit(self, claim: ClaimedDelivery) -> bool:
        """Start an attempt; False when the pool is stopping (the caller releases the claim)."""
        if not self.accepting or len(self._tasks) >= self.held_limit:
            return False
        task = asyncio.create_task(self._attempt(claim), name=f"attempt-{claim.delivery_id}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return True

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.on_slot_freed()

    async def _attempt(self, claim: ClaimedDelivery) -> None:
        """Attempt `claim`, then each next claim its result's write took for this slot."""
        next_claim: ClaimedDelivery | None = claim
        while next_claim is not None:
            claim, next_claim = next_claim, None
            self._mean_mime += (len(claim.mime) - self._mean_mime) / 16
            if not await self._start(claim):
                return
            try:
                _, next_claim = await self._send_and_write(claim)
            except asyncio.CancelledError:
                raise
            except Exception:
                # the claim stays; stale-claim recovery will return it to the queue
                log.exception("attempt_crashed", extra={"delivery_id": str(claim.delivery_id)})
            if next_claim is not None and not self.accepting:  # stopping: no new attempt starts
                await self.writer.release([next_claim])
                return

    async def _send_and_write(self, claim: ClaimedDelivery) -> tuple[bool, ClaimedDelivery | None]:
        """Attempt `claim` on the sender `_start` took, and write its result; the sender goes on
        while the result is written. Until a provider fault's result is written — the write that
        may record a pause — no other attempt starts (`_start`)."""
        faulted = False
        try:
            record = await self.execution.execute(claim)
            if record.result is not None and record.result.fault is not None:
                faulted = True
                self._faults_unwritten += 1
                self._faults_written.clear()
        finally:
            self._senders.release()
        try:
            return await self.writer.write_and_take(record)
        finally:
            if faulted:
                self._faults_unwritten -= 1
                if not self._faults_unwritten:
                    self._faults_written.set()

    async def _start(self, claim: ClaimedDelivery) -> bool:
        """Take a sender for `claim`; False (the claim given back, never attempted) when the wait for
        one took longer than `start_within`, this process recorded a pause of the provider meanwhile,
        or the pool began stopping. The wait needs no timer of its own: a sender frees when an
        attempt ends, a fault's result is written when its write ends, and both are bounded."""
        pauses = self._pauses
        waiting_since = time.monotonic() if self._senders.locked() or self._faults_unwritten else None
        await self._senders.acquire()
        try:
            while self._faults_unwritten:  # the pause their write may record must be known first
                await self._faults_written.wait()
        except BaseException:  # cancelled (the shutdown deadline): the sender goes back
            self._senders.release()
            raise
        waited = 0.0 if waiting_since is None else time.monotonic() - waiting_since
        late = waited > self.start_within
        # paused while this claim waited: it was claimed for a provider that was sending (a probe,
        # claimed while paused, finds the count unchanged and goes)
        overtaken = self._paused and self._pauses != pauses
        if self.accepting and not late and not overtaken:
            return True
        self._senders.release()
        if self.accepting:
            extra = {"delivery_id": str(claim.delivery_id), "waited_s": round(waited, 3)}
            if late:
                log.warning("attempt_not_started", extra=extra | {"reason": "waited_too_long"})
            else:
                log.info("attempt_not_started", extra=extra | {"reason": "provider_paused"})
        await self.writer.release([claim])
        return False

    def provider_changed(self, change: ProviderChange) -> None:
        """A change of the provider's state that this process wrote (`QueueStore.on_provider_change`)
        or an operator's resume through it."""
        self._paused = change.state == "paused"
        if self._paused:
            self._pauses += 1

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
