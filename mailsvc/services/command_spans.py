"""One CONSUMER span per stream command, continuing the producer's `traceparent` (SPEC §8).

A batch is accepted in one transaction, so each command's span stays open until that transaction
settles and then says what became of the command. With tracing off, `NO_COMMAND_SPANS` stands in
and does nothing, so the hot path builds no attributes at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from mailsvc.domain.stream_entries import CancelCommand, MalformedCommand, StreamCommand
from mailsvc.instruments import context_from_traceparent, current_traceparent

if TYPE_CHECKING:
    from mailsvc.domain.intake import CancelOutcome, KeyOutcome

Entry = StreamCommand | CancelCommand | MalformedCommand

SPAN_NAME = "mail.command consume"
_RESULTS = {"created": "accepted", "duplicate": "duplicate", "conflict": "malformed", "refused": "malformed"}


class NoCommandSpans:
    """Tracing disabled: every call is a no-op."""

    def start(self, entry: Entry) -> Span | None:
        return None

    def cancel(self, span: Span | None) -> None:
        """A `cancel_email` handed to the store: its span ends with the cancel's outcome."""

    def malformed(self, span: Span | None, reason: str) -> None:
        pass

    def prepared(self, span: Span | None) -> str | None:
        """The `traceparent` to store with the command's delivery."""
        return None

    def settled(
        self,
        outcomes: Sequence[KeyOutcome],
        refusals: Sequence[str | None],
        cancels: Sequence[CancelOutcome] = (),
    ) -> None:
        """End the spans: one outcome per prepared delivery, and the reason each would be refused;
        one outcome per cancel."""

    def failed(self, error: BaseException) -> None:
        pass


NO_COMMAND_SPANS = NoCommandSpans()


class CommandSpans(NoCommandSpans):
    """The spans of one batch; `settled` or `failed` ends them all."""

    def __init__(self, tracer: Tracer, stream_key: str) -> None:
        self.tracer = tracer
        self.stream_key = stream_key
        self._prepared: list[Span] = []  # parallel to the deliveries handed to the store
        self._malformed: list[Span] = []
        self._cancels: list[Span] = []  # parallel to the cancels handed to the store

    def start(self, entry: Entry) -> Span:
        # a command that failed to decode has no trusted traceparent: its span starts a trace
        parent = None if isinstance(entry, MalformedCommand) else context_from_traceparent(entry.traceparent)
        return self.tracer.start_span(
            SPAN_NAME,
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "redis",
                "messaging.operation.type": "process",
                "messaging.destination.name": self.stream_key,
                "messaging.message.id": entry.entry_id,
            },
            record_exception=False,
        )

    def malformed(self, span: Span | None, reason: str) -> None:
        if span is not None:
            span.set_attributes({"mail.command.result": "malformed", "mail.command.malformed_reason": reason})
            self._malformed.append(span)

    def cancel(self, span: Span | None) -> None:
        if span is not None:
            self._cancels.append(span)

    def prepared(self, span: Span | None) -> str | None:
        if span is None:
            return None
        self._prepared.append(span)
        return current_traceparent(span)

    def settled(
        self,
        outcomes: Sequence[KeyOutcome],
        refusals: Sequence[str | None],
        cancels: Sequence[CancelOutcome] = (),
    ) -> None:
        for span, cancelled in zip(self._cancels, cancels, strict=True):
            if cancelled.kind == "cancelled":
                span.set_attributes({"mail.command.result": "accepted", "mail.delivery_id": str(cancelled.delivery_id)})
            else:
                span.set_attributes({"mail.command.result": "malformed"})
                span.set_attribute("mail.command.malformed_reason", cancelled.kind)
            span.end()
        for span, outcome, refusal in zip(self._prepared, outcomes, refusals, strict=True):
            span.set_attribute("mail.command.result", _RESULTS[outcome.kind])
            if outcome.kind == "refused":  # nothing was stored: no delivery id to name
                span.set_attribute("mail.command.malformed_reason", refusal or "validation_failed")
            else:
                span.set_attribute("mail.delivery_id", str(outcome.delivery_id))
            if outcome.kind == "conflict":
                span.set_attribute("mail.command.malformed_reason", "idempotency_conflict")
            span.end()
        for span in self._malformed:
            span.end()

    def failed(self, error: BaseException) -> None:
        # the type only: a driver's message may quote parameters
        for span in [*self._prepared, *self._malformed, *self._cancels]:
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            span.end()
