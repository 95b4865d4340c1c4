"""Helpers for intake tests: stream commands as Redis sees them, and what PostgreSQL recorded."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import orjson
from redis.asyncio import Redis

from tests.support.infra import wait_until

Fields = dict[bytes, bytes]


def command(payload: Any, key: str | None = None, **extra: bytes) -> Fields:
    """The fields of a `send_email` stream entry (`payload` as given when it is already bytes)."""
    fields: Fields = {
        b"type": b"send_email",
        b"payload": payload if isinstance(payload, bytes) else orjson.dumps(payload),
    }
    if key is not None:
        fields[b"idempotency_key"] = key.encode()
    fields.update({name.encode(): value for name, value in extra.items()})
    return fields


def raw_payload(n: int, **overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "to": [{"email": f"user{n}@example.com", "name": f"User {n}"}],
        "subject": f"Message {n}",
        "text": f"Hello number {n}",
        "tags": {"n": str(n)},
    }
    payload.update(overrides)
    return payload


def login_code_payload(n: int, locale: str = "pt-BR") -> dict[str, Any]:
    return {
        "to": [f"auth{n}@example.com"],
        "template": "auth.login_code",
        "locale": locale,
        "variables": {"code": f"{n:06d}", "expires_in_minutes": 10},
    }


async def xadd_all(redis: Redis, stream_key: str, entries: Sequence[Fields], chunk: int = 1000) -> list[str]:
    """XADD every entry in order (pipelined); the new entry ids."""
    ids: list[str] = []
    for start in range(0, len(entries), chunk):
        pipe = redis.pipeline(transaction=False)
        for fields in entries[start : start + chunk]:
            pipe.xadd(stream_key, fields)  # type: ignore[arg-type]
        ids.extend(i.decode() if isinstance(i, bytes) else str(i) for i in await pipe.execute())
    return ids


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
