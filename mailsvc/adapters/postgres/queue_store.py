"""The delivery queue: claims, attempt results, stale-claim recovery and releases.

Every write that follows a claim is fenced by the claim token, so a late worker can never
overwrite a delivery that was recovered and claimed again. Claims and results are batched:
one statement per batch, whatever its size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from mailsvc.adapters.postgres.db import driver_connection, driver_transaction, unavailable_as_domain_error
from mailsvc.adapters.postgres.queue_sql import (
    CLAIM_LIMITED_SQL,
    CLAIM_SQL,
    DUE_BACKLOG,
    EXPIRE,
    FINISH_AND_CLAIM_SQL,
    FINISH_SQL,
    RELEASE,
    STALE,
)
from mailsvc.domain import transitions
from mailsvc.domain.model import ClaimedDelivery, StaleRecovery
from mailsvc.domain.provider import (
    DEFAULT_PROVIDER_POLICY,
    ProviderChange,
    ProviderPolicy,
    ProviderReport,
    provider_report,
)
from mailsvc.domain.transitions import AttemptRecord


class QueueStore:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        provider: ProviderPolicy = DEFAULT_PROVIDER_POLICY,
        on_provider_change: Callable[[ProviderChange], None] = lambda change: None,
    ) -> None:
        self.engine = engine
        # every write here is one statement, atomic on its own: without BEGIN/COMMIT it is one
        # round trip instead of three (the same pool)
        self.single = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.provider = provider
        self.on_provider_change = on_provider_change  # a state change this process wrote (logged once)
        self._claim_sql = CLAIM_LIMITED_SQL if provider.limited else CLAIM_SQL
        self._claim_params: dict[str, Any] = {"probe_s": provider.probe_interval.total_seconds()}
        if provider.limited:
            self._claim_params |= {"rate": provider.rate_limit, "burst": provider.burst}

    async def claim(self, limit: int, lease: timedelta) -> list[ClaimedDelivery]:
        """Claim up to `limit` due deliveries, highest priority then oldest due time first — none
        while the provider is paused but one probe per interval, and no more than the rate limit's
        bucket holds tokens for (SPEC §12)."""
        async with unavailable_as_domain_error(), driver_connection(self.single) as conn:
            params = {**self._claim_params, "limit": limit, "lease_s": lease.total_seconds()}
            rows = await conn.fetch(self._claim_sql.sql, *self._claim_sql.args(params))
        return [claimed_delivery(row) for row in rows]

    async def finish(self, records: Sequence[AttemptRecord]) -> set[UUID]:
        """Write attempts and new statuses in one statement; return the ids whose claim still held.

        Raises `StoreUnavailable` (connection-level) or `DataRefused` (a record's data was refused:
        nothing of the batch is written)."""
        async with unavailable_as_domain_error(), driver_connection(self.single) as conn:
            rows = await conn.fetch(FINISH_SQL.sql, *FINISH_SQL.args(self._finish_params(records)))
        return self._applied(rows)

    async def finish_and_claim(
        self, records: Sequence[AttemptRecord], limit: int, lease: timedelta
    ) -> tuple[set[UUID], list[ClaimedDelivery]]:
        """`finish`, and in the same statement claim up to `limit` due deliveries for the workers
        these results free — none while the provider is not sending or when this batch reports a
        fault; a rate-limited provider's bucket is the scheduler's alone (`claim`)."""
        if limit <= 0 or self.provider.limited:
            return await self.finish(records), []
        params = self._finish_params(records) | {"limit": limit, "lease_s": lease.total_seconds()}
        async with unavailable_as_domain_error(), driver_connection(self.single) as conn:
            rows = await conn.fetch(FINISH_AND_CLAIM_SQL.sql, *FINISH_AND_CLAIM_SQL.args(params))
        claims = [claimed_delivery(row) for row in rows if row["claim_token"] is not None]
        return self._applied([row for row in rows if row["claim_token"] is None]), claims

    def _finish_params(self, records: Sequence[AttemptRecord]) -> dict[str, Any]:
        report = provider_report((r.started_at, r.finished_at, r.result) for r in records)
        return _finish_params(records) | _report_params(report, self.provider)

    def _applied(self, rows: Sequence[Any]) -> set[UUID]:
        """The delivery ids of `_FINISH`'s rows; a row without one is a provider state change."""
        applied: set[UUID] = set()
        for row in rows:
            if row["delivery_id"] is not None:
                applied.add(row["delivery_id"])
            else:
                self.on_provider_change(ProviderChange(row["state"], row["reason"], by="attempt"))
        return applied

    async def recover(self, now: datetime, max_attempts: int, limit: int = 1000) -> StaleRecovery:
        """Settle claims whose deadline passed (`transitions.abandoned`): queued again at once, or
        dead-lettered when their attempts are used up — in one transaction with their row locks."""
        async with unavailable_as_domain_error(), driver_transaction(self.engine) as conn:
            stale = await conn.execute(STALE, {"limit": limit})
            records = [
                transitions.abandoned(
                    row.delivery_id,
                    row.claim_token,
                    row.attempt_count,
                    now,
                    max_attempts=max_attempts,
                    provider_faults=row.provider_faults,
                )
                for row in stale
            ]
            if records:
                await conn.raw.fetch(FINISH_SQL.sql, *FINISH_SQL.args(self._finish_params(records)))
        dead = sum(1 for r in records if r.status == "dead_lettered")
        return StaleRecovery(requeued=len(records) - dead, dead_lettered=dead)

    async def release(self, claims: Sequence[ClaimedDelivery]) -> None:
        """Give back claims whose attempt never started (shutdown): no attempt is recorded."""
        if not claims:
            return
        async with unavailable_as_domain_error(), self.single.connect() as conn:
            await conn.execute(
                RELEASE, {"ids": [c.delivery_id for c in claims], "tokens": [c.claim_token for c in claims]}
            )

    async def expire_claims(self, records: Sequence[AttemptRecord]) -> None:
        """End the claims of attempts whose result could not be stored: the next stale-claim
        recovery records each as `abandoned` (counted towards the attempts) and queues it again."""
        if not records:
            return
        async with unavailable_as_domain_error(), self.single.connect() as conn:
            await conn.execute(
                EXPIRE, {"ids": [r.delivery_id for r in records], "tokens": [r.claim_token for r in records]}
            )

    async def due_backlog(self) -> int:
        async with unavailable_as_domain_error(), self.engine.connect() as conn:
            return int((await conn.execute(DUE_BACKLOG)).scalar_one())


def claimed_delivery(row: Any) -> ClaimedDelivery:
    """A claim's row (`queue_sql.CLAIM_COLUMNS`) as the worker's delivery."""
    claim = ClaimedDelivery(
        delivery_id=row["delivery_id"],
        claim_token=row["claim_token"],
        attempt_number=row["attempt_count"],
        provider_faults=row["provider_faults"],
        message_id=row["message_id"],
        expires_at=row["expires_at"],
        recipients=tuple(row["recipients"]),
        mime=bytes(row["mime"]),
        traceparent=row["traceparent"],
        recipient_kinds=tuple(row["kinds"]),
        source=row["source"],
        submitted_at=row["submitted_at"],
    )
    return claim if not any(row["suppressed"]) else _without_suppressed(claim, row["suppressed"])


def _without_suppressed(claim: ClaimedDelivery, flags: Sequence[bool | None]) -> ClaimedDelivery:
    """`claim` without the recipients suppressed at acceptance: they stay out of the envelope and
    are named in its event."""
    pairs = list(zip(claim.recipients, claim.recipient_kinds, flags, strict=True))
    return replace(
        claim,
        recipients=tuple(a for a, _, gone in pairs if not gone),
        recipient_kinds=tuple(k for _, k, gone in pairs if not gone),
        suppressed=tuple((a, k) for a, k, gone in pairs if gone),
    )


def _finish_params(records: Sequence[AttemptRecord]) -> dict[str, Any]:
    events = [record.event for record in records]
    r_ids, r_tokens, r_addresses, r_outcomes, r_codes, r_replies = [], [], [], [], [], []
    for record in records:
        for recipient in record.recipient_outcomes:
            r_ids.append(record.delivery_id)
            r_tokens.append(record.claim_token)
            r_addresses.append(recipient.address)
            r_outcomes.append("accepted" if recipient.accepted else "refused")
            r_codes.append(recipient.smtp_code)
            r_replies.append(recipient.smtp_reply)
    s_ids, s_tokens, s_addresses, s_at, s_until = [], [], [], [], []
    for record in records:
        for address in record.suppressions:
            s_ids.append(record.delivery_id)
            s_tokens.append(record.claim_token)
            s_addresses.append(address)
            s_at.append(record.finished_at)
            s_until.append(record.suppress_until)
    return {
        "s_ids": s_ids,
        "s_tokens": s_tokens,
        "s_addresses": s_addresses,
        "s_at": s_at,
        "s_until": s_until,
        "ids": [r.delivery_id for r in records],
        "tokens": [r.claim_token for r in records],
        "statuses": [r.status for r in records],
        "next_at": [r.next_attempt_at for r in records],
        "errors": [r.last_error for r in records],
        "numbers": [r.attempt_number for r in records],
        "started": [r.started_at for r in records],
        "finished": [r.finished_at for r in records],
        "outcomes": [r.outcome for r in records],
        "ambiguous": [bool(r.result and r.result.ambiguous) for r in records],
        "codes": [r.result.smtp_code if r.result else None for r in records],
        "replies": [r.result.smtp_reply if r.result else None for r in records],
        "classes": [r.result.error_class if r.result else r.error_class for r in records],
        "providers": [r.provider for r in records],
        "durations": [r.duration_ms for r in records],
        "dead": [r.dead_reason for r in records],
        "event_types": [event.type for event in events],
        "event_data": [orjson.dumps(event.data).decode() for event in events],
        "faults": [r.provider_fault for r in records],
        "r_ids": r_ids,
        "r_tokens": r_tokens,
        "r_addresses": r_addresses,
        "r_outcomes": r_outcomes,
        "r_codes": r_codes,
        "r_replies": r_replies,
    }


def _report_params(report: ProviderReport, policy: ProviderPolicy) -> dict[str, Any]:
    return {
        "p_reset": report.reset,
        "p_connects": report.connect_failures,
        "p_reason": report.pause_reason,
        "p_reset_started": report.reset_started,
        "p_fault_started": report.fault_started,
        "pause_after": policy.pause_after,
        "probe_s": policy.probe_interval.total_seconds(),
    }
