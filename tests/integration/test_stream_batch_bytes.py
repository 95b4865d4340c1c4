"""The stream reader asks for fewer entries after large ones: a backlog of large commands is read,
prepared and committed in batches of about MAIL_STREAM_BATCH_BYTES, not MAIL_STREAM_BATCH_SIZE."""

from __future__ import annotations

from redis.asyncio import Redis

from mailsvc.adapters.redis_stream import RedisStreamReader
from mailsvc.domain.stream import START


async def add(redis: Redis, stream_key: str, count: int, payload_bytes: int) -> None:
    for n in range(count):
        await redis.xadd(stream_key, {"type": "send_email", "payload": b"x" * payload_bytes, "n": str(n)})


async def test_after_large_entries_a_read_asks_for_as_many_as_the_byte_budget_holds(
    redis_client: Redis, stream_key: str
) -> None:
    await add(redis_client, stream_key, 8, 100_000)
    reader = RedisStreamReader(redis_client, stream_key, count=500, batch_bytes=250_000)
    first = await reader.read(START, None)
    assert (len(first.entries), reader.count) == (8, 500)  # nothing was known of their size yet
    second = await reader.read(first.entries[1][0], None)
    assert (len(second.entries), reader.count) == (2, 2)  # 250,000 bytes hold two of ~100,000
    third = await reader.read(second.entries[-1][0], None)
    assert [entry_id for entry_id, _ in third.entries] == [entry_id for entry_id, _ in first.entries[4:6]]


async def test_an_entry_larger_than_the_budget_is_still_read_one_at_a_time(
    redis_client: Redis, stream_key: str
) -> None:
    await add(redis_client, stream_key, 3, 300_000)
    reader = RedisStreamReader(redis_client, stream_key, count=500, batch_bytes=100_000)
    first = await reader.read(START, None)
    assert len(first.entries) == 3
    second = await reader.read(first.entries[0][0], None)
    assert (len(second.entries), reader.count) == (1, 1)


async def test_small_entries_keep_the_full_count(redis_client: Redis, stream_key: str) -> None:
    await add(redis_client, stream_key, 10, 100)
    reader = RedisStreamReader(redis_client, stream_key, count=4, batch_bytes=250_000)
    first = await reader.read(START, None)
    second = await reader.read(first.entries[-1][0], None)
    assert (len(first.entries), len(second.entries), reader.count) == (4, 4, 4)
