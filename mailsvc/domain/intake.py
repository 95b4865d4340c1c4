"""What the two doors hand the store, and what it answers (pure values that cross the layers)."""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal
from uuid import UUID

from mailsvc.domain.commands import SendRequest, ValidationFailed
from mailsvc.domain.events import Event
from mailsvc.domain.mime import Span
from mailsvc.domain.model import RenderedContent, Source, Status
from mailsvc.domain.operator_actions import OperatorAction
from mailsvc.domain.stream import parse_id
from mailsvc.domain.stream_entries import raw_fields_blob
from mailsvc.domain.suppression import key_of
from mailsvc.domain.transitions import acceptance_event, after_suppression_check, suppressed_reason


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
    # where the bodies lie in `mime` when it holds them verbatim (`mime.BuiltMessage`): the store
    # keeps the span instead of a second copy of the text; None: the text is stored
    text_span: Span | None = None
    html_span: Span | None = None
    resend_of: UUID | None = None
    stream_entry_id: str | None = None
    # a stream command's fields as Redis gave them, for the malformed row should it turn out to
    # conflict (`raw_fields`, computed only then)
    stream_fields: Mapping[bytes, bytes] | None = None
    traceparent: str | None = None  # of the span that accepted it: each attempt's span continues it
    # set when the request fails validation only because time passed (its `expires_at`): it may
    # still answer a replay of the stored original, but it never creates anything (see `KeyOutcome`)
    replay_only: ValidationFailed | None = None
    # positions of the recipients on the suppression list at acceptance (SPEC §12): never sent to
    suppressed: frozenset[int] = frozenset()
    # an operator's write (a resend): recorded with the delivery, only when the delivery is created
    operator_action: OperatorAction | None = None

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
    def raw_fields(self) -> bytes | None:
        return None if self.stream_fields is None else raw_fields_blob(self.stream_fields)

    @property
    def collapse_key(self) -> str | None:
        return self.request.collapse_key

    @property
    def suppression_keys(self) -> set[str]:
        """The suppression keys of its recipients (what acceptance looks up)."""
        return {key_of(r.address.email) for r in self.request.recipients}

    def checked_against(self, suppressed_keys: Set[str]) -> NewDelivery:
        """This delivery once the suppression list was read: its suppressed recipients, and its
        status (`transitions.after_suppression_check`) — itself when none is suppressed."""
        positions = frozenset(
            index for index, r in enumerate(self.request.recipients) if key_of(r.address.email) in suppressed_keys
        )
        if not positions:
            return self
        everyone = frozenset(range(len(self.request.recipients)))
        return replace(self, suppressed=positions, status=after_suppression_check(self.status, everyone, positions))

    @property
    def event(self) -> Event:
        """What its acceptance tells producers (SPEC §11), written with it."""
        stub_mode = len(self.suppressed) < len(self.request.recipients)
        return acceptance_event(
            self.status,
            send_at=self.send_at,
            expires_at=self.request.expires_at,
            priority=self.request.priority,
            collapse_key=self.request.collapse_key,
            reason=suppressed_reason(stub_mode=stub_mode),
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
    superseded: int = 0  # created: how many queued deliveries of its collapse key it superseded


CancelKind = Literal["cancelled", "unknown_target", "not_cancellable"]


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """What became of one `cancel_email` command (SPEC §2): applied, or why it could not be."""

    kind: CancelKind
    delivery_id: UUID | None


@dataclass(frozen=True, slots=True)
class OffsetAdvance:
    stream_key: str
    expected: str | None  # the offset we read from; None when none was stored yet
    new: str
