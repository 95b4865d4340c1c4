"""Execution end to end: XADD → scheduler → worker → a real SMTP server (aiosmtpd) over a socket.

The service runs in-process (`build_runtime(...).run()` as a task); the scripted servers are in
tests/smtp_servers.py; what the service decided is read back from PostgreSQL.
"""

from __future__ import annotations

import email
import email.policy
import signal
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import httpx
from redis.asyncio import Redis

from tests.smtp_servers import Gate, ScriptedHandler, SmtpServer, message_id_of
from tests.support.deliveries import FROM_EMAIL, FROM_NAME, Ledger, condition, in_process_service, smtp_env
from tests.support.infra import wait_until
from tests.support.payloads import raw_payload
from tests.support.process import running_service
from tests.support.stream import new_key, xadd


def parse(content: bytes) -> EmailMessage:
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def test_a_command_arrives_as_a_well_formed_message(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    text = "Olá Ann,\n\nyour code is 481516.\n.a line that starts with a dot\n"
    html = "<p>Olá Ann,</p><p>your code is <b>481516</b>.</p>"
    payload = {
        "to": [{"email": "ann@example.org", "name": "Ann Lee"}, "bob@example.org"],
        "cc": ["carol@example.org"],
        "bcc": ["dave@example.org"],
        "reply_to": "support@example.com",
        "subject": "Código de acesso",
        "text": text,
        "html": html,
        "headers": {"X-Campaign": "winter", "X-Tenant-Id": "acme-42"},
        "tags": {"tenant": "acme"},
    }
    with SmtpServer() as server:
        async with in_process_service(smtp_env(service_env, server.host_port)):
            key = await xadd(redis_client, stream_key, payload)
            row = await db.wait_status(key)

        assert row["status"] == "sent"
        [received] = server.handler.received
    assert received.mail_from == FROM_EMAIL
    assert received.rcpt_tos == ["ann@example.org", "bob@example.org", "carol@example.org", "dave@example.org"]

    message = parse(received.content)
    assert message.defects == []
    [sender] = message["From"].addresses
    assert (sender.display_name, sender.addr_spec) == (FROM_NAME, FROM_EMAIL)
    assert [(a.display_name, a.addr_spec) for a in message["To"].addresses] == [
        ("Ann Lee", "ann@example.org"),
        ("", "bob@example.org"),
    ]
    assert [a.addr_spec for a in message["Cc"].addresses] == ["carol@example.org"]
    assert "Bcc" not in message
    assert b"dave@example.org" not in received.content
    assert [a.addr_spec for a in message["Reply-To"].addresses] == ["support@example.com"]
    assert message["Subject"] == "Código de acesso"
    assert message["Date"].datetime.tzinfo is not None
    assert message["Message-ID"] == row["message_id"]
    assert message["X-Campaign"] == "winter"
    assert message["X-Tenant-Id"] == "acme-42"
    assert message["MIME-Version"] == "1.0"

    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert all(part.defects == [] for part in parts)
    plain, rich = parts
    assert isinstance(plain, EmailMessage)
    assert isinstance(rich, EmailMessage)
    assert plain.get_content().replace("\r\n", "\n") == text
    assert rich.get_content().replace("\r\n", "\n").rstrip("\n") == html

    [attempt] = await db.attempts(row["delivery_id"])
    assert (attempt["number"], attempt["outcome"], attempt["provider"], attempt["smtp_code"]) == (
        1,
        "sent",
        "smtp",
        250,
    )
    assert attempt["ambiguous"] is False
    assert row["attempt_count"] == 1
    assert row["claim_token"] is None
    assert row["finished_at"] is not None
    assert await db.dead_letter(row["delivery_id"]) is None


async def test_text_only_message_is_a_single_plain_part(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    with SmtpServer() as server:
        async with in_process_service(smtp_env(service_env, server.host_port, MAIL_SMTP_FROM_NAME="")):
            key = await xadd(redis_client, stream_key, raw_payload("ann@example.org", subject="Plain"))
            row = await db.wait_status(key)
        [received] = server.handler.received
    assert row["status"] == "sent"
    message = parse(received.content)
    assert message.get_content_type() == "text/plain"
    assert message["From"].addresses[0].addr_spec == FROM_EMAIL
    assert message["Reply-To"] is None
    assert message.get_content().replace("\r\n", "\n") == "Hello there.\n"


async def test_nothing_is_attempted_before_send_at(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    send_at = datetime.now(UTC) + timedelta(seconds=1)
    with SmtpServer() as server:
        async with in_process_service(smtp_env(service_env, server.host_port)):
            key = await xadd(redis_client, stream_key, raw_payload("ann@example.org", send_at=rfc3339(send_at)))
            row = await db.wait_status(key)
        assert len(server.handler.received) == 1
    assert row["status"] == "sent"
    assert row["send_at"] == send_at
    [attempt] = await db.attempts(row["delivery_id"])
    assert attempt["started_at"] >= send_at


async def test_higher_priority_is_claimed_first(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    gate = Gate()
    with SmtpServer(ScriptedHandler(hold_data=gate)) as server:
        env = smtp_env(service_env, server.host_port, MAIL_ATTEMPT_WORKER_CONCURRENCY="1")
        async with in_process_service(env):
            blocker = await xadd(redis_client, stream_key, raw_payload("blocker@example.org"))
            await wait_until(condition(lambda: gate.waiting == 1), what="the only worker busy in DATA")
            # the pool's second slot (a claim waiting for the only sender) is taken by one more
            # blocker, so the backlog below is claimed by priority once the gate opens
            second = await xadd(redis_client, stream_key, raw_payload("second@example.org"))
            await wait_until(lambda: _sending(db, 2), what="both slots claimed")
            keys = {}
            for priority in ("low", "normal", "high", "low", "normal", "high"):
                recipient = f"{priority}-{len(keys)}@example.org"
                keys[recipient] = await xadd(
                    redis_client, stream_key, raw_payload(recipient, priority=priority, subject=priority)
                )
            await wait_until(lambda: _queued(db, 6), what="the backlog accepted")
            gate.open()
            for key in [blocker, second, *keys.values()]:
                assert (await db.wait_status(key))["status"] == "sent"
        order = [r.rcpt_tos[0].split("-")[0] for r in server.handler.received[2:]]
    assert order == ["high", "high", "normal", "normal", "low", "low"]


async def test_a_delivery_expired_while_waiting_is_dead_lettered_without_sending(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    gate = Gate()
    with SmtpServer(ScriptedHandler(hold_data=gate)) as server:
        env = smtp_env(service_env, server.host_port, MAIL_ATTEMPT_WORKER_CONCURRENCY="1")
        async with in_process_service(env):
            blocker = await xadd(redis_client, stream_key, raw_payload("blocker@example.org"))
            await wait_until(condition(lambda: gate.waiting == 1), what="the only worker busy in DATA")
            now = datetime.now(UTC)
            payload = raw_payload(
                "late@example.org", send_at=rfc3339(now), expires_at=rfc3339(now + timedelta(seconds=1))
            )
            key = await xadd(redis_client, stream_key, payload)
            await db.wait_status(key, "queued", "sending")  # queued, or claimed waiting for the sender
            await wait_until(
                lambda: db.conn.fetchval("SELECT now() > expires_at FROM deliveries WHERE idempotency_key = $1", key),
                what="the expiry passing while the delivery waits",
            )
            gate.open()
            row = await db.wait_status(key)
            assert (await db.wait_status(blocker))["status"] == "sent"
        assert [r.rcpt_tos for r in server.handler.received] == [["blocker@example.org"]]
    assert row["status"] == "dead_lettered"
    [attempt] = await db.attempts(row["delivery_id"])
    assert (attempt["outcome"], attempt["provider"]) == ("expired", None)
    dead = await db.dead_letter(row["delivery_id"])
    assert dead is not None
    assert dead["reason"] == "expired"


async def test_stub_scripted_addresses_through_the_service(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    env = {
        **service_env,
        "MAIL_SMTP_MODE": "stub",
        "MAIL_STUB_OUTBOX_DIR": str(outbox),
        "MAIL_RETRY_BASE_DELAY": "100ms",
        "MAIL_RETRY_MAX_DELAY": "200ms",
        "MAIL_RETRY_MAX_ATTEMPTS": "2",
    }
    async with in_process_service(env):
        plain = await xadd(redis_client, stream_key, raw_payload("x@example.com"))
        defer = await xadd(redis_client, stream_key, raw_payload("x+defer@example.com"))
        bounce = await xadd(redis_client, stream_key, raw_payload("ok@example.com", cc=["x+bounce@example.com"]))
        slow = await xadd(redis_client, stream_key, raw_payload("x+timeout@example.com"))
        rows = {key: await db.wait_status(key) for key in (plain, defer, bounce, slow)}

    assert rows[plain]["status"] == "sent"
    [attempt] = await db.attempts(rows[plain]["delivery_id"])
    assert (attempt["outcome"], attempt["provider"]) == ("sent", "stub")
    eml = (outbox / f"{rows[plain]['delivery_id']}.eml").read_bytes()
    assert message_id_of(eml) == rows[plain]["message_id"]

    assert rows[defer]["status"] == "sent"
    attempts = await db.attempts(rows[defer]["delivery_id"])
    assert [(a["outcome"], a["smtp_code"]) for a in attempts] == [("transient_failure", 451), ("sent", 250)]

    assert rows[bounce]["status"] == "dead_lettered"
    attempts = await db.attempts(rows[bounce]["delivery_id"])
    assert [(a["outcome"], a["smtp_code"]) for a in attempts] == [("permanent_failure", 550)]
    dead = await db.dead_letter(rows[bounce]["delivery_id"])
    assert dead is not None
    assert dead["reason"] == "permanent_failure"
    assert not (outbox / f"{rows[bounce]['delivery_id']}.eml").exists()

    assert rows[slow]["status"] == "dead_lettered"
    attempts = await db.attempts(rows[slow]["delivery_id"])
    assert [(a["outcome"], a["error_class"]) for a in attempts] == [("transient_failure", "timeout")] * 2
    dead = await db.dead_letter(rows[slow]["delivery_id"])
    assert dead is not None
    assert dead["reason"] == "attempts_exhausted"


async def test_auth_deliveries_are_suppressed_in_stub_mode_and_never_attempted(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    async with in_process_service({**service_env, "MAIL_SMTP_MODE": "stub"}) as service:
        key = new_key("auth")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as client:
            response = await client.post(
                "/api/v1/internal/deliveries",
                json={
                    "to": ["ann@example.com"],
                    "template": "auth.login_code",
                    "variables": {"code": "481516", "expires_in_minutes": 10},
                },
                headers={"Idempotency-Key": key},
            )
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "suppressed"
        # a later notification is attempted and sent: the scheduler has had its chance
        later = await xadd(redis_client, stream_key, raw_payload("bob@example.com"))
        assert (await db.wait_status(later))["status"] == "sent"
        row = await db.delivery(key, "auth")
    assert row is not None
    assert row["status"] == "suppressed"
    assert row["attempt_count"] == 0
    assert await db.attempts(row["delivery_id"]) == []


async def test_sigterm_drains_attempts_in_flight_and_leaves_no_claim_behind(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    gate = Gate()
    with SmtpServer(ScriptedHandler(hold_data=gate)) as server:
        env = smtp_env(service_env, server.host_port, MAIL_ATTEMPT_WORKER_CONCURRENCY="3")
        async with running_service(env) as service:
            keys = [await xadd(redis_client, stream_key, raw_payload(f"u{i}@example.org")) for i in range(8)]
            await wait_until(condition(lambda: gate.waiting == 3), what="three attempts waiting for the DATA reply")
            # three more claimed, waiting for a sender (the pool holds twice as many claims)
            await wait_until(lambda: _sending(db, 6), what="six claimed")
            await wait_until(lambda: _queued(db, 2), what="the rest accepted and queued")
            service.send_signal(signal.SIGTERM)
            await service.wait_for_event("workers_draining")
            gate.open()
            assert await service.wait_exit() == 0, service.output()
        assert len(server.handler.received) == 3
    rows = [await db.delivery(key) for key in keys]
    assert all(row is not None for row in rows)
    by_status = Counter(row["status"] for row in rows if row is not None)
    assert by_status == {"sent": 3, "queued": 5}
    assert await db.count("status = 'sending' OR claim_token IS NOT NULL") == 0
    for row in rows:
        assert row is not None
        attempts = [a["outcome"] for a in await db.attempts(row["delivery_id"])]
        assert attempts == (["sent"] if row["status"] == "sent" else [])
        assert row["attempt_count"] == len(attempts)


async def _queued(db: Ledger, count: int) -> bool:
    return await db.count("status = 'queued'") == count


async def _sending(db: Ledger, count: int) -> bool:
    return await db.count("status = 'sending'") == count
