"""The delivery queue on real PostgreSQL for claim and result tests: accept, claim, read rows."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from mailsvc.adapters.postgres.engine import create_engine
from mailsvc.adapters.postgres.intake_store import IntakeStore
from mailsvc.adapters.postgres.queue_store import QueueStore
from mailsvc.adapters.templates import TemplateCatalog
from mailsvc.domain.model import Address, ClaimedDelivery, SendResult
from mailsvc.domain.retry import RetryPolicy
from mailsvc.domain.transitions import AttemptRecord, after_attempt
from mailsvc.services.acceptance import AcceptanceService
from tests.conftest import REPO
from tests.support.deliveries import FROM_EMAIL, Ledger
from tests.support.payloads import raw_payload
from tests.support.stream import new_key


@dataclass
class Queue:
    store: QueueStore
    acceptance: AcceptanceService
    db: Ledger

    async def accept(self, *recipients: str, **fields: Any) -> uuid.UUID:
        accepted = await self.acceptance.accept_request(
            "notification", new_key(), raw_payload(*(recipients or ("ann@example.org",)), **fields)
        )
        return accepted.delivery_id

    async def row(self, delivery_id: uuid.UUID) -> Any:
        return await self.db.conn.fetchrow("SELECT * FROM delivery_states WHERE delivery_id = $1", delivery_id)

    async def expire_claim(self, delivery_id: uuid.UUID) -> None:
        await self.db.conn.execute(
            "UPDATE delivery_queue SET claim_deadline = now() - interval '1 second' WHERE delivery_id = $1", delivery_id
        )


@contextlib.asynccontextmanager
async def open_queue(database_dsn: str) -> AsyncIterator[Queue]:
    engine = create_engine(database_dsn)
    acceptance = AcceptanceService(
        store=IntakeStore(engine),
        renderer=TemplateCatalog.load(REPO / "templates"),
        from_address=Address(FROM_EMAIL),
        suppress_auth=False,
        idempotency_ttl=timedelta(hours=1),
        stream_key="unused",
    )
    try:
        async with Ledger.open(database_dsn) as db:
            yield Queue(QueueStore(engine), acceptance, db)
    finally:
        await engine.dispose()


# a claim released without an attempt: back in the queue, as if never claimed
GIVEN_BACK = "status = 'queued' AND attempt_count = 0 AND claim_token IS NULL"
POLICY = RetryPolicy(timedelta(hours=1), timedelta(hours=2), max_attempts=10)


def attempted(claim: ClaimedDelivery, result: SendResult) -> AttemptRecord:
    """What `result` makes of `claim`, decided now (as the worker decides it: `after_attempt`)."""
    now = datetime.now(UTC)
    return after_attempt(claim, result, started=now, finished=now, policy=POLICY, jitter=0.5, provider="smtp")


def sent(claim: ClaimedDelivery) -> AttemptRecord:
    """The record of a successful attempt for `claim`, finished now."""
    return attempted(claim, SendResult("sent", 250, "2.0.0 OK"))
