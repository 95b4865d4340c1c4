"""What the whole service does with a misbehaving SMTP server: statuses, attempts and dead letters
as PostgreSQL records them (SPEC §1 classification and retries, §4 execution)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asyncpg import Record
from redis.asyncio import Redis

from mailsvc.settings import HostPort
from tests.smtp_servers import HOST, ScriptedHandler, SmtpServer, free_port, message_id_of
from tests.support.deliveries import Ledger, in_process_service, smtp_env
from tests.support.infra import wait_until
from tests.support.payloads import raw_payload
from tests.support.stream import xadd

Deliver = Callable[..., Awaitable[Record]]


@pytest.fixture
def deliver(service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger) -> Deliver:
    """Run one command through the service against a server scripted by `handler`, until the
    delivery reaches a terminal status; its row. `env` overrides service variables."""

    async def run(handler: ScriptedHandler, payload: dict[str, Any] | None = None, **env: str) -> Record:
        with SmtpServer(handler) as server:
            async with in_process_service(smtp_env(service_env, server.host_port, **env)):
                key = await xadd(redis_client, stream_key, payload or raw_payload("ann@example.org"))
                return await db.wait_status(key)

    return run


def outcomes(attempts: list[Record], *columns: str) -> list[tuple[object, ...]]:
    """(outcome, *columns) of each attempt row, oldest first."""
    return [tuple(a[c] for c in ("outcome", *columns)) for a in attempts]


async def test_4xx_replies_are_retried_then_sent(deliver: Deliver, db: Ledger) -> None:
    handler = ScriptedHandler(mail_replies=["421 4.3.2 service shutting down"], data_replies=["451 4.3.0 try later"])
    row = await deliver(handler)
    assert row["status"] == "sent"
    attempts = await db.attempts(row["delivery_id"])
    assert outcomes(attempts, "number", "smtp_code") == [
        ("transient_failure", 1, 421),
        ("transient_failure", 2, 451),
        ("sent", 3, 250),
    ]
    assert not any(a["ambiguous"] for a in attempts)
    assert row["attempt_count"] == 3
    assert await db.dead_letter(row["delivery_id"]) is None


async def test_550_to_rcpt_dead_letters_the_delivery(deliver: Deliver, db: Ledger) -> None:
    handler = ScriptedHandler(rcpt_replies={"gone@example.org": "550 5.1.1 no such user"})
    row = await deliver(handler, raw_payload("gone@example.org"))
    assert row["status"] == "dead_lettered"
    attempts = await db.attempts(row["delivery_id"])
    assert outcomes(attempts, "smtp_code") == [("permanent_failure", 550)]
    dead = await db.dead_letter(row["delivery_id"])
    assert dead is not None
    assert dead["reason"] == "permanent_failure"
    assert "550" in dead["last_error"]
    [recipient] = await db.recipients(row["delivery_id"])
    assert (recipient["outcome"], recipient["smtp_code"]) == ("refused", 550)
    assert "DATA" not in handler.commands
    assert handler.received == []


async def test_5xx_to_data_dead_letters_the_delivery(deliver: Deliver, db: Ledger) -> None:
    handler = ScriptedHandler(data_reply="554 5.6.0 message content rejected")
    row = await deliver(handler)
    assert row["status"] == "dead_lettered"
    assert outcomes(await db.attempts(row["delivery_id"]), "smtp_code", "ambiguous") == [
        ("permanent_failure", 554, False)
    ]
    dead = await db.dead_letter(row["delivery_id"])
    assert dead is not None
    assert dead["reason"] == "permanent_failure"


async def test_5xx_to_mail_from_is_our_misconfiguration_and_never_counted(deliver: Deliver, db: Ledger) -> None:
    # SPEC §1/§12: it pauses the provider, and the attempts it fails do not count toward the maximum
    handler = ScriptedHandler(mail_replies=["553 5.7.1 sender address rejected"] * 3)
    row = await deliver(handler, MAIL_RETRY_MAX_ATTEMPTS="2")
    assert row["status"] == "sent"
    attempts = await db.attempts(row["delivery_id"])
    assert outcomes(attempts, "smtp_code", "error_class") == [
        *[("transient_failure", 553, "sender_refused")] * 3,
        ("sent", 250, None),
    ]
    assert await db.dead_letter(row["delivery_id"]) is None


async def test_mixed_recipients_are_sent_with_an_outcome_per_recipient(deliver: Deliver, db: Ledger) -> None:
    handler = ScriptedHandler(
        rcpt_replies={"bob@example.org": "550 5.1.1 no such user", "dave@example.org": "553 5.1.3 bad mailbox"}
    )
    payload = raw_payload("ann@example.org", "bob@example.org", cc=["carol@example.org"], bcc=["dave@example.org"])
    row = await deliver(handler, payload)
    assert row["status"] == "sent"
    assert outcomes(await db.attempts(row["delivery_id"])) == [("sent",)]
    recipients = await db.recipients(row["delivery_id"])
    assert [(r["kind"], r["address"], r["outcome"], r["smtp_code"]) for r in recipients] == [
        ("to", "ann@example.org", "accepted", 250),
        ("to", "bob@example.org", "refused", 550),
        ("cc", "carol@example.org", "accepted", 250),
        ("bcc", "dave@example.org", "refused", 553),
    ]
    assert "5.1.1 no such user" in recipients[1]["smtp_reply"]
    [received] = handler.received
    assert received.rcpt_tos == ["ann@example.org", "carol@example.org"]


async def test_a_dripping_server_is_cut_by_the_whole_attempt_deadline(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    # each reply comes well within the 1 s timeout; EHLO + MAIL + RCPT together take 1.2 s
    handler = ScriptedHandler(delay=0.4)
    with SmtpServer(handler) as server:
        env = smtp_env(
            service_env,
            server.host_port,
            MAIL_SMTP_TIMEOUT="1s",
            MAIL_RETRY_BASE_DELAY="2s",  # long enough to see it queued again
            MAIL_RETRY_MAX_DELAY="2s",
        )
        async with in_process_service(env):
            key = await xadd(redis_client, stream_key, raw_payload("ann@example.org"))
            [first] = await db.wait_attempts(key, 1)
            assert (first["outcome"], first["error_class"], first["ambiguous"]) == (
                "transient_failure",
                "timeout",
                False,
            )
            # the attempt ended on its own deadline, long before the claim (timeout + 30 s) went stale
            assert first["duration_ms"] < 31_000
            waiting = await db.wait_status(key, "queued")
            assert waiting["claim_token"] is None
            assert "timeout" in waiting["last_error"]
            handler.delay = 0.0
            row = await db.wait_status(key)
    assert row["status"] == "sent"
    attempts = await db.attempts(row["delivery_id"])
    assert attempts[-1]["outcome"] == "sent"
    assert all(a["outcome"] == "transient_failure" and a["error_class"] == "timeout" for a in attempts[:-1])
    assert "abandoned" not in {a["outcome"] for a in attempts}
    assert len(handler.received) == 1


async def test_connection_dropped_after_the_final_dot_is_ambiguous_and_retried_with_the_same_message_id(
    deliver: Deliver, db: Ledger
) -> None:
    handler = ScriptedHandler(drop_after_data_count=1)
    row = await deliver(handler)
    assert row["status"] == "sent"
    attempts = await db.attempts(row["delivery_id"])
    assert outcomes(attempts, "ambiguous", "error_class") == [
        ("transient_failure", True, "connection_lost"),
        ("sent", False, None),
    ]
    dropped, delivered = handler.received
    assert message_id_of(dropped.content) == message_id_of(delivered.content) == row["message_id"]
    assert delivered.content == dropped.content  # built once, sent as the same bytes


async def test_a_failed_quit_after_250_is_still_sent(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    handler = ScriptedHandler(drop_on_quit=True)
    with SmtpServer(handler) as server:
        async with in_process_service(smtp_env(service_env, server.host_port)) as service:
            key = await xadd(redis_client, stream_key, raw_payload("ann@example.org"))
            assert (await db.wait_status(key))["status"] == "sent"
            assert await service.stop() == 0  # closes the pooled connection: QUIT, dropped
        assert "QUIT" in handler.commands
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    row = await db.delivery(key)
    assert row is not None
    assert row["status"] == "sent"
    assert outcomes(await db.attempts(row["delivery_id"])) == [("sent",)]


async def test_required_starttls_not_offered_sends_nothing(deliver: Deliver, db: Ledger) -> None:
    handler = ScriptedHandler()
    row = await deliver(handler, MAIL_SMTP_TLS="starttls", MAIL_RETRY_MAX_ATTEMPTS="2")
    assert set(handler.commands) == {"EHLO"}  # no MAIL FROM, no DATA: nothing in plaintext
    assert handler.received == []
    assert row["status"] == "dead_lettered"
    attempts = await db.attempts(row["delivery_id"])
    assert outcomes(attempts, "error_class") == [("transient_failure", "starttls_unavailable")] * 2
    dead = await db.dead_letter(row["delivery_id"])
    assert dead is not None
    assert dead["reason"] == "attempts_exhausted"


async def test_a_server_that_is_down_is_retried_until_it_comes_back(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    port = free_port()
    env = smtp_env(service_env, HostPort(HOST, port), MAIL_RETRY_MAX_ATTEMPTS="100")
    async with in_process_service(env):
        key = await xadd(redis_client, stream_key, raw_payload("ann@example.org"))
        attempts = await db.wait_attempts(key, 2)
        assert outcomes(attempts[:2], "error_class") == [("transient_failure", "connect_failed")] * 2
        with SmtpServer(port=port) as server:
            row = await db.wait_status(key)
            [received] = server.handler.received
    assert row["status"] == "sent"
    assert message_id_of(received.content) == row["message_id"]
    attempts = await db.attempts(row["delivery_id"])
    assert attempts[-1]["outcome"] == "sent"
    assert {a["outcome"] for a in attempts[:-1]} == {"transient_failure"}


async def test_retries_exhausted_dead_letter_the_delivery(deliver: Deliver, db: Ledger) -> None:
    handler = ScriptedHandler(mail_reply="451 4.3.0 try again later")
    row = await deliver(handler, MAIL_RETRY_MAX_ATTEMPTS="2")
    assert row["status"] == "dead_lettered"
    attempts = await db.attempts(row["delivery_id"])
    assert outcomes(attempts, "number", "smtp_code") == [("transient_failure", 1, 451), ("transient_failure", 2, 451)]
    dead = await db.dead_letter(row["delivery_id"])
    assert dead is not None
    assert dead["reason"] == "attempts_exhausted"
    assert "451" in dead["last_error"]
    assert row["attempt_count"] == 2
    assert handler.received == []


async def test_expiry_while_the_server_is_down_dead_letters_the_delivery(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    port = free_port()
    now = datetime.now(UTC)
    payload = raw_payload(
        "ann@example.org",
        send_at=now.isoformat(),
        expires_at=(now + timedelta(seconds=1)).isoformat(),
    )
    env = smtp_env(service_env, HostPort(HOST, port), MAIL_RETRY_MAX_ATTEMPTS="100")
    async with in_process_service(env):
        key = await xadd(redis_client, stream_key, payload)
        row = await db.wait_status(key)
    assert row["status"] == "dead_lettered"
    dead = await db.dead_letter(row["delivery_id"])
    assert dead is not None
    assert dead["reason"] == "expired"
    attempts = await db.attempts(row["delivery_id"])
    assert attempts
    assert "sent" not in {a["outcome"] for a in attempts}
    assert all(a["started_at"] < row["expires_at"] or a["outcome"] == "expired" for a in attempts)


async def test_reply_bytes_no_column_can_hold_are_stored_sanitised_and_sending_goes_on(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    # a Latin-1 byte and a NUL in a refusal, a reply that is not UTF-8 at all after DATA
    handler = ScriptedHandler(rcpt_replies={"bob@example.org": b"550 5.1.1 M\xfcller\x00 unknown"})
    with SmtpServer(handler) as server:
        env = smtp_env(service_env, server.host_port, MAIL_RETRY_BASE_DELAY="1h", MAIL_RETRY_MAX_DELAY="1h")
        async with in_process_service(env):
            mixed = await xadd(redis_client, stream_key, raw_payload("ann@example.org", "bob@example.org"))
            row = await db.wait_status(mixed)
            assert row["status"] == "sent"
            recipients = await db.recipients(row["delivery_id"])
            assert [(r["address"], r["outcome"], r["smtp_code"], r["smtp_reply"]) for r in recipients] == [
                ("ann@example.org", "accepted", 250, "OK"),
                ("bob@example.org", "refused", 550, "5.1.1 M\ufffdller unknown"),
            ]

            handler.data_replies = [b"451 \xff"]
            deferred = await xadd(redis_client, stream_key, raw_payload("carol@example.org"))
            [attempt] = await db.wait_attempts(deferred, 1)
            assert (attempt["outcome"], attempt["smtp_code"], attempt["smtp_reply"]) == (
                "transient_failure",
                451,
                "\ufffd",
            )
            waiting = await db.wait_status(deferred, "queued")
            assert waiting["last_error"] == "transient_failure 451 data_refused \ufffd"
            assert waiting["next_attempt_at"] is not None

            # nothing is stuck: the same running service delivers what comes next
            keys = [await xadd(redis_client, stream_key, raw_payload(f"u{i}@example.org")) for i in range(100)]

            async def all_sent() -> bool:
                return await db.count("status = 'sent' AND idempotency_key = ANY($1)", keys) == len(keys)

            await wait_until(all_sent, timeout=60, what="the 100 ordinary deliveries sent")
    assert len(handler.received) == 102  # the mixed one, the deferred one, and the 100
    assert await db.count("status = 'sending'") == 0
