"""What operators read: frozen views of deliveries and their children (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar
from uuid import UUID

from mailsvc.domain.model import Address, Priority

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DeliverySummary:
    """One delivery as lists show it: its own columns plus its `to` addresses."""

    delivery_id: UUID
    source: str
    status: str
    template: str | None
    locale: str | None
    template_digest: str | None
    priority: Priority
    send_at: datetime
    expires_at: datetime | None
    idempotency_key: str
    message_id: str
    tags: Mapping[str, str]
    attempt_count: int
    next_attempt_at: datetime | None
    last_error: str | None
    resend_of: UUID | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    to: tuple[str, ...]
    recipient_count: int
    collapse_key: str | None = None
    superseded_by: UUID | None = None  # set when it is `superseded` (SPEC §12)


@dataclass(frozen=True, slots=True)
class RecipientView:
    kind: str
    address: str
    name: str | None
    outcome: str | None
    smtp_code: int | None
    smtp_reply: str | None


@dataclass(frozen=True, slots=True)
class AttemptView:
    number: int
    started_at: datetime
    finished_at: datetime
    outcome: str
    ambiguous: bool
    smtp_code: int | None
    smtp_reply: str | None
    error_class: str | None
    provider: str | None
    duration_ms: int


@dataclass(frozen=True, slots=True)
class DeadLetterView:
    reason: str
    last_error: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Body:
    text: str
    html: str | None


@dataclass(frozen=True, slots=True)
class Redaction:
    """What is left of a sensitive delivery's content once it is terminal (SPEC §13)."""

    redacted_at: datetime
    mime_sha256: str  # hex, of the MIME message as built and sent
    mime_bytes: int
    subject_bytes: int
    text_bytes: int
    html_bytes: int | None


@dataclass(frozen=True, slots=True)
class DeliveryDetail:
    """One delivery with everything an operator needs to explain what happened to it."""

    summary: DeliverySummary
    subject: str | None  # None only when the payload row is missing
    reply_to: Address | None
    headers: Mapping[str, str]
    recipients: tuple[RecipientView, ...]
    attempts: tuple[AttemptView, ...]
    dead_letter: DeadLetterView | None
    resends: tuple[UUID, ...]
    body: Body | None  # only when asked for (never once redacted)
    sensitive: bool = False
    redaction: Redaction | None = None


@dataclass(frozen=True, slots=True)
class DeadLetterItem:
    delivery_id: UUID
    reason: str
    last_error: str | None
    created_at: datetime
    source: str
    status: str
    template: str | None
    attempt_count: int
    to: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MalformedItem:
    malformed_id: int
    stream_key: str
    stream_entry_id: str
    idempotency_key: str | None
    reason: str
    message: str
    raw_fields: str | None  # only when asked for: decoded, `payload.variables` masked (`domain/raw_fields.py`)
    received_at: datetime
    replayed_as: UUID | None = None  # the delivery an operator's replay made of it (SPEC §14)
    replayed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    next_cursor: str | None
