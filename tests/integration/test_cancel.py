"""Cancel (SPEC §12): `POST /deliveries/{id}/cancel` and the `cancel_email` stream command take back a
queued delivery; one being sent is never cancelled, and a cancel racing a claim loses or wins whole."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from mailsvc.producer import command_fields
from tests.smtp_servers import Gate, ScriptedHandler, SinkHandler, SmtpServer
from tests.support.deliveries import Ledger, api_of, condition, in_process_service, smtp_env
from tests.support.infra import wait_until
from tests.support.operator_api import API
from tests.support.payloads import raw_payload
from tests.support.stream import new_key, xadd

LATER = (datetime.now(UTC) + timedelta(hours=1)).isoformat()


async def cancel_command(redis: Redis, stream_key: str, target: str) -> None:
    fields = command_fields({"idempotency_key": target}, new_key("cancel"), None)
    fields["type"] = "cancel_email"
    await redis.xadd(stream_key, fields)  # type: ignore[arg-type]


async def malformed_reasons(db: Ledger) -> dict[str, str]:
    rows = await db.conn.fetch("SELECT raw_fields, reason FROM malformed_commands")
    return {bytes(r["raw_fields"]).decode(): r["reason"] for r in rows}


async def test_a_queued_delivery_is_cancelled_and_never_sent(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    with SmtpServer() as server:
        async with in_process_service(smtp_env(service_env, server.host_port)) as service, api_of(service) as api:
            key = await xadd(redis_client, stream_key, raw_payload("ann@example.org", send_at=LATER))
            row = await db.wait_status(key, "queued")
            answer = await api.post(f"{API}/deliveries/{row['delivery_id']}/cancel")
            again = await api.post(f"{API}/deliveries/{row['delivery_id']}/cancel")
            unknown = await api.post(f"{API}/deliveries/{uuid.uuid4()}/cancel")
            garbage = await api.post(f"{API}/deliveries/not-an-id/cancel")
        assert server.handler.received == []
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "cancelled"
    assert answer.json()["finished_at"] is not None
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "not_cancellable"
    assert (unknown.status_code, garbage.status_code) == (404, 404)
    final = await db.delivery(key)
    assert final is not None
    assert final["status"] == "cancelled"
    assert await db.conn.fetchval("SELECT count(*) FROM delivery_queue WHERE delivery_id = $1", row["delivery_id"]) == 0
    assert [kind for kind, _ in await db.events(row["delivery_id"])] == ["delivery.queued", "delivery.cancelled"]
    assert (await db.events(row["delivery_id"]))[1][1] == {"by": "operator"}


async def test_a_delivery_being_sent_is_not_cancellable_and_is_sent(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    gate = Gate()
    with SmtpServer(ScriptedHandler(hold_data=gate)) as server:
        async with in_process_service(smtp_env(service_env, server.host_port)) as service, api_of(service) as api:
            key = await xadd(redis_client, stream_key, raw_payload("ann@example.org"))
            await wait_until(condition(lambda: gate.waiting == 1), what="the attempt held after DATA")
            row = await db.wait_status(key, "sending")
            answer = await api.post(f"{API}/deliveries/{row['delivery_id']}/cancel")
            gate.open()
            final = await db.wait_status(key)
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["code"] == "not_cancellable"
    assert final["status"] == "sent"


async def test_cancel_email_takes_back_a_queued_delivery_and_records_why_others_cannot_apply(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    # before the service starts: the consumer reads these in one batch, in this order
    queued = await xadd(redis_client, stream_key, raw_payload("ann@example.org", send_at=LATER))
    await cancel_command(redis_client, stream_key, queued)
    ahead = new_key("ahead")
    await cancel_command(redis_client, stream_key, ahead)  # its send_email comes after it
    await xadd(redis_client, stream_key, raw_payload("bob@example.org", send_at=LATER), key=ahead)
    await cancel_command(redis_client, stream_key, "never-sent")
    with SmtpServer() as server:
        async with in_process_service(smtp_env(service_env, server.host_port)):
            cancelled = await db.wait_status(queued, "cancelled")
            sent = await xadd(redis_client, stream_key, raw_payload("carl@example.org"))
            await db.wait_status(sent, "sent")
            await cancel_command(redis_client, stream_key, sent)
            await cancel_command(redis_client, stream_key, queued)  # already cancelled

            async def recorded() -> bool:
                return len(await malformed_reasons(db)) == 4

            await wait_until(recorded, what="four malformed cancels")
        assert [r.rcpt_tos for r in server.handler.received] == [["carl@example.org"]]
    assert (await db.events(cancelled["delivery_id"]))[-1] == ("delivery.cancelled", {"by": "producer"})
    still = await db.delivery(ahead)
    assert still is not None
    assert still["status"] == "queued"
    reasons = Counter((await malformed_reasons(db)).values())
    assert reasons == {"unknown_target": 2, "not_cancellable": 2}


async def test_a_thousand_cancels_racing_the_scheduler_each_win_or_lose_whole(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    count = 1000
    keys = [new_key("race") for _ in range(count)]
    pipe = redis_client.pipeline(transaction=False)
    for key in keys:
        pipe.xadd(stream_key, command_fields(raw_payload(f"{key}@example.org", send_at=LATER), key, None))  # type: ignore[arg-type]
    await pipe.execute()
    sink = SinkHandler()
    with SmtpServer(sink) as server:
        async with in_process_service(smtp_env(service_env, server.host_port)) as service, api_of(service) as api:

            async def all_queued() -> bool:
                return await db.count("status = 'queued'") == count

            await wait_until(all_queued, timeout=60, what="every delivery accepted and held")
            ids = [r["delivery_id"] for r in await db.conn.fetch("SELECT delivery_id FROM deliveries")]
            outcomes: dict[uuid.UUID, int] = {}
            slots = asyncio.Semaphore(32)

            async def cancel(delivery_id: uuid.UUID) -> None:
                async with slots:
                    answer = await api.post(f"{API}/deliveries/{delivery_id}/cancel")
                    outcomes[delivery_id] = answer.status_code

            # every delivery due at once, the scheduler told, and the cancels fired while it claims
            await db.conn.execute("UPDATE delivery_queue SET next_attempt_at = now()")
            await db.conn.execute("SELECT pg_notify('mailsvc_work', '')")
            await asyncio.gather(*(cancel(i) for i in ids))

            async def settled() -> bool:
                return await db.count("status IN ('sent', 'cancelled')") == count

            await wait_until(settled, timeout=120, what="every delivery sent or cancelled")
    rows = await db.conn.fetch("SELECT delivery_id, status, message_id FROM delivery_states")
    attempts = Counter(r["delivery_id"] for r in await db.conn.fetch("SELECT delivery_id FROM attempts"))
    for row in rows:
        answer = outcomes[row["delivery_id"]]
        if row["status"] == "cancelled":
            assert answer == 200
            assert attempts[row["delivery_id"]] == 0
            assert sink.counts[row["message_id"]] == 0
        else:
            assert row["status"] == "sent"
            assert answer == 409
            assert sink.counts[row["message_id"]] == 1
    print(f"race: {Counter(r['status'] for r in rows)}")
