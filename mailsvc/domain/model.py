"""The delivery model: value objects shared by services, loops and adapters (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Literal
from uuid import UUID

from mailsvc.domain.server_text import SERVER_TEXT_LIMIT

Source = Literal["notification", "auth", "resend"]
Status = Literal["queued", "sending", "sent", "dead_lettered", "suppressed", "cancelled", "superseded"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"sent", "dead_lettered", "suppressed", "cancelled", "superseded"})
RecipientKind = Literal["to", "cc", "bcc"]
AttemptOutcome = Literal["sent", "transient_failure", "permanent_failure", "abandoned", "expired"]
DeadLetterReason = Literal["permanent_failure", "attempts_exhausted", "expired"]
ProviderName = Literal["smtp", "stub"]


class Priority(IntEnum):
    """Stored as a small integer so the scheduler's index orders it: lower is claimed first."""

    HIGH = 0
    NORMAL = 1
    LOW = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> Priority:
        return cls[label.upper()]


@dataclass(frozen=True, slots=True)
class Address:
    email: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Recipient:
    kind: RecipientKind
    address: Address


@dataclass(frozen=True, slots=True)
class RenderedContent:
    """What a delivery says: rendered once at acceptance, never again."""

    subject: str
    text: str
    html: str | None = None
    locale: str | None = None
    template_digest: str | None = None
    # a secret (SPEC §13): set by the template's manifest, or by a raw command's `"sensitive": true`
    sensitive: bool = False


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """Everything a provider needs for one attempt: the envelope and the prebuilt MIME bytes."""

    delivery_id: UUID
    message_id: str
    envelope_from: str
    recipients: tuple[str, ...]  # envelope RCPT TO addresses: to + cc + bcc, in order
    mime: bytes
    attempt_number: int = 1


ProviderOutcome = Literal["sent", "transient_failure", "permanent_failure"]
# a failure that is the provider's or our configuration's, not the message's (SPEC §12): "pause"
# pauses the provider at once (AUTH, 5xx to MAIL FROM, 530, certificate), "connect" counts toward
# MAIL_PROVIDER_PAUSE_AFTER; neither counts toward MAIL_RETRY_MAX_ATTEMPTS
ProviderFault = Literal["pause", "connect"]


@dataclass(frozen=True, slots=True)
class RecipientResult:
    address: str
    accepted: bool
    smtp_code: int | None = None
    smtp_reply: str | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    """A provider's verdict on one attempt (a value, not an exception)."""

    outcome: ProviderOutcome
    smtp_code: int | None = None
    smtp_reply: str | None = None  # server text as `server_text` leaves it; never carries our secrets
    error_class: str | None = None
    ambiguous: bool = False  # connection lost after the final "." of DATA, before the reply
    recipients: tuple[RecipientResult, ...] = field(default=())
    fault: ProviderFault | None = None  # the provider's fault, not the message's (transient only)

    @property
    def summary(self) -> str:
        parts: list[str] = [self.outcome]
        if self.smtp_code is not None:
            parts.append(str(self.smtp_code))
        if self.error_class:
            parts.append(self.error_class)
        if self.smtp_reply:
            parts.append(self.smtp_reply)
        return " ".join(parts)[:SERVER_TEXT_LIMIT]  # `last_error`: bounded like the reply it quotes


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery the scheduler claimed for one attempt, guarded by `claim_token`."""

    delivery_id: UUID
    claim_token: UUID
    attempt_number: int
    message_id: str
    expires_at: datetime | None
    recipients: tuple[str, ...]  # envelope addresses, in order
    mime: bytes
    traceparent: str | None = None  # of the span that accepted it: the attempt's span continues that trace
    recipient_kinds: tuple[RecipientKind, ...] = ()  # to/cc/bcc of each of `recipients` (for its event)
    provider_faults: int = 0  # earlier attempts that failed by the provider's fault: they do not count
    source: Source | None = None
    submitted_at: datetime | None = None  # the producer's XADD or the HTTP acceptance: latency starts here
    # recipients suppressed at acceptance (address, kind): never sent to, named in the event
    suppressed: tuple[tuple[str, RecipientKind], ...] = ()


@dataclass(frozen=True, slots=True)
class StaleRecovery:
    """What one stale-claim recovery pass did: claims requeued, and dead-lettered (attempts exhausted)."""

    requeued: int = 0
    dead_lettered: int = 0

    @property
    def total(self) -> int:
        return self.requeued + self.dead_lettered


@dataclass(frozen=True, slots=True)
class ResendSource:
    """What a resend copies from the original delivery."""

    delivery_id: UUID
    status: str
    template: str | None
    locale: str | None
    template_digest: str | None
    priority: Priority
    tags: Mapping[str, str]
    subject: str | None  # None (and `text` too) once redacted
    text: str | None
    html: str | None
    reply_to: Address | None
    headers: Mapping[str, str]
    recipients: tuple[Recipient, ...]
    redacted: bool = False
