"""Acceptance writes: deliveries, idempotency keys, malformed commands and stream offsets.

A batch is one transaction of a few array-parameter statements (`unnest`), whatever its size:
round trips, not rows, are what cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any, Literal, TypeVar
from uuid import UUID

import asyncpg
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mailsvc.adapters.postgres.batch_rows import BatchRows, Column
from mailsvc.adapters.postgres.db import DriverConnection, driver_transaction, unavailable_as_domain_error
from mailsvc.adapters.postgres.operator_actions import record_actions
from mailsvc.adapters.postgres.payload_bodies import stored_body
from mailsvc.adapters.postgres.redaction import redact, redact_sql
from mailsvc.domain import transitions
from mailsvc.domain.intake import CancelOutcome, KeyOutcome, NewDelivery, OffsetAdvance
from mailsvc.domain.operator_actions import OperatorAction
from mailsvc.domain.stream import parse_id
from mailsvc.domain.stream_entries import CancelCommand, MalformedCommand
from mailsvc.errors import NotFound, OffsetMoved

T = TypeVar("T")
WORK_CHANNEL = "mailsvc_work"
# bytes of content per statement: the driver encodes a statement's parameters (a COPY's rows) in one go on the
# event loop, so a batch of 500 large commands (hundreds of MB) is sent as several statements
STATEMENT_BYTES = 4 * 1024 * 1024
_MICROSECOND = timedelta(microseconds=1)


# the key expires `ttl` after its creation: microseconds (an interval without days, so no time
# zone's daylight saving time can lengthen or shorten it), as Python's datetime + timedelta adds
_CLAIM_KEYS = BatchRows(
    """
    INSERT INTO idempotency_keys (source, key, request_hash, delivery_id, created_at, expires_at)
    SELECT src, k, h, id, ca, ca + CAST(:ttl_us AS bigint) * INTERVAL '1 microsecond' FROM ({rows}) AS r
    ON CONFLICT (source, key) DO UPDATE
        SET request_hash = EXCLUDED.request_hash, delivery_id = EXCLUDED.delivery_id,
            created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at
        WHERE idempotency_keys.expires_at <= EXCLUDED.created_at
    RETURNING source, key
    """,
    [
        Column("sources", "src", "text", shared=True),
        Column("keys", "k", "text"),
        Column("hashes", "h", "bytea"),
        Column("ids", "id", "uuid"),
        Column("created", "ca", "timestamptz"),
    ],
)

_EXISTING_KEYS = text(
    """
    SELECT k.key, k.request_hash, k.delivery_id, k.expires_at, d.status
    FROM idempotency_keys k JOIN delivery_states d ON d.delivery_id = k.delivery_id
    WHERE k.source = :source AND k.key = ANY(CAST(:keys AS text[]))
    """
)

# a queued delivery gets its queue row (migration 0004), and every one its first event (the outbox,
# SPEC §11), in the same statement; `send_at` is the requested one (mostly none: acceptance, `ca`)
_INSERT_DELIVERIES = BatchRows(
    """
    WITH t AS ({rows}
    ), events AS (
        INSERT INTO delivery_events (delivery_id, type, data) SELECT id, et, CAST(ed AS jsonb) FROM t
    ), rows AS (
        INSERT INTO deliveries (
            delivery_id, source, status, template, locale, template_digest, priority, send_at, expires_at,
            idempotency_key, message_id, tags, resend_of, created_at, updated_at, finished_at, traceparent,
            collapse_key, submitted_at)
        SELECT id, src, st, tpl, loc, dig, pri, COALESCE(sa, ca), ea, k, mid, CAST(tg AS jsonb), ro, ca, ca,
               CASE WHEN st <> 'queued' THEN ca END, tp, ck, sub
        FROM t
    )
    INSERT INTO delivery_queue (delivery_id, priority, next_attempt_at, created_at, collapse_source, collapse_key)
    SELECT id, pri, COALESCE(sa, ca), ca, CASE WHEN ck IS NOT NULL THEN src END, ck FROM t WHERE st = 'queued'
    """,
    [
        Column("ids", "id", "uuid"),
        Column("sources", "src", "text", shared=True),
        Column("statuses", "st", "text", shared=True),
        Column("templates", "tpl", "text", shared=True),
        Column("locales", "loc", "text", shared=True),
        Column("digests", "dig", "text", shared=True),
        Column("priorities", "pri", "smallint", shared=True),
        Column("send_at", "sa", "timestamptz", shared=True),
        Column("expires_at", "ea", "timestamptz", shared=True),
        Column("keys", "k", "text"),
        Column("message_ids", "mid", "text"),
        Column("tags", "tg", "text", shared=True),
        Column("resend_of", "ro", "uuid", shared=True),
        Column("created", "ca", "timestamptz"),
        Column("traceparents", "tp", "text", shared=True),
        Column("event_types", "et", "text", shared=True),
        Column("event_data", "ed", "text", shared=True),
        Column("collapse_keys", "ck", "text", shared=True),
        Column("submitted", "sub", "timestamptz"),
    ],
)

# plain rows, copied in (`DriverConnection.copy`): what each tuple holds, in this order
_RECIPIENT_COLUMNS = ("delivery_id", "position", "kind", "address", "display_name", "outcome")

# the suppression list at acceptance (SPEC §12): one statement for every recipient of a batch
_SUPPRESSED = text(
    """
    SELECT address FROM suppressions
    WHERE address = ANY(CAST(:addresses AS text[])) AND (expires_at IS NULL OR expires_at > now())
    """
)

# Acceptances with one collapse key take turns (transaction-scoped, in a fixed order so two
# batches never wait on each other): the supersede statement of the second then sees the first's
# delivery, so however they interleave exactly one queued delivery per key is left. The two-key
# form never meets the consumer's one-key lock (pg_locks tells them apart by `objsubid`).
COLLAPSE_LOCK_SPACE = 1_298_753_012
_LOCK_COLLAPSE_KEYS = text(
    f"""
    WITH k AS MATERIALIZED (
        SELECT DISTINCT hashtext(s || ':' || ck) AS h
        FROM unnest(CAST(:sources AS text[]), CAST(:keys AS text[])) AS k(s, ck)
        ORDER BY 1)
    SELECT count(pg_advisory_xact_lock({COLLAPSE_LOCK_SPACE}, h)) FROM k
    """
)

# Every queued, unclaimed delivery of a winner's (source, collapse key) — older acceptances and
# earlier ones of this batch — is superseded by it: its queue row goes (a claim holding the row
# wins: the row is left to finish), its final state, its event and its redaction (SPEC §13) are written,
# in one statement. The queue row carries the collapse key (migration 0011): only live deliveries
# have one, so no status is consulted.
_SUPERSEDE = text(
    f"""
    WITH w AS (
        SELECT * FROM unnest(
            CAST(:sources AS text[]), CAST(:keys AS text[]), CAST(:winners AS uuid[]),
            CAST(:event_types AS text[]), CAST(:event_data AS text[]), CAST(:at AS timestamptz[]))
            AS w(src, ck, winner, et, ed, at)
    ), gone AS (
        DELETE FROM delivery_queue q USING w
        WHERE q.collapse_source = w.src AND q.collapse_key = w.ck AND q.delivery_id <> w.winner
          AND q.claim_token IS NULL
        RETURNING q.delivery_id, q.attempt_count, w.winner, w.et, w.ed, w.at
    ), ended AS (
        UPDATE deliveries d
        SET status = 'superseded', superseded_by = g.winner, attempt_count = g.attempt_count,
            updated_at = g.at, finished_at = g.at
        FROM gone g WHERE d.delivery_id = g.delivery_id
        RETURNING d.delivery_id, g.winner
    ), events AS (
        INSERT INTO delivery_events (delivery_id, type, data) SELECT delivery_id, et, CAST(ed AS jsonb) FROM gone
    ), redacted AS ({redact_sql("SELECT delivery_id FROM ended")}
    )
    SELECT winner, count(*) AS superseded FROM ended GROUP BY winner
    """
)

# A cancel (SPEC §12) wins or loses against a claim by the queue row's lock: the DELETE takes only
# an unclaimed row, and a claim's `FOR UPDATE SKIP LOCKED` skips a row being deleted — exactly one
# of them gets it. The end state, the event and the redaction (SPEC §13) are written by the same statement.
CANCEL = text(
    f"""
    WITH c AS (
        SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:event_types AS text[]), CAST(:event_data AS text[]))
            AS c(id, et, ed)
    ), gone AS (
        DELETE FROM delivery_queue q USING c
        WHERE q.delivery_id = c.id AND q.claim_token IS NULL
        RETURNING q.delivery_id, q.attempt_count, c.et, c.ed
    ), ended AS (
        UPDATE deliveries d
        SET status = 'cancelled', attempt_count = g.attempt_count, updated_at = now(), finished_at = now()
        FROM gone g WHERE d.delivery_id = g.delivery_id AND d.status = 'queued'
        RETURNING d.delivery_id
    ), events AS (
        INSERT INTO delivery_events (delivery_id, type, data) SELECT delivery_id, et, CAST(ed AS jsonb) FROM gone
    ), redacted AS ({redact_sql("SELECT delivery_id FROM ended")}
    )
    SELECT delivery_id FROM ended
    """
)

_EXISTS = text("SELECT 1 FROM deliveries WHERE delivery_id = :id")

_CANCEL_TARGETS = text(
    """
    SELECT key, delivery_id FROM idempotency_keys
    WHERE source = 'notification' AND key = ANY(CAST(:keys AS text[]))
    """
)

# a body the MIME message holds verbatim is sent as its span only (`payload_bodies.py`)
_PAYLOAD_COLUMNS = (
    "delivery_id", "subject", "text_body", "html_body", "text_span", "html_span", "reply_to", "headers", "mime",
    "sensitive",
)  # fmt: skip

_INSERT_MALFORMED = text(
    """
    INSERT INTO malformed_commands (stream_key, stream_entry_id, idempotency_key, reason, message, raw_fields)
    SELECT CAST(:stream_key AS text), * FROM unnest(
        CAST(:entry_ids AS text[]), CAST(:keys AS text[]), CAST(:reasons AS text[]),
        CAST(:messages AS text[]), CAST(:raws AS bytea[]))
    """
)

_ADVANCE_OFFSET = text(
    "UPDATE stream_offsets SET last_id = :new, updated_at = now() WHERE stream_key = :key AND last_id = :expected"
)
_FIRST_OFFSET = text(
    "INSERT INTO stream_offsets (stream_key, last_id) VALUES (:key, :new) ON CONFLICT (stream_key) DO NOTHING"
)
_INSERT_STREAM_EVENT = text(
    "INSERT INTO stream_events (stream_key, kind, from_offset, to_offset, detail) "
    "VALUES (:key, :kind, :from_offset, :to_offset, :detail)"
)
_NOTIFY = text(f"SELECT pg_notify('{WORK_CHANNEL}', '')")


class IntakeStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def accept(
        self,
        deliveries: Sequence[NewDelivery],
        malformed: Sequence[MalformedCommand],
        *,
        stream_key: str,
        offset: OffsetAdvance | None,
        idempotency_ttl: timedelta,
        cancels: Sequence[CancelCommand] = (),
        cancel_outcomes: list[CancelOutcome] | None = None,
    ) -> list[KeyOutcome]:
        """Persist a batch in one transaction (see `AcceptanceStore.accept`).

        Raises `OffsetMoved` (nothing written) when another consumer moved the offset.
        """
        # straight through asyncpg: SQLAlchemy's execution layer cost more CPU than the statements
        async with unavailable_as_domain_error(), driver_transaction(self.engine) as conn:
            return await self.write(
                conn,
                deliveries,
                malformed,
                stream_key=stream_key,
                offset=offset,
                idempotency_ttl=idempotency_ttl,
                cancels=cancels,
                cancel_outcomes=cancel_outcomes,
            )

    async def write(
        self,
        conn: DriverConnection,
        deliveries: Sequence[NewDelivery],
        malformed: Sequence[MalformedCommand],
        *,
        stream_key: str,
        offset: OffsetAdvance | None,
        idempotency_ttl: timedelta,
        cancels: Sequence[CancelCommand] = (),
        cancel_outcomes: list[CancelOutcome] | None = None,
    ) -> list[KeyOutcome]:
        """`accept` within the caller's transaction (a redrive marks its dead letters in the same one)."""
        outcomes = await self._claim_keys(conn, deliveries, idempotency_ttl) if deliveries else []
        positions = [i for i, o in enumerate(outcomes) if o.kind == "created"]
        created = [deliveries[i] for i in positions]
        if created:
            created = await self._check_suppressions(conn, created)
            collapsing = [d for d in created if d.status == "queued" and d.collapse_key is not None]
            if collapsing:
                await self._lock_collapse_keys(conn, collapsing)
            await self._insert_deliveries(conn, created)
            superseded = await self._supersede(conn, collapsing) if collapsing else {}
            for index, d in zip(positions, created, strict=True):
                count = superseded.get(d.delivery_id, 0)
                if count or d.status != outcomes[index].status:  # suppressed at the door, or collapsing
                    outcomes[index] = replace(outcomes[index], status=d.status, superseded=count)
            await record_actions(conn, [d.operator_action for d in created if d.operator_action is not None])
            # suppressed at the door: terminal in this transaction, so redacted in it (SPEC §13)
            await redact(conn, [d.delivery_id for d in created if d.content.sensitive and d.status != "queued"])
        judged = [
            _malformed(d, o) for d, o in zip(deliveries, outcomes, strict=True) if o.kind in ("conflict", "refused")
        ]
        conflicts = [m for m in judged if m is not None]
        if cancels:
            applied = await self._cancel_commands(conn, cancels, deliveries, outcomes)
            if cancel_outcomes is not None:
                cancel_outcomes.extend(applied)
            conflicts += [
                _cancel_malformed(command, outcome)
                for command, outcome in zip(cancels, applied, strict=True)
                if outcome.kind != "cancelled"
            ]
        if malformed or conflicts:
            await self._insert_malformed(conn, stream_key, [*malformed, *conflicts])
        if offset is not None:
            await self._advance(conn, offset)
        if any(d.status == "queued" for d in created):
            await conn.execute(_NOTIFY)
        return outcomes

    async def _claim_keys(
        self, conn: DriverConnection, deliveries: Sequence[NewDelivery], ttl: timedelta
    ) -> list[KeyOutcome]:
        """One outcome per delivery; a key repeated in the batch is claimed by its first delivery
        and each repeat is judged against the request that holds the key (stored or first).

        A replay-only delivery (valid but for the time that passed) claims nothing: it is judged,
        in this transaction, against the request its key holds — stored and unexpired, or claimed
        earlier in the batch — and `refused` when there is none (its validation error stands).
        """
        firsts: dict[tuple[str, str], tuple[int, NewDelivery]] = {}
        for index, d in enumerate(deliveries):
            if d.replay_only is None:
                firsts.setdefault((d.source, d.idempotency_key), (index, d))
        claiming = [d for _, d in firsts.values()]
        won: set[tuple[str, str]] = set()
        if claiming:
            statement, params = _CLAIM_KEYS.bind(
                {
                    "sources": [d.source for d in claiming],
                    "keys": [d.idempotency_key for d in claiming],
                    "hashes": [d.request_hash for d in claiming],
                    "ids": [d.delivery_id for d in claiming],
                    "created": [d.accepted_at for d in claiming],
                }
            )
            claimed = await conn.execute(statement, {**params, "ttl_us": ttl // _MICROSECOND})
            won = {(row[0], row[1]) for row in claimed}
        # the stored requests to judge against: keys a claim lost, and the keys replays point at
        looked_up = [d for d in deliveries if (d.source, d.idempotency_key) not in won]
        existing: dict[tuple[str, str], Any] = {}
        for source in {d.source for d in looked_up}:
            keys = sorted({d.idempotency_key for d in looked_up if d.source == source})
            for stored in await conn.execute(_EXISTING_KEYS, {"source": source, "keys": keys}):
                existing[(source, stored.key)] = stored
        outcomes = []
        for index, d in enumerate(deliveries):
            scope = (d.source, d.idempotency_key)
            if scope in won:
                first_index, first = firsts[scope]
                if d is first:
                    outcomes.append(KeyOutcome("created", d.delivery_id, d.status))
                elif first_index > index:  # a replay-only ahead of the claim: the key held nothing yet
                    outcomes.append(KeyOutcome("refused", d.delivery_id, d.status))
                else:
                    kind: Literal["duplicate", "conflict"] = (
                        "duplicate" if d.request_hash == first.request_hash else "conflict"
                    )
                    outcomes.append(KeyOutcome(kind, first.delivery_id, first.status))
                continue
            if d.replay_only is not None:
                held = existing.get(scope)
                if held is None or held.expires_at <= d.accepted_at:
                    outcomes.append(KeyOutcome("refused", d.delivery_id, d.status))
                    continue
            row = existing[scope]  # a claim lost to a stored, unexpired key: it is there
            same = bytes(row.request_hash) == d.request_hash
            outcomes.append(KeyOutcome("duplicate" if same else "conflict", UUID(str(row.delivery_id)), row.status))
        return outcomes

    async def _check_suppressions(self, conn: DriverConnection, created: list[NewDelivery]) -> list[NewDelivery]:
        """The deliveries as the suppression list leaves them (`NewDelivery.checked_against`)."""
        addresses = sorted({key for d in created for key in d.suppression_keys})
        found = {row[0] for row in await conn.execute(_SUPPRESSED, {"addresses": addresses})}
        return [d.checked_against(found) for d in created] if found else created

    async def _lock_collapse_keys(self, conn: DriverConnection, collapsing: Sequence[NewDelivery]) -> None:
        await conn.execute(
            _LOCK_COLLAPSE_KEYS,
            {"sources": [d.source for d in collapsing], "keys": [d.collapse_key for d in collapsing]},
        )

    async def _supersede(self, conn: DriverConnection, collapsing: Sequence[NewDelivery]) -> dict[UUID, int]:
        """Each (source, collapse key)'s newest delivery of the batch supersedes every other queued
        one (SPEC §12); how many each superseded."""
        winners: dict[tuple[str, str], NewDelivery] = {}
        for d in collapsing:
            assert d.collapse_key is not None
            winners[(d.source, d.collapse_key)] = d  # the last one of the batch is the newest
        events = [transitions.superseded_event(w.delivery_id) for w in winners.values()]
        rows = await conn.execute(
            _SUPERSEDE,
            {
                "sources": [source for source, _ in winners],
                "keys": [key for _, key in winners],
                "winners": [w.delivery_id for w in winners.values()],
                "event_types": [e.type for e in events],
                "event_data": [orjson.dumps(e.data).decode() for e in events],
                "at": [w.accepted_at for w in winners.values()],
            },
        )
        return {UUID(str(row.winner)): int(row.superseded) for row in rows}

    async def _cancel_commands(
        self,
        conn: DriverConnection,
        cancels: Sequence[CancelCommand],
        deliveries: Sequence[NewDelivery],
        outcomes: Sequence[KeyOutcome],
    ) -> list[CancelOutcome]:
        """`cancel_email` commands, after the batch's deliveries: one outcome each. A delivery this
        batch creates only later in the stream did not exist yet for a cancel ahead of it."""
        keys = sorted({c.target_key for c in cancels})
        targets = {row.key: UUID(str(row.delivery_id)) for row in await conn.execute(_CANCEL_TARGETS, {"keys": keys})}
        created_at = {
            d.idempotency_key: parse_id(d.stream_entry_id)
            for d, o in zip(deliveries, outcomes, strict=True)
            if o.kind == "created" and d.source == "notification" and d.stream_entry_id is not None
        }
        wanted: dict[int, UUID] = {}
        for index, command in enumerate(cancels):
            target = targets.get(command.target_key)
            later = created_at.get(command.target_key)
            if target is not None and (later is None or later < parse_id(command.entry_id)):
                wanted[index] = target
        cancelled = await self._cancel(conn, sorted(set(wanted.values())), "producer")
        results: list[CancelOutcome] = []
        for index in range(len(cancels)):
            target = wanted.get(index)
            if target is None:
                results.append(CancelOutcome("unknown_target", None))
            elif target in cancelled:
                cancelled.discard(target)  # a second cancel of it in this batch finds it cancelled
                results.append(CancelOutcome("cancelled", target))
            else:
                results.append(CancelOutcome("not_cancellable", target))
        return results

    async def _cancel(self, conn: DriverConnection, ids: Sequence[UUID], by: transitions.CancelledBy) -> set[UUID]:
        """Cancel the queued, unclaimed deliveries among `ids` (the one place a delivery becomes
        `cancelled`); the ids it cancelled."""
        if not ids:
            return set()
        event = transitions.cancelled_event(by)
        rows = await conn.execute(
            CANCEL,
            {
                "ids": list(ids),
                "event_types": [event.type] * len(ids),
                "event_data": [orjson.dumps(event.data).decode()] * len(ids),
            },
        )
        return {UUID(str(row.delivery_id)) for row in rows}

    async def cancel_delivery(
        self, delivery_id: UUID, by: transitions.CancelledBy, action: OperatorAction | None = None
    ) -> CancelOutcome:
        """Cancel one delivery if it is queued and unclaimed (committed, with `action` when given:
        an operator's cancel is audited in its transaction); else why not."""
        async with unavailable_as_domain_error(), driver_transaction(self.engine) as conn:
            if await self._cancel(conn, [delivery_id], by):
                await record_actions(conn, [action] if action is not None else [])
                return CancelOutcome("cancelled", delivery_id)
            found = list(await conn.execute(_EXISTS, {"id": delivery_id}))
        return CancelOutcome("not_cancellable" if found else "unknown_target", delivery_id)

    async def _insert_deliveries(self, conn: DriverConnection, created: Sequence[NewDelivery]) -> None:
        events = [d.event for d in created]
        statement, params = _INSERT_DELIVERIES.bind(
            {
                "ids": [d.delivery_id for d in created],
                "sources": [d.source for d in created],
                "statuses": [d.status for d in created],
                "templates": [d.request.template for d in created],
                "locales": [d.content.locale for d in created],
                "digests": [d.content.template_digest for d in created],
                "priorities": [int(d.request.priority) for d in created],
                "send_at": [d.request.send_at for d in created],  # none: at acceptance (`created`)
                "expires_at": [d.request.expires_at for d in created],
                "keys": [d.idempotency_key for d in created],
                "message_ids": [d.message_id for d in created],
                "tags": [orjson.dumps(d.request.tags).decode() for d in created],
                "resend_of": [d.resend_of for d in created],
                "collapse_keys": [d.collapse_key for d in created],
                "created": [d.accepted_at for d in created],
                "traceparents": [d.traceparent for d in created],
                "submitted": [d.submitted_at for d in created],
                "event_types": [event.type for event in events],
                "event_data": [orjson.dumps(event.data).decode() for event in events],
            }
        )
        try:
            await conn.execute(statement, params)
        except asyncpg.ForeignKeyViolationError as exc:
            if exc.constraint_name != "deliveries_resend_of_fkey":
                raise
            # retention deleted the original between the resend reading it and this insert
            raise NotFound("the delivery to resend was deleted (retention) while it was being resent") from exc
        await conn.copy(
            "delivery_recipients",
            _RECIPIENT_COLUMNS,
            [
                (
                    d.delivery_id,
                    position,
                    recipient.kind,
                    recipient.address.email,
                    recipient.address.name,
                    "suppressed" if position in d.suppressed else None,
                )
                for d in created
                for position, recipient in enumerate(d.request.recipients)
            ],
        )
        for chunk in _within(created, _content_bytes):
            await conn.copy("delivery_payloads", _PAYLOAD_COLUMNS, [_payload_row(d) for d in chunk])

    async def _insert_malformed(
        self, conn: DriverConnection, stream_key: str, records: Sequence[MalformedCommand]
    ) -> None:
        for chunk in _within(records, lambda m: len(m.raw_fields) + len(m.message)):
            await conn.execute(
                _INSERT_MALFORMED,
                {
                    "stream_key": stream_key,
                    "entry_ids": [m.entry_id for m in chunk],
                    "keys": [m.idempotency_key for m in chunk],
                    "reasons": [m.reason for m in chunk],
                    "messages": [m.message.replace("\x00", "\\x00")[:4000] for m in chunk],
                    "raws": [m.raw_fields for m in chunk],
                },
            )

    async def _advance(self, conn: DriverConnection, offset: OffsetAdvance) -> None:
        params = {"key": offset.stream_key, "new": offset.new, "expected": offset.expected}
        statement = _FIRST_OFFSET if offset.expected is None else _ADVANCE_OFFSET
        result = await conn.execute(statement, params)
        if result.rowcount != 1:
            raise OffsetMoved(f"offset of {offset.stream_key} is no longer {offset.expected}")

    async def load_offset(self, stream_key: str) -> str | None:
        async with unavailable_as_domain_error(), self.engine.connect() as conn:
            row = (
                await conn.execute(text("SELECT last_id FROM stream_offsets WHERE stream_key = :k"), {"k": stream_key})
            ).first()
        return None if row is None else str(row[0])

    async def record_stream_event(
        self,
        stream_key: str,
        kind: str,
        from_offset: str,
        to_offset: str,
        detail: str,
        *,
        expected: str | None,
        reset_offset: bool,
    ) -> None:
        """Record a gap or reset durably; with `reset_offset`, also move the offset to `to_offset`.

        Fenced like a batch: the stored offset must still be `expected` (the one the consumer read;
        None when none was stored), else `OffsetMoved` and nothing is written — so a consumer that
        lost its lock can neither move the offset nor record what its successor already handled.
        """
        async with unavailable_as_domain_error(), driver_transaction(self.engine) as conn:
            if reset_offset:
                await self._advance(conn, OffsetAdvance(stream_key, expected, to_offset))
            elif expected is not None:  # the same compare-and-set, leaving the offset where it is
                await self._advance(conn, OffsetAdvance(stream_key, expected, expected))
            await conn.execute(
                _INSERT_STREAM_EVENT,
                {"key": stream_key, "kind": kind, "from_offset": from_offset, "to_offset": to_offset, "detail": detail},
            )


def _content_bytes(delivery: NewDelivery) -> int:
    """What the payload row sends: the message, and the bodies it does not hold verbatim."""
    content = delivery.content
    text = 0 if delivery.text_span is not None else len(content.text)
    html = 0 if delivery.html_span is not None else len(content.html or "")
    return len(delivery.mime) + text + html


def _within(items: Sequence[T], size: Callable[[T], int]) -> Iterator[Sequence[T]]:
    """`items` in order, in runs of at most `STATEMENT_BYTES` (one item alone may pass it); all of
    them at once, as before, when they fit — the usual case, small commands."""
    start, used = 0, 0
    for index, item in enumerate(items):
        weight = size(item)
        if index > start and used + weight > STATEMENT_BYTES:
            yield items[start:index]
            start, used = index, 0
        used += weight
    if start < len(items):
        yield items[start:]


def _malformed(delivery: NewDelivery, outcome: KeyOutcome) -> MalformedCommand | None:
    """The malformed row of a stream command judged a conflict or refused (HTTP raises instead)."""
    if delivery.stream_entry_id is None:
        return None
    if outcome.kind == "refused" and delivery.replay_only is not None:
        reason, message = delivery.replay_only.reason, str(delivery.replay_only)
    else:
        reason = "idempotency_conflict"
        message = f"idempotency key {delivery.idempotency_key!r} was already used with a different payload"
    return MalformedCommand(
        delivery.stream_entry_id, reason, message, delivery.raw_fields or b"", delivery.idempotency_key
    )


def _cancel_malformed(command: CancelCommand, outcome: CancelOutcome) -> MalformedCommand:
    """The malformed row of a `cancel_email` that could not apply (SPEC §2)."""
    if outcome.kind == "unknown_target":
        message = f"no send_email with idempotency key {command.target_key!r} to cancel"
    else:
        message = f"the send_email with idempotency key {command.target_key!r} is no longer queued"
    return MalformedCommand(command.entry_id, outcome.kind, message, command.raw_fields, command.idempotency_key)


def _payload_row(delivery: NewDelivery) -> tuple[Any, ...]:
    """`_PAYLOAD_COLUMNS` of one delivery."""
    content = delivery.content
    text, text_span = stored_body(content.text, delivery.text_span)
    html, html_span = stored_body(content.html, delivery.html_span)
    headers = orjson.dumps(delivery.request.headers).decode()
    return (delivery.delivery_id, content.subject, text, html, text_span, html_span, _reply_to(delivery), headers,
            delivery.mime, content.sensitive)  # fmt: skip


def _reply_to(delivery: NewDelivery) -> str | None:
    reply_to = delivery.request.reply_to
    if reply_to is None:
        return None
    return orjson.dumps({"email": reply_to.email, "name": reply_to.name}).decode()
