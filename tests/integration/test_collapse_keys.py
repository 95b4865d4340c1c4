"""Collapse keys (SPEC §12): a delivery accepted with `collapse_key` K supersedes, in its own
acceptance transaction, every queued delivery of the same (source, K); one being sent is left to
finish, and concurrent acceptances with one key leave exactly one queued."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from tests.smtp_servers import Gate, ScriptedHandler, SmtpServer
from tests.support.deliveries import Ledger, api_of, condition, in_process_service, smtp_env
from tests.support.infra import wait_until
from tests.support.operator_api import API
from tests.support.payloads import raw_payload
from tests.support.queue import open_queue
from tests.support.stream import new_key, xadd

LATER = (datetime.now(UTC) + timedelta(hours=1)).isoformat()


def login_code(code: str, **fields: Any) -> dict[str, Any]:
    return {
        "to": ["ann@example.org"],
        "template": "auth.login_code",
        "variables": {"code": code, "expires_in_minutes": 10},
        "collapse_key": "login:user-4711",
        **fields,
    }


async def test_three_login_codes_in_a_row_send_only_the_newest(service_env: dict[str, str], db: Ledger) -> None:
    with SmtpServer() as server:
        async with in_process_service(smtp_env(service_env, server.host_port)) as service, api_of(service) as api:
            ids = []
            # the first two held back (send_at ahead), the newest due now
            for code, fields in (("111111", {"send_at": LATER}), ("222222", {"send_at": LATER}), ("333333", {})):
                headers = {"Idempotency-Key": new_key()}
                answer = await api.post(f"{API}/deliveries", json=login_code(code, **fields), headers=headers)
                assert answer.status_code == 202, answer.text
                ids.append(uuid.UUID(answer.json()["delivery_id"]))
            await wait_until(condition(lambda: len(server.handler.received) == 1), what="the newest code sent")
            newest = await api.get(f"{API}/deliveries/{ids[2]}")
            older = [(await api.get(f"{API}/deliveries/{i}")).json() for i in ids[:2]]
        [received] = server.handler.received
    assert b"333333" in received.content
    assert newest.json()["status"] in ("sending", "sent")
    assert [d["status"] for d in older] == ["superseded", "superseded"]
    assert [d["superseded_by"] for d in older] == [str(ids[1]), str(ids[2])]
    assert [d["collapse_key"] for d in older] == ["login:user-4711"] * 2
    assert await db.conn.fetchval("SELECT count(*) FROM delivery_queue WHERE delivery_id = ANY($1)", ids[:2]) == 0
    assert (await db.events(ids[0]))[-1] == ("delivery.superseded", {"superseded_by": str(ids[1])})
    queued_event = (await db.events(ids[2]))[0]
    assert queued_event[0] == "delivery.queued"
    assert queued_event[1]["collapse_key"] == "login:user-4711"


async def test_a_delivery_being_sent_is_left_to_finish_and_other_keys_and_sources_are_untouched(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    gate = Gate()
    with SmtpServer(ScriptedHandler(hold_data=gate)) as server:
        async with in_process_service(smtp_env(service_env, server.host_port)):
            sending = await xadd(redis_client, stream_key, raw_payload("a@example.org", collapse_key="k1"))
            await wait_until(condition(lambda: gate.waiting == 1), what="the first attempt held")
            held = raw_payload("b@example.org", collapse_key="k2", send_at=LATER)
            other_key = await xadd(redis_client, stream_key, held)
            newer = await xadd(redis_client, stream_key, raw_payload("c@example.org", collapse_key="k1"))
            await db.wait_status(newer, "queued", "sending", "sent")
            gate.open()
            first = await db.wait_status(sending)
            second = await db.wait_status(newer)
            untouched = await db.wait_status(other_key, "queued")
    assert (first["status"], second["status"], untouched["status"]) == ("sent", "sent", "queued")


async def test_concurrent_acceptances_with_one_key_leave_exactly_one_queued(database_dsn: str) -> None:
    async with open_queue(database_dsn) as queue:
        # each acceptance is its own transaction here (no group commit): they meet only in PostgreSQL
        await asyncio.gather(
            *(queue.accept(f"u{i}@example.org", collapse_key="digest:42", send_at=LATER) for i in range(40))
        )
        rows = await queue.db.conn.fetch(
            "SELECT delivery_id, status, superseded_by FROM delivery_states WHERE collapse_key = 'digest:42'"
        )
    statuses = sorted(r["status"] for r in rows)
    assert statuses == ["queued"] + ["superseded"] * 39
    [survivor] = [r["delivery_id"] for r in rows if r["status"] == "queued"]
    chain = {r["delivery_id"]: r["superseded_by"] for r in rows if r["status"] == "superseded"}
    for start in chain:  # every superseded delivery leads to the survivor
        seen, at = set(), start
        while at != survivor:
            assert at not in seen
            seen.add(at)
            at = chain[at]


async def test_one_stream_batch_with_one_key_keeps_only_its_newest(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    # in the stream before the service starts: one batch, one transaction
    payload = raw_payload("d@example.org", collapse_key="k", send_at=LATER)
    keys = [await xadd(redis_client, stream_key, payload) for _ in range(3)]
    async with in_process_service(service_env):
        newest = await db.wait_status(keys[-1], "queued")
        older = [await db.wait_status(key, "superseded") for key in keys[:2]]
    assert [row["superseded_by"] for row in older] == [newest["delivery_id"]] * 2
