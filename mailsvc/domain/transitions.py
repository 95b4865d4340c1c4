"""Every status change of a delivery is decided here (SPEC §1 state machine, §11 events).

Pure functions: given a delivery and what just happened, they say what its new status is and what
must be written with it — the attempt row, the dead letter, the recipients' outcomes, the event.
The stores execute these decisions, one transaction each, and never decide anything themselves;
a new kind of consequence (an event type, a policy) is added here, once.

    accept ─┬─> suppressed (stub mode, or every recipient suppressed)  `accepted_status`, `acceptance_event`
            └─> queued ──claim──> sending ──┬──> sent            `after_attempt`
                │ ^                          ├──> queued (retry)  `after_attempt`
                │ └──── stale claim ─────────┘──> dead_lettered  `after_attempt`, `expired`, `abandoned`
                ├──> cancelled                                    `cancelled_event`
                └──> superseded                                   `superseded_event`
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from uuid import UUID

from mailsvc.domain.events import Event, rfc3339
from mailsvc.domain.model import (
    AttemptOutcome,
    ClaimedDelivery,
    DeadLetterReason,
    Priority,
    ProviderName,
    RecipientKind,
    RecipientResult,
    SendResult,
    Source,
    Status,
)
from mailsvc.domain.retry import RetryPolicy
from mailsvc.domain.suppression import hard_bounces

SuppressedReason = Literal["stub_mode", "all_recipients_suppressed"]
CancelledBy = Literal["operator", "producer"]

EXPIRED_ERROR = "expired before an attempt could start"
ABANDONED_ERROR = "abandoned: the attempt did not report before its claim expired"


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """The decision after one attempt (or an expiry, or a recovered claim): written together —
    attempt row, new status, dead letter, recipients' outcomes, event — only if the claim still holds."""

    delivery_id: UUID
    claim_token: UUID
    attempt_number: int
    started_at: datetime
    finished_at: datetime
    outcome: AttemptOutcome
    status: Status  # sent | queued | dead_lettered
    next_attempt_at: datetime | None
    dead_reason: DeadLetterReason | None
    provider: ProviderName | None
    result: SendResult | None
    error_class: str | None = None  # when there is no provider result (abandoned: claim_expired)
    last_error: str | None = None
    envelope: tuple[tuple[str, RecipientKind], ...] = ()  # (address, kind) of each recipient, for the event
    provider_fault: bool = False  # failed by the provider's fault: not counted toward the maximum
    suppressed: tuple[tuple[str, RecipientKind], ...] = ()  # suppressed at acceptance: never sent to
    # hard bounces of this attempt (SPEC §12): suppression keys added with the result, until `suppress_until`
    suppressions: tuple[str, ...] = ()
    suppress_until: datetime | None = None

    @property
    def duration_ms(self) -> int:
        return max(0, int((self.finished_at - self.started_at).total_seconds() * 1000))

    @property
    def event(self) -> Event:
        """What this record tells producers (SPEC §11), derived from what is written."""
        code = None if self.result is None else self.result.smtp_code
        if self.status == "sent":
            return Event(
                "delivery.sent", {"attempt": self.attempt_number, "smtp_code": code, "recipients": self._recipients()}
            )
        if self.status == "queued":
            ambiguous = self.result is not None and self.result.ambiguous
            return _deferred(self.attempt_number, self.outcome, code, ambiguous, self.next_attempt_at)
        assert self.dead_reason is not None
        return _dead_lettered(self.dead_reason, self.attempt_number, code, self.last_error)

    def _recipients(self) -> list[dict[str, str]]:
        """Each recipient's address, kind and outcome: the server's verdict where it gave one, and
        the recipients suppressed at acceptance."""
        refused = set() if self.result is None else {r.address for r in self.result.recipients if not r.accepted}
        return [
            *(
                {"address": address, "kind": kind, "outcome": "refused" if address in refused else "accepted"}
                for address, kind in self.envelope
            ),
            *({"address": address, "kind": kind, "outcome": "suppressed"} for address, kind in self.suppressed),
        ]

    @property
    def recipient_outcomes(self) -> tuple[RecipientResult, ...]:
        """Per-recipient rows worth storing: only when the server refused some of them."""
        result = self.result
        if result is None or all(r.accepted for r in result.recipients):
            return ()
        return result.recipients


def accepted_status(source: Source, *, suppress_auth: bool) -> Status:
    """A new delivery's status: auth mail in stub mode is `suppressed` (never attempted)."""
    return "suppressed" if source == "auth" and suppress_auth else "queued"


def after_suppression_check(status: Status, recipients: Set[int], suppressed: Set[int]) -> Status:
    """A new delivery once the suppression list was read (SPEC §12): with no recipient left
    (`recipients` and `suppressed` are positions) it is accepted `suppressed`, never attempted."""
    if status == "queued" and recipients and recipients <= suppressed:
        return "suppressed"
    return status


def suppressed_reason(*, stub_mode: bool) -> SuppressedReason:
    return "stub_mode" if stub_mode else "all_recipients_suppressed"


def acceptance_event(
    status: Status,
    *,
    send_at: datetime,
    expires_at: datetime | None,
    priority: Priority,
    collapse_key: str | None = None,
    reason: SuppressedReason = "stub_mode",
) -> Event:
    if status == "suppressed":
        return Event("delivery.suppressed", {"reason": reason})
    return Event(
        "delivery.queued",
        {
            "send_at": rfc3339(send_at),
            "expires_at": rfc3339(expires_at),
            "priority": priority.label,
            "collapse_key": collapse_key,
        },
    )


def after_attempt(
    claim: ClaimedDelivery,
    result: SendResult,
    *,
    started: datetime,
    finished: datetime,
    policy: RetryPolicy,
    jitter: float,
    provider: ProviderName,
    suppression_ttl: timedelta | None = None,
) -> AttemptRecord:
    """What the provider's verdict on one attempt makes of the delivery. Attempts failed by the
    provider's fault (SPEC §12) do not count toward the maximum: the policy sees only the others.
    With `suppression_ttl`, each recipient refused as a hard bounce is suppressed for that long,
    with the result."""
    counted = claim.attempt_number - claim.provider_faults
    if result.fault is not None and result.outcome == "transient_failure":
        decision = policy.after_fault(result.fault, counted, finished, claim.expires_at, jitter)
    else:
        decision = policy.decide(result.outcome, counted, finished, claim.expires_at, jitter)
    last_error = None if result.outcome == "sent" else result.summary
    bounced = hard_bounces(result.recipients) if suppression_ttl is not None else ()
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
        provider=provider,
        result=result,
        last_error=last_error,
        envelope=tuple(zip(claim.recipients, claim.recipient_kinds, strict=True)),
        provider_fault=result.fault is not None and result.outcome == "transient_failure",
        suppressed=claim.suppressed,
        suppressions=bounced,
        suppress_until=finished + suppression_ttl if bounced and suppression_ttl is not None else None,
    )


def expired(claim: ClaimedDelivery, now: datetime) -> AttemptRecord:
    """A claimed delivery whose `expires_at` has passed: dead-lettered, no SMTP conversation."""
    return AttemptRecord(
        delivery_id=claim.delivery_id,
        claim_token=claim.claim_token,
        attempt_number=claim.attempt_number,
        started_at=now,
        finished_at=now,
        outcome="expired",
        status="dead_lettered",
        next_attempt_at=None,
        dead_reason="expired",
        provider=None,
        result=None,
        last_error=EXPIRED_ERROR,
    )


def abandoned(
    delivery_id: UUID,
    claim_token: UUID,
    attempt_number: int,
    now: datetime,
    *,
    max_attempts: int,
    provider_faults: int = 0,
) -> AttemptRecord:
    """A claim whose deadline passed without a result (its worker died or hung): an `abandoned`
    attempt (it counts), retried at once — or dead-lettered when the attempts are used up (those
    that failed by the provider's fault do not count)."""
    exhausted = attempt_number - provider_faults >= max_attempts
    return AttemptRecord(
        delivery_id=delivery_id,
        claim_token=claim_token,
        attempt_number=attempt_number,
        started_at=now,
        finished_at=now,
        outcome="abandoned",
        status="dead_lettered" if exhausted else "queued",
        next_attempt_at=None if exhausted else now,
        dead_reason="attempts_exhausted" if exhausted else None,
        provider=None,
        result=None,
        error_class="claim_expired",
        last_error=ABANDONED_ERROR,
    )


def cancelled_event(by: CancelledBy) -> Event:
    """A `queued` delivery taken back (SPEC §12): `by` is `operator` or `producer`."""
    return Event("delivery.cancelled", {"by": by})


def superseded_event(superseded_by: UUID) -> Event:
    """A `queued` delivery replaced by a newer one with the same collapse key (SPEC §12)."""
    return Event("delivery.superseded", {"superseded_by": str(superseded_by)})


def _deferred(
    attempt: int, outcome: str, smtp_code: int | None, ambiguous: bool, next_attempt_at: datetime | None
) -> Event:
    return Event(
        "delivery.deferred",
        {
            "attempt": attempt,
            "outcome": outcome,
            "smtp_code": smtp_code,
            "ambiguous": ambiguous,
            "next_attempt_at": rfc3339(next_attempt_at),
        },
    )


def _dead_lettered(reason: DeadLetterReason, attempt: int, smtp_code: int | None, last_error: str | None) -> Event:
    return Event(
        "delivery.dead_lettered",
        {"reason": reason, "attempt": attempt, "smtp_code": smtp_code, "last_error": last_error},
    )
