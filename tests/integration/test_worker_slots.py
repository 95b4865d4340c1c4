"""A pool holds more claims (`slots`) than it sends at once (`concurrency`, the SMTP pool's size):
a sender goes on with its next claim while the previous result is written. A claim that cannot
start sending in time (it waited longer than `start_within`), or whose pool stops meanwhile, is
given back unattempted — the wait never costs an attempt or eats into the lease. Nor does a claim
start into a pause: no attempt starts while a provider fault's result is unwritten, and a claim
that waited across a pause is given back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from mailsvc.adapters.stub_provider import StubProvider
from mailsvc.domain.model import ClaimedDelivery, OutgoingMessage, ProviderName, SendResult
from mailsvc.domain.provider import ProviderChange
from mailsvc.domain.transitions import AttemptRecord
from mailsvc.loops.scheduler import Scheduler
from mailsvc.loops.wakeup import Wakeup
from mailsvc.loops.workers import ResultWriter, WorkerPool
from mailsvc.services.execution import ExecutionService
from tests.support.deliveries import FROM_EMAIL, condition
from tests.support.infra import wait_until
from tests.support.queue import GIVEN_BACK, POLICY, Queue

LEASE = timedelta(seconds=30)


class GatedProvider:
    """The stub provider behind a gate, counting the sends in progress at once."""

    name: ProviderName = "stub"

    def __init__(self) -> None:
        self.inner = StubProvider()
        self.gate = asyncio.Event()
        self.gate.set()
        self.sending = 0
        self.most_at_once = 0
        self.sent = 0

    async def send(self, message: OutgoingMessage) -> SendResult:
        self.sending += 1
        self.most_at_once = max(self.most_at_once, self.sending)
        try:
            await self.gate.wait()
            return await self.inner.send(message)
        finally:
            self.sending -= 1
            self.sent += 1

    async def close(self) -> None:
        return None


class HeldWrites:
    """The real queue store, whose result writes wait until `open` is set."""

    def __init__(self, queue: Queue) -> None:
        self.store = queue.store
        self.open = asyncio.Event()

    async def finish(self, records: list[AttemptRecord]) -> set[UUID]:
        await self.open.wait()
        return await self.store.finish(records)

    async def finish_and_claim(
        self, records: list[AttemptRecord], limit: int, lease: timedelta
    ) -> tuple[set[UUID], list[ClaimedDelivery]]:
        await self.open.wait()
        return await self.store.finish_and_claim(records, limit, lease)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def pool_for(
    queue: Queue, provider: GatedProvider, store: Any, *, start_within: float = 10.0, spare_up_to: int = 64 * 1024
) -> tuple[WorkerPool, Scheduler]:
    execution = ExecutionService(
        provider=provider,
        policy=POLICY,
        envelope_from=FROM_EMAIL,
        attempt_timeout=10,
        clock=lambda: datetime.now(UTC),
    )
    writer = ResultWriter(store, lease=LEASE)
    pool = WorkerPool(
        execution=execution, writer=writer, concurrency=1, slots=2, start_within=start_within, spare_up_to=spare_up_to
    )
    scheduler = Scheduler(store=queue.store, pool=pool, wakeup=Wakeup(), lease=LEASE, max_attempts=10)
    return pool, scheduler


@contextlib.asynccontextmanager
async def running(pool: WorkerPool, *gates: asyncio.Event) -> AsyncIterator[None]:
    """`pool` running; on the way out every gate opens and the pool stops and drains."""
    task = asyncio.create_task(pool.run())
    try:
        yield
    finally:
        for gate in gates:
            gate.set()
        pool.stop()
        await asyncio.wait_for(task, 10)


async def accepted(queue: Queue, count: int) -> None:
    for i in range(count):
        await queue.accept(f"u{i}@example.org")


async def test_a_sender_goes_on_with_its_next_claim_while_the_previous_result_is_written(queue: Queue) -> None:
    await accepted(queue, 2)
    provider = GatedProvider()
    writes = HeldWrites(queue)
    pool, scheduler = pool_for(queue, provider, writes)
    async with running(pool, writes.open):
        assert await scheduler.claim_once() == 2  # two slots for one sender
        # the first result's write is held: the second attempt sends meanwhile, on the freed sender
        await wait_until(condition(lambda: provider.sent == 2), what="both sent before any result was written")
        assert await queue.db.count("status = 'sent'") == 0
        writes.open.set()

        async def both_written() -> bool:
            return await queue.db.count("status = 'sent'") == 2

        await wait_until(both_written, what="both results written")
    assert provider.most_at_once == 1  # never more sends at once than `concurrency`


async def test_a_claim_that_waited_too_long_to_start_sending_is_given_back_unattempted(queue: Queue) -> None:
    await accepted(queue, 2)
    provider = GatedProvider()
    provider.gate.clear()  # the first send holds the only sender: the second claim waits for it
    pool, scheduler = pool_for(queue, provider, queue.store, start_within=0.0)
    async with running(pool, provider.gate):
        assert await scheduler.claim_once() == 2
        await wait_until(condition(lambda: provider.sending == 1), what="the first attempt sending")
        provider.gate.set()

        async def settled() -> bool:
            return await queue.db.count("status = 'sent'") == 1 and await queue.db.count(GIVEN_BACK) == 1

        await wait_until(settled, what="the first sent, the waiting claim given back")
    assert provider.sent == 1
    assert await queue.db.conn.fetchval("SELECT count(*) FROM attempts") == 1  # the wait cost no attempt


async def test_a_stopping_pool_gives_back_the_claim_still_waiting_to_send(queue: Queue) -> None:
    await accepted(queue, 2)
    provider = GatedProvider()
    provider.gate.clear()
    pool, scheduler = pool_for(queue, provider, queue.store)
    async with running(pool, provider.gate):
        assert await scheduler.claim_once() == 2
        await wait_until(condition(lambda: provider.sending == 1), what="the first attempt sending")
        pool.stop()  # the second claim is still waiting for the sender
        provider.gate.set()
    assert provider.sent == 1
    assert await queue.db.count("status = 'sent'") == 1
    assert await queue.db.count(GIVEN_BACK) == 1
    assert await queue.db.conn.fetchval("SELECT count(*) FROM attempts") == 1


class PausingProvider(GatedProvider):
    """Refuses the first message as the provider's fault (530 to MAIL FROM pauses); sends the rest."""

    async def send(self, message: OutgoingMessage) -> SendResult:
        if self.sent == 0:
            self.sent += 1
            return SendResult("transient_failure", 530, "5.7.0 Authentication required", fault="pause")
        return await super().send(message)


async def test_a_claim_waiting_behind_an_attempt_that_paused_the_provider_is_given_back_unattempted(
    queue: Queue,
) -> None:
    await accepted(queue, 2)
    provider = PausingProvider()
    writes = HeldWrites(queue)
    pool, scheduler = pool_for(queue, provider, writes)
    changes: list[ProviderChange] = []

    def provider_changed(change: ProviderChange) -> None:
        changes.append(change)
        pool.provider_changed(change)

    queue.store.on_provider_change = provider_changed
    async with running(pool, writes.open):
        assert await scheduler.claim_once() == 2
        # the refusal's result is held unwritten: the second claim, which has the sender, waits for it
        await wait_until(condition(lambda: provider.sent == 1), what="the first attempt refused")
        writes.open.set()

        async def settled() -> bool:
            return await queue.db.count(GIVEN_BACK) == 1 and await queue.db.count("attempt_count = 1") == 1

        await wait_until(settled, what="the pause written, the waiting claim given back")
    assert [change.state for change in changes] == ["paused"]
    assert provider.sent == 1
    assert await queue.db.conn.fetchval("SELECT count(*) FROM attempts") == 1  # nothing sent into the pause


async def test_a_claim_made_while_the_provider_is_known_paused_is_attempted(queue: Queue) -> None:
    """The probe: claimed while paused, it has waited across no new pause."""
    await accepted(queue, 1)
    provider = GatedProvider()
    pool, scheduler = pool_for(queue, provider, queue.store)
    pool.provider_changed(ProviderChange("paused", "sender_refused 530", by="attempt"))
    async with running(pool):
        assert await scheduler.claim_once() == 1

        async def sent() -> bool:
            return await queue.db.count("status = 'sent'") == 1

        await wait_until(sent, what="the probe sent")


@pytest.mark.parametrize(("spare_up_to", "first_ask"), [(64 * 1024, 2), (0, 1)])
async def test_the_spare_slots_are_given_up_once_the_messages_are_large(
    queue: Queue, spare_up_to: int, first_ask: int
) -> None:
    await accepted(queue, 4)
    provider = GatedProvider()
    writes = HeldWrites(queue)
    pool, scheduler = pool_for(queue, provider, writes, spare_up_to=spare_up_to)
    asks: list[tuple[int, int]] = []

    def claims_wanted(results: int) -> int:
        asked = scheduler.claims_for_results(results)
        asks.append((results, asked))
        return asked

    pool.writer.claims_wanted = claims_wanted
    pool.writer.on_claimed = scheduler.results_claimed
    async with running(pool, writes.open):
        assert await scheduler.claim_once() == 2  # nothing started yet: both slots
        await wait_until(condition(lambda: provider.sent == 2), what="both attempts made")
        writes.open.set()  # both results in one write

        async def all_sent() -> bool:
            return await queue.db.count("status = 'sent'") == 4

        await wait_until(all_sent, what="the backlog sent")
    # a message larger than `spare_up_to` (every one, at 0): the write takes one claim fewer, and
    # one slot per sender is what is left
    assert asks[0] == (2, first_ask)
    assert provider.most_at_once == 1
