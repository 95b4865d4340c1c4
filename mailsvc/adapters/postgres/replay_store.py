"""Replay writes (SPEC §14): a malformed command accepted again, in one transaction with the
mark on its malformed row (what it was replayed as) and the operator action.

The row is locked first: two replays of one command serialise, and the second finds the mark and
answers with the delivery the first created.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mailsvc.adapters.postgres.db import driver_transaction, unavailable_as_domain_error
from mailsvc.adapters.postgres.intake_store import IntakeStore
from mailsvc.adapters.postgres.operator_actions import record_actions
from mailsvc.domain.intake import KeyOutcome, NewDelivery
from mailsvc.domain.model import Status
from mailsvc.domain.operator_actions import OperatorAction

_LOAD = text(
    """
    SELECT m.malformed_id, m.stream_entry_id, m.idempotency_key, m.raw_fields, m.replayed_as, d.status
    FROM malformed_commands m LEFT JOIN delivery_states d ON d.delivery_id = m.replayed_as
    WHERE m.malformed_id = :id
    """
)
_LOCK = text("SELECT replayed_as FROM malformed_commands WHERE malformed_id = :id FOR UPDATE")
_MARK = text(
    "UPDATE malformed_commands SET replayed_as = :delivery, replayed_at = now(), replayed_by = :action "
    "WHERE malformed_id = :id AND replayed_as IS NULL"
)
_STATUS = text("SELECT status FROM delivery_states WHERE delivery_id = :id")


@dataclass(frozen=True, slots=True)
class MalformedRecord:
    malformed_id: int
    stream_entry_id: str
    idempotency_key: str | None
    raw_fields: bytes
    replayed_as: UUID | None
    replayed_status: Status | None


class ReplayStore:
    def __init__(self, engine: AsyncEngine, intake: IntakeStore) -> None:
        self.engine = engine
        self.intake = intake

    async def load(self, malformed_id: int) -> MalformedRecord | None:
        async with unavailable_as_domain_error(), self.engine.connect() as conn:
            row = (await conn.execute(_LOAD, {"id": malformed_id})).first()
        if row is None:
            return None
        return MalformedRecord(
            row.malformed_id,
            row.stream_entry_id,
            row.idempotency_key,
            bytes(row.raw_fields),
            row.replayed_as,
            row.status,
        )

    async def replay(
        self, malformed_id: int, delivery: NewDelivery, action: OperatorAction, ttl: timedelta
    ) -> tuple[KeyOutcome, bool]:
        """Accept `delivery` for the malformed row and mark the row, recording `action`; or, when
        the row was replayed meanwhile, write nothing. Returns the outcome and whether it was the
        earlier replay's. A `conflict` or `refused` outcome writes nothing either."""
        async with unavailable_as_domain_error(), driver_transaction(self.engine) as conn:
            locked = (await conn.execute(_LOCK, {"id": malformed_id})).rows
            if locked and locked[0].replayed_as is not None:
                earlier = locked[0].replayed_as
                status = (await conn.execute(_STATUS, {"id": earlier})).rows
                return KeyOutcome("duplicate", earlier, status[0].status if status else "queued"), True
            (outcome,) = await self.intake.write(conn, [delivery], [], stream_key="", offset=None, idempotency_ttl=ttl)
            if outcome.kind in ("created", "duplicate"):
                await conn.execute(
                    _MARK, {"delivery": outcome.delivery_id, "action": action.action_id, "id": malformed_id}
                )
                target = {**(action.target or {}), "delivery_id": str(outcome.delivery_id)}
                await record_actions(conn, [replace(action, target=target)])
            return outcome, False
