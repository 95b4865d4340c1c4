"""GroupCommitStore: concurrent single acceptances share a transaction, outcomes go back to each caller."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from uuid import uuid4

import pytest

from mailsvc.errors import StoreUnavailable
from mailsvc.services.acceptance import KeyOutcome, OffsetAdvance
from mailsvc.services.group_commit import GroupCommitStore

TTL = timedelta(hours=24)


class FakeStore:
    """Records each transaction; delivery "bad" fails the whole transaction it is in."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.calls: list[tuple[list[str], object]] = []
        self.fail_with = fail_with
        self.gate = asyncio.Event()
        self.gate.set()

    async def accept(self, deliveries, malformed, *, stream_key, offset, idempotency_ttl):  # type: ignore[no-untyped-def]
        self.calls.append((list(deliveries), offset))
        await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        if "bad" in deliveries:
            raise ValueError("the database refused a row")
        return [KeyOutcome("created", uuid4(), "queued") for _ in deliveries]


async def accept(store: GroupCommitStore, name: str) -> list[KeyOutcome]:
    return await store.accept([name], [], stream_key="s", offset=None, idempotency_ttl=TTL)  # type: ignore[list-item]


async def test_a_lone_call_is_its_own_transaction() -> None:
    fake = FakeStore()
    outcomes = await accept(GroupCommitStore(fake), "a")
    assert len(outcomes) == 1
    assert fake.calls == [(["a"], None)]


async def test_calls_arriving_during_a_transaction_share_the_next_one() -> None:
    fake = FakeStore()
    store = GroupCommitStore(fake)
    fake.gate.clear()
    first = asyncio.create_task(accept(store, "a"))
    await asyncio.sleep(0)  # "a" is in flight, the others queue behind it
    others = [asyncio.create_task(accept(store, name)) for name in ("b", "c", "d")]
    await asyncio.sleep(0)
    fake.gate.set()
    results = await asyncio.gather(first, *others)
    assert [call[0] for call in fake.calls] == [["a"], ["b", "c", "d"]]
    assert all(len(outcomes) == 1 for outcomes in results)
    assert len({outcomes[0].delivery_id for outcomes in results}) == 4  # each caller gets its own outcome


async def test_a_failing_batch_is_retried_one_by_one_so_only_the_bad_request_fails() -> None:
    fake = FakeStore()
    store = GroupCommitStore(fake)
    fake.gate.clear()
    first = asyncio.create_task(accept(store, "a"))
    await asyncio.sleep(0)
    good, bad = asyncio.create_task(accept(store, "b")), asyncio.create_task(accept(store, "bad"))
    await asyncio.sleep(0)
    fake.gate.set()
    assert len(await first) == 1
    assert len(await good) == 1
    with pytest.raises(ValueError, match="refused"):
        await bad


async def test_store_unavailable_fails_the_whole_batch_without_retrying() -> None:
    fake = FakeStore(fail_with=StoreUnavailable("down"))
    store = GroupCommitStore(fake)
    fake.gate.clear()
    tasks = [asyncio.create_task(accept(store, name)) for name in ("a", "b", "c")]
    await asyncio.sleep(0)
    fake.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results)
    assert [call[0] for call in fake.calls] == [["a", "b", "c"]]  # one transaction, not retried


async def test_stream_batches_pass_straight_through() -> None:
    fake = FakeStore()
    offset = OffsetAdvance("s", None, "1-0")
    await GroupCommitStore(fake).accept(["x", "y"], [], stream_key="s", offset=offset, idempotency_ttl=TTL)  # type: ignore[list-item]
    assert fake.calls == [(["x", "y"], offset)]


async def test_a_caller_that_goes_away_does_not_cancel_the_batch() -> None:
    fake = FakeStore()
    store = GroupCommitStore(fake)
    fake.gate.clear()
    leaving = asyncio.create_task(accept(store, "a"))
    await asyncio.sleep(0)
    leaving.cancel()
    staying = asyncio.create_task(accept(store, "b"))
    await asyncio.sleep(0)
    fake.gate.set()
    assert len(await staying) == 1
    assert [call[0] for call in fake.calls] == [["a"], ["b"]]
