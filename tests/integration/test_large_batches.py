"""A stream batch of large commands is written in several statements of bounded size (the driver
encodes each statement's parameters in one go on the event loop), yet in one transaction, intact."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from uuid import uuid4

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mailsvc.adapters.postgres import intake_store
from mailsvc.adapters.postgres.intake_store import IntakeStore
from mailsvc.adapters.postgres.payload_bodies import body_sql
from mailsvc.domain.commands import request_hash
from mailsvc.domain.intake import NewDelivery, OffsetAdvance
from mailsvc.domain.stream_entries import MalformedCommand
from mailsvc.errors import OffsetMoved
from tests.support.acceptance import acceptance_service

TTL = timedelta(hours=24)
STREAM = "large-batches"
TEXT_BODY = body_sql("text_body", "text_span")  # as stored: text, or its span of the MIME message


def large_deliveries(count: int) -> list[NewDelivery]:
    builder = acceptance_service(idempotency_ttl=TTL, stream_key=STREAM)
    out = []
    for n in range(count):
        payload = {"to": [f"r{n}@example.com"], "subject": f"S{n}", "text": f"{n} " * 20_000, "html": f"<p>{n}</p>"}
        prepared = builder.prepare(
            source="notification", idempotency_key=f"k{n}", payload=payload, digest=request_hash(payload)
        )
        out.append(replace(prepared, stream_entry_id=f"1-{n}", stream_fields={}))
    return out


def test_items_are_cut_into_runs_within_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intake_store, "STATEMENT_BYTES", 10)
    runs = list(intake_store._within([4, 4, 4, 11, 1, 1, 9, 2], lambda n: n))
    assert runs == [[4, 4], [4], [11], [1, 1], [9], [2]]  # an item over the budget goes alone
    assert list(intake_store._within([], lambda n: n)) == []
    monkeypatch.setattr(intake_store, "STATEMENT_BYTES", 1000)
    assert list(intake_store._within([1, 2, 3], lambda n: n)) == [[1, 2, 3]]  # small: one statement


async def test_a_batch_larger_than_a_statement_is_stored_whole_in_one_transaction(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake_store, "STATEMENT_BYTES", 256 * 1024)  # ~3 deliveries a statement
    deliveries = large_deliveries(20)
    malformed = [MalformedCommand(f"2-{n}", "invalid_json", "bad", b"x" * 100_000, None) for n in range(8)]
    store = IntakeStore(engine)
    outcomes = await store.accept(
        deliveries, malformed, stream_key=STREAM, offset=OffsetAdvance(STREAM, None, "2-7"), idempotency_ttl=TTL
    )
    assert [o.kind for o in outcomes] == ["created"] * 20
    async with engine.connect() as conn:
        stored = (await conn.execute(text(f"SELECT delivery_id, {TEXT_BODY}, mime FROM delivery_payloads p"))).all()
        assert int((await conn.execute(text("SELECT count(*) FROM malformed_commands"))).scalar_one()) == 8
    by_id = {d.delivery_id: d for d in deliveries}
    assert len(stored) == 20
    assert all(row[1] == by_id[row[0]].content.text and bytes(row[2]) == by_id[row[0]].mime for row in stored)

    # one transaction: a batch whose offset no longer matches writes none of its statements
    again = [
        replace(d, delivery_id=uuid4(), message_id=f"<{uuid4()}@example.com>", idempotency_key=f"2{d.idempotency_key}")
        for d in deliveries
    ]
    stale = OffsetAdvance(STREAM, "1-0", "3-0")
    with pytest.raises(OffsetMoved):
        await store.accept(again, [], stream_key=STREAM, offset=stale, idempotency_ttl=TTL)
    async with engine.connect() as conn:
        assert int((await conn.execute(text("SELECT count(*) FROM delivery_payloads"))).scalar_one()) == 20
