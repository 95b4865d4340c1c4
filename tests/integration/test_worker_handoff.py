"""During a backlog the result write claims each freed worker's next delivery (SPEC §4 claims, one
statement per batch): the worker goes on with it in the same slot, and a claim no attempt will take
— a plain `write`, a cancelled worker, a stopping pool — is given back, never left to the deadline."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from mailsvc.adapters.stub_provider import StubProvider
from mailsvc.domain.model import ClaimedDelivery
from mailsvc.loops.scheduler import Scheduler
from mailsvc.loops.wakeup import Wakeup
from mailsvc.loops.workers import ResultWriter, WorkerPool
from mailsvc.services.execution import ExecutionService
from tests.support.deliveries import FROM_EMAIL, condition
from tests.support.infra import wait_until
from tests.support.queue import GIVEN_BACK, POLICY, Queue, sent

LEASE = timedelta(seconds=30)


@contextlib.asynccontextmanager
async def running(writer: ResultWriter) -> AsyncIterator[ResultWriter]:
    stopping = asyncio.Event()
    task = asyncio.create_task(writer.run(stopping))
    try:
        yield writer
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10)


def taking_writer(queue: Queue) -> tuple[ResultWriter, list[tuple[int, int]]]:
    """A writer whose every batch asks for one claim per result; it notes (taken, asked)."""
    writer = ResultWriter(queue.store, lease=LEASE)
    taken: list[tuple[int, int]] = []
    writer.claims_wanted = lambda results: results
    writer.on_claimed = lambda claims, asked, started: taken.append((len(claims), asked))
    return writer, taken


async def accepted_and_claimed(queue: Queue, claimed: int, waiting: int) -> list[ClaimedDelivery]:
    for i in range(claimed):
        await queue.accept(f"c{i}@example.org")
    claims = await queue.store.claim(claimed, LEASE)
    for i in range(waiting):
        await queue.accept(f"w{i}@example.org")
    return claims


async def test_each_worker_of_a_written_batch_gets_its_own_next_claim(queue: Queue) -> None:
    first, second = await accepted_and_claimed(queue, claimed=2, waiting=3)
    writer, taken = taking_writer(queue)
    async with running(writer):
        results = await asyncio.wait_for(
            asyncio.gather(writer.write_and_take(sent(first)), writer.write_and_take(sent(second))), 20
        )
    assert [applied for applied, _ in results] == [True, True]
    following = [claim for _, claim in results]
    assert all(claim is not None for claim in following)
    ids = {claim.delivery_id for claim in following if claim is not None}
    assert len(ids) == 2
    assert not ids & {first.delivery_id, second.delivery_id}
    assert taken == [(2, 2)]
    assert await queue.db.count("status = 'sending'") == 2
    assert await queue.db.count(GIVEN_BACK) == 1


async def test_a_claim_handed_to_a_plain_write_is_given_back(queue: Queue) -> None:
    [claim] = await accepted_and_claimed(queue, claimed=1, waiting=1)
    writer, taken = taking_writer(queue)
    async with running(writer):
        assert await asyncio.wait_for(writer.write(sent(claim)), 20) is True
    assert taken == [(1, 1)]
    assert await queue.db.count(GIVEN_BACK) == 1
    assert await queue.db.count("status = 'sent'") == 1


async def test_a_claim_handed_to_a_worker_cancelled_meanwhile_is_given_back(queue: Queue) -> None:
    [claim] = await accepted_and_claimed(queue, claimed=1, waiting=1)
    writer, taken = taking_writer(queue)
    worker = asyncio.create_task(writer.write_and_take(sent(claim)))
    await wait_until(condition(lambda: writer.pending), what="the record handed over")
    worker.cancel()  # the shutdown deadline, while the record waits for its batch
    with contextlib.suppress(asyncio.CancelledError):
        await worker
    async with running(writer):
        await wait_until(condition(lambda: taken == [(1, 1)]), what="the batch written with its claim")
    assert await queue.db.count("status = 'sent'") == 1
    assert await queue.db.count(GIVEN_BACK) == 1  # released before the writer stopped


def pool_for(queue: Queue, concurrency: int) -> tuple[WorkerPool, Scheduler]:
    execution = ExecutionService(
        provider=StubProvider(),
        policy=POLICY,
        envelope_from=FROM_EMAIL,
        attempt_timeout=10,
        clock=lambda: datetime.now(UTC),
    )
    pool = WorkerPool(execution=execution, writer=ResultWriter(queue.store, lease=LEASE), concurrency=concurrency)
    scheduler = Scheduler(store=CountingClaims(queue), pool=pool, wakeup=Wakeup(), lease=LEASE, max_attempts=10)
    pool.writer.claims_wanted = scheduler.claims_for_results
    pool.writer.on_claimed = scheduler.results_claimed
    return pool, scheduler


class CountingClaims:
    """The real queue store, counting the scheduler's own claims."""

    def __init__(self, queue: Queue) -> None:
        self.store = queue.store
        self.claims = 0

    async def claim(self, limit: int, lease: timedelta) -> list[ClaimedDelivery]:
        self.claims += 1
        return await self.store.claim(limit, lease)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def test_a_backlog_runs_through_one_slot_from_a_single_scheduler_claim(queue: Queue) -> None:
    for i in range(4):
        await queue.accept(f"u{i}@example.org")
    pool, scheduler = pool_for(queue, concurrency=1)
    running_pool = asyncio.create_task(pool.run())
    try:
        assert await scheduler.claim_once() == 1  # filled every free slot: a backlog is likely

        async def all_sent() -> bool:
            return await queue.db.count("status = 'sent'") == 4

        await wait_until(all_sent, what="the backlog sent")
    finally:
        pool.stop()
        await asyncio.wait_for(running_pool, 10)
    assert isinstance(scheduler.store, CountingClaims)
    assert scheduler.store.claims == 1
    assert [a["number"] for a in await queue.db.conn.fetch("SELECT number FROM attempts")] == [1, 1, 1, 1]
    assert not scheduler.backlog_likely  # the last write found nothing more to claim


async def test_a_stopping_pool_gives_back_the_claim_its_worker_was_handed(queue: Queue) -> None:
    for i in range(2):
        await queue.accept(f"u{i}@example.org")
    pool, scheduler = pool_for(queue, concurrency=1)
    stop_with_the_first_result = pool.writer.on_claimed

    def claimed(claims: list[ClaimedDelivery], asked: int, started: int) -> None:
        stop_with_the_first_result(claims, asked, started)
        pool.stop()  # the stop arrives while the write that claimed is in flight

    pool.writer.on_claimed = claimed
    running_pool = asyncio.create_task(pool.run())
    try:
        assert await scheduler.claim_once() == 1
    finally:
        await asyncio.wait_for(running_pool, 10)
    assert await queue.db.count("status = 'sent'") == 1
    assert await queue.db.count(GIVEN_BACK) == 1
    assert await queue.db.conn.fetchval("SELECT count(*) FROM attempts") == 1
