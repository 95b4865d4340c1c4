"""Redrive writes (SPEC §14): dead letters resent in bounded batches, each batch one transaction
holding the new deliveries, the marks on the dead letters they resend, and the operator action.

"At most once across redrives" is the database's: a batch locks the dead letters it picks
(`FOR UPDATE SKIP LOCKED`, among those not redriven yet) and marks them with a conditional UPDATE
in the transaction that creates their resends — a concurrent redrive skips them, a later one no
longer sees them, and a batch that finds one marked meanwhile rolls back whole.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mailsvc.adapters.postgres.db import DriverConnection, driver_transaction, unavailable_as_domain_error
from mailsvc.adapters.postgres.intake_store import IntakeStore
from mailsvc.adapters.postgres.operator_actions import record_actions
from mailsvc.adapters.postgres.read_store import RESEND_SOURCE_COLUMNS, resend_source_of
from mailsvc.domain.intake import NewDelivery
from mailsvc.domain.model import ResendSource
from mailsvc.domain.operator_actions import ActionKind, OperatorAction
from mailsvc.domain.redrive import RedriveCounts, RedriveFilter
from mailsvc.errors import ActionKeyTaken, DataRefused

_FROM = """
    FROM dead_letters dl
    JOIN deliveries d ON d.delivery_id = dl.delivery_id
    LEFT JOIN delivery_payloads p ON p.delivery_id = dl.delivery_id
"""

_COUNT = """
    SELECT count(*) AS matched,
           count(*) FILTER (WHERE dl.redriven_by IS NOT NULL) AS already,
           count(*) FILTER (WHERE dl.redriven_by IS NULL AND (p.delivery_id IS NULL OR p.redacted_at IS NOT NULL))
               AS redacted
    {source}
    {where}
"""

_PICK = """
    SELECT dl.delivery_id
    {source}
    WHERE dl.redriven_by IS NULL AND p.delivery_id IS NOT NULL AND p.redacted_at IS NULL {conditions}
    ORDER BY dl.created_at, dl.delivery_id
    LIMIT :size
    FOR UPDATE OF dl SKIP LOCKED
"""

_SOURCES = text(
    f"""
    SELECT {RESEND_SOURCE_COLUMNS}
    FROM delivery_states d JOIN delivery_payloads p ON p.delivery_id = d.delivery_id
    WHERE d.delivery_id = ANY(CAST(:ids AS uuid[]))
    """
)

_MARK = text(
    """
    UPDATE dead_letters dl SET redriven_by = :action, redriven_at = now(), redriven_to = x.resend
    FROM unnest(CAST(:ids AS uuid[]), CAST(:resends AS uuid[])) AS x(id, resend)
    WHERE dl.delivery_id = x.id AND dl.redriven_by IS NULL
    """
)

_UPDATE_COUNTS = text("UPDATE operator_actions SET counts = CAST(:counts AS jsonb) WHERE action_id = :id")

_FIND_ACTION = text(
    """
    SELECT action_id, kind, actor, counts, note, idempotency_key, request_hash, created_at
    FROM operator_actions WHERE kind = :kind AND idempotency_key = :key
    """
)


def filter_conditions(chosen: RedriveFilter) -> tuple[list[str], dict[str, Any]]:
    """SQL conditions (on `dl`, `d`) and parameters selecting the dead letters of `chosen`."""
    conditions: list[str] = []
    params: dict[str, Any] = {}
    if chosen.reason is not None:
        conditions.append("dl.reason = :reason")
        params["reason"] = chosen.reason
    if chosen.source is not None:
        conditions.append("d.source = :source")
        params["source"] = chosen.source
    if chosen.template is not None:
        conditions.append("d.template = :template")
        params["template"] = chosen.template
    if chosen.created_after is not None:
        conditions.append("dl.created_at >= :created_after")
        params["created_after"] = chosen.created_after
    if chosen.created_before is not None:
        conditions.append("dl.created_at < :created_before")
        params["created_before"] = chosen.created_before
    if chosen.recipient_domain is not None:
        conditions.append(
            "EXISTS (SELECT 1 FROM delivery_recipients r WHERE r.delivery_id = dl.delivery_id "
            "AND lower(substring(r.address FROM '@([^@]*)$')) = :domain)"
        )
        params["domain"] = chosen.recipient_domain
    return conditions, params


class RedriveStore:
    def __init__(self, engine: AsyncEngine, intake: IntakeStore) -> None:
        self.engine = engine
        self.intake = intake

    async def count(self, chosen: RedriveFilter) -> tuple[int, int, int]:
        """(matched, already redriven, redacted) among the dead letters `chosen` selects."""
        conditions, params = filter_conditions(chosen)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        async with unavailable_as_domain_error(), self.engine.connect() as conn:
            row = (await conn.execute(text(_COUNT.format(source=_FROM, where=where)), params)).one()
        return int(row.matched), int(row.already), int(row.redacted)

    async def find_action(self, kind: ActionKind, key: str) -> OperatorAction | None:
        """The action recorded earlier with this `Idempotency-Key`, if any."""
        async with unavailable_as_domain_error(), self.engine.connect() as conn:
            row = (await conn.execute(_FIND_ACTION, {"kind": kind, "key": key})).first()
        if row is None:
            return None
        counts = orjson.loads(row.counts) if isinstance(row.counts, str | bytes) else row.counts
        return OperatorAction(
            kind=row.kind,
            actor=row.actor,
            counts=counts,
            note=row.note,
            action_id=row.action_id,
            idempotency_key=row.idempotency_key,
            request_hash=None if row.request_hash is None else bytes(row.request_hash),
            created_at=row.created_at,
        )

    async def redrive_batch(
        self,
        chosen: RedriveFilter,
        size: int,
        build: Callable[[Sequence[ResendSource]], list[NewDelivery]],
        action: OperatorAction,
        counts_after: Callable[[int], RedriveCounts],
        *,
        first: bool,
        idempotency_ttl: timedelta,
    ) -> int:
        """Resend up to `size` dead letters of `chosen` not redriven yet (oldest first) and return
        how many, in one transaction that also records `action` (`first`) or updates its counts to
        `counts_after(n)`. Raises `ActionKeyTaken` when `first` and another request recorded an
        action with the same `Idempotency-Key` (nothing of this batch is written)."""
        conditions, params = filter_conditions(chosen)
        pick = text(_PICK.format(source=_FROM, conditions="".join(f" AND {c}" for c in conditions)))
        try:
            async with unavailable_as_domain_error(), driver_transaction(self.engine) as conn:
                picked = [row.delivery_id for row in await conn.execute(pick, {**params, "size": size})]
                created = await self._resend(conn, picked, build, action.action_id, idempotency_ttl)
                counts = counts_after(created)
                if first:
                    await record_actions(conn, [_with_counts(action, counts)])
                else:
                    await conn.execute(
                        _UPDATE_COUNTS, {"counts": orjson.dumps(counts.as_json()).decode(), "id": action.action_id}
                    )
        except DataRefused as exc:
            cause = exc.__cause__
            if isinstance(cause, asyncpg.UniqueViolationError) and cause.constraint_name == "operator_actions_key_idx":
                raise ActionKeyTaken(action.idempotency_key or "") from exc
            raise
        return created

    async def _resend(
        self,
        conn: DriverConnection,
        picked: Sequence[UUID],
        build: Callable[[Sequence[ResendSource]], list[NewDelivery]],
        action_id: UUID,
        ttl: timedelta,
    ) -> int:
        if not picked:
            return 0
        sources = [resend_source_of(row) for row in await conn.execute(_SOURCES, {"ids": list(picked)})]
        deliveries = build(sources)
        outcomes = await self.intake.write(conn, deliveries, [], stream_key="", offset=None, idempotency_ttl=ttl)
        resent = {d.resend_of: o.delivery_id for d, o in zip(deliveries, outcomes, strict=True)}
        created = sum(1 for o in outcomes if o.kind == "created")
        ids = [i for i in picked if i in resent]
        marked = await conn.execute(_MARK, {"action": action_id, "ids": ids, "resends": [resent[i] for i in ids]})
        if marked.rowcount != len(ids):  # cannot happen under the row locks; never resend twice
            raise RuntimeError("a dead letter was redriven by another request during this batch")
        return created


def _with_counts(action: OperatorAction, counts: RedriveCounts) -> OperatorAction:
    as_json: Mapping[str, int] = counts.as_json()
    return replace(action, counts=as_json)
