"""Execution: one attempt of one claimed delivery, from the provider's reply to the record to write."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from mailsvc.domain import transitions
from mailsvc.domain.model import (
    ClaimedDelivery,
    OutgoingMessage,
    ProviderName,
    SendResult,
)
from mailsvc.domain.retry import RetryPolicy
from mailsvc.domain.transitions import AttemptRecord
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


class ExecutionService:
    def __init__(
        self,
        *,
        provider: Provider,
        policy: RetryPolicy,
        envelope_from: str,
        attempt_timeout: float | None,
        clock: Callable[[], datetime],
        jitter: Callable[[], float] = random.random,
        instruments: Instruments = NO_INSTRUMENTS,
        suppression_ttl: timedelta | None = None,
    ) -> None:
        self.provider = provider
        self.policy = policy
        self.envelope_from = envelope_from
        self.attempt_timeout = attempt_timeout
        self.clock = clock
        self.jitter = jitter
        self.suppression_ttl = suppression_ttl  # None: hard bounces add no suppression
        self.telemetry = AttemptTelemetry(instruments, provider.name)

    async def execute(self, claim: ClaimedDelivery) -> AttemptRecord:
        """One attempt in its span (continuing the trace the delivery was accepted in), metered."""
        with self.telemetry.span(claim) as span:
            started = time.perf_counter()
            record = await self._execute(claim)
            self.telemetry.finished(span, record, time.perf_counter() - started, claim)
        return record

    async def _execute(self, claim: ClaimedDelivery) -> AttemptRecord:
        started = self.clock()
        if claim.expires_at is not None and claim.expires_at <= started:
            return transitions.expired(claim, started)
        message = OutgoingMessage(
            delivery_id=claim.delivery_id,
            message_id=claim.message_id,
            envelope_from=self.envelope_from,
            recipients=claim.recipients,
            mime=claim.mime,
            attempt_number=claim.attempt_number,
        )
        result = await self._send(message)
        record = transitions.after_attempt(
            claim,
            result,
            started=started,
            finished=self.clock(),
            policy=self.policy,
            jitter=self.jitter(),
            provider=self.provider.name,
            suppression_ttl=self.suppression_ttl,
        )
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
                    "next_status": record.status,
                },
            )
        return record

    async def _send(self, message: OutgoingMessage) -> SendResult:
        """`attempt_timeout` is a safety net for a provider that does not bound its attempts itself
        (None: it does, and no second timer is armed per attempt)."""
        try:
            if self.attempt_timeout is None:
                return await self.provider.send(message)
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
