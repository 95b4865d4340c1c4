"""Scheduler passes through its Protocols (ClaimStore, Pool): in-memory fakes, no I/O."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from mailsvc.domain.model import ClaimedDelivery, StaleRecovery
from mailsvc.loops.scheduler import Scheduler
from mailsvc.loops.wakeup import Wakeup

LEASE = timedelta(seconds=60)


def claimed() -> ClaimedDelivery:
    return ClaimedDelivery(
        delivery_id=uuid.uuid4(),
        claim_token=uuid.uuid4(),
        attempt_number=1,
        message_id="<m@mail.example.com>",
        expires_at=None,
        recipients=("ann@example.org",),
        mime=b"",
    )


class FakeStore:
    """`due` deliveries waiting; `claim` hands out at most `limit` of them."""

    def __init__(self, due: int, recovered: StaleRecovery | None = None) -> None:
        self.due = [claimed() for _ in range(due)]
        self.claims: list[tuple[int, timedelta]] = []
        self.released: list[ClaimedDelivery] = []
        self.recovered = recovered or StaleRecovery()
        self.recover_calls: list[int] = []

    async def claim(self, limit: int, lease: timedelta) -> list[ClaimedDelivery]:
        self.claims.append((limit, lease))
        taken, self.due = self.due[:limit], self.due[limit:]
        return taken

    async def recover(self, now: datetime, max_attempts: int, limit: int = 1000) -> StaleRecovery:
        self.recover_calls.append(max_attempts)
        return self.recovered

    async def release(self, claims: list[ClaimedDelivery]) -> None:
        self.released.extend(claims)

    async def due_backlog(self) -> int:
        return len(self.due)


class FakePool:
    def __init__(self, free: int, accepts: int | None = None) -> None:
        self.free = free
        self.accepts = free if accepts is None else accepts  # submits it takes before it refuses (stopping)
        self.submitted: list[ClaimedDelivery] = []

    @property
    def free_slots(self) -> int:
        return self.free

    def submit(self, claim: ClaimedDelivery) -> bool:
        if len(self.submitted) >= self.accepts:
            return False
        self.submitted.append(claim)
        return True


def scheduler(
    store: FakeStore, pool: FakePool, wakeup: Wakeup | None = None, max_claim: int = 500, claim_batch: int = 1
) -> Scheduler:
    return Scheduler(
        store=store,
        pool=pool,
        wakeup=wakeup or Wakeup(),
        lease=LEASE,
        max_attempts=5,
        max_claim=max_claim,
        claim_batch=claim_batch,
    )


async def test_a_pass_claims_only_as_many_as_there_are_free_slots_and_submits_them() -> None:
    store, pool = FakeStore(due=10), FakePool(free=3)
    assert await scheduler(store, pool).claim_once() == 3
    assert store.claims == [(3, LEASE)]
    assert len(pool.submitted) == 3
    assert len(store.due) == 7


async def test_a_pass_claims_no_more_than_max_claim() -> None:
    store = FakeStore(due=10)
    assert await scheduler(store, FakePool(free=8), max_claim=4).claim_once() == 4
    assert store.claims == [(4, LEASE)]


async def test_without_a_free_slot_nothing_is_claimed() -> None:
    store = FakeStore(due=10)
    assert await scheduler(store, FakePool(free=0)).claim_once() == 0
    assert store.claims == []


async def test_claims_the_stopping_pool_refuses_are_released_at_once() -> None:
    store, pool = FakeStore(due=5), FakePool(free=5, accepts=2)
    handed_out = list(store.due)
    assert await scheduler(store, pool).claim_once() == 2
    assert pool.submitted == handed_out[:2]
    assert store.released == handed_out[2:]


async def test_a_freed_slot_wakes_the_scheduler_only_while_a_backlog_is_likely() -> None:
    wakeup = Wakeup()
    full = scheduler(FakeStore(due=10), FakePool(free=2), wakeup)
    await full.claim_once()  # filled every free slot: more may be due
    assert full.backlog_likely
    full.slot_freed()
    assert await wakeup.wait(0)

    drained = scheduler(FakeStore(due=1), FakePool(free=2), wakeup)
    await drained.claim_once()  # fewer than the free slots: nothing more is due
    assert not drained.backlog_likely
    drained.slot_freed()
    assert not await wakeup.wait(0)


async def test_during_a_backlog_freed_slots_wake_the_scheduler_once_a_claim_batch_of_them_is_free() -> None:
    wakeup = Wakeup()
    pool = FakePool(free=4)
    busy = scheduler(FakeStore(due=10), pool, wakeup, claim_batch=3)
    await busy.claim_once()
    assert busy.backlog_likely
    pool.free = 2  # two attempts finished: a claim now would pay its fixed cost for two
    busy.slot_freed()
    assert not await wakeup.wait(0)
    pool.free = 3
    busy.slot_freed()
    assert await wakeup.wait(0)


async def test_the_poll_still_claims_fewer_free_slots_than_a_claim_batch() -> None:
    store = FakeStore(due=10)
    assert await scheduler(store, FakePool(free=1), claim_batch=4).claim_once() == 1
    assert store.claims == [(1, LEASE)]


async def test_recovery_passes_max_attempts_and_reports_what_it_recovered() -> None:
    store = FakeStore(due=0, recovered=StaleRecovery(requeued=2, dead_lettered=1))
    recovered = await scheduler(store, FakePool(free=1)).recover_once()
    assert (recovered.requeued, recovered.dead_lettered) == (2, 1)
    assert store.recover_calls == [5]
