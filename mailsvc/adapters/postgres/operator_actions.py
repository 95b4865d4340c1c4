"""The one way an operator action is written (SPEC §14): `record_actions`, on the connection of
the transaction that makes the write it audits.

Every operator write calls it inside its own transaction — resend through `IntakeStore.accept`
(`NewDelivery.operator_action`), and every other write (cancel, redrive, replay, suppressions,
provider resume) the same way, on its SQLAlchemy or asyncpg (`DriverConnection`) connection:

    async with driver_transaction(engine) as conn:   # or: async with engine.begin() as conn
        ...the write...
        await record_actions(conn, [action])

One statement for any number of actions (a group commit of resends writes them all at once).
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from mailsvc.adapters.postgres.db import DriverConnection
from mailsvc.domain.operator_actions import OperatorAction

_INSERT_ACTIONS = text(
    """
    INSERT INTO operator_actions (action_id, kind, actor, target, filter, counts, note, idempotency_key, request_hash)
    SELECT id, k, a, CAST(t AS jsonb), CAST(f AS jsonb), CAST(c AS jsonb), n, ik, rh FROM unnest(
        CAST(:ids AS uuid[]), CAST(:kinds AS text[]), CAST(:actors AS text[]), CAST(:targets AS text[]),
        CAST(:filters AS text[]), CAST(:counts AS text[]), CAST(:notes AS text[]), CAST(:keys AS text[]),
        CAST(:hashes AS bytea[])) AS x(id, k, a, t, f, c, n, ik, rh)
    """
)


def _json(value: object) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


async def record_actions(conn: DriverConnection | AsyncConnection, actions: Sequence[OperatorAction]) -> None:
    """Insert `actions` in the caller's transaction (nothing when empty); they commit or roll back
    with the write they describe."""
    if not actions:
        return
    await conn.execute(
        _INSERT_ACTIONS,
        {
            "ids": [a.action_id for a in actions],
            "kinds": [a.kind for a in actions],
            "actors": [a.actor for a in actions],
            "targets": [_json(None if a.target is None else dict(a.target)) for a in actions],
            "filters": [_json(None if a.filter is None else dict(a.filter)) for a in actions],
            "counts": [_json(None if a.counts is None else dict(a.counts)) for a in actions],
            "notes": [a.note for a in actions],
            "keys": [a.idempotency_key for a in actions],
            "hashes": [a.request_hash for a in actions],
        },
    )
