"""The suppression list (SPEC §12): an operator's reads and writes.

Automatic entries are written with attempt results (`queue_store`), and acceptance reads the list in
its own transaction (`intake_store`); this module serves the operator routes. An expired entry is
no entry: the reads never show it, and retention deletes it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mailsvc.adapters.postgres.db import unavailable_as_domain_error
from mailsvc.adapters.postgres.operator_actions import record_actions
from mailsvc.domain.operator_actions import OperatorAction
from mailsvc.domain.operator_query import PageRequest
from mailsvc.domain.suppression import Suppression, SuppressionRequest

_IN_FORCE = "(s.expires_at IS NULL OR s.expires_at > now())"
_COLUMNS = "s.address, s.reason, s.delivery_id, s.note, s.created_at, s.expires_at"

_GET = text(f"SELECT {_COLUMNS} FROM suppressions s WHERE s.address = :address AND {_IN_FORCE}")

# `created`: no entry in force was there before (an expired one is replaced as if absent)
_PUT = text(
    f"""
    WITH before AS (SELECT {_IN_FORCE} AS in_force FROM suppressions s WHERE s.address = :address)
    INSERT INTO suppressions AS s (address, reason, delivery_id, note, created_at, expires_at)
    VALUES (:address, :reason, NULL, :note, now(), :expires_at)
    ON CONFLICT (address) DO UPDATE
        SET reason = EXCLUDED.reason, delivery_id = NULL, note = EXCLUDED.note, created_at = EXCLUDED.created_at,
            expires_at = EXCLUDED.expires_at
    RETURNING {_COLUMNS}, NOT COALESCE((SELECT in_force FROM before), false) AS created
    """
)

_DELETE = text(f"DELETE FROM suppressions s WHERE s.address = :address RETURNING {_IN_FORCE} AS in_force")

_LIST = """
    SELECT {columns} FROM suppressions s
    WHERE {where}
    ORDER BY s.created_at DESC, s.address DESC
    LIMIT :limit
"""


def _suppression(row: Any) -> Suppression:
    return Suppression(row.address, row.reason, row.delivery_id, row.note, row.created_at, row.expires_at)


class SuppressionStore:
    """Every method may raise `StoreUnavailable`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def get(self, address: str) -> Suppression | None:
        """The entry in force for a normalised address, or None."""
        async with unavailable_as_domain_error(), self.engine.connect() as conn:
            row = (await conn.execute(_GET, {"address": address})).first()
        return None if row is None else _suppression(row)

    async def put(self, request: SuppressionRequest, action: OperatorAction) -> tuple[Suppression, bool]:
        """Add or replace the entry (committed, with its operator action); True when there was
        none in force before."""
        params = {
            "address": request.address,
            "reason": request.reason,
            "note": request.note,
            "expires_at": request.expires_at,
        }
        async with unavailable_as_domain_error(), self.engine.begin() as conn:
            row = (await conn.execute(_PUT, params)).one()
            await record_actions(conn, [action])
        return _suppression(row), bool(row.created)

    async def delete(self, address: str, action: OperatorAction) -> bool:
        """Remove the entry (committed, with its operator action); False when there was none in
        force (an expired one is removed all the same, and no action is recorded)."""
        async with unavailable_as_domain_error(), self.engine.begin() as conn:
            row = (await conn.execute(_DELETE, {"address": address})).first()
            removed = row is not None and bool(row.in_force)
            if removed:
                await record_actions(conn, [action])
        return removed

    async def list(self, reason: str | None, address: str | None, page: PageRequest) -> list[Suppression]:
        """At most `page.limit` entries in force, newest first, after `page.after`."""
        conditions = [_IN_FORCE]
        params: dict[str, Any] = {"limit": page.limit}
        if reason is not None:
            conditions.append("s.reason = :reason")
            params["reason"] = reason
        if address is not None:
            conditions.append("s.address = :address")
            params["address"] = address
        if page.after is not None:
            conditions.append("(s.created_at, s.address) < (CAST(:after_at AS timestamptz), CAST(:after_key AS text))")
            params["after_at"] = page.after.at
            params["after_key"] = page.after.key
        sql = _LIST.format(columns=_COLUMNS, where=" AND ".join(conditions))
        async with unavailable_as_domain_error(), self.engine.connect() as conn:
            rows = (await conn.execute(text(sql), params)).all()
        return [_suppression(row) for row in rows]
