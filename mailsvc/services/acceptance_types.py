"""The values that cross the acceptance boundary: what the doors hand the store, what it answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol
from uuid import UUID

from mailsvc.domain.commands import SendRequest, ValidationFailed
from mailsvc.domain.model import RenderedContent, Source, Status
from mailsvc.domain.stream_entries import MalformedCommand
from mailsvc.services.command_spans import NO_COMMAND_SPANS, NoCommandSpans


class Renderer(Protocol):
    def render(self, template_id: str, locale: str | None, variables: Any, *, max_bytes: int) -> RenderedContent:
        """Raise `TemplateError` (`RenderTooLarge` once a body passes `max_bytes`)."""
        ...


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


class AcceptanceStore(Protocol):
    async def accept(
        self,
        deliveries: Sequence[NewDelivery],
        malformed: Sequence[MalformedCommand],
        *,
        stream_key: str,
        offset: OffsetAdvance | None,
        idempotency_ttl: timedelta,
    ) -> list[KeyOutcome]:
        """Persist in one transaction, one outcome per delivery (a key may repeat in the batch:
        each repeat is a duplicate or a conflict); a replay-only delivery only reads its key, in the
        same transaction; conflicting and refused stream commands become malformed rows."""
        ...


@dataclass(frozen=True, slots=True)
class Accepted:
    delivery_id: UUID
    status: Status
    idempotent_replay: bool


@dataclass
class PreparedBatch:
    """A stream batch validated, rendered and built, not yet persisted."""

    deliveries: list[NewDelivery] = field(default_factory=list)
    malformed: list[MalformedCommand] = field(default_factory=list)
    spans: NoCommandSpans = NO_COMMAND_SPANS

    def abandon(self, reason: BaseException) -> None:
        """Never to be committed (read ahead of a batch that failed): end its spans."""
        self.spans.failed(reason)


@dataclass
class BatchResult:
    accepted: int = 0
    duplicate: int = 0
    malformed: int = 0
    malformed_reasons: dict[str, int] = field(default_factory=dict)
