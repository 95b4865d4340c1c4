"""Delivery events end to end (SPEC §11, §3): each event type produced by the path that should
produce it, through `mailsvc serve` with real PostgreSQL, Redis and SMTP, and the same event both
in the event stream and in `GET /events`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.conftest import event_stream_key
from tests.smtp_servers import ScriptedHandler, SmtpServer
from tests.support.deliveries import InProcessService, Ledger, in_process_service, smtp_env
from tests.support.events import stream_events
from tests.support.infra import wait_until
from tests.support.payloads import raw_payload
from tests.support.stream import new_key, xadd

API = "/api/v1/internal"


@pytest.fixture
async def smtp_service(service_env: dict[str, str]) -> AsyncIterator[InProcessService]:
    handler = ScriptedHandler(
        rcpt_replies={"later@example.org": "451 4.2.1 try again later", "gone@example.org": "550 5.1.1 no such user"}
    )
    with SmtpServer(handler) as server:
        async with in_process_service(smtp_env(service_env, server.host_port, MAIL_RETRY_MAX_ATTEMPTS="3")) as service:
            yield service


async def feed(port: int, **params: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        response = await client.get(f"{API}/events", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def event_in_both(
    service: InProcessService, redis: Redis, stream_key: str, delivery_id: uuid.UUID, kind: str
) -> dict[str, Any]:
    """Wait for the delivery's `kind` event in the event stream; check `GET /events` serves the same."""
    events_key = event_stream_key(stream_key)

    async def published() -> dict[str, Any] | None:
        for event in await stream_events(redis, events_key):
            if event["subject"] == str(delivery_id) and event["type"] == kind:
                return event
        return None

    streamed: dict[str, Any] = await wait_until(published, what=f"{kind} of {delivery_id} in the stream")
    page = await feed(service.http_port, delivery_id=str(delivery_id), type=kind)
    served = page["items"][0]  # the oldest: the one found first in the stream (a retry defers again)
    streamed = {k: v for k, v in streamed.items() if k != "_entry"}
    assert served == {"traceparent": None, **streamed}
    assert served["specversion"] == "1.0"
    assert served["source"] == "mailsvc"
    assert served["datacontenttype"] == "application/json"
    return served


async def test_delivery_queued_carries_its_schedule(
    smtp_service: InProcessService, redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    key = await xadd(redis_client, stream_key, raw_payload("ann@example.org", priority="high", tags={"t": "1"}))
    row = await db.wait_status(key)
    event = await event_in_both(smtp_service, redis_client, stream_key, row["delivery_id"], "delivery.queued")
    assert event["data"]["priority"] == "high"
    assert event["data"]["collapse_key"] is None
    assert event["data"]["expires_at"] is None
    assert event["data"]["send_at"] is not None
    assert (event["idempotencykey"], event["deliverysource"], event["tags"]) == (key, "notification", {"t": "1"})
    assert event["traceparent"] is None or event["traceparent"].startswith("00-")


async def test_delivery_sent_lists_each_recipient_s_outcome(
    smtp_service: InProcessService, redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    key = await xadd(redis_client, stream_key, raw_payload("ann@example.org", cc=["gone@example.org"]))
    row = await db.wait_status(key)
    assert row["status"] == "sent"
    event = await event_in_both(smtp_service, redis_client, stream_key, row["delivery_id"], "delivery.sent")
    assert event["data"] == {
        "attempt": 1,
        "smtp_code": 250,
        "recipients": [
            {"address": "ann@example.org", "kind": "to", "outcome": "accepted"},
            {"address": "gone@example.org", "kind": "cc", "outcome": "refused"},
        ],
    }


async def test_delivery_deferred_says_when_it_is_tried_again(
    smtp_service: InProcessService, redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    key = await xadd(redis_client, stream_key, raw_payload("later@example.org"))
    [first, *_] = await db.wait_attempts(key, 1)
    event = await event_in_both(smtp_service, redis_client, stream_key, first["delivery_id"], "delivery.deferred")
    data = event["data"]
    assert (data["attempt"], data["outcome"], data["smtp_code"], data["ambiguous"]) == (
        1,
        "transient_failure",
        451,
        False,
    )
    assert data["next_attempt_at"] is not None


async def test_delivery_dead_lettered_gives_the_reason_and_the_last_error(
    smtp_service: InProcessService, redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    key = await xadd(redis_client, stream_key, raw_payload("gone@example.org"))
    row = await db.wait_status(key)
    assert row["status"] == "dead_lettered"
    event = await event_in_both(smtp_service, redis_client, stream_key, row["delivery_id"], "delivery.dead_lettered")
    data = event["data"]
    assert (data["reason"], data["attempt"], data["smtp_code"]) == ("permanent_failure", 1, 550)
    assert "5.1.1" in data["last_error"]


async def test_delivery_suppressed_in_stub_mode(
    service_env: dict[str, str], redis_client: Redis, stream_key: str
) -> None:
    async with in_process_service({**service_env, "MAIL_SMTP_MODE": "stub"}) as service:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as client:
            response = await client.post(
                f"{API}/deliveries",
                json={"to": ["ann@example.com"], "subject": "s", "text": "t"},
                headers={"Idempotency-Key": new_key("auth")},
            )
        assert response.json()["status"] == "suppressed", response.text
        delivery_id = uuid.UUID(response.json()["delivery_id"])
        event = await event_in_both(service, redis_client, stream_key, delivery_id, "delivery.suppressed")
    assert event["data"] == {"reason": "stub_mode"}
    assert event["deliverysource"] == "auth"


async def test_the_feed_pages_oldest_first_and_always_gives_a_cursor(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    async with in_process_service({**service_env, "MAIL_SMTP_MODE": "stub"}) as service:
        keys = [await xadd(redis_client, stream_key, raw_payload(f"u{i}@example.org")) for i in range(3)]
        for key in keys:
            await db.wait_status(key)
        await wait_until(
            lambda: _feed_size(service.http_port, 6), what="six events (queued and sent of three deliveries)"
        )
        seen: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(10):
            page = await feed(service.http_port, limit=4, **({"after": cursor} if cursor else {}))
            assert page["next_cursor"]
            seen += page["items"]
            if not page["items"]:
                assert page["next_cursor"] == cursor  # an empty page: poll again from the same place
                break
            cursor = page["next_cursor"]
        stored = await db.conn.fetch("SELECT event_id FROM delivery_events ORDER BY xid, seq")
        assert [e["id"] for e in seen] == [str(r["event_id"]) for r in stored]
        sent_only = await feed(service.http_port, type="delivery.sent")
        assert [e["type"] for e in sent_only["items"]] == ["delivery.sent"] * 3
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as client:
            bad = await client.get(f"{API}/events", params={"after": "nope!", "limit": "1001", "type": "x"})
        assert bad.status_code == 422
        assert {p["field"] for p in bad.json()["error"]["details"]} == {"after", "limit", "type"}


async def _feed_size(port: int, count: int) -> bool:
    return len((await feed(port, limit=1000))["items"]) >= count


async def test_delivery_cancelled_by_the_operator(
    smtp_service: InProcessService, redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    key = await xadd(redis_client, stream_key, raw_payload("ann@example.org", send_at=later))
    row = await db.wait_status(key, "queued")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{smtp_service.http_port}") as client:
        answer = await client.post(f"{API}/deliveries/{row['delivery_id']}/cancel")
    assert answer.status_code == 200, answer.text
    event = await event_in_both(smtp_service, redis_client, stream_key, row["delivery_id"], "delivery.cancelled")
    assert event["data"] == {"by": "operator"}
