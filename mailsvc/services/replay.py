"""Replay (SPEC §14): a malformed stream command accepted again — as recorded, or with a
corrected payload — exactly as the stream would (source `notification`, the recorded idempotency
key unless another is given). The malformed row records the delivery it became; a second replay
answers with that delivery.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol
from uuid import UUID

from mailsvc.domain.commands import Problem, ValidationFailed, request_hash
from mailsvc.domain.intake import KeyOutcome, NewDelivery
from mailsvc.domain.model import TERMINAL_STATUSES
from mailsvc.domain.operator_actions import OperatorAction
from mailsvc.domain.raw_fields import recorded_command
from mailsvc.domain.stream_entries import COMMAND_TYPE
from mailsvc.errors import IdempotencyConflict, NotFound
from mailsvc.instruments import NO_INSTRUMENTS, Instruments
from mailsvc.services.acceptance import AcceptanceService
from mailsvc.services.acceptance_types import Accepted


class MalformedRecordView(Protocol):
    @property
    def stream_entry_id(self) -> str: ...
    @property
    def idempotency_key(self) -> str | None: ...
    @property
    def raw_fields(self) -> bytes: ...
    @property
    def replayed_as(self) -> UUID | None: ...
    @property
    def replayed_status(self) -> Any: ...


class ReplayStore(Protocol):
    async def load(self, malformed_id: int) -> MalformedRecordView | None: ...

    async def replay(
        self, malformed_id: int, delivery: NewDelivery, action: OperatorAction, ttl: timedelta
    ) -> tuple[KeyOutcome, bool]: ...


@dataclass(frozen=True, slots=True)
class Replayed:
    accepted: Accepted
    malformed_id: int


class ReplayService:
    def __init__(
        self,
        *,
        store: ReplayStore,
        acceptance: AcceptanceService,
        idempotency_ttl: timedelta,
        instruments: Instruments = NO_INSTRUMENTS,
    ) -> None:
        self.store = store
        self.acceptance = acceptance
        self.idempotency_ttl = idempotency_ttl
        self.instruments = instruments

    async def replay(self, malformed_id: int, payload: Any | None, key: str | None, *, actor: str) -> Replayed:
        """Raises `NotFound`, `ValidationFailed` (every problem of the payload, or a record that
        cannot be replayed as it is), `IdempotencyConflict`, `StoreUnavailable`."""
        record = await self.store.load(malformed_id)
        if record is None:
            raise NotFound(f"no malformed command {malformed_id}")
        if record.replayed_as is not None:
            return Replayed(Accepted(record.replayed_as, record.replayed_status or "queued", True), malformed_id)
        if payload is None:
            try:
                kind, payload = recorded_command(record.raw_fields)
            except ValueError as exc:
                raise ValidationFailed([Problem("payload", str(exc))]) from None
            if kind != COMMAND_TYPE:
                raise ValidationFailed([Problem("payload", f"a {kind!r} command is replayed with a payload to send")])
        idempotency_key = key or record.idempotency_key or record.stream_entry_id
        try:
            prepared = self.acceptance.prepare(
                source="notification", idempotency_key=idempotency_key, payload=payload, digest=request_hash(payload)
            )
        except ValueError as error:  # the MIME builder refused what validation let through
            raise ValidationFailed([Problem("payload", str(error))]) from None
        action = OperatorAction(
            "replay",
            actor,
            target={"malformed_id": malformed_id, "delivery_id": str(prepared.delivery_id)},
            counts={"replayed": 1},
        )
        outcome, _ = await self.store.replay(malformed_id, prepared, action, self.idempotency_ttl)
        if outcome.kind == "conflict":
            raise IdempotencyConflict(idempotency_key)
        if outcome.kind == "refused":
            assert prepared.replay_only is not None
            raise prepared.replay_only
        if outcome.kind == "created":
            self.instruments.deliveries_accepted.add(1, {"source": "notification"})
            if outcome.status in TERMINAL_STATUSES:
                self.instruments.deliveries_finished.add(1, {"status": outcome.status})
            if outcome.status == "queued":
                self.acceptance.wake_scheduler()
        accepted = Accepted(outcome.delivery_id, outcome.status, idempotent_replay=outcome.kind != "created")
        return Replayed(accepted, malformed_id)
