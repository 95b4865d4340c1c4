"""Every write of the stored stream offset is a compare-and-set on the offset the consumer read —
gap and reset records included (SPEC §2, §4) — so a former holder can never move it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from redis.asyncio import Redis

from mailsvc.adapters.postgres.engine import create_engine
from mailsvc.adapters.postgres.intake_store import IntakeStore
from mailsvc.domain.intake import OffsetAdvance
from mailsvc.errors import OffsetMoved
from tests.support.infra import wait_until
from tests.support.intake import connect, stored_offset, wait_for_offset
from tests.support.payloads import numbered_payload
from tests.support.process import running_service
from tests.support.stream import command, xadd_all

KEY = "mail:commands"


@pytest.fixture
async def store(database_dsn: str) -> AsyncIterator[IntakeStore]:
    engine = create_engine(database_dsn)
    yield IntakeStore(engine)
    await engine.dispose()


async def store_offset(store: IntakeStore, expected: str | None, new: str) -> None:
    advance = OffsetAdvance(KEY, expected, new)
    await store.accept([], [], stream_key=KEY, offset=advance, idempotency_ttl=timedelta(hours=1))


async def test_gap_and_reset_records_from_a_stale_offset_are_refused_and_write_nothing(
    store: IntakeStore, database_dsn: str
) -> None:
    await store_offset(store, None, "5-0")  # what a former holder read
    await store_offset(store, "5-0", "9-0")  # its successor has moved on since
    async with connect(database_dsn) as db:
        for kind, to_offset, move in (("reset", "0-0", True), ("gap", "7-0", True), ("gap", "6-0", False)):
            with pytest.raises(OffsetMoved):
                await store.record_stream_event(KEY, kind, "5-0", to_offset, "stale", expected="5-0", reset_offset=move)
            assert await stored_offset(db, KEY) == "9-0"
        with pytest.raises(OffsetMoved):  # "nothing was stored" is stale too once something is
            await store.record_stream_event(KEY, "gap", "0-0", "3-0", "stale", expected=None, reset_offset=True)
        assert await db.fetch("SELECT * FROM stream_events") == []

        await store.record_stream_event(KEY, "reset", "9-0", "0-0", "current", expected="9-0", reset_offset=True)
        assert await stored_offset(db, KEY) == "0-0"
        rows = await db.fetch("SELECT kind, from_offset, to_offset FROM stream_events")
        assert [tuple(row) for row in rows] == [("reset", "9-0", "0-0")]


async def test_a_consumer_whose_offset_was_moved_under_it_records_no_reset_from_it(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, database_dsn: str
) -> None:
    async with connect(database_dsn) as db, running_service(service_env) as service:
        (read,) = await xadd_all(redis_client, stream_key, [command(numbered_payload(0), "read")])
        await wait_for_offset(db, stream_key, read)
        # as if another consumer had taken over and moved on; then the stream vanishes
        moved_on = f"{int(read.split('-')[0]) + 1000}-0"
        await db.execute("UPDATE stream_offsets SET last_id = $1 WHERE stream_key = $2", moved_on, stream_key)
        await redis_client.delete(stream_key)

        async def reset_recorded() -> list[tuple[str, str]]:
            rows = await db.fetch("SELECT kind, from_offset FROM stream_events")
            return [(row["kind"], row["from_offset"]) for row in rows]

        # the reset is recorded from the offset actually stored, after the stale attempt was refused
        assert await wait_until(reset_recorded, timeout=10, what="a reset record") == [("reset", moved_on)]
        assert service.events("consumer_offset_moved")
        assert await stored_offset(db, stream_key) == "0-0"
