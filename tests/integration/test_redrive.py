"""`POST /dead-letters/redrive` (SPEC §14): 500 dead letters of three reasons; dry runs count per
filter; a real redrive resends exactly the matching ones, once — when retried with its key, run
again, or run twice at the same time — skips and counts redacted ones, and is audited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support.operator_api import API, collect, in_process, operator_env

COUNT = 500
REASONS = ("permanent_failure", "attempts_exhausted", "expired")

# Row g: reason REASONS[g % 3]; recipient at example.org for g % 4 = 0, else example.com; every 25th
# is a redacted login code (sensitive, terminal: nothing left to resend).
_SEED = [
    """
    INSERT INTO deliveries (delivery_id, source, status, template, locale, priority, send_at, idempotency_key,
                            message_id, tags, attempt_count, last_error, created_at, updated_at, finished_at)
    SELECT CAST(md5('dl:' || g) AS uuid), 'notification', 'dead_lettered',
           CASE WHEN g % 25 = 0 THEN 'auth.login_code' ELSE 'notification.generic' END, 'en', 1,
           now() - interval '2 hours', 'dl-' || g, '<dl-' || g || '@seed.example>', '{}'::jsonb, 1, '550 no',
           now() - interval '2 hours', now() - interval '1 hour', now() - interval '1 hour' + g * interval '1 ms'
    FROM generate_series(1, $1::int) g
    """,
    """
    INSERT INTO delivery_recipients (delivery_id, position, kind, address)
    SELECT CAST(md5('dl:' || g) AS uuid), 0, 'to',
           'user' || g || CASE WHEN g % 4 = 0 THEN '@Example.ORG' ELSE '@example.com' END
    FROM generate_series(1, $1::int) g
    """,
    """
    INSERT INTO delivery_payloads (delivery_id, subject, text_body, mime, sensitive, redacted_at, mime_sha256,
                                   mime_bytes, subject_bytes, text_bytes)
    SELECT CAST(md5('dl:' || g) AS uuid),
           CASE WHEN g % 25 <> 0 THEN 'Subject ' || g END, CASE WHEN g % 25 <> 0 THEN 'Body ' || g END,
           CASE WHEN g % 25 <> 0 THEN convert_to('MIME ' || g, 'UTF8') END, g % 25 = 0,
           CASE WHEN g % 25 = 0 THEN now() END, CASE WHEN g % 25 = 0 THEN sha256('x') END,
           CASE WHEN g % 25 = 0 THEN 1 END, CASE WHEN g % 25 = 0 THEN 1 END, CASE WHEN g % 25 = 0 THEN 1 END
    FROM generate_series(1, $1::int) g
    """,
    """
    INSERT INTO dead_letters (delivery_id, reason, last_error, created_at)
    SELECT CAST(md5('dl:' || g) AS uuid), (ARRAY['permanent_failure', 'attempts_exhausted', 'expired'])[1 + g % 3],
           '550 no', now() - interval '1 hour' + g * interval '1 ms'
    FROM generate_series(1, $1::int) g
    """,
]


def expected(reason: str | None = None, domain: str | None = None) -> tuple[int, int]:
    """(matched, redacted) of the seed for a filter."""
    rows = [
        g
        for g in range(1, COUNT + 1)
        if (reason is None or REASONS[g % 3] == reason)
        and (domain is None or (domain == "example.org") == (g % 4 == 0))
    ]
    return len(rows), sum(1 for g in rows if g % 25 == 0)


@pytest.fixture
async def api(database_dsn: str, redis_addr: str) -> AsyncIterator[httpx.AsyncClient]:
    conn = await asyncpg.connect(database_dsn)
    try:
        async with conn.transaction():
            for statement in _SEED:
                await conn.execute(statement, COUNT)
    finally:
        await conn.close()
    async with in_process(operator_env(database_dsn, redis_addr)) as client:
        yield client


async def redrive(api: httpx.AsyncClient, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    headers = {} if key is None else {"Idempotency-Key": key}
    response = await api.post(f"{API}/dead-letters/redrive", json=body, headers=headers)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def resends(dsn: str) -> list[tuple[str, str]]:
    """(resend_of, reason of the original) of every resend delivery."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT d.resend_of, dl.reason FROM deliveries d JOIN dead_letters dl ON dl.delivery_id = d.resend_of "
            "WHERE d.source = 'resend'"
        )
    finally:
        await conn.close()
    return [(str(r["resend_of"]), r["reason"]) for r in rows]


async def test_dry_runs_count_per_filter_and_write_nothing(api: httpx.AsyncClient, database_dsn: str) -> None:
    for reason in REASONS:
        for domain in (None, "EXAMPLE.org"):
            body: dict[str, Any] = {"filter": {"reason": reason}, "dry_run": True}
            if domain:
                body["filter"]["recipient_domain"] = domain
            answer = await redrive(api, body)
            matched, redacted = expected(reason, domain and domain.lower())
            assert answer["action_id"] is None
            assert (answer["matched"], answer["skipped"], answer["skipped_redacted"]) == (matched, redacted, redacted)
            assert answer["redriven"] == matched - redacted
    everything = await redrive(api, {"dry_run": True, "limit": 100})
    assert (everything["matched"], everything["redriven"]) == (COUNT, 100)
    assert everything["remaining"] == COUNT - COUNT // 25 - 100
    assert (await redrive(api, {"filter": {"template": "auth.login_code"}, "dry_run": True}))["redriven"] == 0
    assert await resends(database_dsn) == []
    assert (await api.get(f"{API}/operator-actions")).json()["items"] == []


async def test_a_redrive_resends_each_matching_dead_letter_once(api: httpx.AsyncClient, database_dsn: str) -> None:
    matched, redacted = expected("attempts_exhausted")
    body = {"filter": {"reason": "attempts_exhausted"}, "note": "after the outage"}
    first = await redrive(api, body, key="outage-1")
    assert (first["matched"], first["redriven"], first["skipped_redacted"]) == (matched, matched - redacted, redacted)
    assert first["idempotent_replay"] is False
    done = await resends(database_dsn)
    assert len(done) == matched - redacted
    assert len({of for of, _ in done}) == len(done)
    assert {reason for _, reason in done} == {"attempts_exhausted"}

    retried = await redrive(api, body, key="outage-1")  # the same request again: the first answer
    assert retried == {**first, "idempotent_replay": True}
    again = await redrive(api, body)  # a new request: nothing left to resend
    assert (again["redriven"], again["skipped_already_redriven"], again["remaining"]) == (0, matched - redacted, 0)
    assert len(await resends(database_dsn)) == len(done)
    conflict = await api.post(
        f"{API}/dead-letters/redrive", json={"filter": {"reason": "expired"}}, headers={"Idempotency-Key": "outage-1"}
    )
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_key_conflict"

    actions = await collect(api, "/operator-actions", [("kind", "redrive")])
    assert [a["action_id"] for a in actions] == [again["action_id"], first["action_id"]]
    recorded = actions[1]
    assert recorded["filter"] == {"reason": "attempts_exhausted", "limit": 1000}
    assert recorded["note"] == "after the outage"
    assert recorded["actor"] == "trusted-network"
    assert recorded["counts"]["redriven"] == matched - redacted
    assert recorded["counts"]["skipped"] == redacted


async def test_concurrent_redrives_and_batches_never_resend_twice(api: httpx.AsyncClient, database_dsn: str) -> None:
    limited = await redrive(api, {"filter": {"reason": "expired"}, "limit": 50})
    assert limited["redriven"] == 50
    answers = await asyncio.gather(*(redrive(api, {}) for _ in range(3)))  # more than one batch each
    eligible = COUNT - COUNT // 25
    assert sum(a["redriven"] for a in answers) + 50 == eligible
    done = await resends(database_dsn)
    assert len(done) == eligible
    assert len({of for of, _ in done}) == eligible
    final = await redrive(api, {"dry_run": True})
    assert (final["redriven"], final["skipped_already_redriven"]) == (0, eligible)
