"""The attempt scheduler (SPEC §4): claims due work for free worker slots, recovers stale claims.

It claims every 250 ms, at once when acceptance signals new work (in-process, or from another
replica through LISTEN/NOTIFY), and again as soon as slots free up while the backlog lasts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from mailsvc.domain.clock import Clock, utc_now
from mailsvc.domain.model import ClaimedDelivery, StaleRecovery
from mailsvc.errors import StoreUnavailable
from mailsvc.instruments import NO_INSTRUMENTS, Instruments
from mailsvc.loops.pass_spans import claim_span, recovery_span
from mailsvc.loops.wakeup import Wakeup

log = logging.getLogger("mailsvc.scheduler")


class ClaimStore(Protocol):
    async def claim(self, limit: int, lease: timedelta) -> list[ClaimedDelivery]: ...

    async def recover(self, now: datetime, max_attempts: int, limit: int = 1000) -> StaleRecovery: ...

    async def release(self, claims: list[ClaimedDelivery]) -> None: ...

    async def due_backlog(self) -> int: ...


class Pool(Protocol):
    @property
    def free_slots(self) -> int: ...

    @property
    def accepting(self) -> bool: ...

    def submit(self, claim: ClaimedDelivery) -> bool: ...


class Scheduler:
    name = "scheduler"

    def __init__(
        self,
        *,
        store: ClaimStore,
        pool: Pool,
        wakeup: Wakeup,
        lease: timedelta,
        max_attempts: int,
        poll_interval: float = 0.25,
        recover_interval: float = 30.0,
        max_claim: int = 500,
        claim_batch: int = 1,
        backlog_interval: float = 2.0,
        clock: Clock = utc_now,
        instruments: Instruments = NO_INSTRUMENTS,
        samplers: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        self.store = store
        self.clock = clock
        self.pool = pool
        self.wakeup = wakeup
        self.lease = lease
        self.max_attempts = max_attempts
        self.poll_interval = poll_interval
        self.recover_interval = recover_interval
        self.max_claim = max_claim
        # during a backlog a claim waits until this many slots are free: every claim and every
        # result write has a fixed cost (~0.15 and ~0.3 ms of PostgreSQL CPU) that one slot at a
        # time would pay per delivery; the poll still claims for fewer
        self.claim_batch = max(1, claim_batch)
        self._stopping = False
        self.backlog_likely = False  # the last claim filled every free slot: more may be due
        self.backlog_interval = backlog_interval
        self.instruments = instruments
        # sampled here, read by the gauge: its callback runs on the exporter's thread and must not query
        self.due_backlog: int | None = None
        self.samplers = tuple(samplers)  # other gauges' sampling (the provider's state), at the same pace
        if instruments.metering:
            instruments.watch("due_backlog", lambda: self.due_backlog)

    def stop(self) -> None:
        self._stopping = True
        self.wakeup.set()

    def slot_freed(self) -> None:
        if self.backlog_likely and self.pool.free_slots >= self.claim_batch:
            self.wakeup.set()

    async def run(self) -> None:
        self._stopping = False
        next_recovery = next_sample = time.monotonic()
        while not self._stopping:
            try:
                if time.monotonic() >= next_recovery:
                    next_recovery = time.monotonic() + self.recover_interval
                    await self.recover_once()
                await self.claim_once()
                if self.instruments.metering and time.monotonic() >= next_sample:
                    next_sample = time.monotonic() + self.backlog_interval
                    self.due_backlog = await self.store.due_backlog()
                    for sample in self.samplers:
                        await sample()
            except StoreUnavailable as exc:
                log.warning("scheduler_store_unavailable", extra={"error_class": type(exc).__name__})
                self.backlog_likely = False
            if not self._stopping:
                await self.wakeup.wait(self.poll_interval)

    async def recover_once(self) -> StaleRecovery:
        started = time.time_ns()
        recovered = await self.store.recover(self.clock(), self.max_attempts)
        if recovered.total:
            log.warning(
                "stale_claims_recovered", extra={"count": recovered.total, "dead_lettered": recovered.dead_lettered}
            )
            # the recovery writes each of these as an `abandoned` attempt; the provider is not known here
            self.instruments.attempts.add(recovered.total, {"outcome": "abandoned"})
            if recovered.dead_lettered:
                self.instruments.deliveries_finished.add(recovered.dead_lettered, {"status": "dead_lettered"})
            if self.instruments.tracing:
                recovery_span(self.instruments.tracer, started, recovered)
        return recovered

    def claims_for_results(self, results: int) -> int:
        """How many claims a write of `results` attempt results takes for the workers it frees: one
        each during a backlog (fewer while the pool holds more than it wants: negative free slots),
        none otherwise (the freed slots then wait for this loop's claim)."""
        if not (self.backlog_likely and self.pool.accepting):
            return 0
        return max(0, min(results, self.max_claim) + min(0, self.pool.free_slots))

    def results_claimed(self, claims: Sequence[ClaimedDelivery], asked: int, started_ns: int) -> None:
        """What a result write claimed for its workers (`claims_for_results`)."""
        self.backlog_likely = len(claims) == asked
        if claims and self.instruments.tracing:
            claim_span(self.instruments.tracer, started_ns, claims, asked)

    async def claim_once(self) -> int:
        free = min(self.pool.free_slots, self.max_claim)
        if free <= 0:
            return 0
        started = time.time_ns()
        claims = await self.store.claim(free, self.lease)
        if claims and self.instruments.tracing:  # an empty pass (every 250 ms when idle) is no story
            claim_span(self.instruments.tracer, started, claims, free)
        self.backlog_likely = len(claims) == free
        refused = [claim for claim in claims if not self.pool.submit(claim)]
        if refused:  # the pool began stopping between our count and the claim
            await self.store.release(refused)
        return len(claims) - len(refused)
