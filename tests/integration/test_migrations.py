"""The schema: migrations run both ways, and the database itself enforces the rules."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from mailsvc.adapters.postgres.engine import create_engine
from mailsvc.adapters.postgres.migrations import current_revision, downgrade, head_revision, upgrade
from mailsvc.adapters.postgres.payload_bodies import body_sql
from mailsvc.domain.mime import build_message
from mailsvc.domain.model import Address

TABLES = {
    "deliveries",
    "delivery_recipients",
    "delivery_payloads",
    "attempts",
    "dead_letters",
    "malformed_commands",
    "stream_offsets",
    "stream_events",
    "idempotency_keys",
    "delivery_queue",
    "delivery_ends",
    "delivery_events",
    "event_cursors",
    "suppressions",
    "operator_actions",
    "provider_state",
}


async def _tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows} - {"alembic_version"}


async def test_upgrade_downgrade_upgrade(empty_database_dsn: str) -> None:
    await upgrade(empty_database_dsn)
    assert await _tables(empty_database_dsn) == TABLES
    engine = create_engine(empty_database_dsn)
    try:
        assert await current_revision(engine) == head_revision()
        await downgrade(empty_database_dsn, "base")
        assert await _tables(empty_database_dsn) == set()
        assert await current_revision(engine) is None
        await upgrade(empty_database_dsn)
        assert await _tables(empty_database_dsn) == TABLES
        assert await current_revision(engine) == head_revision()
    finally:
        await engine.dispose()


async def _insert_delivery(conn: asyncpg.Connection, **overrides: object) -> uuid.UUID:
    values: dict[str, object] = {
        "delivery_id": uuid.uuid4(),
        "source": "notification",
        "status": "queued",
        "send_at": "now()",
        "idempotency_key": uuid.uuid4().hex,
        "message_id": f"<{uuid.uuid4().hex}@t>",
    }
    values.update(overrides)
    columns = ", ".join(values)
    args = [v for v in values.values() if v != "now()"]
    counter = iter(range(1, len(args) + 1))
    params = ", ".join("now()" if v == "now()" else f"${next(counter)}" for v in values.values())
    await conn.execute(f"INSERT INTO deliveries ({columns}) VALUES ({params})", *args)
    return values["delivery_id"]  # type: ignore[return-value]


async def test_database_enforces_statuses_and_state_rules(database_dsn: str) -> None:
    conn = await asyncpg.connect(database_dsn)
    try:
        with pytest.raises(asyncpg.CheckViolationError):
            await _insert_delivery(conn, status="lost")
        with pytest.raises(asyncpg.CheckViolationError):
            await _insert_delivery(conn, source="carrier")
        with pytest.raises(asyncpg.CheckViolationError):  # sending is a claimed queue row, never stored here
            await _insert_delivery(conn, status="sending")
        with pytest.raises(asyncpg.CheckViolationError):  # terminal needs finished_at
            await _insert_delivery(conn, status="sent")
        queued = await _insert_delivery(conn)
        insert_queue_row = (
            "INSERT INTO delivery_queue (delivery_id, priority, next_attempt_at, claim_token, claim_deadline, "
            "created_at) VALUES ($1, 1, now(), $2, $3, now())"
        )
        with pytest.raises(asyncpg.CheckViolationError):  # a claim has a deadline
            await conn.execute(insert_queue_row, queued, uuid.uuid4(), None)
        await conn.execute(insert_queue_row, queued, None, None)
        assert await conn.fetchval("SELECT status FROM delivery_states WHERE delivery_id = $1", queued) == "queued"
        await conn.execute(
            "UPDATE delivery_queue SET claim_token = gen_random_uuid(), claim_deadline = now() WHERE delivery_id = $1",
            queued,
        )
        assert await conn.fetchval("SELECT status FROM delivery_states WHERE delivery_id = $1", queued) == "sending"
    finally:
        await conn.close()


async def test_one_idempotency_key_per_scope_and_cascades(database_dsn: str) -> None:
    conn = await asyncpg.connect(database_dsn)
    try:
        first = await _insert_delivery(conn)
        second = await _insert_delivery(conn, source="auth")
        insert_key = (
            "INSERT INTO idempotency_keys (source, key, request_hash, delivery_id, expires_at) "
            "VALUES ($1, 'k1', '\\x00', $2, now() + interval '1 day')"
        )
        await conn.execute(insert_key, "notification", first)
        await conn.execute(insert_key, "auth", second)  # same key, other scope: fine
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(insert_key, "notification", second)
        await conn.execute(
            "INSERT INTO delivery_recipients (delivery_id, position, kind, address) VALUES ($1, 0, 'to', 'a@b.c')",
            first,
        )
        await conn.execute(
            "INSERT INTO delivery_payloads (delivery_id, subject, text_body, mime) VALUES ($1, 's', 't', '\\x00')",
            first,
        )
        await conn.execute(
            "INSERT INTO attempts (delivery_id, number, started_at, finished_at, outcome) "
            "VALUES ($1, 1, now(), now(), 'transient_failure')",
            first,
        )
        await conn.execute("DELETE FROM deliveries WHERE delivery_id = $1", first)
        await conn.execute(
            "INSERT INTO delivery_queue (delivery_id, priority, next_attempt_at, created_at)"
            " VALUES ($1, 1, now(), now())",
            second,
        )
        await conn.execute("DELETE FROM deliveries WHERE delivery_id = $1", second)
        assert await conn.fetchval("SELECT count(*) FROM delivery_queue") == 0
        for table in ("delivery_recipients", "delivery_payloads", "attempts", "idempotency_keys"):
            count = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE delivery_id = $1", first)
            assert count == 0, table
    finally:
        await conn.close()


FOREIGN_KEYS = """
SELECT c.conname, c.conrelid::regclass::text AS child,
       array(SELECT a.attname FROM unnest(c.conkey) AS k(attnum)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum) AS columns
FROM pg_constraint c
WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace
"""

# the key columns of every valid index, in order (an expression column has attnum 0 and no name)
INDEXES = """
SELECT i.indrelid::regclass::text AS child, pg_get_expr(i.indpred, i.indrelid) AS predicate,
       array(SELECT coalesce(a.attname, '') FROM unnest(i.indkey[0:i.indnkeyatts - 1]) WITH ORDINALITY AS k(attnum, n)
             LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.n) AS columns
FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
WHERE t.relnamespace = 'public'::regnamespace AND i.indisvalid
"""


def _serves(index: asyncpg.Record, child: str, columns: list[str]) -> bool:
    """Can the cascade's `WHERE fk_columns = $parent_key` use this index? Its leading columns are
    the foreign key's (in any order), and a partial index only leaves out rows with a NULL key."""
    if index["child"] != child or set(index["columns"][: len(columns)]) != set(columns):
        return False
    return index["predicate"] is None or (len(columns) == 1 and index["predicate"] == f"({columns[0]} IS NOT NULL)")


async def test_every_foreign_key_leads_an_index(database_dsn: str) -> None:
    """A delete on the parent (retention's cascade, a `SET NULL`) finds the child rows through an
    index, never by scanning the child table once per deleted row (SPEC §5)."""
    conn = await asyncpg.connect(database_dsn)
    try:
        foreign_keys = await conn.fetch(FOREIGN_KEYS)
        indexes = await conn.fetch(INDEXES)
    finally:
        await conn.close()
    assert ("idempotency_keys", ["delivery_id"]) in [(fk["child"], fk["columns"]) for fk in foreign_keys]
    unindexed = [
        f"{fk['conname']}: {fk['child']} ({', '.join(fk['columns'])})"
        for fk in foreign_keys
        if not any(_serves(index, fk["child"], fk["columns"]) for index in indexes)
    ]
    assert unindexed == [], "foreign keys without an index: " + "; ".join(unindexed)


async def test_0011_keeps_what_the_dropped_indexes_found(empty_database_dsn: str) -> None:
    """Rows written before 0011: the rare ends get their `delivery_ends` row, a live delivery's queue
    row its `created_at` and collapse key, and a downgrade gives the indexes back."""
    await upgrade(empty_database_dsn, "0010")
    conn = await asyncpg.connect(empty_database_dsn)
    try:
        at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        collapsing = await _insert_delivery(conn, collapse_key="digest", created_at=at)
        plain = await _insert_delivery(conn, source="auth", created_at=at)
        for delivery_id in (collapsing, plain):
            await conn.execute(
                "INSERT INTO delivery_queue (delivery_id, priority, next_attempt_at) VALUES ($1, 1, now())",
                delivery_id,
            )
        dead = await _insert_delivery(conn, status="dead_lettered", finished_at="now()", created_at=at)
        await _insert_delivery(conn, status="sent", finished_at="now()")
        await conn.close()
        await upgrade(empty_database_dsn)
        conn = await asyncpg.connect(empty_database_dsn)
        ends = await conn.fetch("SELECT delivery_id, status, created_at FROM delivery_ends")
        assert [(r["delivery_id"], r["status"], r["created_at"]) for r in ends] == [(dead, "dead_lettered", at)]
        queue = {
            r["delivery_id"]: (r["created_at"], r["collapse_source"], r["collapse_key"])
            for r in await conn.fetch("SELECT * FROM delivery_queue")
        }
        assert queue == {collapsing: (at, "notification", "digest"), plain: (at, None, None)}
        # a new rare end, by any path, is recorded by the database itself
        await conn.execute("DELETE FROM delivery_queue WHERE delivery_id = $1", plain)
        await conn.execute(
            "UPDATE deliveries SET status = 'cancelled', finished_at = now() WHERE delivery_id = $1", plain
        )
        assert await conn.fetchval("SELECT status FROM delivery_ends WHERE delivery_id = $1", plain) == "cancelled"
        await conn.close()
        await downgrade(empty_database_dsn, "0010")
        conn = await asyncpg.connect(empty_database_dsn)
        indexes = await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'deliveries'")
        names = {r["indexname"] for r in indexes}
        assert {"deliveries_status_created_idx", "deliveries_finished_idx", "deliveries_collapse_idx"} <= names
    finally:
        await conn.close()


async def test_0012_stores_bodies_as_spans_and_a_downgrade_writes_them_back(empty_database_dsn: str) -> None:
    """Rows written before 0012 keep their text and are read alike; a downgrade writes the sliced
    bodies back as text from the MIME message, so the old invariant (a text body) holds again."""
    text, html = "Hello,\n.dot line\n\ntab\there  \n", "<p>Hello</p>\n<p>there</p>"
    built = build_message(
        from_addr=Address("noreply@example.com"),
        to=[Address("ann@example.org")],
        cc=[],
        reply_to=None,
        subject="s",
        text=text,
        html=html,
        headers={},
        message_id="<m@example.com>",
        date=datetime(2026, 1, 2, tzinfo=UTC),
    )
    assert built.text_span is not None
    assert built.html_span is not None
    bodies = f"{body_sql('text_body', 'text_span')} AS t, {body_sql('html_body', 'html_span')} AS h"
    await upgrade(empty_database_dsn, "0011")
    conn = await asyncpg.connect(empty_database_dsn)
    try:
        old = await _insert_delivery(conn)
        await conn.execute(
            "INSERT INTO delivery_payloads (delivery_id, subject, text_body, html_body, mime) "
            "VALUES ($1, 's', 'old\r\ntext', '<p>old</p>', '\\x00')",
            old,
        )
        await conn.close()
        await upgrade(empty_database_dsn)
        conn = await asyncpg.connect(empty_database_dsn)
        new = await _insert_delivery(conn)
        await conn.execute(
            "INSERT INTO delivery_payloads (delivery_id, subject, text_span, html_span, mime) "
            "VALUES ($1, 's', $2, $3, $4)",
            new,
            asyncpg.Range(*built.text_span),
            asyncpg.Range(*built.html_span),
            built.mime,
        )
        expected = {old: ("old\r\ntext", "<p>old</p>"), new: (text, html)}
        read = await conn.fetch(f"SELECT delivery_id, {bodies} FROM delivery_payloads p")
        assert {r["delivery_id"]: (r["t"], r["h"]) for r in read} == expected
        await conn.close()

        await downgrade(empty_database_dsn, "0011")
        conn = await asyncpg.connect(empty_database_dsn)
        read = await conn.fetch("SELECT delivery_id, text_body AS t, html_body AS h FROM delivery_payloads")
        assert {r["delivery_id"]: (r["t"], r["h"]) for r in read} == expected
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = $1", "delivery_payloads"
        )
        assert not {r["column_name"] for r in columns} & {"text_span", "html_span"}
        with pytest.raises(asyncpg.CheckViolationError, match="delivery_payloads_redaction_check"):
            await conn.execute("UPDATE delivery_payloads SET text_body = NULL WHERE delivery_id = $1", new)
        await conn.close()
        await upgrade(empty_database_dsn)  # and up again, the text kept as text
        conn = await asyncpg.connect(empty_database_dsn)
        read = await conn.fetch(f"SELECT delivery_id, {bodies} FROM delivery_payloads p")
        assert {r["delivery_id"]: (r["t"], r["h"]) for r in read} == expected
    finally:
        await conn.close()
