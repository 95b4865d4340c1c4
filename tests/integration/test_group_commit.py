"""GroupCommitStore over the real IntakeStore: concurrent single acceptances share one transaction.

The inner store is the real one against real PostgreSQL; the only addition is a gate that holds a
transaction open so the test decides which calls arrive "while one is in flight".
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mailsvc.adapters.postgres.engine import create_engine
from mailsvc.adapters.postgres.intake_store import IntakeStore
from mailsvc.domain.commands import request_hash
from mailsvc.domain.intake import KeyOutcome, NewDelivery, OffsetAdvance
from mailsvc.errors import DataRefused, NotFound, StoreUnavailable
from mailsvc.services.acceptance import AcceptanceService
from mailsvc.services.group_commit import GroupCommitStore
from tests.support.acceptance import acceptance_service

TTL = timedelta(hours=24)
STREAM = "unused"


class GatedIntakeStore(IntakeStore):
    """The real store; each transaction first waits for `gate` and is recorded (its idempotency keys)."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.gate = asyncio.Event()
        self.gate.set()
        self.transactions: list[list[str]] = []

    async def accept(self, deliveries: Sequence[NewDelivery], *args: Any, **kwargs: Any) -> list[KeyOutcome]:
        self.transactions.append([d.idempotency_key for d in deliveries])
        await self.gate.wait()
        return await super().accept(deliveries, *args, **kwargs)


@pytest.fixture
def builder() -> AcceptanceService:
    """Only `prepare` is used: it builds the NewDelivery rows the doors would persist."""
    return acceptance_service(idempotency_ttl=TTL, stream_key=STREAM)


def delivery(
    builder: AcceptanceService, key: str, *, subject: str = "Hello", resend_of: uuid.UUID | None = None
) -> NewDelivery:
    payload = {"to": [f"{key}@example.com"], "subject": subject, "text": "Body"}
    return builder.prepare(
        source="auth", idempotency_key=key, payload=payload, digest=request_hash(payload), resend_of=resend_of
    )


async def accept(store: GroupCommitStore, item: NewDelivery) -> list[KeyOutcome]:
    return await store.accept([item], [], stream_key=STREAM, offset=None, idempotency_ttl=TTL)


async def stored_keys(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(text("SELECT idempotency_key FROM deliveries"))).scalars())


async def until_transactions(inner: GatedIntakeStore, count: int) -> None:
    """Let the event loop run until the flusher has started `count` transactions (bounded)."""
    for _ in range(1000):
        if len(inner.transactions) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{inner.transactions}")


async def first_in_flight(
    engine: AsyncEngine, builder: AcceptanceService
) -> tuple[GatedIntakeStore, GroupCommitStore, asyncio.Task[list[KeyOutcome]]]:
    """A group-commit store whose first transaction (delivery "a") is open and held at the gate."""
    inner = GatedIntakeStore(engine)
    store = GroupCommitStore(inner)
    inner.gate.clear()
    first = asyncio.create_task(accept(store, delivery(builder, "a")))
    await until_transactions(inner, 1)
    return inner, store, first


async def test_calls_arriving_during_a_transaction_share_the_next_one(
    engine: AsyncEngine, builder: AcceptanceService
) -> None:
    inner, store, first = await first_in_flight(engine, builder)  # the next three queue behind "a"
    others = [asyncio.create_task(accept(store, delivery(builder, key))) for key in ("b", "c", "d")]
    await asyncio.sleep(0)
    inner.gate.set()
    results = await asyncio.gather(first, *others)
    assert inner.transactions == [["a"], ["b", "c", "d"]]
    assert [r[0].kind for r in results] == ["created"] * 4
    assert len({r[0].delivery_id for r in results}) == 4  # each caller gets its own outcome
    assert await stored_keys(engine) == {"a", "b", "c", "d"}


async def test_a_key_repeated_within_one_transaction_is_judged_as_if_sequential(
    engine: AsyncEngine, builder: AcceptanceService
) -> None:
    inner, store, first = await first_in_flight(engine, builder)
    again = asyncio.create_task(accept(store, delivery(builder, "k")))
    replay = asyncio.create_task(accept(store, delivery(builder, "k")))
    conflict = asyncio.create_task(accept(store, delivery(builder, "k", subject="Another")))
    await asyncio.sleep(0)
    inner.gate.set()
    await first
    (created,), (duplicate,), (conflicting,) = await asyncio.gather(again, replay, conflict)
    assert inner.transactions[1] == ["k", "k", "k"]
    assert (created.kind, duplicate.kind, conflicting.kind) == ("created", "duplicate", "conflict")
    assert duplicate.delivery_id == conflicting.delivery_id == created.delivery_id


async def test_a_failing_batch_is_retried_one_by_one_so_only_the_bad_request_fails(
    engine: AsyncEngine, builder: AcceptanceService
) -> None:
    inner, store, first = await first_in_flight(engine, builder)
    good = asyncio.create_task(accept(store, delivery(builder, "b")))
    # a resend of a delivery that no longer exists: the real foreign key refuses the whole statement
    bad = asyncio.create_task(accept(store, delivery(builder, "gone", resend_of=uuid.uuid4())))
    await asyncio.sleep(0)
    inner.gate.set()
    assert (await first)[0].kind == "created"
    assert (await good)[0].kind == "created"
    with pytest.raises(NotFound):
        await bad
    assert inner.transactions == [["a"], ["b", "gone"], ["b"], ["gone"]]
    assert await stored_keys(engine) == {"a", "b"}


@pytest.mark.parametrize("bad_subject", ["a\x00b", "M\udcfcller"], ids=["nul", "lone-surrogate"])
async def test_one_item_whose_data_postgresql_refuses_fails_alone_and_the_group_commits(
    engine: AsyncEngine, builder: AcceptanceService, bad_subject: str
) -> None:
    inner, store, first = await first_in_flight(engine, builder)
    good = asyncio.create_task(accept(store, delivery(builder, "b")))
    item = delivery(builder, "bad")
    # past validation by construction: the store is the last line (NUL: PostgreSQL; surrogate: asyncpg)
    bad = asyncio.create_task(accept(store, replace(item, content=replace(item.content, subject=bad_subject))))
    also_good = asyncio.create_task(accept(store, delivery(builder, "c")))
    await asyncio.sleep(0)
    inner.gate.set()
    assert [(await task)[0].kind for task in (first, good, also_good)] == ["created"] * 3
    with pytest.raises(DataRefused) as refused:  # its own failure, never "unavailable" (503)
        await bad
    assert (refused.value.sqlstate or "").startswith("22")
    assert inner.transactions == [["a"], ["b", "bad", "c"], ["b"], ["bad"], ["c"]]
    assert await stored_keys(engine) == {"a", "b", "c"}


async def test_store_unavailable_fails_the_whole_batch_without_retrying(builder: AcceptanceService) -> None:
    unreachable = create_engine("postgresql://postgres@127.0.0.1:9/none", operation_timeout_s=2)
    try:
        inner = GatedIntakeStore(unreachable)
        store = GroupCommitStore(inner)
        inner.gate.clear()
        tasks = [asyncio.create_task(accept(store, delivery(builder, key))) for key in ("a", "b", "c")]
        await until_transactions(inner, 1)
        inner.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await unreachable.dispose()
    assert [type(r) for r in results] == [StoreUnavailable] * 3
    assert inner.transactions == [["a", "b", "c"]]  # one transaction, failed once, not split and retried


async def test_stream_batches_pass_straight_through(engine: AsyncEngine, builder: AcceptanceService) -> None:
    inner = GatedIntakeStore(engine)
    offset = OffsetAdvance(STREAM, None, "1-0")
    items = [delivery(builder, "x"), delivery(builder, "y")]
    outcomes = await GroupCommitStore(inner).accept(items, [], stream_key=STREAM, offset=offset, idempotency_ttl=TTL)
    assert [o.kind for o in outcomes] == ["created", "created"]
    assert inner.transactions == [["x", "y"]]


async def test_a_caller_that_goes_away_does_not_cancel_the_batch(
    engine: AsyncEngine, builder: AcceptanceService
) -> None:
    inner, store, leaving = await first_in_flight(engine, builder)
    leaving.cancel()
    staying = asyncio.create_task(accept(store, delivery(builder, "b")))
    await asyncio.sleep(0)
    inner.gate.set()
    assert (await staying)[0].kind == "created"
    assert inner.transactions == [["a"], ["b"]]
    assert await stored_keys(engine) == {"a", "b"}  # the request whose caller left was still committed
