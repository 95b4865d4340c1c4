"""Stream leadership is checked, not assumed (SPEC §4): two `mailsvc serve` replicas, commands
flowing, and the holder's lock session ended under it or its PostgreSQL traffic blackholed.

Across both, every write of the stored offset is logged by a trigger: it never moves backwards,
and every command becomes exactly one delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import pytest
from redis.asyncio import Redis

from mailsvc.domain.stream import parse_id
from tests.support.infra import wait_until
from tests.support.intake import connect, delivery_keys
from tests.support.payloads import numbered_payload
from tests.support.process import running_service
from tests.support.stream import command, xadd_all
from tests.support.tcp_proxy import dsn_through, postgres_user_timeout, proxy_to

pytestmark = pytest.mark.slow

_LOG_OFFSET_WRITES = """
    CREATE TABLE test_offset_writes (seq bigserial, old_id text, new_id text NOT NULL);
    CREATE FUNCTION test_log_offset_write() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO test_offset_writes (old_id, new_id)
        VALUES (CASE WHEN TG_OP = 'UPDATE' THEN OLD.last_id END, NEW.last_id);
        RETURN NEW;
    END $$;
    CREATE TRIGGER test_log_offset_write AFTER INSERT OR UPDATE ON stream_offsets
        FOR EACH ROW EXECUTE FUNCTION test_log_offset_write();
"""
_LOCK_HOLDER = """
    SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database
    WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()
"""


def replica_env(env: dict[str, str], dsn: str | None = None) -> dict[str, str]:
    # two processes and the test share one PostgreSQL with other engineers' suites
    small = {"MAIL_POSTGRES_MAX_OPEN_CONNS": "6", "MAIL_POSTGRES_MAX_IDLE_CONNS": "3"}
    # the consumer's lock is the only advisory lock these tests look for: no event publisher's
    small["MAIL_REDIS_EVENT_STREAM"] = ""
    return {**env, **small, **({"MAIL_POSTGRES_PRIMARY_DSN": dsn} if dsn else {})}


@dataclass
class Producer:
    """XADDs one command every 20 ms while running: commands keep flowing through a takeover."""

    redis: Redis
    stream_key: str
    keys: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while not self._stop.is_set():
            key = f"c{len(self.keys):05d}"
            await xadd_all(self.redis, self.stream_key, [command(numbered_payload(len(self.keys)), key)])
            self.keys.append(key)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.02):
                    await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()


@contextlib.asynccontextmanager
async def producing(redis: Redis, stream_key: str) -> AsyncIterator[Producer]:
    producer = Producer(redis, stream_key)
    task = asyncio.create_task(producer.run())
    try:
        yield producer
    finally:
        producer.stop()
        await task


async def accepted(db: asyncpg.Connection, count: int) -> None:
    async def enough() -> bool:
        return len(await delivery_keys(db)) >= count

    await wait_until(enough, timeout=60, what=f"{count} commands accepted")


async def lock_holder(db: asyncpg.Connection) -> int | None:
    pid = await db.fetchval(_LOCK_HOLDER)
    return None if pid is None else int(pid)


async def assert_every_command_once_and_offset_monotonic(db: asyncpg.Connection, keys: list[str]) -> None:
    await accepted(db, len(keys))
    assert sorted(await delivery_keys(db)) == sorted(keys)  # no command lost, none twice
    assert await db.fetchval("SELECT count(*) FROM malformed_commands") == 0
    writes = await db.fetch("SELECT old_id, new_id FROM test_offset_writes ORDER BY seq")
    assert writes, "the offset was never written"
    backwards = [
        (w["old_id"], w["new_id"]) for w in writes if w["old_id"] and parse_id(w["new_id"]) < parse_id(w["old_id"])
    ]
    assert backwards == []
    assert await db.fetch("SELECT * FROM stream_events") == []  # a takeover is neither a gap nor a reset


async def test_holder_whose_lock_session_is_terminated_stops_within_5s(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, database_dsn: str
) -> None:
    env = replica_env(service_env)
    async with connect(database_dsn) as db, contextlib.AsyncExitStack() as stack:
        await db.execute(_LOG_OFFSET_WRITES)
        holder = await stack.enter_async_context(running_service(env))
        await holder.wait_for_event("lock_acquired")
        standby = await stack.enter_async_context(running_service(env))
        async with producing(redis_client, stream_key) as producer:
            await accepted(db, 20)
            pid = await lock_holder(db)
            assert pid is not None
            assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
            # the process runs on; its consumer notices and stops, without waiting for a failed write
            lost = await holder.wait_for_event("lock_lost", timeout=5)
            # heard as the close itself, or as the error of a proof that was in flight
            assert lost["reason"] == "connection closed" or lost["reason"].startswith("proof failed"), lost
            await holder.wait_for_event("consumer_leadership_lost", timeout=5)

            async def led_again() -> bool:  # by either replica: the lock is free for both
                return (await lock_holder(db)) not in (None, pid)

            await wait_until(led_again, timeout=10, what="the lock taken again")
            await accepted(db, len(producer.keys) + 20)
        await assert_every_command_once_and_offset_monotonic(db, producer.keys)
        assert holder.process.returncode is None
        assert standby.process.returncode is None


async def test_holder_cut_off_from_postgresql_is_replaced_within_30s(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, database_dsn: str
) -> None:
    proxy = proxy_to(database_dsn)
    through_proxy = dsn_through(database_dsn, await proxy.start())
    try:
        async with connect(database_dsn) as db, contextlib.AsyncExitStack() as stack:
            await db.execute(_LOG_OFFSET_WRITES)
            holder = await stack.enter_async_context(running_service(replica_env(service_env, through_proxy)))
            await holder.wait_for_event("lock_acquired")
            standby = await stack.enter_async_context(running_service(replica_env(service_env)))
            async with producing(redis_client, stream_key) as producer:
                await accepted(db, 20)
                # the holder's host "vanishes": PostgreSQL hears nothing more from it, nor it from PostgreSQL
                proxy.blackhole(abort_after=postgres_user_timeout)
                await holder.wait_for_event("lock_lost", timeout=5)  # it stops: it cannot prove it leads
                await standby.wait_for_event("lock_acquired", timeout=30)  # the server let the session go
                await accepted(db, len(producer.keys) + 20)
            await assert_every_command_once_and_offset_monotonic(db, producer.keys)
            assert holder.process.returncode is None  # cut off, not crashed
    finally:
        await proxy.stop()
