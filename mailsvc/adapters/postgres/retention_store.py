"""Retention deletes (SPEC §5), in bounded batches so no statement holds locks for long.

Each batch is its own short transaction: it picks at most `batch_size` rows with
`FOR UPDATE SKIP LOCKED` (rows a worker or acceptance holds are left for the next pass) and deletes
them; the schema's `ON DELETE CASCADE` removes a delivery's recipients, payload, attempts, dead
letter and idempotency key with it. Only terminal deliveries are ever chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine

from mailsvc.adapters.postgres.db import unavailable_as_domain_error

_FINISHED_DELIVERIES = text(
    """
    DELETE FROM deliveries WHERE delivery_id IN (
        SELECT delivery_id FROM deliveries
        WHERE finished_at < :cutoff AND status IN ('sent', 'dead_lettered', 'suppressed')
        ORDER BY finished_at
        LIMIT :batch
        FOR UPDATE SKIP LOCKED)
    """
)

_MALFORMED_COMMANDS = text(
    """
    DELETE FROM malformed_commands WHERE malformed_id IN (
        SELECT malformed_id FROM malformed_commands
        WHERE received_at < :cutoff
        ORDER BY received_at
        LIMIT :batch
        FOR UPDATE SKIP LOCKED)
    """
)

# an expired key is one acceptance would let a new request reuse (`expires_at <= now`)
_EXPIRED_KEYS = text(
    """
    DELETE FROM idempotency_keys WHERE (source, key) IN (
        SELECT source, key FROM idempotency_keys
        WHERE expires_at <= :cutoff
        ORDER BY expires_at
        LIMIT :batch
        FOR UPDATE SKIP LOCKED)
    """
)

_STREAM_EVENTS = text(
    """
    DELETE FROM stream_events WHERE event_id IN (
        SELECT event_id FROM stream_events
        WHERE detected_at < :cutoff
        ORDER BY event_id
        LIMIT :batch
        FOR UPDATE SKIP LOCKED)
    """
)


class RetentionStore:
    def __init__(self, engine: AsyncEngine, *, batch_size: int = 1000) -> None:
        self.engine = engine
        self.batch_size = batch_size

    async def _batched(self, statement: TextClause, cutoff: datetime, stopping: Callable[[], bool]) -> int:
        """Delete batch after batch until one comes back short (or `stopping()`); the total."""
        total = 0
        params: dict[str, Any] = {"cutoff": cutoff, "batch": self.batch_size}
        while True:
            async with unavailable_as_domain_error(), self.engine.begin() as conn:
                deleted = (await conn.execute(statement, params)).rowcount
            total += deleted
            if deleted < self.batch_size or stopping():
                return total

    async def delete_finished_deliveries(self, finished_before: datetime, stopping: Callable[[], bool]) -> int:
        """Terminal deliveries finished before the cutoff, with all their children. Never a
        `queued` or `sending` one, however old."""
        return await self._batched(_FINISHED_DELIVERIES, finished_before, stopping)

    async def delete_malformed_commands(self, received_before: datetime, stopping: Callable[[], bool]) -> int:
        return await self._batched(_MALFORMED_COMMANDS, received_before, stopping)

    async def delete_expired_idempotency_keys(self, now: datetime, stopping: Callable[[], bool]) -> int:
        return await self._batched(_EXPIRED_KEYS, now, stopping)

    async def delete_stream_events(self, detected_before: datetime, stopping: Callable[[], bool]) -> int:
        return await self._batched(_STREAM_EVENTS, detected_before, stopping)
