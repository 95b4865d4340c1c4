"""The suppression list (SPEC §12) end to end: hard bounces at RCPT add entries with the attempt's
result, acceptance (stream, HTTP, resend) leaves suppressed recipients out, entries expire, and the
operator routes round-trip. A real SMTP server (aiosmtpd) scripted per test; rows read back from
PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
from redis.asyncio import Redis

from tests.smtp_servers import SmtpServer
from tests.support.deliveries import Ledger, api_of, condition, in_process_service, smtp_env
from tests.support.infra import wait_until
from tests.support.operator_api import API
from tests.support.payloads import raw_payload
from tests.support.stream import new_key, xadd

IDN_UNICODE = "Ann@Bücher.example.org"
IDN_WIRE = "ann@xn--bcher-kva.example.org"


async def suppression(db: Ledger, address: str) -> dict[str, object] | None:
    row = await db.conn.fetchrow("SELECT * FROM suppressions WHERE address = $1", address)
    return None if row is None else dict(row)


async def test_a_hard_bounce_suppresses_the_address_and_the_next_delivery_never_reaches_the_server(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    with SmtpServer() as server:
        server.handler.rcpt_replies = {
            "gone@example.org": "550 5.1.1 <gone@example.org>: user unknown",
            IDN_WIRE: "550 5.1.10 recipient address rejected: null MX",
        }
        async with in_process_service(smtp_env(service_env, server.host_port)):
            first = await xadd(redis_client, stream_key, raw_payload("gone@example.org", IDN_WIRE, "ok@example.org"))
            row = await db.wait_status(first)
            assert row["status"] == "sent"  # the others got it
            assert len(server.handler.received) == 1
            rcpts_before = server.handler.commands.count("RCPT")

            # other case, and the IDN domain spelled in Unicode: the same two entries
            second = await xadd(redis_client, stream_key, raw_payload("GONE@Example.ORG", IDN_UNICODE))
            later = await db.wait_status(second)

        assert later["status"] == "suppressed"
        assert await db.attempts(later["delivery_id"]) == []
        assert server.handler.commands.count("RCPT") == rcpts_before  # never contacted for it
        assert len(server.handler.received) == 1
    assert [r["outcome"] for r in await db.recipients(later["delivery_id"])] == ["suppressed", "suppressed"]
    assert await db.events(later["delivery_id"]) == [("delivery.suppressed", {"reason": "all_recipients_suppressed"})]
    for address in ("gone@example.org", IDN_WIRE):
        entry = await suppression(db, address)
        assert entry is not None, address
        assert entry["reason"] == "hard_bounce"
        assert entry["delivery_id"] == row["delivery_id"]
        ttl = entry["expires_at"] - entry["created_at"]  # type: ignore[operator]
        assert ttl == timedelta(hours=720)  # MAIL_SUPPRESSION_TTL's default
    assert await suppression(db, "ok@example.org") is None


async def test_policy_refusals_and_temporary_refusals_never_suppress(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    with SmtpServer() as server:
        server.handler.rcpt_replies = {
            "blocked@example.org": "550 5.7.1 relaying denied",
            "full@example.org": "452 4.2.2 mailbox full",
            "busy@example.org": "451 4.1.1 try again",
            "bare@example.org": "554 transaction failed",
        }
        async with in_process_service(smtp_env(service_env, server.host_port, MAIL_RETRY_MAX_ATTEMPTS="1")):
            key = await xadd(
                redis_client,
                stream_key,
                raw_payload(*(f"{name}@example.org" for name in ("blocked", "full", "busy", "bare", "x"))),
            )
            row = await db.wait_status(key)
    assert row["status"] == "sent"
    assert await db.conn.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_a_mixed_delivery_is_sent_to_the_others_and_records_suppressed_per_recipient(
    service_env: dict[str, str], db: Ledger
) -> None:
    with SmtpServer() as server:
        async with in_process_service(smtp_env(service_env, server.host_port)) as service, api_of(service) as api:
            put = await api.put(f"{API}/suppressions/Carol@Example.org", json={"reason": "complaint"})
            assert put.status_code == 201, put.text
            answer = await api.post(
                f"{API}/deliveries",
                json={"to": ["ann@example.org"], "cc": ["carol@example.org"], "subject": "Hi", "text": "Hi\n"},
                headers={"Idempotency-Key": new_key()},
            )
            assert answer.status_code == 202, answer.text
            assert answer.json()["status"] == "queued"
            delivery_id = uuid.UUID(answer.json()["delivery_id"])

            async def finished() -> bool:
                status = await db.conn.fetchval(
                    "SELECT status FROM delivery_states WHERE delivery_id = $1", delivery_id
                )
                return status == "sent"

            await wait_until(finished, what="the mixed delivery sent")
        [received] = server.handler.received
    assert received.rcpt_tos == ["ann@example.org"]
    recipients = await db.recipients(delivery_id)
    assert [(r["address"], r["outcome"]) for r in recipients] == [
        ("ann@example.org", None),
        ("carol@example.org", "suppressed"),
    ]
    sent = [data for kind, data in await db.events(delivery_id) if kind == "delivery.sent"]
    assert sent[0]["recipients"] == [
        {"address": "ann@example.org", "kind": "to", "outcome": "accepted"},
        {"address": "carol@example.org", "kind": "cc", "outcome": "suppressed"},
    ]


async def test_http_intake_answers_202_suppressed_and_a_resend_is_checked_too(
    service_env: dict[str, str], db: Ledger
) -> None:
    with SmtpServer() as server:
        async with in_process_service(smtp_env(service_env, server.host_port)) as service, api_of(service) as api:
            first = await api.post(
                f"{API}/deliveries",
                json={"to": ["dan@example.org"], "subject": "Hi", "text": "Hi\n"},
                headers={"Idempotency-Key": new_key()},
            )
            first_id = uuid.UUID(first.json()["delivery_id"])
            await wait_until(condition(lambda: len(server.handler.received) == 1), what="the first delivery")

            async def sent() -> bool:
                status = await db.conn.fetchval("SELECT status FROM delivery_states WHERE delivery_id = $1", first_id)
                return status == "sent"

            await wait_until(sent, what="the first delivery sent")
            put = await api.put(f"{API}/suppressions/dan@example.org", json={"reason": "manual"})
            assert put.status_code == 201

            answer = await api.post(
                f"{API}/deliveries",
                json={"to": ["Dan@Example.org"], "subject": "Hi", "text": "Hi\n"},
                headers={"Idempotency-Key": new_key()},
            )
            resend = await api.post(f"{API}/deliveries/{first_id}/resend")
        assert len(server.handler.received) == 1
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "suppressed"
    assert resend.status_code == 202, resend.text
    assert resend.json()["status"] == "suppressed"
    for delivery_id in (answer.json()["delivery_id"], resend.json()["delivery_id"]):
        assert await db.events(uuid.UUID(delivery_id)) == [
            ("delivery.suppressed", {"reason": "all_recipients_suppressed"})
        ]


async def test_an_expired_entry_no_longer_suppresses(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    now = datetime.now(UTC)
    await db.conn.execute(
        "INSERT INTO suppressions (address, reason, created_at, expires_at) VALUES ($1, 'hard_bounce', $2, $3)",
        "eve@example.org",
        now - timedelta(days=31),
        now - timedelta(seconds=1),
    )
    with SmtpServer() as server:
        async with in_process_service(smtp_env(service_env, server.host_port)) as service:
            key = await xadd(redis_client, stream_key, raw_payload("eve@example.org"))
            row = await db.wait_status(key)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as api:
                shown = await api.get(f"{API}/suppressions/eve@example.org")
                listed = await api.get(f"{API}/suppressions", params={"address": "eve@example.org"})
    assert row["status"] == "sent"
    assert shown.status_code == 404
    assert listed.json()["items"] == []


async def test_the_routes_add_read_list_and_remove_entries(service_env: dict[str, str], db: Ledger) -> None:
    async with in_process_service(service_env) as service, api_of(service) as api:
        later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
        created = await api.put(
            f"{API}/suppressions/{IDN_UNICODE}", json={"reason": "manual", "note": "asked us", "expires_at": later}
        )
        replaced = await api.put(f"{API}/suppressions/{IDN_WIRE.upper()}", json={"reason": "complaint"})
        for index in range(3):
            added = await api.put(f"{API}/suppressions/u{index}@example.org", json={"reason": "manual"})
            assert added.status_code == 201
        shown = await api.get(f"{API}/suppressions/{IDN_WIRE}")
        first_page = await api.get(f"{API}/suppressions", params={"limit": "2"})
        second_page = await api.get(
            f"{API}/suppressions", params={"limit": "2", "cursor": first_page.json()["next_cursor"]}
        )
        complaints = await api.get(f"{API}/suppressions", params={"reason": "complaint"})
        by_address = await api.get(f"{API}/suppressions", params={"address": IDN_UNICODE})
        bad_reason = await api.put(f"{API}/suppressions/x@example.org", json={"reason": "hard_bounce"})
        bad_address = await api.put(f"{API}/suppressions/not-an-address", json={"reason": "manual"})
        removed = await api.delete(f"{API}/suppressions/{IDN_UNICODE}")
        removed_again = await api.delete(f"{API}/suppressions/{IDN_WIRE}")
        gone = await api.get(f"{API}/suppressions/{IDN_WIRE}")

    assert created.status_code == 201, created.text
    assert created.json()["address"] == IDN_WIRE
    assert created.json()["reason"] == "manual"
    assert created.json()["note"] == "asked us"
    assert replaced.status_code == 200, replaced.text
    assert shown.json()["reason"] == "complaint"
    assert shown.json()["expires_at"] is None
    newest_first = [item["address"] for item in first_page.json()["items"] + second_page.json()["items"]]
    assert newest_first == ["u2@example.org", "u1@example.org", "u0@example.org", IDN_WIRE]
    assert second_page.json()["next_cursor"] is None
    assert [item["address"] for item in complaints.json()["items"]] == [IDN_WIRE]
    assert [item["address"] for item in by_address.json()["items"]] == [IDN_WIRE]
    assert bad_reason.status_code == 422
    assert bad_address.status_code == 422
    assert removed.status_code == 204
    assert removed_again.status_code == 404
    assert gone.status_code == 404
    assert await suppression(db, IDN_WIRE) is None


async def test_the_stub_answers_bounce_with_5_1_1_and_so_suppresses(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    async with in_process_service(service_env):
        key = await xadd(redis_client, stream_key, raw_payload("nobody+bounce@example.org"))
        row = await db.wait_status(key)
        again = await xadd(redis_client, stream_key, raw_payload("Nobody+Bounce@example.org"))
        later = await db.wait_status(again)
    assert row["status"] == "dead_lettered"
    [attempt] = await db.attempts(row["delivery_id"])
    assert (attempt["smtp_code"], attempt["smtp_reply"][:5]) == (550, "5.1.1")
    entry = await suppression(db, "nobody+bounce@example.org")
    assert entry is not None
    assert entry["reason"] == "hard_bounce"
    assert later["status"] == "suppressed"
