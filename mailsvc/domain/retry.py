"""What happens after an attempt: a pure decision from the outcome, the attempt number and `now`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from mailsvc.domain.model import DeadLetterReason, ProviderFault, ProviderOutcome, Status


@dataclass(frozen=True, slots=True)
class Decision:
    status: Status  # sent | queued | dead_lettered
    next_attempt_at: datetime | None = None
    dead_reason: DeadLetterReason | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_delay: timedelta
    max_delay: timedelta
    max_attempts: int

    def delay(self, attempt_number: int, jitter: float) -> timedelta:
        """Exponential backoff (base · 2^(n-1)) with ±20 % jitter, kept within [base, max].

        Any attempt number works (below 1 counts as 1): the doubling stops once it passes the
        maximum, so it can never overflow. `jitter` is a number in [0, 1); passing it in keeps
        this function pure and testable.
        """
        raw = min(self.base_delay, self.max_delay)
        for _ in range(max(0, attempt_number - 1)):  # ends after at most ~log2(max / base) turns
            if not raw:
                break
            if raw > self.max_delay / 2:
                raw = self.max_delay
                break
            raw *= 2
        factor = 0.8 + 0.4 * jitter
        jittered = raw * factor if raw <= self.max_delay / factor else self.max_delay
        return max(self.base_delay, min(jittered, self.max_delay))

    def decide(
        self,
        outcome: ProviderOutcome,
        attempt_number: int,
        now: datetime,
        expires_at: datetime | None,
        jitter: float,
    ) -> Decision:
        if outcome == "sent":
            return Decision("sent")
        if outcome == "permanent_failure":
            return Decision("dead_lettered", dead_reason="permanent_failure")
        if attempt_number >= self.max_attempts:
            return Decision("dead_lettered", dead_reason="attempts_exhausted")
        next_at = now + self.delay(attempt_number, jitter)
        if expires_at is not None and next_at >= expires_at:
            return Decision("dead_lettered", dead_reason="expired")
        return Decision("queued", next_attempt_at=next_at)

    def after_fault(
        self, fault: ProviderFault, attempt_number: int, now: datetime, expires_at: datetime | None, jitter: float
    ) -> Decision:
        """A failure that is the provider's (SPEC §12): never dead-lettered for attempts, since it
        does not count toward the maximum. A pausing fault is due again at once (the pause holds it
        in `queued`); a connection failure waits the backoff of the attempts that did count."""
        next_at = now if fault == "pause" else now + self.delay(attempt_number, jitter)
        if expires_at is not None and next_at >= expires_at:
            return Decision("dead_lettered", dead_reason="expired")
        return Decision("queued", next_attempt_at=next_at)
