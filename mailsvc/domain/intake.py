"""What the two doors hand the store, and what it answers (pure values that cross the layers)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from uuid import UUID

from mailsvc.domain.commands import SendRequest, ValidationFailed
from mailsvc.domain.events import Event
from mailsvc.domain.model import RenderedContent, Source, Status
from mailsvc.domain.stream import parse_id
from mailsvc.domain.transitions import acceptance_event


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """One delivery ready to persist: rendered, MIME built, ids assigned."""

    delivery_id: UUID
    source: Source
    status: Status
    idempotency_key: str
    request_hash: bytes
    request: SendRequest
    content: RenderedContent
    message_id: str
    mime: bytes
    accepted_at: datetime
    resend_of: UUID | None = None
    stream_entry_id: str | None = None
    raw_fields: bytes | None = None  # for a stream command that turns out to conflict
    traceparent: str | None = None  # of the span that accepted it: each attempt's span continues it
    # set when the request fails validation only because time passed (its `expires_at`): it may
    # still answer a replay of the stored original, but it never creates anything (see `KeyOutcome`)
    replay_only: ValidationFailed | None = None

    @property
    def send_at(self) -> datetime:
        return self.request.send_at or self.accepted_at

    @property
    def submitted_at(self) -> datetime:
        """When the producer submitted it: its XADD (the entry id's milliseconds), else acceptance."""
        if self.stream_entry_id is None:
            return self.accepted_at
        ms, _ = parse_id(self.stream_entry_id)
        return datetime.fromtimestamp(ms / 1000, UTC)

    @property
    def event(self) -> Event:
        """What its acceptance tells producers (SPEC §11), written with it."""
        return acceptance_event(
            self.status, send_at=self.send_at, expires_at=self.request.expires_at, priority=self.request.priority
        )


@dataclass(frozen=True, slots=True)
class KeyOutcome:
    """What the store found for one idempotency key.

    `refused` is only ever the outcome of a replay-only delivery whose key holds no (unexpired)
    request: its validation error stands, and `delivery_id` is its own, never stored. A replay-only
    delivery whose key holds the same request is a `duplicate`, one holding another a `conflict`.
    """

    kind: Literal["created", "duplicate", "conflict", "refused"]
    delivery_id: UUID
    status: Status


@dataclass(frozen=True, slots=True)
class OffsetAdvance:
    stream_key: str
    expected: str | None  # the offset we read from; None when none was stored yet
    new: str
