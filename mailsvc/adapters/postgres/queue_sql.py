"""The delivery queue's statements (`queue_store` runs them).

A delivery that is not terminal has one row in `delivery_queue` (migration 0004): claims, retries,
recovery and releases touch only that narrow row; `deliveries` itself is written at the end.
"""

from __future__ import annotations

from sqlalchemy import text

from mailsvc.adapters.postgres.db import DriverStatement
from mailsvc.adapters.postgres.redaction import redact_sql
from mailsvc.domain.provider import CONNECT_FAILURES_REASON

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
_CLAIMED = """
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
    )"""
# what a claim gives its worker, in this order (`claimed_delivery` reads them by name)
CLAIM_COLUMNS = (
    "c.delivery_id", "c.claim_token", "c.attempt_count", "c.provider_faults", "d.message_id", "d.expires_at",
    "p.mime", "d.traceparent", "d.source", "d.submitted_at", "rc.recipients", "rc.kinds", "rc.suppressed",
)  # fmt: skip
_CLAIMED_ROWS = """
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
    ) rc"""
_CLAIM_BODY = _CLAIMED + f"\n    SELECT {', '.join(CLAIM_COLUMNS)}" + _CLAIMED_ROWS + "\n    ORDER BY c.priority\n"
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
_FINISH_CTES = f"""
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
    )""".replace("{provider}", _PROVIDER_UPDATE)
_FINISH = text(
    _FINISH_CTES
    + """
    SELECT delivery_id, NULL AS state, NULL AS reason FROM applied
    UNION ALL SELECT NULL, state, reason FROM provider WHERE changed
    """
)

# A result write that also claims the next work for the workers it frees (during a backlog): the
# claim's fixed cost and round trip are paid once per cycle instead of twice, and a worker goes on
# with its next delivery without waiting for the scheduler. One snapshot serves both halves: the
# rows this statement ends or requeues were claimed in it, so `due` cannot see them, and it claims
# nothing while the provider is not sending or this very batch reports a fault (the scheduler's
# own claim probes a paused provider; a rate-limited one is claimed by the scheduler alone).
# Rows: a claim has its token; an applied result only its delivery id; a state change neither.
_NO_CLAIM = ", ".join(["NULL"] * len(CLAIM_COLUMNS))
_FINISH_AND_CLAIM = text(
    _FINISH_CTES
    + """
    , gate AS (
        SELECT CASE WHEN CAST(:p_reason AS text) IS NULL AND CAST(:p_connects AS integer) = 0
                     AND COALESCE((SELECT s.state FROM provider_state s WHERE s.id = 1), 'sending') = 'sending'
               THEN CAST(:limit AS integer) ELSE 0 END AS n
    )"""
    + _CLAIMED.format(limit="(SELECT n FROM gate)")
    + f"""
    SELECT {", ".join(CLAIM_COLUMNS)}, NULL AS state, NULL AS reason{_CLAIMED_ROWS}
    UNION ALL SELECT delivery_id, {_NO_CLAIM[6:]}, NULL, NULL FROM applied
    UNION ALL SELECT {_NO_CLAIM}, state, reason FROM provider WHERE changed
    """
)

# recovery picks the stale claims; what becomes of each is `transitions.abandoned`, written by the
# same statement as any other result, in the same transaction as this row lock
STALE = text(
    """
    SELECT delivery_id, claim_token, attempt_count, provider_faults FROM delivery_queue
    WHERE claim_token IS NOT NULL AND claim_deadline < now()
    ORDER BY claim_deadline
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)

RELEASE = text(
    """
    UPDATE delivery_queue q
    SET claim_token = NULL, claim_deadline = NULL, next_attempt_at = now(), attempt_count = q.attempt_count - 1
    FROM unnest(CAST(:ids AS uuid[]), CAST(:tokens AS uuid[])) AS r(id, token)
    WHERE q.delivery_id = r.id AND q.claim_token = r.token
    """
)

# a claim whose result cannot be stored: stale recovery takes it on its next pass, not at the deadline
EXPIRE = text(
    """
    UPDATE delivery_queue q
    SET claim_deadline = now()
    FROM unnest(CAST(:ids AS uuid[]), CAST(:tokens AS uuid[])) AS r(id, token)
    WHERE q.delivery_id = r.id AND q.claim_token = r.token
    """
)

# claims and results run for every delivery: straight through asyncpg (see `driver_connection`)
CLAIM_SQL = DriverStatement(_CLAIM)
CLAIM_LIMITED_SQL = DriverStatement(_CLAIM_LIMITED)
FINISH_SQL = DriverStatement(_FINISH)
FINISH_AND_CLAIM_SQL = DriverStatement(_FINISH_AND_CLAIM)

DUE_BACKLOG = text("SELECT count(*) FROM delivery_queue WHERE claim_token IS NULL AND next_attempt_at <= now()")
