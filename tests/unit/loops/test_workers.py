"""WorkerPool slots through its collaborators: an in-memory execution and result store, no I/O."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from mailsvc.domain.model import ClaimedDelivery
from mailsvc.loops.workers import ResultWriter, WorkerPool
from tests.support.infra import wait_until
from tests.support.queue import sent

LEASE = timedelta(seconds=60)


async def until(predicate: Callable[[], bool], what: str) -> None:
    async def holds() -> bool:
        return predicate()

    await wait_until(holds, timeout=10, what=what)


def claimed() -> ClaimedDelivery:
    return ClaimedDelivery(
        delivery_id=uuid.uuid4(),
        claim_token=uuid.uuid4(),
        attempt_number=1,
        message_id="<m@mail.example.com>",
        expires_at=None,
        recipients=("ann@example.org",),
        recipient_kinds=("to",),
        mime=b"",
    )


class Execution:
    """Attempts that finish when `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0

    async def execute(self, claim: ClaimedDelivery) -> Any:
        self.started += 1
        await self.release.wait()
        return sent(claim)


class BlockedStore:
    """A database whose result writes wait until `commit` is set."""

    def __init__(self) -> None:
        self.commit = asyncio.Event()
        self.written: list[uuid.UUID] = []

    async def finish(self, records: list[Any]) -> set[uuid.UUID]:
        await self.commit.wait()
        self.written += [record.delivery_id for record in records]
        return {record.delivery_id for record in records}

    async def expire_claims(self, records: list[Any]) -> None:
        pass


async def test_a_slot_is_free_once_its_attempt_has_a_result_while_the_result_waits_for_the_writer() -> None:
    execution, store = Execution(), BlockedStore()
    pool = WorkerPool(execution=execution, writer=ResultWriter(store, lease=LEASE), concurrency=2)  # type: ignore[arg-type]
    running = asyncio.create_task(pool.run())
    try:
        assert pool.submit(claimed())
        assert pool.submit(claimed())
        assert pool.free_slots == 0
        await until(lambda: execution.started == 2, "both attempts to start")
        execution.release.set()  # both attempts have their result; the database has not answered
        await until(lambda: pool.free_slots == 2, "the slots to be free again")
        assert store.written == []
        # two more attempts may run, and their results wait too: then the pool is full
        assert pool.submit(claimed())
        assert pool.submit(claimed())
        await until(lambda: execution.started == 4 and pool.free_slots == 0, "four results waiting")
        assert not pool.submit(claimed())
        store.commit.set()
        await until(lambda: len(store.written) == 4, "the results to be written")
        await until(lambda: pool.free_slots == 2, "room again")
    finally:
        pool.stop()
        store.commit.set()
        await asyncio.wait_for(running, 10)


async def test_a_stopping_pool_takes_nothing() -> None:
    pool = WorkerPool(execution=Execution(), writer=ResultWriter(BlockedStore(), lease=LEASE), concurrency=2)  # type: ignore[arg-type]
    pool.stop()
    assert pool.free_slots == 0
    assert not pool.submit(claimed())
