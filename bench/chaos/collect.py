"""Reading the service's side of the facts at the end of a run: PostgreSQL rows and the sink's file."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import asyncpg

from bench.chaos.facts import DeliveryRow, Facts, LogCrash, MalformedRow, SinkRecord, StreamEvent
from bench.chaos.sink import read_records

# what only a bug logs: an exception escaped a loop, a request handler, an attempt or the provider
CRASH_EVENTS = frozenset(
    {"loop_crashed", "loop_exited_unexpectedly", "http_unhandled_error", "attempt_crashed", "provider_error",
     "smtp.unexpected_error", "close_failed"}
)  # fmt: skip

_DELIVERIES = """
    SELECT d.delivery_id::text AS delivery_id, d.source, d.status, d.idempotency_key, d.message_id,
           d.tags ->> 'chaos' AS chaos_id,
           count(a.attempt_id) FILTER (WHERE a.ambiguous) AS ambiguous,
           count(a.attempt_id) FILTER (WHERE a.outcome = 'abandoned') AS abandoned,
           count(a.attempt_id) AS attempts
    FROM deliveries d LEFT JOIN attempts a ON a.delivery_id = d.delivery_id
    GROUP BY d.delivery_id
"""


async def read_database(dsn: str, stream: str, facts: Facts) -> None:
    """Deliveries (with their ambiguous/abandoned attempt counts), malformed records, stream
    events and the stored offset, into `facts`."""
    conn = await asyncpg.connect(dsn)
    try:
        facts.deliveries = [
            DeliveryRow(
                row["delivery_id"],
                row["source"],
                row["status"],
                row["idempotency_key"],
                row["message_id"],
                row["chaos_id"],
                int(row["ambiguous"]),
                int(row["abandoned"]),
                int(row["attempts"]),
            )
            for row in await conn.fetch(_DELIVERIES)
        ]
        facts.malformed = [
            MalformedRow(row["stream_entry_id"], row["reason"])
            for row in await conn.fetch(
                "SELECT stream_entry_id, reason FROM malformed_commands WHERE stream_key = $1", stream
            )
        ]
        facts.stream_events = [
            StreamEvent(row["kind"], row["from_offset"], row["to_offset"], float(row["at"]))
            for row in await conn.fetch(
                "SELECT kind, from_offset, to_offset, extract(epoch FROM detected_at) AS at"
                " FROM stream_events WHERE stream_key = $1 ORDER BY event_id",
                stream,
            )
        ]
        facts.final_offset = await conn.fetchval("SELECT last_id FROM stream_offsets WHERE stream_key = $1", stream)
    finally:
        await conn.close()


def read_logs(folder: Path, facts: Facts) -> None:
    """Every replica incarnation's log: lines per level and event, and the crashes."""
    events: Counter[str] = Counter()
    for log in sorted(folder.glob("replica*.log")):
        with log.open("rb") as lines:
            for raw in lines:
                try:
                    entry = json.loads(raw)
                except ValueError:
                    events["unparsed"] += 1
                    continue
                if not isinstance(entry, dict):
                    continue
                event = str(entry.get("event", ""))
                events[f"{entry.get('level')} {event}"] += 1
                if event in CRASH_EVENTS:
                    stack = str(entry.get("stack", "")).strip().splitlines()
                    error = stack[-1] if stack else str(entry.get("error_class", ""))
                    facts.crashes.append(LogCrash(log.name, event, error[:300], str(entry.get("ts", ""))))
    facts.log_events = dict(events)


def read_sink(path: Path, facts: Facts) -> None:
    facts.sink = [
        SinkRecord(float(r["t"]), str(r["mid"]), r.get("chaos"), str(r["verdict"])) for r in read_records(path)
    ]
