"""The values that cross the acceptance boundary: what the doors hand the store, what it answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol
from uuid import UUID

from mailsvc.domain.intake import CancelOutcome, KeyOutcome, NewDelivery, OffsetAdvance
from mailsvc.domain.model import RenderedContent, Status
from mailsvc.domain.stream_entries import CancelCommand, MalformedCommand
from mailsvc.services.command_spans import NO_COMMAND_SPANS, NoCommandSpans


class Renderer(Protocol):
    def render(self, template_id: str, locale: str | None, variables: Any, *, max_bytes: int) -> RenderedContent:
        """Raise `TemplateError` (`RenderTooLarge` once a body passes `max_bytes`)."""
        ...


class AcceptanceStore(Protocol):
    async def accept(
        self,
        deliveries: Sequence[NewDelivery],
        malformed: Sequence[MalformedCommand],
        *,
        stream_key: str,
        offset: OffsetAdvance | None,
        idempotency_ttl: timedelta,
        cancels: Sequence[CancelCommand] = (),
        cancel_outcomes: list[CancelOutcome] | None = None,
    ) -> list[KeyOutcome]:
        """Persist in one transaction, one outcome per delivery (a key may repeat in the batch:
        each repeat is a duplicate or a conflict); a replay-only delivery only reads its key, in the
        same transaction; conflicting and refused stream commands become malformed rows.

        Every recipient on the suppression list is recorded `suppressed` (a delivery left with
        none is accepted `suppressed`); a queued delivery with a collapse key supersedes the
        queued ones of its `(source, key)`. `cancels` (stream only) are applied after the
        deliveries, in the same transaction; one outcome each is appended to `cancel_outcomes`,
        and those that cannot apply become malformed rows."""
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
    cancels: list[CancelCommand] = field(default_factory=list)
    spans: NoCommandSpans = NO_COMMAND_SPANS

    def abandon(self, reason: BaseException) -> None:
        """Never to be committed (read ahead of a batch that failed): end its spans."""
        self.spans.failed(reason)


@dataclass
class BatchResult:
    accepted: int = 0
    cancelled: int = 0
    duplicate: int = 0
    malformed: int = 0
    malformed_reasons: dict[str, int] = field(default_factory=dict)
