"""Crash safety of the event publisher (SPEC §11): the publishing replica killed with SIGKILL, twice,
while deliveries flow through two `mailsvc serve` processes — afterwards every event is in the
stream, each delivery's in order, and an event seen twice is the same event (same id).
~500 deliveries keep it under two minutes; the issue's 5,000 is the same test with a bigger number."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import asyncpg
from redis.asyncio import Redis

from tests.conftest import event_stream_key
from tests.support.events import assert_duplicates_are_identical, per_delivery, wait_published
from tests.support.infra import wait_until
from tests.support.payloads import raw_payload
from tests.support.process import ServiceProcess, running_service, start_service

DELIVERIES = 500


def publishing(replicas: list[ServiceProcess]) -> ServiceProcess | None:
    """The live replica whose publisher started last and has not stopped since."""
    for replica in replicas:
        if replica.process.returncode is not None:
            continue
        kinds = [e["event"] for e in replica.lines if e.get("event") in ("publisher_started", "publisher_stopped")]
        if kinds and kinds[-1] == "publisher_started":
            return replica
    return None


async def test_killing_the_publisher_loses_no_event_and_keeps_each_delivery_in_order(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, database_dsn: str
) -> None:
    events_key = event_stream_key(stream_key)
    env = {**service_env, "MAIL_STREAM_BLOCK_TIMEOUT": "200ms"}
    replicas: list[ServiceProcess] = []
    try:
        async with running_service(env) as first:
            replicas.append(first)
            await first.wait_for_event("publisher_started")
            replicas.append(await start_service(env))
            await replicas[-1].wait_for_event("service_started")

            async def produce() -> None:
                for start in range(0, DELIVERIES, 25):
                    pipe = redis_client.pipeline(transaction=False)
                    for i in range(start, start + 25):
                        payload = json.dumps(raw_payload(f"u{i}@example.org"))
                        pipe.xadd(stream_key, {"type": "send_email", "payload": payload, "idempotency_key": f"c-{i}"})
                    await pipe.execute()
                    await asyncio.sleep(0.05)  # a steady flow, not one burst (pacing, not synchronisation)

            producer = asyncio.create_task(produce())
            for kill_after in (150, 450):
                await wait_published(redis_client, events_key, kill_after, timeout=60)
                victim = await wait_until(lambda: _publishing(replicas), what="a publishing replica")
                victim.process.kill()  # SIGKILL: no goodbye, the lock's session just ends
                await victim.wait_exit(10)
                replicas.append(await start_service(env))
                await replicas[-1].wait_for_event("service_started")
            await producer

            db = await asyncpg.connect(database_dsn)
            try:

                async def all_sent() -> bool:
                    count = await db.fetchval("SELECT count(*) FROM deliveries WHERE status = 'sent'")
                    return bool(count == DELIVERIES)

                await wait_until(all_sent, timeout=120, what=f"{DELIVERIES} deliveries sent")
                stored = await db.fetch("SELECT event_id, delivery_id, type FROM delivery_events ORDER BY xid, seq")
            finally:
                await db.close()
            assert len(stored) >= 2 * DELIVERIES  # a killed replica's attempts come back as deferred
            events = await wait_published(redis_client, events_key, len(stored), timeout=60)
    finally:
        for replica in replicas:
            if replica.process.returncode is None:
                replica.process.kill()
            with contextlib.suppress(Exception):
                await replica.wait_exit(10)

    assert_duplicates_are_identical(events)
    assert {e["id"] for e in events} == {str(r["event_id"]) for r in stored}  # none missing, none invented
    order = per_delivery(events)
    assert len(order) == DELIVERIES
    for kinds in order.values():
        # an attempt the kill cut short is recovered (deferred, `abandoned`) and sent again
        assert (kinds[0], kinds[-1]) == ("delivery.queued", "delivery.sent"), kinds
        assert set(kinds[1:-1]) <= {"delivery.deferred"}, kinds
    # and in the feed's order overall: first sightings follow (xid, seq)
    assert list(dict.fromkeys(e["id"] for e in events)) == [str(r["event_id"]) for r in stored]
    assert {uuid.UUID(e["subject"]) for e in events} == {r["delivery_id"] for r in stored}


async def _publishing(replicas: list[ServiceProcess]) -> ServiceProcess | None:
    return publishing(replicas)
