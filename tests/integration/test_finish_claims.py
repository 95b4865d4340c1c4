"""A result write that claims the next work for the workers it frees (queue_sql._FINISH_AND_CLAIM),
on real PostgreSQL: what it claims, what it never claims, and the gates it shares with claims."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from mailsvc.adapters.postgres.queue_store import QueueStore
from mailsvc.domain.model import SendResult
from mailsvc.domain.provider import ProviderPolicy
from tests.support.queue import Queue, attempted, sent

LEASE = timedelta(seconds=30)
BUSY = SendResult("transient_failure", 451, "4.3.0 try later")
AUTH = SendResult("transient_failure", 535, "5.7.8 no", error_class="auth_failed", fault="pause")
CONNECT = SendResult("transient_failure", error_class="connect_failed", fault="connect")


async def test_a_result_write_claims_due_work_but_not_what_it_ends_or_requeues(queue: Queue) -> None:
    first, second = await queue.accept("a@example.org"), await queue.accept("b@example.org")
    claims = {c.delivery_id: c for c in await queue.store.claim(10, LEASE)}
    waiting = await queue.accept("c@example.org")
    # requeued as due at once: the statement's snapshot still sees it claimed
    retry = replace(attempted(claims[second], BUSY), next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))

    applied, taken = await queue.store.finish_and_claim([sent(claims[first]), retry], 5, LEASE)

    assert applied == {first, second}
    assert [c.delivery_id for c in taken] == [waiting]
    assert (taken[0].attempt_number, taken[0].recipients) == (1, ("c@example.org",))
    row = await queue.row(waiting)
    assert (row["status"], row["claim_token"]) == ("sending", taken[0].claim_token)
    assert (await queue.row(first))["status"] == "sent"
    assert (await queue.row(second))["status"] == "queued"
    [again] = await queue.store.claim(10, LEASE)  # the requeued one, for the next claim
    assert (again.delivery_id, again.attempt_number) == (second, 2)


async def test_the_claim_takes_at_most_its_limit_and_still_fences_late_results(queue: Queue) -> None:
    mine = await queue.accept("a@example.org")
    [claim] = await queue.store.claim(10, LEASE)
    for i in range(3):
        await queue.accept(f"u{i}@example.org")
    late = replace(sent(claim), claim_token=uuid.uuid4())

    applied, taken = await queue.store.finish_and_claim([late], 2, LEASE)

    assert applied == set()
    assert len(taken) == 2
    assert (await queue.row(mine))["status"] == "sending"  # the late result changed nothing
    assert await queue.db.count("status = 'queued'") == 1


async def test_nothing_is_claimed_while_the_provider_is_paused(queue: Queue) -> None:
    first = await queue.accept("a@example.org")
    [claim] = await queue.store.claim(10, LEASE)
    await queue.accept("b@example.org")
    await queue.db.conn.execute(
        "UPDATE provider_state SET state = 'paused', reason = 'auth_failed 535', next_probe_at = now() WHERE id = 1"
    )

    applied, taken = await queue.store.finish_and_claim([attempted(claim, BUSY)], 5, LEASE)

    assert (applied, taken) == ({first}, [])
    assert await queue.db.count("status = 'queued'") == 2


@pytest.mark.parametrize("fault", [AUTH, CONNECT], ids=["pausing-fault", "connection-failure"])
async def test_a_batch_that_reports_a_provider_fault_claims_nothing(queue: Queue, fault: SendResult) -> None:
    first = await queue.accept("a@example.org")
    [claim] = await queue.store.claim(10, LEASE)
    await queue.accept("b@example.org")

    applied, taken = await queue.store.finish_and_claim([attempted(claim, fault)], 5, LEASE)

    assert (applied, taken) == ({first}, [])
    assert await queue.db.count("status = 'queued' AND attempt_count = 0") == 1


async def test_a_rate_limited_provider_leaves_every_claim_to_the_bucket(queue: Queue) -> None:
    limited = QueueStore(queue.store.engine, provider=ProviderPolicy(rate_limit=1000.0))
    first = await queue.accept("a@example.org")
    [claim] = await limited.claim(10, LEASE)
    await queue.accept("b@example.org")

    assert await limited.finish_and_claim([sent(claim)], 5, LEASE) == ({first}, [])
    assert await queue.db.count("status = 'queued'") == 1
