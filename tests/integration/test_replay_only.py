"""A request that is invalid only because time passed (`expires_at`) is a "replay-only" delivery
(SPEC §1): the real IntakeStore judges it against the key inside the acceptance transaction.

The clock is injected, so "after expires_at passed" needs no waiting; the doors end to end are in
test_http_intake.py and test_stream_intake.py.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mailsvc.adapters.postgres.intake_store import IntakeStore
from mailsvc.domain.commands import ValidationFailed, request_hash
from mailsvc.domain.intake import NewDelivery, OffsetAdvance
from mailsvc.domain.stream_entries import StreamCommand
from mailsvc.errors import IdempotencyConflict
from mailsvc.services.acceptance import AcceptanceService
from tests.support.acceptance import acceptance_service

TTL = timedelta(hours=24)
STREAM = "replay-only"
T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
EXPIRES = T0 + timedelta(minutes=15)
LATER = T0 + timedelta(hours=1)  # expires_at has passed


def service(engine: AsyncEngine, at: datetime) -> AcceptanceService:
    return acceptance_service(store=IntakeStore(engine), idempotency_ttl=TTL, stream_key=STREAM, clock=lambda: at)


def login_code(code: str = "481516") -> dict[str, Any]:
    return {
        "to": ["ann@example.com"],
        "template": "auth.login_code",
        "variables": {"code": code, "expires_in_minutes": 15},
        "expires_at": EXPIRES.isoformat(),
    }


def prepare(acceptance: AcceptanceService, key: str, payload: dict[str, Any], entry: str) -> NewDelivery:
    """What `prepare_stream_batch` makes of stream entry `entry`."""
    prepared = acceptance.prepare(
        source="notification", idempotency_key=key, payload=payload, digest=request_hash(payload)
    )
    return replace(prepared, stream_entry_id=entry, stream_fields={})


async def count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


async def test_only_time_makes_a_delivery_replay_only(engine: AsyncEngine) -> None:
    assert prepare(service(engine, T0), "k", login_code(), "1-0").replay_only is None
    late = prepare(service(engine, LATER), "k", login_code(), "1-1")
    assert isinstance(late.replay_only, ValidationFailed)
    (problem,) = late.replay_only.problems
    assert problem.as_dict() == {"field": "expires_at", "message": "has already passed"}


async def test_a_replay_after_expires_at_answers_with_the_original(engine: AsyncEngine) -> None:
    original = await service(engine, T0).accept_request("notification", "k", login_code())
    replay = await service(engine, LATER).accept_request("notification", "k", login_code())
    assert (replay.delivery_id, replay.idempotent_replay) == (original.delivery_id, True)
    with pytest.raises(IdempotencyConflict):  # the key holds another request: still a conflict
        await service(engine, LATER).accept_request("notification", "k", login_code("999999"))
    with pytest.raises(ValidationFailed) as refused:  # no such key: the usual validation error
        await service(engine, LATER).accept_request("notification", "fresh", login_code())
    assert refused.value.reason == "validation_failed"
    assert await count(engine, "deliveries") == 1
    assert await count(engine, "idempotency_keys") == 1  # a replay-only request never claims its key


async def test_an_expired_key_holds_nothing_to_replay(engine: AsyncEngine) -> None:
    short = service(engine, T0)
    short.idempotency_ttl = timedelta(minutes=30)  # the key expires before LATER
    await short.accept_request("notification", "k", login_code())
    with pytest.raises(ValidationFailed):
        await service(engine, LATER).accept_request("notification", "k", login_code())


async def test_within_one_stream_batch_each_replay_is_judged_in_order(engine: AsyncEngine) -> None:
    now, late = service(engine, T0), service(engine, LATER)
    stored = prepare(now, "stored", login_code(), "1-0")
    await IntakeStore(engine).accept([stored], [], stream_key=STREAM, offset=None, idempotency_ttl=TTL)
    later_valid = {**login_code(), "expires_at": (LATER + timedelta(minutes=5)).isoformat()}
    batch = [
        prepare(late, "stored", login_code(), "2-0"),  # replays the stored one: duplicate
        prepare(late, "stored", login_code("000000"), "2-1"),  # another request: conflict
        prepare(late, "same-batch", later_valid, "2-2"),  # valid: claims its key
        prepare(late, "same-batch", later_valid, "2-3"),  # an ordinary repeat: duplicate
        prepare(late, "ahead", login_code(), "2-4"),  # replay-only before the claim below: refused
        prepare(late, "ahead", later_valid, "2-5"),  # valid: created
        prepare(late, "nothing", login_code(), "2-6"),  # no such key: refused
    ]
    offset = OffsetAdvance(STREAM, None, "2-6")
    outcomes = await IntakeStore(engine).accept(batch, [], stream_key=STREAM, offset=offset, idempotency_ttl=TTL)
    kinds = [o.kind for o in outcomes]
    assert kinds == ["duplicate", "conflict", "created", "duplicate", "refused", "created", "refused"]
    assert outcomes[0].delivery_id == stored.delivery_id
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT stream_entry_id, reason, message FROM malformed_commands"))).all()
    assert sorted((row[0], row[1]) for row in rows) == [
        ("2-1", "idempotency_conflict"),
        ("2-4", "validation_failed"),
        ("2-6", "validation_failed"),
    ]
    assert all("expires_at: has already passed" in row[2] for row in rows if row[1] == "validation_failed")
    assert await count(engine, "deliveries") == 3


async def test_a_stream_batch_counts_a_refused_replay_as_malformed(engine: AsyncEngine) -> None:
    late = service(engine, LATER)
    payload = login_code()
    entry = StreamCommand("3-0", "gone", payload, request_hash(payload), None, {})
    result = await late.commit_stream_batch(
        await late.prepare_stream_batch([entry]), OffsetAdvance(STREAM, None, "3-0")
    )
    assert (result.accepted, result.duplicate, result.malformed) == (0, 0, 1)
    assert result.malformed_reasons == {"validation_failed": 1}
