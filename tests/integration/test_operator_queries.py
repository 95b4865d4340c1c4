"""Operator reads over 100,000 seeded deliveries: exact filters, stable paging, index use, latency.

The expected rows are computed in Python from a plain dump of the table (an oracle independent of
the SQL under test). The service runs as a real `mailsvc serve` child process.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from sqlalchemy import text

from mailsvc.adapters.postgres.engine import create_engine
from mailsvc.adapters.postgres.read_store import DETAIL, delivery_list_statement
from mailsvc.domain.operator_query import DeliveryFilter, Keyset, PageRequest
from tests.support.infra import PostgresServer, unique_name
from tests.support.operator_api import API, collect, operator_env
from tests.support.operator_seed import seed_deliveries
from tests.support.process import running_service

SEEDED = 100_000


@pytest.fixture(scope="module")
async def seeded_dsn(pg: PostgresServer, template_database: str) -> AsyncIterator[str]:
    name = unique_name("mailsvc_ops")
    await pg.admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    dsn = pg.dsn_for(name)
    await seed_deliveries(dsn, SEEDED)
    yield dsn
    await pg.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
async def api(seeded_dsn: str, redis_addr: str) -> AsyncIterator[httpx.AsyncClient]:
    env = operator_env(seeded_dsn, redis_addr, MAIL_DELIVERY_RETENTION="100000h")
    async with (
        running_service(env) as service,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}", timeout=60) as client,
    ):
        yield client


@dataclass(frozen=True)
class Row:
    delivery_id: uuid.UUID
    status: str
    source: str
    template: str | None
    tags: dict[str, str]
    created_at: datetime
    recipients: frozenset[str]  # lower-cased, every kind

    @property
    def position(self) -> tuple[datetime, int]:
        return self.created_at, self.delivery_id.int


@pytest.fixture(scope="module")
async def rows(seeded_dsn: str) -> list[Row]:
    """The seeded table as the oracle sees it (tests that add rows remove them again)."""
    return await table(seeded_dsn)


async def table(dsn: str) -> list[Row]:
    """Every delivery, newest first (the API's order), from one plain query."""
    conn = await asyncpg.connect(dsn)
    try:
        records = await conn.fetch(
            """
            SELECT d.delivery_id, d.status, d.source, d.template, d.tags::text AS tags, d.created_at,
                   ARRAY(SELECT lower(r.address) FROM delivery_recipients r WHERE r.delivery_id = d.delivery_id) AS rs
            FROM delivery_states d
            """
        )
    finally:
        await conn.close()
    rows = [
        Row(
            r["delivery_id"],
            r["status"],
            r["source"],
            r["template"],
            orjson.loads(r["tags"]),
            r["created_at"],
            frozenset(r["rs"]),
        )
        for r in records
    ]
    return sorted(rows, key=lambda row: row.position, reverse=True)


Case = Callable[[list[Row]], tuple[list[tuple[str, str]], Callable[[Row], bool]]]


def window(rows: list[Row], newer: int, older: int) -> tuple[datetime, datetime]:
    """created_after / created_before around the rows at these newest-first positions."""
    return rows[older].created_at, rows[newer].created_at


def _status(rows: list[Row]) -> Any:
    return [("status", "dead_lettered")], lambda r: r.status == "dead_lettered"


def _source_status(rows: list[Row]) -> Any:
    return [("source", "resend"), ("status", "sent")], lambda r: r.source == "resend" and r.status == "sent"


def _template_window(rows: list[Row]) -> Any:
    after, before = window(rows, 20_000, 45_000)
    params = [
        ("template", "auth.password_reset"),
        ("created_after", after.isoformat()),
        ("created_before", before.isoformat()),
    ]
    return params, lambda r: r.template == "auth.password_reset" and after <= r.created_at < before


def _recipient_case(rows: list[Row]) -> Any:
    return [("recipient", "USER17@EXAMPLE.com")], lambda r: "user17@example.com" in r.recipients


def _recipient_cc(rows: list[Row]) -> Any:
    return [("recipient", "cc17@example.org")], lambda r: "cc17@example.org" in r.recipients


def _recipient_bcc_source_window(rows: list[Row]) -> Any:
    after, before = window(rows, 30_000, 60_000)
    params = [
        ("recipient", "audit@example.net"),
        ("source", "auth"),
        ("created_after", after.isoformat().replace("+00:00", "Z")),
        ("created_before", before.isoformat()),
    ]
    return (
        params,
        lambda r: "audit@example.net" in r.recipients and r.source == "auth" and after <= r.created_at < before,
    )


def _two_tags(rows: list[Row]) -> Any:
    return [
        ("tag", "tenant:t3"),
        ("tag", "campaign:c5"),
    ], lambda r: r.tags.get("tenant") == "t3" and r.tags.get("campaign") == "c5"


def _tag_status_source(rows: list[Row]) -> Any:
    def match(r: Row) -> bool:
        return r.tags.get("tenant") == "t3" and r.status == "queued" and r.source == "notification"

    return [("tag", "tenant:t3"), ("status", "queued"), ("source", "notification")], match


def _everything(rows: list[Row]) -> Any:
    after, before = window(rows, 10_000, 90_000)

    def base(r: Row) -> bool:
        return (
            r.status == "sent"
            and r.source == "notification"
            and r.template == "auth.login_code"
            and r.tags.get("tenant") == "t1"
            and after <= r.created_at < before
        )

    address = sorted(next(r for r in rows if base(r)).recipients)[0]
    params = [
        ("status", "sent"),
        ("source", "notification"),
        ("template", "auth.login_code"),
        ("tag", "tenant:t1"),
        ("recipient", address),
        ("created_after", after.isoformat()),
        ("created_before", before.isoformat()),
    ]
    return params, lambda r: base(r) and address in r.recipients


def _nothing(rows: list[Row]) -> Any:
    return [("recipient", "nobody@example.com"), ("status", "sent")], lambda r: False


def _boundaries(rows: list[Row]) -> Any:
    # created_after is inclusive, created_before exclusive: rows sit exactly AT both bounds
    i = 1_000
    while rows[i].created_at == rows[i + 1].created_at:
        i += 1
    before, after = rows[i].created_at, rows[i + 5].created_at
    assert sum(r.created_at == after for r in rows) == 2
    params = [("created_after", after.isoformat()), ("created_before", before.isoformat())]
    return params, lambda r: after <= r.created_at < before


CASES: dict[str, Case] = {
    "status": _status,
    "source+status": _source_status,
    "template+window": _template_window,
    "recipient, case-insensitive": _recipient_case,
    "recipient in cc": _recipient_cc,
    "recipient in bcc+source+window": _recipient_bcc_source_window,
    "two tags": _two_tags,
    "tag+status+source": _tag_status_source,
    "every filter": _everything,
    "no match": _nothing,
    "time bounds": _boundaries,
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
async def test_filters_return_exactly_the_matching_rows(api: httpx.AsyncClient, rows: list[Row], case: str) -> None:
    params, predicate = CASES[case](rows)
    expected = [str(r.delivery_id) for r in rows if predicate(r)]
    limit = 7 if len(expected) < 100 else 500
    got = await collect(api, "/deliveries", params, limit=limit)
    assert [item["delivery_id"] for item in got] == expected


def seeded_id(g: int) -> uuid.UUID:
    return uuid.UUID(hashlib.md5(f"seed:{g}".encode()).hexdigest())


ITEM_FIELDS = {
    "delivery_id", "source", "status", "template", "locale", "template_digest", "priority", "send_at", "expires_at",
    "idempotency_key", "message_id", "tags", "attempt_count", "next_attempt_at", "last_error", "resend_of",
    "created_at", "updated_at", "finished_at", "to", "recipient_count", "collapse_key", "superseded_by",
}  # fmt: skip


async def test_list_items_carry_the_delivery_and_its_to_addresses(api: httpx.AsyncClient, seeded_dsn: str) -> None:
    body = (await api.get(f"{API}/deliveries", params={"limit": "3", "tag": "tenant:t4"})).json()
    assert len(body["items"]) == 3
    assert body["next_cursor"]
    conn = await asyncpg.connect(seeded_dsn)
    try:
        for item in body["items"]:
            assert set(item) == ITEM_FIELDS
            row = await conn.fetchrow(
                "SELECT * FROM delivery_states WHERE delivery_id = $1", uuid.UUID(item["delivery_id"])
            )
            to = await conn.fetch(
                "SELECT address, kind FROM delivery_recipients WHERE delivery_id = $1 ORDER BY position",
                row["delivery_id"],
            )
            assert row is not None
            assert item["status"] == row["status"]
            assert item["source"] == row["source"]
            assert item["template"] == row["template"]
            assert item["message_id"] == row["message_id"]
            assert item["idempotency_key"] == row["idempotency_key"]
            assert item["priority"] == ("high", "normal", "low")[row["priority"]]
            assert item["tags"] == orjson.loads(row["tags"])
            assert item["tags"]["tenant"] == "t4"
            assert item["attempt_count"] == row["attempt_count"]
            assert datetime.fromisoformat(item["created_at"]) == row["created_at"]
            assert item["created_at"].endswith("Z")
            assert item["to"] == [r["address"] for r in to if r["kind"] == "to"]
            assert item["recipient_count"] == len(to)
    finally:
        await conn.close()


async def test_detail_has_recipients_attempts_dead_letter_and_optionally_the_body(
    api: httpx.AsyncClient, seeded_dsn: str
) -> None:
    conn = await asyncpg.connect(seeded_dsn)
    try:
        delivery_id = await conn.fetchval(
            "SELECT delivery_id FROM deliveries WHERE status = 'dead_lettered' AND attempt_count = 3 LIMIT 1"
        )
        recipients = await conn.fetch(
            "SELECT kind, address, display_name, outcome FROM delivery_recipients WHERE delivery_id = $1 "
            "ORDER BY position",
            delivery_id,
        )
        dead = await conn.fetchrow("SELECT reason, last_error FROM dead_letters WHERE delivery_id = $1", delivery_id)
        payload = await conn.fetchrow("SELECT * FROM delivery_payloads WHERE delivery_id = $1", delivery_id)
    finally:
        await conn.close()
    detail = (await api.get(f"{API}/deliveries/{delivery_id}")).json()
    assert set(detail) == ITEM_FIELDS | {
        "subject", "reply_to", "headers", "recipients", "attempts", "dead_letter", "resends",
        "sensitive", "redacted", "content_digest",
    }  # fmt: skip
    assert [(r["kind"], r["address"], r["name"], r["outcome"]) for r in detail["recipients"]] == [
        tuple(r) for r in recipients
    ]
    assert [a["number"] for a in detail["attempts"]] == [1, 2, 3]
    assert [a["outcome"] for a in detail["attempts"]] == ["transient_failure", "transient_failure", "permanent_failure"]
    assert detail["dead_letter"]["reason"] == dead["reason"]
    assert detail["dead_letter"]["last_error"] == dead["last_error"]
    assert detail["subject"] == payload["subject"]
    assert detail["headers"] == {"X-Seed": "yes"}
    assert detail["resends"] == []

    with_body = (await api.get(f"{API}/deliveries/{delivery_id}", params={"include": "body"})).json()
    assert with_body["text_body"] == payload["text_body"]
    assert with_body["html_body"] == payload["html_body"]

    attempts = (await api.get(f"{API}/deliveries/{delivery_id}/attempts")).json()
    assert attempts["items"] == detail["attempts"]


@pytest.mark.parametrize("path", ["/deliveries/{}", "/deliveries/{}/attempts"])
@pytest.mark.parametrize("delivery_id", [str(uuid.uuid4()), "nope", "1234"])
async def test_unknown_or_malformed_id_is_404(api: httpx.AsyncClient, path: str, delivery_id: str) -> None:
    response = await api.get(API + path.format(delivery_id))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_dead_letters_newest_first_every_one_once(api: httpx.AsyncClient, seeded_dsn: str) -> None:
    conn = await asyncpg.connect(seeded_dsn)
    try:
        records = await conn.fetch("SELECT delivery_id, created_at, reason FROM dead_letters")
    finally:
        await conn.close()
    expected = sorted(records, key=lambda r: (r["created_at"], r["delivery_id"].int), reverse=True)
    got = await collect(api, "/dead-letters", limit=500)
    assert [item["delivery_id"] for item in got] == [str(r["delivery_id"]) for r in expected]
    assert [item["reason"] for item in got[:100]] == [r["reason"] for r in expected[:100]]
    assert all(item["status"] == "dead_lettered" for item in got)


async def test_invalid_parameters_are_422_listing_every_problem(api: httpx.AsyncClient) -> None:
    params = [
        ("status", "lost"), ("limit", "0"), ("tag", "no-colon"), ("created_after", "yesterday"),
        ("cursor", "not-a-cursor"), ("colour", "red"), ("source", "auth"), ("source", "resend"),
    ]  # fmt: skip
    response = await api.get(f"{API}/deliveries", params=params)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_failed"
    fields = {d["field"] for d in error["details"]}
    assert fields == {"status", "limit", "tag", "created_after", "cursor", "colour", "source"}

    dead_cursor = (await api.get(f"{API}/dead-letters", params={"limit": "1"})).json()["next_cursor"]
    response = await api.get(f"{API}/deliveries", params={"cursor": dead_cursor})
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [{"field": "cursor", "message": "not a cursor of this list"}]
    assert (await api.get(f"{API}/deliveries", params={"limit": "501"})).status_code == 422
    assert (await api.get(f"{API}/deliveries/{seeded_id(1)}", params={"include": "everything"})).status_code == 422


async def _insert(conn: asyncpg.Connection, created_at: datetime) -> str:
    delivery_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO deliveries (delivery_id, source, status, send_at, idempotency_key, message_id, created_at, "
        "updated_at, finished_at) VALUES ($1, 'notification', 'sent', $2, $3, $4, $2, $2, $2)",
        delivery_id, created_at, f"paging-{delivery_id}", f"<paging-{delivery_id}@test>",
    )  # fmt: skip
    return str(delivery_id)


def _position(item: dict[str, Any]) -> tuple[datetime, int]:
    return datetime.fromisoformat(item["created_at"]), uuid.UUID(item["delivery_id"]).int


async def test_paging_everything_with_concurrent_inserts_sees_each_row_once(
    api: httpx.AsyncClient, seeded_dsn: str, rows: list[Row]
) -> None:
    original = {str(r.delivery_id) for r in rows}
    conn = await asyncpg.connect(seeded_dsn)
    newest, passed, ahead, seen = [], [], [], []
    try:
        cursor: str | None = None
        while True:
            params = {"limit": "500"} | ({"cursor": cursor} if cursor else {})
            body = (await api.get(f"{API}/deliveries", params=params)).json()
            seen.extend(body["items"])
            cursor = body["next_cursor"]
            if cursor is None:
                break
            first, last = _position(body["items"][0])[0], _position(body["items"][-1])[0]
            # between two pages: a brand-new row, a late row among those already listed, and a late row
            # older than the cursor — only the last may (and must) show up, exactly once
            newest.append(await _insert(conn, datetime.now(UTC)))
            passed.append(await _insert(conn, first - timedelta(microseconds=1)))
            ahead.append(await _insert(conn, last - timedelta(microseconds=3)))
    finally:
        await conn.execute("DELETE FROM deliveries WHERE idempotency_key LIKE 'paging-%'")
        await conn.close()
    ids = [item["delivery_id"] for item in seen]
    assert len(ids) == len(set(ids)), "an item was listed twice"
    assert original <= set(ids), f"{len(original - set(ids))} rows were skipped"
    assert set(ahead) <= set(ids)
    assert not (set(newest) | set(passed)) & set(ids)
    positions = [_position(item) for item in seen]
    assert all(a > b for a, b in itertools.pairwise(positions))
    assert len(ids) == SEEDED + len(ahead)


EXPLAINED: dict[str, tuple[DeliveryFilter, PageRequest]] = {
    "recipient": (DeliveryFilter(recipient="user17@example.com"), PageRequest(51)),
    "common recipient": (DeliveryFilter(recipient="audit@example.net"), PageRequest(51)),
    "status": (DeliveryFilter(status="dead_lettered"), PageRequest(51)),
    "tag": (DeliveryFilter(tags={"tenant": "t3", "campaign": "c5"}), PageRequest(51)),
    "status, second page": (
        DeliveryFilter(status="queued", tags={"tenant": "t2"}),
        PageRequest(51, Keyset(datetime.now(UTC) - timedelta(days=2), str(seeded_id(5)))),
    ),
}


@pytest.mark.parametrize("name", [*EXPLAINED, "detail"])
async def test_reads_use_indexes(seeded_dsn: str, name: str) -> None:
    if name == "detail":
        sql, params = DETAIL.text, {"id": seeded_id(12345), "body": True}
    else:
        sql, params = delivery_list_statement(*EXPLAINED[name])
    engine = create_engine(seeded_dsn)
    try:
        async with engine.connect() as conn:
            plan = "\n".join(row[0] for row in await conn.execute(text(f"EXPLAIN {sql}"), params))
    finally:
        await engine.dispose()
    assert "Index" in plan, plan
    assert "Seq Scan on deliveries" not in plan, plan


def _percentiles(samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return f"p50 {cuts[49] * 1000:.2f} ms, p99 {cuts[98] * 1000:.2f} ms"


async def _timed(api: httpx.AsyncClient, urls: list[tuple[str, dict[str, str]]]) -> list[float]:
    samples = []
    for path, params in urls:
        started = time.perf_counter()
        response = await api.get(API + path, params=params)
        samples.append(time.perf_counter() - started)
        assert response.status_code == 200
    return samples


async def test_latency_over_the_seeded_table(api: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]) -> None:
    """Prints p50/p99 (no assertion: timing is the machine's business) of 200 sequential requests each."""
    rng = random.Random(17)
    by_recipient = [("/deliveries", {"recipient": f"user{rng.randrange(4000)}@example.com"}) for _ in range(220)]
    common = [("/deliveries", {"recipient": "audit@example.net"}) for _ in range(220)]
    details = [(f"/deliveries/{seeded_id(rng.randrange(1, SEEDED + 1))}", {}) for _ in range(220)]
    figures = {}
    for name, urls in (
        ("recipient (25 matches)", by_recipient),
        ("recipient (10,000 matches)", common),
        ("detail", details),
    ):
        await _timed(api, urls[:20])  # warm-up: connections, prepared statements
        figures[name] = _percentiles(await _timed(api, urls[20:]))
    with capsys.disabled():
        print()
        for name, figure in figures.items():
            print(f"GET {name} over {SEEDED:,} deliveries: {figure}")
