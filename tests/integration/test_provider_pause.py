"""The provider pause (SPEC §12 circuit breaker) with the whole service against a scripted server:
a fault that is ours or the provider's pauses sending, one probe per interval goes out while
paused, the first success (or `POST /provider/resume`) resumes, and nothing is dead-lettered or
counted toward the attempts for it. A 5xx to RCPT is the message's fault and never pauses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import httpx
import orjson
from redis.asyncio import Redis

from mailsvc.settings import HostPort
from tests.smtp_servers import HOST, ScriptedHandler, SmtpServer, free_port
from tests.support.deliveries import Ledger, in_process_service, smtp_env
from tests.support.infra import wait_until
from tests.support.payloads import raw_payload
from tests.support.stream import xadd, xadd_many

API = "/api/v1/internal"
QUEUED = 200  # deliveries waiting while the provider is paused
PROBE_INTERVAL = 0.5  # seconds (MAIL_PROVIDER_PROBE_INTERVAL)


async def provider_row(db: Ledger) -> asyncpg.Record:
    row: asyncpg.Record = await db.conn.fetchrow("SELECT * FROM provider_state WHERE id = 1")
    return row


async def wait_paused(db: Ledger) -> asyncpg.Record:
    async def paused() -> asyncpg.Record | None:
        row = await provider_row(db)
        return row if row["state"] == "paused" else None

    row: asyncpg.Record = await wait_until(paused, timeout=30, what="the provider paused")
    return row


async def attempts_since(db: Ledger, since: datetime) -> list[asyncpg.Record]:
    return await db.conn.fetch("SELECT * FROM attempts WHERE started_at > $1 ORDER BY started_at", since)


async def wait_all(db: Ledger, status: str, count: int, timeout: float = 60) -> None:
    async def done() -> bool:
        return await db.count("status = $1", status) >= count

    await wait_until(done, timeout=timeout, what=f"{count} deliveries {status}")


@dataclass
class PauseRun:
    paused: asyncpg.Record  # the state row when it paused
    resumed: asyncpg.Record  # … and after it resumed
    during: list[asyncpg.Record]  # attempts started while paused


async def pause_then_fix(
    db: Ledger,
    fix: Callable[[], object],
    *,
    probes: int = 3,
    resume: Callable[[], Awaitable[None]] | None = None,
) -> PauseRun:
    """Wait for the pause and `probes` probe attempts, `fix` the server, wait for the resume
    (by itself, or through `resume`) and for every delivery to be sent."""
    paused = await wait_paused(db)

    async def probed() -> bool:
        return len(await attempts_since(db, paused["since"])) >= probes

    if probes:
        await wait_until(probed, timeout=30, what=f"{probes} probes")
    fix()
    if resume is not None:
        await resume()

    async def resumed() -> asyncpg.Record | None:
        row = await provider_row(db)
        return row if row["state"] == "sending" else None

    after: asyncpg.Record = await wait_until(resumed, timeout=30, what="the provider resumed")
    during = [a for a in await attempts_since(db, paused["since"]) if a["started_at"] < after["since"]]
    await wait_all(db, "sent", QUEUED)
    return PauseRun(paused, after, during)


def assert_one_probe_per_interval(run: PauseRun) -> None:
    """While paused, at most one attempt per probe interval (the first a full interval after the pause)."""
    paused_for = (run.resumed["since"] - run.paused["since"]).total_seconds()
    assert len(run.during) <= paused_for / PROBE_INTERVAL + 1, (len(run.during), paused_for)


async def assert_none_lost(db: Ledger) -> None:
    assert await db.count("status = 'sent'") == QUEUED
    assert await db.conn.fetchval("SELECT count(*) FROM dead_letters") == 0
    # with MAIL_RETRY_MAX_ATTEMPTS=1: the failed attempts were not counted
    assert await db.conn.fetchval("SELECT max(attempt_count) FROM deliveries") > 1


def env_for(service_env: dict[str, str], addr: HostPort, **overrides: str) -> dict[str, str]:
    # one attempt only: had an attempt failed by the provider counted, its delivery would dead-letter
    defaults = {"MAIL_RETRY_MAX_ATTEMPTS": "1", "MAIL_PROVIDER_PROBE_INTERVAL": f"{int(PROBE_INTERVAL * 1000)}ms"}
    return smtp_env(service_env, addr, **{**defaults, **overrides})


async def test_auth_refused_pauses_then_one_probe_per_interval_until_it_is_accepted(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    handler = ScriptedHandler(accept_logins=False)
    with SmtpServer(handler) as server:
        env = env_for(service_env, server.host_port, MAIL_SMTP_USERNAME="mailsvc", MAIL_SMTP_PASSWORD="wrong")
        async with in_process_service(env) as service:
            await xadd_many(redis_client, stream_key, [raw_payload("ann@example.org")] * QUEUED)
            paused = await wait_paused(db)
            assert paused["reason"] == "auth_failed 535"
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as client:
                shown = (await client.get(f"{API}/provider")).json()
            assert shown["mode"] == "smtp"
            assert (shown["state"], shown["reason"]) == ("paused", "auth_failed 535")
            assert datetime.fromisoformat(shown["since"]) == paused["since"]
            assert datetime.fromisoformat(shown["next_probe_at"]) > paused["since"]
            assert shown["rate_limit"] is None

            def accept() -> None:
                handler.accept_logins = True

            run = await pause_then_fix(db, accept)
    assert_one_probe_per_interval(run)
    assert run.resumed["reason"] is None
    await assert_none_lost(db)


async def test_530_to_mail_from_pauses_until_the_server_accepts(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    handler = ScriptedHandler(mail_reply="530 5.7.0 Authentication required")
    with SmtpServer(handler) as server:
        async with in_process_service(env_for(service_env, server.host_port)):
            await xadd_many(redis_client, stream_key, [raw_payload("ann@example.org")] * QUEUED)
            assert (await wait_paused(db))["reason"] == "sender_refused 530"

            def accept() -> None:
                handler.mail_reply = None

            run = await pause_then_fix(db, accept)
    assert_one_probe_per_interval(run)
    assert {a["smtp_code"] for a in run.during} <= {530, 250}  # the probes, the last one accepted
    await assert_none_lost(db)


async def test_a_server_that_is_down_pauses_after_consecutive_connect_failures(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    port = free_port()
    server = SmtpServer(port=port)
    env = env_for(service_env, HostPort(HOST, port), MAIL_PROVIDER_PAUSE_AFTER="5")
    try:
        async with in_process_service(env):
            await xadd_many(redis_client, stream_key, [raw_payload("ann@example.org")] * QUEUED)
            paused = await wait_paused(db)
            assert paused["reason"] == "connect_failed"
            assert paused["connect_failures"] >= 5
            run = await pause_then_fix(db, server.start)
            assert run.paused["reason"] == "connect_failed"
    finally:
        server.stop()
    assert_one_probe_per_interval(run)
    assert run.resumed["connect_failures"] == 0
    await assert_none_lost(db)
    assert len(server.handler.received) == QUEUED


async def test_550_to_rcpt_never_pauses(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    handler = ScriptedHandler(rcpt_replies={"gone@example.org": "550 5.1.1 no such user"})
    with SmtpServer(handler) as server:
        env = env_for(service_env, server.host_port, MAIL_PROVIDER_PAUSE_AFTER="1")
        async with in_process_service(env):
            await xadd_many(redis_client, stream_key, [raw_payload("gone@example.org")] * 30)
            await wait_all(db, "dead_lettered", 30)
            key = await xadd(redis_client, stream_key, raw_payload("ann@example.org"))
            assert (await db.wait_status(key))["status"] == "sent"
    row = await provider_row(db)
    assert (row["state"], row["reason"], row["connect_failures"]) == ("sending", None, 0)
    assert await db.conn.fetchval("SELECT count(*) FROM dead_letters WHERE reason = 'permanent_failure'") == 30


async def test_resume_through_the_api_sends_before_any_probe_is_due(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    handler = ScriptedHandler(accept_logins=False)
    with SmtpServer(handler) as server:
        env = env_for(
            service_env,
            server.host_port,
            MAIL_SMTP_USERNAME="mailsvc",
            MAIL_SMTP_PASSWORD="wrong",
            MAIL_PROVIDER_PROBE_INTERVAL="1h",  # no probe within the test: only the resume can send
        )
        async with (
            in_process_service(env) as service,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as client,
        ):
            await xadd_many(redis_client, stream_key, [raw_payload("ann@example.org")] * QUEUED)

            def accept() -> None:
                handler.accept_logins = True

            async def resume() -> None:
                response = await client.post(f"{API}/provider/resume")
                assert response.status_code == 200
                assert (response.json()["state"], response.json()["reason"]) == ("sending", None)

            run = await pause_then_fix(db, accept, probes=0, resume=resume)
            again = (await client.post(f"{API}/provider/resume")).json()  # already sending: no change
            assert datetime.fromisoformat(again["since"]) == run.resumed["since"]
    assert run.during == []
    await assert_none_lost(db)
    actions = await db.conn.fetch("SELECT kind, actor, counts FROM operator_actions ORDER BY created_at, action_id")
    assert [(a["kind"], a["actor"], orjson.loads(a["counts"])) for a in actions] == [
        ("provider_resume", "trusted-network", {"resumed": 1}),
        ("provider_resume", "trusted-network", {"resumed": 0}),
    ]


async def test_a_probe_that_meets_another_fault_keeps_it_paused_with_the_newer_reason(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger
) -> None:
    port = free_port()
    handler = ScriptedHandler(accept_logins=False)
    server = SmtpServer(handler, port=port)
    env = env_for(
        service_env,
        HostPort(HOST, port),
        MAIL_PROVIDER_PAUSE_AFTER="5",
        MAIL_SMTP_USERNAME="mailsvc",
        MAIL_SMTP_PASSWORD="wrong",
    )
    try:
        async with in_process_service(env):
            await xadd_many(redis_client, stream_key, [raw_payload("ann@example.org")] * QUEUED)
            paused = await wait_paused(db)
            assert paused["reason"] == "connect_failed"
            server.start()  # up again, but refusing our credentials

            async def auth_refused() -> asyncpg.Record | None:
                row = await provider_row(db)
                return row if row["reason"] == "auth_failed 535" else None

            still = await wait_until(auth_refused, timeout=30, what="the reason of the pause updated")
            assert (still["state"], still["since"]) == ("paused", paused["since"])  # no change of state

            def accept() -> None:
                handler.accept_logins = True

            run = await pause_then_fix(db, accept, probes=0)
    finally:
        server.stop()
    assert_one_probe_per_interval(run)
    await assert_none_lost(db)
