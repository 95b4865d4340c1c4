"""Claims on real PostgreSQL: limits, priority, SKIP LOCKED sharing, the claim-token fence on
results and releases, stale-claim recovery — and a worker process killed in the middle of an attempt."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from mailsvc.adapters.postgres.engine import create_engine
from mailsvc.adapters.postgres.queue_store import QueueStore
from mailsvc.domain.model import ClaimedDelivery, RecipientResult, SendResult
from mailsvc.loops.scheduler import Scheduler
from mailsvc.loops.wakeup import Wakeup
from tests.smtp_servers import Gate, ScriptedHandler, SmtpServer, message_id_of
from tests.support.deliveries import Ledger, condition, smtp_env
from tests.support.infra import wait_until
from tests.support.payloads import raw_payload
from tests.support.process import running_service
from tests.support.queue import Queue, sent
from tests.support.stream import xadd

LEASE = timedelta(seconds=30)


async def test_a_late_result_from_an_old_claim_cannot_overwrite_the_new_claim(queue: Queue) -> None:
    delivery_id = await queue.accept()
    [old] = await queue.store.claim(10, LEASE)
    await queue.expire_claim(delivery_id)
    assert (await queue.store.recover(datetime.now(UTC), max_attempts=10)).total == 1
    [new] = await queue.store.claim(10, LEASE)
    assert new.delivery_id == delivery_id
    assert new.claim_token != old.claim_token
    assert (old.attempt_number, new.attempt_number) == (1, 2)

    assert await queue.store.finish([sent(old)]) == set()
    await queue.store.release([old])  # a late release is fenced too
    row = await queue.row(delivery_id)
    assert (row["status"], row["claim_token"]) == ("sending", new.claim_token)
    assert [(a["number"], a["outcome"]) for a in await queue.db.attempts(delivery_id)] == [(1, "abandoned")]

    assert await queue.store.finish([sent(new)]) == {delivery_id}
    row = await queue.row(delivery_id)
    assert (row["status"], row["claim_token"], row["claim_deadline"]) == ("sent", None, None)
    assert [(a["number"], a["outcome"]) for a in await queue.db.attempts(delivery_id)] == [
        (1, "abandoned"),
        (2, "sent"),
    ]
    assert await queue.store.finish([sent(new)]) == set()  # a terminal delivery never changes again
    assert len(await queue.db.attempts(delivery_id)) == 2


async def test_a_batch_of_results_applies_only_the_claims_that_still_hold(queue: Queue) -> None:
    first, second = await queue.accept("a@example.org"), await queue.accept("b@example.org")
    claims = {c.delivery_id: c for c in await queue.store.claim(10, LEASE)}
    assert set(claims) == {first, second}
    stale = replace(sent(claims[first]), claim_token=uuid.uuid4())
    assert await queue.store.finish([stale, sent(claims[second])]) == {second}
    assert (await queue.row(first))["status"] == "sending"
    assert await queue.db.attempts(first) == []
    assert (await queue.row(second))["status"] == "sent"


async def test_old_and_new_results_for_one_delivery_in_one_batch_apply_only_the_new(queue: Queue) -> None:
    delivery_id = await queue.accept()
    [old] = await queue.store.claim(10, LEASE)
    await queue.expire_claim(delivery_id)
    await queue.store.recover(datetime.now(UTC), max_attempts=10)
    [new] = await queue.store.claim(10, LEASE)
    refused = SendResult(
        "permanent_failure", 550, "5.1.1 no", recipients=(RecipientResult("ann@example.org", False, 550, "5.1.1 no"),)
    )
    late = replace(
        sent(old), outcome="permanent_failure", status="dead_lettered", dead_reason="permanent_failure", result=refused
    )
    assert await queue.store.finish([late, sent(new)]) == {delivery_id}
    assert (await queue.row(delivery_id))["status"] == "sent"
    assert [(a["number"], a["outcome"]) for a in await queue.db.attempts(delivery_id)] == [
        (1, "abandoned"),
        (2, "sent"),
    ]
    assert await queue.db.dead_letter(delivery_id) is None
    [recipient] = await queue.db.recipients(delivery_id)
    assert recipient["outcome"] is None  # nothing of the late record was written


async def test_claims_take_at_most_the_limit_highest_priority_first(queue: Queue) -> None:
    for priority in ("low", "normal", "high", "low", "normal", "high"):
        await queue.accept(f"{priority}@example.org", priority=priority)
    first = await queue.store.claim(3, LEASE)
    assert [c.recipients[0] for c in first] == ["high@example.org", "high@example.org", "normal@example.org"]
    assert await queue.db.count("status = 'sending'") == 3
    rest = await queue.store.claim(10, LEASE)
    assert [c.recipients[0] for c in rest] == ["normal@example.org", "low@example.org", "low@example.org"]
    assert await queue.store.claim(10, LEASE) == []


async def test_work_that_is_not_due_is_not_claimed(queue: Queue) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    await queue.accept(send_at=later)
    assert await queue.store.claim(10, LEASE) == []
    assert await queue.db.count("status = 'queued'") == 1


async def test_concurrent_claimers_share_the_work_without_overlap(queue: Queue, database_dsn: str) -> None:
    await asyncio.gather(*(queue.accept(f"u{i}@example.org") for i in range(120)))
    other = QueueStore(create_engine(database_dsn))
    try:
        stores = [queue.store, other, queue.store, other]
        batches = await asyncio.gather(*(store.claim(40, LEASE) for store in stores))
        batches += [await queue.store.claim(200, LEASE)]
    finally:
        await other.engine.dispose()
    ids = [c.delivery_id for batch in batches for c in batch]
    assert len(ids) == 120
    assert len(set(ids)) == 120
    assert all(len(batch) <= 40 for batch in batches[:4])


async def test_a_released_claim_is_queued_again_without_an_attempt(queue: Queue) -> None:
    delivery_id = await queue.accept()
    [claim] = await queue.store.claim(10, LEASE)
    await queue.store.release([claim])
    row = await queue.row(delivery_id)
    assert (row["status"], row["attempt_count"], row["claim_token"]) == ("queued", 0, None)
    assert await queue.db.attempts(delivery_id) == []
    [again] = await queue.store.claim(10, LEASE)
    assert again.attempt_number == 1
    await queue.store.release([claim])  # the old token: no effect
    assert (await queue.row(delivery_id))["claim_token"] == again.claim_token


async def test_recovery_of_a_claim_that_used_the_last_attempt_dead_letters_it(queue: Queue) -> None:
    delivery_id = await queue.accept()
    await queue.store.claim(10, LEASE)
    assert (await queue.store.recover(datetime.now(UTC), max_attempts=10)).total == 0  # deadline not reached
    await queue.expire_claim(delivery_id)
    assert (await queue.store.recover(datetime.now(UTC), max_attempts=1)).total == 1
    row = await queue.row(delivery_id)
    assert row["status"] == "dead_lettered"
    assert row["finished_at"] is not None
    [attempt] = await queue.db.attempts(delivery_id)
    assert (attempt["outcome"], attempt["error_class"]) == ("abandoned", "claim_expired")
    dead = await queue.db.dead_letter(delivery_id)
    assert dead is not None
    assert dead["reason"] == "attempts_exhausted"


class RecordingPool:
    """A worker pool stand-in: `free_slots` free, takes claims unless it is stopping."""

    def __init__(self, free_slots: int, *, stopping: bool = False) -> None:
        self.free_slots = free_slots
        self.stopping = stopping
        self.submitted: list[ClaimedDelivery] = []

    def submit(self, claim: ClaimedDelivery) -> bool:
        if self.stopping:
            return False
        self.submitted.append(claim)
        self.free_slots -= 1
        return True


def scheduler_for(queue: Queue, pool: RecordingPool, **kwargs: Any) -> Scheduler:
    return Scheduler(store=queue.store, pool=pool, wakeup=Wakeup(), lease=LEASE, max_attempts=10, **kwargs)


async def test_the_scheduler_claims_no_more_than_the_free_slots(queue: Queue) -> None:
    for i in range(5):
        await queue.accept(f"u{i}@example.org")
    pool = RecordingPool(2)
    scheduler = scheduler_for(queue, pool)
    assert await scheduler.claim_once() == 2
    assert await scheduler.claim_once() == 0  # no slot left
    assert len(pool.submitted) == 2
    assert await queue.db.count("status = 'sending'") == 2
    assert scheduler.backlog_likely


async def test_claims_a_stopping_pool_refuses_are_released(queue: Queue) -> None:
    for i in range(3):
        await queue.accept(f"u{i}@example.org")
    assert await scheduler_for(queue, RecordingPool(5, stopping=True)).claim_once() == 0
    assert await queue.db.count("status = 'queued' AND attempt_count = 0 AND claim_token IS NULL") == 3
    assert await queue.db.conn.fetchval("SELECT count(*) FROM attempts") == 0


async def test_the_scheduler_recovers_stale_claims_periodically(queue: Queue) -> None:
    delivery_id = await queue.accept()
    pool = RecordingPool(1)
    scheduler = scheduler_for(queue, pool, poll_interval=0.05, recover_interval=0.1)
    task = asyncio.create_task(scheduler.run())
    try:
        await wait_until(condition(lambda: len(pool.submitted) == 1), what="the first claim")
        pool.free_slots = 1  # as if the worker had crashed without a result
        await queue.expire_claim(delivery_id)
        await wait_until(condition(lambda: len(pool.submitted) == 2), what="the claim recovered and claimed again")
    finally:
        scheduler.stop()
        await asyncio.wait_for(task, 5)
    first, second = pool.submitted
    assert (first.attempt_number, second.attempt_number) == (1, 2)
    assert first.claim_token != second.claim_token
    assert [(a["number"], a["outcome"]) for a in await queue.db.attempts(delivery_id)] == [(1, "abandoned")]


async def test_a_worker_killed_mid_attempt_is_recovered_and_delivered(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, database_dsn: str
) -> None:
    gate = Gate()
    with SmtpServer(ScriptedHandler(hold_data=gate)) as server:
        env = smtp_env(service_env, server.host_port)
        async with Ledger.open(database_dsn) as db:
            async with running_service(env) as first:
                key = await xadd(redis_client, stream_key, raw_payload("ann@example.org"))
                await wait_until(condition(lambda: gate.waiting == 1), what="the attempt waiting for the DATA reply")
                claimed = await db.wait_status(key, "sending")
                first.process.kill()
                await first.wait_exit()
            # the claim outlives the process (deadline = MAIL_SMTP_TIMEOUT + 30 s); let it lapse now
            await db.conn.execute(
                "UPDATE delivery_queue SET claim_deadline = now() - interval '1 second' WHERE delivery_id = $1",
                claimed["delivery_id"],
            )
            gate.open()
            async with running_service(env) as second:
                row = await db.wait_status(key)
                assert second.events("stale_claims_recovered"), second.output()
            attempts = await db.attempts(row["delivery_id"])
        dropped, delivered = server.handler.received
    assert row["status"] == "sent"
    assert [(a["number"], a["outcome"]) for a in attempts] == [(1, "abandoned"), (2, "sent")]
    assert message_id_of(dropped.content) == message_id_of(delivered.content) == row["message_id"]


async def test_a_claim_leaves_suppressed_recipients_out_and_keeps_the_rest_of_its_state(queue: Queue) -> None:
    await queue.db.conn.execute("INSERT INTO suppressions (address, reason) VALUES ('gone@example.org', 'manual')")
    delivery_id = await queue.accept("ann@example.org", "Gone@Example.org", "bob@example.org")
    await queue.db.conn.execute("UPDATE delivery_queue SET provider_faults = 2 WHERE delivery_id = $1", delivery_id)
    (claim,) = await queue.store.claim(10, timedelta(minutes=1))
    assert claim.recipients == ("ann@example.org", "bob@example.org")
    assert claim.recipient_kinds == ("to", "to")
    assert claim.suppressed == (("Gone@Example.org", "to"),)
    assert claim.provider_faults == 2
    assert claim.attempt_number == 1
