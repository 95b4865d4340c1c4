"""Retention deletes (SPEC §5), one bounded batch per call so no statement holds locks for long.

Each call is its own short transaction: it picks at most `limit` rows with `FOR UPDATE SKIP LOCKED`
(rows a worker or acceptance holds are left for the next batch) and deletes them; the schema's
`ON DELETE CASCADE` removes a delivery's recipients, payload, attempts, dead letter and idempotency
key with it, through indexed foreign keys (migration 0003). Only terminal deliveries are ever
chosen. The retention loop repeats a batch until one comes back short.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine

from mailsvc.adapters.postgres.db import unavailable_as_domain_error

# `finished_at` is not indexed (the final write stays a HOT update, migration 0011), but a delivery
# finishes after it is created: every one finished before the cutoff was created before it, so the
# range of `deliveries_created_idx` below the cutoff holds them all (oldest first).
_FINISHED_DELIVERIES = text(
    """
    DELETE FROM deliveries WHERE delivery_id IN (
        SELECT delivery_id FROM deliveries
        WHERE created_at < :cutoff AND finished_at < :cutoff
          AND status IN ('sent', 'dead_lettered', 'suppressed', 'cancelled', 'superseded')
        ORDER BY created_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED)
    """
)

_MALFORMED_COMMANDS = text(
    """
    DELETE FROM malformed_commands WHERE malformed_id IN (
        SELECT malformed_id FROM malformed_commands
        WHERE received_at < :cutoff
        ORDER BY received_at
        LIMIT :limit
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
        LIMIT :limit
        FOR UPDATE SKIP LOCKED)
    """
)

_STREAM_EVENTS = text(
    """
    DELETE FROM stream_events WHERE event_id IN (
        SELECT event_id FROM stream_events
        WHERE detected_at < :cutoff
        ORDER BY event_id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED)
    """
)

# an expired suppression no longer applies at acceptance (`expires_at <= now`)
_EXPIRED_SUPPRESSIONS = text(
    """
    DELETE FROM suppressions WHERE address IN (
        SELECT address FROM suppressions
        WHERE expires_at <= :cutoff
        ORDER BY expires_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED)
    """
)


# Published events go oldest first in feed order, one head of the feed at a time: of the first
# `limit` published events, those written before the cutoff. A head with a young event in it comes
# back short and ends the step (the rest is younger, or waits for the next pass). With publishing
# on, "published" is "at or below every stream's cursor" (none yet: nothing is published).
_PUBLISHED_EVENTS = text(
    """
    WITH head AS (
        SELECT e.seq, e.created_at FROM delivery_events e
        WHERE CAST(:stream AS text) = ''
           OR (EXISTS (SELECT 1 FROM event_cursors WHERE stream_key = CAST(:stream AS text))
               AND (e.xid, e.seq) <= ALL (SELECT c.xid, c.seq FROM event_cursors c))
        ORDER BY e.xid, e.seq
        LIMIT :limit
    )
    DELETE FROM delivery_events WHERE seq IN (SELECT seq FROM head WHERE created_at < :cutoff)
    """
)


class RetentionStore:
    """One method per retention step; each deletes one batch and returns how many rows it deleted.

    Raises `StoreUnavailable` when PostgreSQL cannot be reached or the statement timed out; any
    other database error propagates as it is (the loop logs it and moves on to the next step).
    """

    def __init__(self, engine: AsyncEngine, *, event_stream: str = "") -> None:
        self.engine = engine
        self.event_stream = event_stream  # "": publishing is off, every event counts as published

    async def _batch(self, statement: TextClause, cutoff: datetime, limit: int) -> int:
        async with unavailable_as_domain_error(), self.engine.begin() as conn:
            return (await conn.execute(statement, {"cutoff": cutoff, "limit": limit})).rowcount

    async def delete_finished_deliveries(self, finished_before: datetime, limit: int) -> int:
        """At most `limit` terminal deliveries finished before the cutoff, with all their children.
        Never a `queued` or `sending` one, however old."""
        return await self._batch(_FINISHED_DELIVERIES, finished_before, limit)

    async def delete_malformed_commands(self, received_before: datetime, limit: int) -> int:
        """At most `limit` malformed command records received before the cutoff."""
        return await self._batch(_MALFORMED_COMMANDS, received_before, limit)

    async def delete_expired_idempotency_keys(self, now: datetime, limit: int) -> int:
        """At most `limit` idempotency keys expired at `now` (the deliveries they named stay)."""
        return await self._batch(_EXPIRED_KEYS, now, limit)

    async def delete_stream_events(self, detected_before: datetime, limit: int) -> int:
        """At most `limit` stream gap/reset records detected before the cutoff."""
        return await self._batch(_STREAM_EVENTS, detected_before, limit)

    async def delete_published_events(self, written_before: datetime, limit: int) -> int:
        """At most `limit` delivery events written before the cutoff and already published (every
        one when publishing is off); an unpublished event is never deleted, however old."""
        async with unavailable_as_domain_error(), self.engine.begin() as conn:
            params = {"cutoff": written_before, "limit": limit, "stream": self.event_stream}
            return (await conn.execute(_PUBLISHED_EVENTS, params)).rowcount

    async def delete_expired_suppressions(self, now: datetime, limit: int) -> int:
        """At most `limit` suppressions expired at `now` (entries without an expiry stay)."""
        return await self._batch(_EXPIRED_SUPPRESSIONS, now, limit)
