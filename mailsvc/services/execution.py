"""Execution: one attempt of one claimed delivery, from the provider's reply to the record to write."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from mailsvc.domain.model import (
    AttemptOutcome,
    ClaimedDelivery,
    DeadLetterReason,
    OutgoingMessage,
    ProviderName,
    RecipientResult,
    SendResult,
    Status,
)
from mailsvc.domain.retry import RetryPolicy
from mailsvc.instruments import NO_INSTRUMENTS, Instruments
from mailsvc.logs import mask_address
from mailsvc.services.attempt_telemetry import AttemptTelemetry

log = logging.getLogger("mailsvc.execution")


class Provider(Protocol):
    name: ProviderName

    async def send(self, message: OutgoingMessage) -> SendResult:
        """One attempt; never raises for delivery problems — the verdict is the value."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """The result of one attempt, written (with the new status) only if the claim still holds."""

    delivery_id: UUID
    claim_token: UUID
    attempt_number: int
    started_at: datetime
    finished_at: datetime
    outcome: AttemptOutcome
    status: Status
    next_attempt_at: datetime | None
    dead_reason: DeadLetterReason | None
    provider: ProviderName | None
    result: SendResult | None

    @property
    def duration_ms(self) -> int:
        return max(0, int((self.finished_at - self.started_at).total_seconds() * 1000))

    @property
    def last_error(self) -> str | None:
        if self.outcome == "expired":
            return "expired before an attempt could start"
        if self.result is None or self.outcome == "sent":
            return None
        return self.result.summary


class ExecutionService:
    def __init__(
        self,
        *,
        provider: Provider,
        policy: RetryPolicy,
        envelope_from: str,
        attempt_timeout: float,
        clock: Callable[[], datetime],
        jitter: Callable[[], float] = random.random,
        instruments: Instruments = NO_INSTRUMENTS,
    ) -> None:
        self.provider = provider
        self.policy = policy
        self.envelope_from = envelope_from
        self.attempt_timeout = attempt_timeout
        self.clock = clock
        self.jitter = jitter
        self.telemetry = AttemptTelemetry(instruments, provider.name)

    async def execute(self, claim: ClaimedDelivery) -> AttemptRecord:
        """One attempt in its span (continuing the trace the delivery was accepted in), metered."""
        with self.telemetry.span(claim) as span:
            started = time.perf_counter()
            record = await self._execute(claim)
            self.telemetry.finished(span, record, time.perf_counter() - started)
        return record

    async def _execute(self, claim: ClaimedDelivery) -> AttemptRecord:
        started = self.clock()
        if claim.expires_at is not None and claim.expires_at <= started:
            return AttemptRecord(
                claim.delivery_id, claim.claim_token, claim.attempt_number, started, started, "expired",
                "dead_lettered", None, "expired", None, None,
            )  # fmt: skip
        message = OutgoingMessage(
            delivery_id=claim.delivery_id,
            message_id=claim.message_id,
            envelope_from=self.envelope_from,
            recipients=claim.recipients,
            mime=claim.mime,
            attempt_number=claim.attempt_number,
        )
        result = await self._send(message)
        finished = self.clock()
        decision = self.policy.decide(result.outcome, claim.attempt_number, finished, claim.expires_at, self.jitter())
        if result.outcome != "sent":
            log.info(
                "attempt_failed",
                extra={
                    "delivery_id": str(claim.delivery_id),
                    "attempt": claim.attempt_number,
                    "outcome": result.outcome,
                    "smtp_code": result.smtp_code,
                    "error_class": result.error_class,
                    "ambiguous": result.ambiguous,
                    "next_status": decision.status,
                },
            )
        return AttemptRecord(
            delivery_id=claim.delivery_id,
            claim_token=claim.claim_token,
            attempt_number=claim.attempt_number,
            started_at=started,
            finished_at=finished,
            outcome=result.outcome,
            status=decision.status,
            next_attempt_at=decision.next_attempt_at,
            dead_reason=decision.dead_reason,
            provider=self.provider.name,
            result=result,
        )

    async def _send(self, message: OutgoingMessage) -> SendResult:
        """The provider bounds the attempt itself; this outer bound is a safety net for bugs."""
        try:
            async with asyncio.timeout(self.attempt_timeout):
                return await self.provider.send(message)
        except TimeoutError:
            return SendResult("transient_failure", error_class="timeout")
        except Exception as exc:
            log.exception(
                "provider_error",
                extra={"delivery_id": str(message.delivery_id), "to": [mask_address(r) for r in message.recipients]},
            )
            return SendResult("transient_failure", error_class=f"internal:{type(exc).__name__}")


def refused_recipients(result: SendResult | None) -> tuple[RecipientResult, ...]:
    """Per-recipient rows worth storing: only when the server refused some of them."""
    if result is None or not any(not r.accepted for r in result.recipients):
        return ()
    return result.recipients
