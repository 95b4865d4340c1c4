"""ResultWriter over the real QueueStore (SPEC §4): a record whose data PostgreSQL refuses fails
alone — every other record of its batch commits, the bad one ends recorded (without its server
text) or its claim goes to stale recovery — and connection failures are retried only while the
claim can still be applied. The writer always drains."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID

from mailsvc.adapters.postgres.engine import create_engine
from mailsvc.adapters.postgres.queue_store import QueueStore
from mailsvc.domain.model import ClaimedDelivery, RecipientResult, SendResult
from mailsvc.domain.transitions import AttemptRecord
from mailsvc.loops.workers import ResultWriter
from tests.support.deliveries import condition
from tests.support.infra import PostgresServer, wait_until
from tests.support.queue import Queue, attempted, sent
from tests.support.tcp_proxy import TcpProxy

LEASE = timedelta(seconds=30)


@contextlib.asynccontextmanager
async def running(writer: ResultWriter) -> AsyncIterator[ResultWriter]:
    """The writer's loop as a task; on exit it must drain and stop within a few seconds."""
    stopping = asyncio.Event()
    task = asyncio.create_task(writer.run(stopping))
    try:
        yield writer
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10)


async def write_all(writer: ResultWriter, records: Sequence[AttemptRecord]) -> list[bool]:
    """Hand every record over at once (one batch), as concurrent workers do; bounded."""
    return list(await asyncio.wait_for(asyncio.gather(*(writer.write(r) for r in records)), 20))


async def claim_all(queue: Queue, count: int) -> list[ClaimedDelivery]:
    for i in range(count):
        await queue.accept(f"u{i}@example.org", "other@example.org")
    claims = await queue.store.claim(count, LEASE)
    assert len(claims) == count
    return claims


def failed(claim: ClaimedDelivery, result: SendResult, *, permanent: bool) -> AttemptRecord:
    assert (result.outcome == "permanent_failure") == permanent
    return attempted(claim, result)


async def test_records_whose_server_text_is_refused_are_written_without_it_and_the_rest_commit(
    queue: Queue,
) -> None:
    claims = await claim_all(queue, 5)
    refused_rcpt = SendResult(
        "sent",
        250,
        "2.0.0 OK",
        recipients=(
            RecipientResult(claims[1].recipients[0], True, 250, "2.1.5 OK"),
            RecipientResult(claims[1].recipients[1], False, 550, "5.1.1 M\udcfcller unknown"),  # asyncpg refuses
        ),
    )
    nul_reply = SendResult("transient_failure", 451, "4.3.0 try\x00 later", "data_refused")  # PostgreSQL refuses
    records = [
        sent(claims[0]),
        replace(sent(claims[1]), result=refused_rcpt),
        sent(claims[2]),
        failed(claims[3], nul_reply, permanent=False),
        sent(claims[4]),
    ]
    async with running(ResultWriter(queue.store, lease=LEASE, retry_delay=0.05)) as writer:
        assert await write_all(writer, records) == [True] * 5

    for claim in (claims[0], claims[2], claims[4]):
        [attempt] = await queue.db.attempts(claim.delivery_id)
        assert (attempt["outcome"], attempt["smtp_reply"]) == ("sent", "2.0.0 OK")
        assert (await queue.row(claim.delivery_id))["status"] == "sent"

    assert (await queue.row(claims[1].delivery_id))["status"] == "sent"  # recorded, not lost
    recipients = await queue.db.recipients(claims[1].delivery_id)
    assert [(r["outcome"], r["smtp_code"], r["smtp_reply"]) for r in recipients] == [
        ("accepted", 250, None),
        ("refused", 550, None),  # the code survives, the text a server controls does not
    ]

    row = await queue.row(claims[3].delivery_id)
    assert (row["status"], row["claim_token"]) == ("queued", None)
    assert row["last_error"] == "transient_failure 451 data_refused"
    [attempt] = await queue.db.attempts(claims[3].delivery_id)
    assert (attempt["outcome"], attempt["smtp_code"], attempt["smtp_reply"]) == ("transient_failure", 451, None)


async def test_a_record_nothing_can_make_writable_hands_its_claim_to_recovery(queue: Queue) -> None:
    good, bad = await claim_all(queue, 2)
    unwritable = replace(sent(bad), attempt_number=0)  # attempts.number >= 1: a check violation
    async with running(ResultWriter(queue.store, lease=LEASE, retry_delay=0.05)) as writer:
        assert await write_all(writer, [sent(good), unwritable]) == [True, False]
    assert (await queue.row(good.delivery_id))["status"] == "sent"
    assert await queue.db.attempts(bad.delivery_id) == []

    # the claim was ended at once: the next recovery pass settles it, no waiting for the deadline
    assert (await queue.store.recover(datetime.now(UTC), max_attempts=10)).total == 1
    row = await queue.row(bad.delivery_id)
    assert (row["status"], row["attempt_count"], row["claim_token"]) == ("queued", 1, None)
    assert [(a["number"], a["outcome"]) for a in await queue.db.attempts(bad.delivery_id)] == [(1, "abandoned")]


class CountingQueueStore(QueueStore):
    """The real store, counting `finish` calls (to see retries happen)."""

    calls = 0

    async def finish(self, records: Sequence[AttemptRecord]) -> set[UUID]:
        self.calls += 1
        return await super().finish(records)


async def test_a_connection_failure_is_retried_until_the_store_is_back(
    queue: Queue, pg: PostgresServer, database_dsn: str
) -> None:
    [claim] = await claim_all(queue, 1)
    host_port = pg.admin_dsn.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    engine = create_engine(database_dsn.replace(host_port, f"127.0.0.1:{proxy.port}"), operation_timeout_s=2)
    try:
        store = CountingQueueStore(engine)
        await proxy.stop()  # PostgreSQL unreachable
        async with running(ResultWriter(store, lease=LEASE, retry_delay=0.05)) as writer:
            written = asyncio.create_task(writer.write(sent(claim)))
            await wait_until(condition(lambda: store.calls >= 3), what="three failed writes")
            assert not written.done()
            await proxy.start()
            assert await asyncio.wait_for(written, 20) is True
    finally:
        await engine.dispose()
        await proxy.stop()
    assert (await queue.row(claim.delivery_id))["status"] == "sent"


async def test_a_connection_failure_past_the_claim_deadline_is_given_up() -> None:
    unreachable = CountingQueueStore(create_engine("postgresql://postgres@127.0.0.1:9/none", operation_timeout_s=2))
    now = [datetime.now(UTC)]
    claim = ClaimedDelivery(
        uuid.uuid4(), uuid.uuid4(), 1, "<m@x>", None, ("a@example.org",), b"", recipient_kinds=("to",)
    )
    try:
        writer = ResultWriter(unreachable, lease=LEASE, retry_delay=0.01, clock=lambda: now[0])
        async with running(writer):
            fresh = asyncio.create_task(writer.write(sent(claim)))
            late = replace(sent(claim), delivery_id=uuid.uuid4(), started_at=now[0] - LEASE)
            assert await asyncio.wait_for(writer.write(late), 10) is False  # given up at the first failure
            await wait_until(condition(lambda: unreachable.calls >= 5), what="five failed writes")
            assert not fresh.done()  # still within its lease: still retried
            now[0] += LEASE + timedelta(seconds=1)
            assert await asyncio.wait_for(fresh, 10) is False
    finally:
        await unreachable.engine.dispose()
