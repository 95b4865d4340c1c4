"""The delivery event feed (SPEC §11): reading `delivery_events` in order, and the publish cursors.

Every read goes in `(xid, seq)` order and stops below `pg_snapshot_xmin(pg_current_snapshot())`:
every transaction with a lower xid has ended, so no event can still appear before a position a
reader has passed — not even one whose `seq` was taken by a transaction that commits late (the
outbox trap, PITFALLS). The cost: an event waits while any older write transaction is open.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mailsvc.adapters.postgres.db import DriverStatement, driver_connection, unavailable_as_domain_error
from mailsvc.domain.events import EventBatch, EventPosition, EventType, StoredEvent, stream_args
from mailsvc.errors import OffsetMoved

_HORIZON = "e.xid < pg_snapshot_xmin(pg_current_snapshot())"
_AFTER = "(e.xid, e.seq) > (CAST(CAST(:xid AS text) AS xid8), :seq)"
# a read of the feed: {columns} of each event (and its delivery) after a position, in feed order
_READ = """
    SELECT CAST(e.xid AS text) AS xid, e.seq, {columns}
    FROM delivery_events e JOIN deliveries d ON d.delivery_id = e.delivery_id
    WHERE {where}
    ORDER BY e.xid, e.seq
    LIMIT :limit
"""
_FEED = _READ.format(
    columns="""e.event_id, e.delivery_id, e.type, CAST(e.data AS text) AS data, e.created_at, d.source,
           d.idempotency_key, CAST(d.tags AS text) AS tags, d.traceparent""",
    where="{where}",
)
# What the publisher reads: each event's values as text, in `stream_args`' order (a test holds the
# result to `StoredEvent.stream_args`): `time` in UTC with microseconds only when there are any
# (Python's `isoformat`).
_UTC = "e.created_at AT TIME ZONE 'UTC'"
_TIME = (
    f"""to_char({_UTC}, 'YYYY-MM-DD"T"HH24:MI:SS')"""
    f" || CASE WHEN extract(microseconds FROM e.created_at) % 1000000 = 0 THEN '' ELSE to_char({_UTC}, '.US') END"
    " || 'Z'"
)
_UNPUBLISHED = DriverStatement(
    text(
        _READ.format(
            columns=f"""CAST(e.event_id AS text), e.type, {_TIME}, CAST(e.delivery_id AS text), d.source,
           d.idempotency_key, CAST(e.data AS text), CAST(d.tags AS text), d.traceparent""",
            where=f"{_AFTER} AND {_HORIZON}",
        )
    )
)


# the first event not yet published, committed but perhaps not yet below the horizon
_OLDEST_UNPUBLISHED = text(
    f"""
    SELECT extract(epoch FROM clock_timestamp() - e.created_at) FROM delivery_events e
    WHERE {_AFTER} ORDER BY e.xid, e.seq LIMIT 1
    """
)

_LOAD_CURSOR = text("SELECT CAST(xid AS text) AS xid, seq FROM event_cursors WHERE stream_key = :key")
_FIRST_CURSOR = text(
    """
    INSERT INTO event_cursors (stream_key, xid, seq) VALUES (:key, CAST(CAST(:xid AS text) AS xid8), :seq)
    ON CONFLICT (stream_key) DO NOTHING
    """
)
_ADVANCE_CURSOR = DriverStatement(
    text(
        """
        UPDATE event_cursors SET xid = CAST(CAST(:xid AS text) AS xid8), seq = :seq, updated_at = now()
        WHERE stream_key = :key AND xid = CAST(CAST(:old_xid AS text) AS xid8) AND seq = :old_seq
        """
    )
)


class EventStore:
    """Reads of the feed (round-robin over `engines`) and the cursors (on the first engine, the
    primary, when the store publishes). Raises `StoreUnavailable` when PostgreSQL cannot answer.

    The publisher's statements run for every batch of events: straight through asyncpg, one
    statement each without BEGIN/COMMIT (see `driver_connection`)."""

    def __init__(self, engines: Sequence[AsyncEngine]) -> None:
        self.primary = engines[0]
        self.single = self.primary.execution_options(isolation_level="AUTOCOMMIT")
        self._engines = itertools.cycle(engines)

    async def unpublished(self, after: EventPosition, limit: int) -> EventBatch:
        """Up to `limit` events after `after`, below the horizon, in feed order (from the primary),
        as the stream takes them."""
        params = {"xid": str(after.xid), "seq": after.seq, "limit": limit}
        async with unavailable_as_domain_error(), driver_connection(self.single) as conn:
            rows = await conn.fetch(_UNPUBLISHED.sql, *_UNPUBLISHED.args(params))
        if not rows:
            return EventBatch((), after)
        fields = [
            stream_args(
                event_id=r[2],
                type=r[3],
                time=r[4],
                subject=r[5],
                source=r[6],
                idempotency_key=r[7],
                data_json=r[8],
                tags_json=r[9],
                traceparent=r[10],
            )
            for r in rows
        ]
        return EventBatch(fields, EventPosition(int(rows[-1][0]), rows[-1][1]))

    async def feed(
        self, after: EventPosition, *, delivery_id: UUID | None, types: Sequence[EventType], limit: int
    ) -> list[StoredEvent]:
        """`GET /events`: what the publisher would publish after `after`, optionally filtered."""
        where = [_AFTER, _HORIZON]
        params: dict[str, Any] = {"xid": str(after.xid), "seq": after.seq, "limit": limit}
        if delivery_id is not None:
            where.append("e.delivery_id = :delivery_id")
            params["delivery_id"] = delivery_id
        if types:
            where.append("e.type = ANY(CAST(:types AS text[]))")
            params["types"] = list(types)
        statement = text(_FEED.format(where=" AND ".join(where)))
        async with unavailable_as_domain_error(), next(self._engines).connect() as conn:
            rows = (await conn.execute(statement, params)).all()
        return [_stored(row._mapping) for row in rows]

    async def oldest_unpublished_age(self, after: EventPosition) -> float:
        """Seconds since the oldest event after `after` was written; 0.0 when there is none."""
        async with unavailable_as_domain_error(), self.primary.connect() as conn:
            value = (await conn.execute(_OLDEST_UNPUBLISHED, {"xid": str(after.xid), "seq": after.seq})).scalar()
        return 0.0 if value is None else max(0.0, float(value))

    async def load_cursor(self, stream_key: str) -> EventPosition | None:
        async with unavailable_as_domain_error(), self.primary.connect() as conn:
            row = (await conn.execute(_LOAD_CURSOR, {"key": stream_key})).first()
        return None if row is None else EventPosition(int(row.xid), row.seq)

    async def advance_cursor(self, stream_key: str, expected: EventPosition | None, new: EventPosition) -> None:
        """Compare-and-set: move the cursor from `expected` (None: there is none yet) to `new`.
        Raises `OffsetMoved` when another publisher moved it meanwhile."""
        params: dict[str, Any] = {"key": stream_key, "xid": str(new.xid), "seq": new.seq}
        if expected is None:
            async with unavailable_as_domain_error(), self.primary.begin() as conn:
                moved = (await conn.execute(_FIRST_CURSOR, params)).rowcount
        else:
            params |= {"old_xid": str(expected.xid), "old_seq": expected.seq}
            async with unavailable_as_domain_error(), driver_connection(self.single) as raw:
                status = await raw.execute(_ADVANCE_CURSOR.sql, *_ADVANCE_CURSOR.args(params))
            moved = int(status.rsplit(" ", 1)[-1])
        if moved != 1:
            raise OffsetMoved(f"event cursor of {stream_key} moved")


def _stored(row: Any) -> StoredEvent:
    created: datetime = row["created_at"]
    return StoredEvent(
        position=EventPosition(int(row["xid"]), row["seq"]),
        event_id=row["event_id"],
        delivery_id=row["delivery_id"],
        type=row["type"],
        data_json=row["data"],
        time=created,
        source=row["source"],
        idempotency_key=row["idempotency_key"],
        tags_json=row["tags"],
        traceparent=row["traceparent"],
    )
