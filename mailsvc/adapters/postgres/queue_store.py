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
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mailsvc.adapters.postgres.db import (
    DriverStatement,
    driver_connection,
    driver_transaction,
    unavailable_as_domain_error,
)
from mailsvc.adapters.postgres.redaction import redact_sql
from mailsvc.domain import transitions
from mailsvc.domain.model import ClaimedDelivery, StaleRecovery
from mailsvc.domain.provider import (
    CONNECT_FAILURES_REASON,
    DEFAULT_PROVIDER_POLICY,
    ProviderChange,
    ProviderPolicy,
    ProviderReport,
    provider_report,
)
from mailsvc.domain.transitions import AttemptRecord

# A delivery that is not terminal has one row in `delivery_queue` (migration 0004): claims, retries,
# recovery and releases touch only that narrow row; `deliveries` itself is written at the end.

# The provider's state row (migration 0008) gates every claim in the same statement, so pausing
# costs the hot path no round trip: while paused, `probe` lets one claim per probe interval through
# (the row's `UPDATE … WHERE next_probe_at <= now()` decides it, so replicas agree), and only when
# something is due. A missing row reads as sending.
_GATE = """
    probe AS (
        UPDATE provider_state SET next_probe_at = now() + make_interval(secs => CAST(:probe_s AS double precision))
        WHERE id = 1 AND CASE WHEN state = 'paused' AND next_probe_at <= now()
            THEN EXISTS (SELECT 1 FROM delivery_queue WHERE claim_token IS NULL AND next_attempt_at <= now())
            ELSE false END
        RETURNING 1
    ), gate AS (
        SELECT COALESCE((
            SELECT CASE WHEN s.state = 'sending' THEN CAST(:limit AS integer)
                        WHEN EXISTS (SELECT 1 FROM probe) THEN 1 ELSE 0 END
            FROM provider_state s WHERE s.id = 1), CAST(:limit AS integer)) AS n
    )"""

# The rate limit's bucket (SPEC §12), one for every replica: the claim takes at most the tokens
# there are, under the row's lock, so work the bucket cannot pay for stays `queued`. It asks only
# for as many as are due (a token granted to a row another replica claimed first is lost: the
# provider sees less, never more). `clock_timestamp()`: the time the lock was obtained.
_REFILL = (
    "LEAST(CAST(:burst AS double precision), s.tokens + CAST(:rate AS double precision)"
    " * GREATEST(0, extract(epoch FROM clock_timestamp() - s.refilled_at)))"
)
_WANT = """LEAST((SELECT n FROM gate), (SELECT count(*) FROM (
            SELECT 1 FROM delivery_queue WHERE claim_token IS NULL AND next_attempt_at <= now()
            LIMIT CAST(:limit AS integer)) due_now))"""
_BUCKET = f"""
    , bucket AS (
        UPDATE provider_state s
        SET granted = LEAST({_WANT}, floor({_REFILL})),
            tokens = {_REFILL} - LEAST({_WANT}, floor({_REFILL})),
            refilled_at = GREATEST(s.refilled_at, clock_timestamp())
        WHERE s.id = 1 AND {_WANT} > 0
        RETURNING s.granted
    )"""

# The CTE fences the LIMIT: without it the planner may update more rows than asked (PITFALLS).
_CLAIM_BODY = """
    , due AS (
        SELECT delivery_id FROM delivery_queue
        WHERE claim_token IS NULL AND next_attempt_at <= now()
        ORDER BY priority, next_attempt_at
        LIMIT {limit}
        FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE delivery_queue q
        SET claim_token = gen_random_uuid(), claim_deadline = now() + make_interval(secs => :lease_s),
            attempt_count = q.attempt_count + 1
        FROM due WHERE q.delivery_id = due.delivery_id
        RETURNING q.delivery_id, q.claim_token, q.attempt_count, q.priority, q.provider_faults
    )
    SELECT c.delivery_id, c.claim_token, c.attempt_count, c.provider_faults, d.message_id, d.expires_at, p.mime,
           d.traceparent, d.source, d.submitted_at,
           rc.recipients, rc.kinds, rc.suppressed
    FROM claimed c
    JOIN deliveries d ON d.delivery_id = c.delivery_id
    JOIN delivery_payloads p ON p.delivery_id = c.delivery_id
    -- one pass over the delivery's recipients for all three lists (three ARRAY subqueries were three
    -- index scans and sorts per claimed delivery)
    CROSS JOIN LATERAL (
        SELECT COALESCE(array_agg(r.address ORDER BY r.position), CAST(ARRAY[] AS text[])) AS recipients,
               COALESCE(array_agg(r.kind ORDER BY r.position), CAST(ARRAY[] AS text[])) AS kinds,
               -- suppressed at acceptance (SPEC §12): never sent to
               COALESCE(array_agg(r.outcome = 'suppressed' ORDER BY r.position), CAST(ARRAY[] AS boolean[]))
                   AS suppressed
        FROM delivery_recipients r WHERE r.delivery_id = c.delivery_id
    ) rc
    ORDER BY c.priority
    """
_CLAIM = text("WITH" + _GATE + _CLAIM_BODY.format(limit="(SELECT n FROM gate)"))
_CLAIM_LIMITED = text("WITH" + _GATE + _BUCKET + _CLAIM_BODY.format(limit="COALESCE((SELECT granted FROM bucket), 0)"))

# What the batch says about the provider (`provider_report`), applied to the shared row in the same
# statement: a success resumes and zeroes the connection failures, a pausing fault or the
# MAIL_PROVIDER_PAUSE_AFTER-th connection failure in a row pauses. The WHERE clause leaves the row
# alone (unlocked) when there is nothing to learn: the usual batch of successes while sending. An
# attempt that started before the last change (in flight when it paused, or was resumed) is not heard.
# `since = now()` afterwards: this statement changed the state (it is logged once, by its writer).
_RESETS = "(CAST(:p_reset AS boolean) AND CAST(:p_reset_started AS timestamptz) >= s.since)"
_FAILURES = f"(CASE WHEN {_RESETS} THEN 0 ELSE s.connect_failures END + CAST(:p_connects AS integer))"
_FAULTS = "(CAST(:p_reason AS text) IS NOT NULL AND CAST(:p_fault_started AS timestamptz) >= s.since)"
_PAUSES = f"({_FAULTS} OR {_FAILURES} >= CAST(:pause_after AS integer))"
_NEW_STATE = f"(CASE WHEN {_PAUSES} THEN 'paused' WHEN {_RESETS} THEN 'sending' ELSE s.state END)"
_PROVIDER_UPDATE = f"""
        UPDATE provider_state s
        SET connect_failures = {_FAILURES},
            state = {_NEW_STATE},
            reason = CASE WHEN {_NEW_STATE} = 'sending' THEN NULL
                          WHEN {_FAULTS} THEN CAST(:p_reason AS text)  -- a probe's newer fault replaces it
                          WHEN {_NEW_STATE} = s.state THEN s.reason ELSE '{CONNECT_FAILURES_REASON}' END,
            since = CASE WHEN {_NEW_STATE} = s.state THEN s.since ELSE now() END,
            next_probe_at = CASE WHEN {_NEW_STATE} = 'sending' THEN NULL
                                 WHEN s.state = 'paused' THEN s.next_probe_at
                                 ELSE now() + make_interval(secs => CAST(:probe_s AS double precision)) END
        WHERE s.id = 1 AND (CAST(:p_reason AS text) IS NOT NULL OR CAST(:p_connects AS integer) > 0
                            OR (CAST(:p_reset AS boolean) AND (s.state = 'paused' OR s.connect_failures > 0)))
        RETURNING s.state, s.reason, s.since = now() AS changed"""

# One statement per batch of results, each fenced by its claim token: a retry updates the queue row,
# an end deletes it and writes the delivery's final state, and every result writes its attempt (and
# dead letter, recipients' outcomes) — a late record for a re-claimed delivery writes nothing at all.
# An end also redacts a sensitive delivery's content (SPEC §13), in the same statement.
_FINISH = text(
    f"""
    WITH r AS (
        SELECT * FROM unnest(
            CAST(:ids AS uuid[]), CAST(:tokens AS uuid[]), CAST(:statuses AS text[]),
            CAST(:next_at AS timestamptz[]), CAST(:errors AS text[]), CAST(:numbers AS integer[]),
            CAST(:started AS timestamptz[]), CAST(:finished AS timestamptz[]), CAST(:outcomes AS text[]),
            CAST(:ambiguous AS boolean[]), CAST(:codes AS integer[]), CAST(:replies AS text[]),
            CAST(:classes AS text[]), CAST(:providers AS text[]), CAST(:durations AS integer[]),
            CAST(:dead AS text[]), CAST(:event_types AS text[]), CAST(:event_data AS text[]),
            CAST(:faults AS boolean[]))
            AS r(id, token, status, next_at, err, num, started, fin, outcome, amb, code, reply, cls, prov, dur, dead,
                 ev_type, ev_data, fault)
    ), retried AS (
        UPDATE delivery_queue q
        SET claim_token = NULL, claim_deadline = NULL, next_attempt_at = r.next_at, last_error = r.err,
            provider_faults = q.provider_faults + CASE WHEN r.fault THEN 1 ELSE 0 END
        FROM r
        WHERE q.delivery_id = r.id AND q.claim_token = r.token AND r.status = 'queued'
        RETURNING q.delivery_id, r.token
    ), ended AS (
        DELETE FROM delivery_queue q USING r
        WHERE q.delivery_id = r.id AND q.claim_token = r.token AND r.status <> 'queued'
        RETURNING q.delivery_id, r.token, q.attempt_count
    ), final AS (
        UPDATE deliveries d
        SET status = r.status, attempt_count = e.attempt_count, last_error = r.err, updated_at = r.fin,
            finished_at = r.fin
        FROM ended e JOIN r ON r.id = e.delivery_id AND r.token = e.token
        WHERE d.delivery_id = e.delivery_id
    ), redacted AS ({redact_sql("SELECT delivery_id FROM ended")}
    ), applied AS (
        SELECT delivery_id, token FROM retried UNION ALL SELECT delivery_id, token FROM ended
    ), attempt_rows AS (
        INSERT INTO attempts (delivery_id, number, started_at, finished_at, outcome, ambiguous, smtp_code,
                              smtp_reply, error_class, provider, duration_ms)
        SELECT r.id, r.num, r.started, r.fin, r.outcome, r.amb, r.code, r.reply, r.cls, r.prov, r.dur
        FROM r JOIN applied a ON a.delivery_id = r.id AND a.token = r.token
    ), dead_rows AS (
        INSERT INTO dead_letters (delivery_id, reason, last_error, created_at)
        SELECT r.id, r.dead, r.err, r.fin FROM r JOIN applied a ON a.delivery_id = r.id AND a.token = r.token
        WHERE r.dead IS NOT NULL
    ), recipient_rows AS (
        UPDATE delivery_recipients dr
        SET outcome = x.outcome, smtp_code = x.code, smtp_reply = x.reply
        FROM unnest(
            CAST(:r_ids AS uuid[]), CAST(:r_tokens AS uuid[]), CAST(:r_addresses AS text[]),
            CAST(:r_outcomes AS text[]), CAST(:r_codes AS integer[]), CAST(:r_replies AS text[]))
            AS x(id, token, address, outcome, code, reply)
        JOIN applied a ON a.delivery_id = x.id AND a.token = x.token
        WHERE dr.delivery_id = x.id AND lower(dr.address) = lower(x.address)
    ), event_rows AS (
        -- the outbox (SPEC §11): the event is committed with the change it describes, or not at all
        INSERT INTO delivery_events (delivery_id, type, data)
        SELECT r.id, r.ev_type, CAST(r.ev_data AS jsonb)
        FROM r JOIN applied a ON a.delivery_id = r.id AND a.token = r.token
    ), suppression_rows AS (
        -- hard bounces (SPEC §12), with the result that saw them: one row per address (an entry an
        -- operator made, or a complaint, stays as it is until it expires)
        INSERT INTO suppressions AS s (address, reason, delivery_id, created_at, expires_at)
        SELECT DISTINCT ON (x.address) x.address, 'hard_bounce', x.id, x.at, x.until
        FROM unnest(
            CAST(:s_ids AS uuid[]), CAST(:s_tokens AS uuid[]), CAST(:s_addresses AS text[]),
            CAST(:s_at AS timestamptz[]), CAST(:s_until AS timestamptz[]))
            AS x(id, token, address, at, until)
        JOIN applied a ON a.delivery_id = x.id AND a.token = x.token
        ORDER BY x.address, x.at DESC
        ON CONFLICT (address) DO UPDATE
            SET reason = 'hard_bounce', delivery_id = EXCLUDED.delivery_id, note = NULL,
                created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at
            WHERE s.reason = 'hard_bounce' OR s.expires_at <= EXCLUDED.created_at
    ), provider AS ({{provider}}
    )
    SELECT delivery_id, NULL AS state, NULL AS reason FROM applied
    UNION ALL SELECT NULL, state, reason FROM provider WHERE changed
    """.replace("{provider}", _PROVIDER_UPDATE)
)

# recovery picks the stale claims; what becomes of each is `transitions.abandoned`, written by the
# same statement as any other result, in the same transaction as this row lock
_STALE = text(
    """
    SELECT delivery_id, claim_token, attempt_count, provider_faults FROM delivery_queue
    WHERE claim_token IS NOT NULL AND claim_deadline < now()
    ORDER BY claim_deadline
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)

_RELEASE = text(
    """
    UPDATE delivery_queue q
    SET claim_token = NULL, claim_deadline = NULL, next_attempt_at = now(), attempt_count = q.attempt_count - 1
    FROM unnest(CAST(:ids AS uuid[]), CAST(:tokens AS uuid[])) AS r(id, token)
    WHERE q.delivery_id = r.id AND q.claim_token = r.token
    """
)

# a claim whose result cannot be stored: stale recovery takes it on its next pass, not at the deadline
_EXPIRE = text(
    """
    UPDATE delivery_queue q
    SET claim_deadline = now()
    FROM unnest(CAST(:ids AS uuid[]), CAST(:tokens AS uuid[])) AS r(id, token)
    WHERE q.delivery_id = r.id AND q.claim_token = r.token
    """
)

# claims and results run for every delivery: straight through asyncpg (see `driver_connection`)
_CLAIM_SQL = DriverStatement(_CLAIM)
_CLAIM_LIMITED_SQL = DriverStatement(_CLAIM_LIMITED)
_FINISH_SQL = DriverStatement(_FINISH)

_DUE_BACKLOG = text("SELECT count(*) FROM delivery_queue WHERE claim_token IS NULL AND next_attempt_at <= now()")


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
        self._claim_sql = _CLAIM_LIMITED_SQL if provider.limited else _CLAIM_SQL
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
        claims = [
            ClaimedDelivery(
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
            for row in rows
        ]
        return [
            claim if not any(row["suppressed"]) else _without_suppressed(claim, row["suppressed"])
            for claim, row in zip(claims, rows, strict=True)
        ]

    async def finish(self, records: Sequence[AttemptRecord]) -> set[UUID]:
        """Write attempts and new statuses in one statement; return the ids whose claim still held.

        Raises `StoreUnavailable` (connection-level) or `DataRefused` (a record's data was refused:
        nothing of the batch is written)."""
        async with unavailable_as_domain_error(), driver_connection(self.single) as conn:
            rows = await conn.fetch(_FINISH_SQL.sql, *_FINISH_SQL.args(self._finish_params(records)))
        return self._applied(rows)

    def _finish_params(self, records: Sequence[AttemptRecord]) -> dict[str, Any]:
        report = provider_report((r.started_at, r.finished_at, r.result) for r in records)
        return _finish_params(records) | _report_params(report, self.provider)

    def _applied(self, rows: Sequence[Any]) -> set[UUID]:
        """The delivery ids of `_FINISH`'s rows; a row without one is a provider state change."""
        applied: set[UUID] = set()
        for row in rows:
            if row[0] is not None:
                applied.add(row[0])
            else:
                self.on_provider_change(ProviderChange(row[1], row[2], by="attempt"))
        return applied

    async def recover(self, now: datetime, max_attempts: int, limit: int = 1000) -> StaleRecovery:
        """Settle claims whose deadline passed (`transitions.abandoned`): queued again at once, or
        dead-lettered when their attempts are used up — in one transaction with their row locks."""
        async with unavailable_as_domain_error(), driver_transaction(self.engine) as conn:
            stale = await conn.execute(_STALE, {"limit": limit})
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
                await conn.raw.fetch(_FINISH_SQL.sql, *_FINISH_SQL.args(self._finish_params(records)))
        dead = sum(1 for r in records if r.status == "dead_lettered")
        return StaleRecovery(requeued=len(records) - dead, dead_lettered=dead)

    async def release(self, claims: Sequence[ClaimedDelivery]) -> None:
        """Give back claims whose attempt never started (shutdown): no attempt is recorded."""
        if not claims:
            return
        async with unavailable_as_domain_error(), self.single.connect() as conn:
            await conn.execute(
                _RELEASE, {"ids": [c.delivery_id for c in claims], "tokens": [c.claim_token for c in claims]}
            )

    async def expire_claims(self, records: Sequence[AttemptRecord]) -> None:
        """End the claims of attempts whose result could not be stored: the next stale-claim
        recovery records each as `abandoned` (counted towards the attempts) and queues it again."""
        if not records:
            return
        async with unavailable_as_domain_error(), self.single.connect() as conn:
            await conn.execute(
                _EXPIRE, {"ids": [r.delivery_id for r in records], "tokens": [r.claim_token for r in records]}
            )

    async def due_backlog(self) -> int:
        async with unavailable_as_domain_error(), self.engine.connect() as conn:
            return int((await conn.execute(_DUE_BACKLOG)).scalar_one())


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
