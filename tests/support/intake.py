"""Helpers for intake tests: what PostgreSQL recorded (stream offsets, malformed commands, deliveries)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from tests.support.infra import wait_until


@contextlib.asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def stored_offset(conn: asyncpg.Connection, stream_key: str) -> str | None:
    value = await conn.fetchval("SELECT last_id FROM stream_offsets WHERE stream_key = $1", stream_key)
    return None if value is None else str(value)


async def wait_for_offset(conn: asyncpg.Connection, stream_key: str, entry_id: str, timeout: float = 60.0) -> None:
    async def reached() -> bool:
        return await stored_offset(conn, stream_key) == entry_id

    await wait_until(reached, timeout=timeout, interval=0.05, what=f"stored offset {entry_id}")


async def malformed_by_entry(conn: asyncpg.Connection) -> dict[str, str]:
    """stream entry id → reason; fails if any entry was recorded twice."""
    rows = await conn.fetch("SELECT stream_entry_id, reason FROM malformed_commands")
    found = {row["stream_entry_id"]: row["reason"] for row in rows}
    assert len(found) == len(rows), "an entry was recorded as malformed more than once"
    return found


async def delivery_keys(conn: asyncpg.Connection, source: str = "notification") -> list[str]:
    rows = await conn.fetch("SELECT idempotency_key FROM deliveries WHERE source = $1", source)
    return [row["idempotency_key"] for row in rows]
