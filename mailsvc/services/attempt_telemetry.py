"""The span and the metrics of one delivery attempt (SPEC §8).

The span continues the trace the delivery was accepted in (its stored `traceparent`), so one
delivery's trace reads from the producer to the receiving server's reply. Span attributes carry
the delivery id; metric attributes only outcome and provider. Neither ever carries an address or
the server's reply text (it may quote one).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from mailsvc.domain.model import ClaimedDelivery, ProviderName
from mailsvc.domain.transitions import AttemptRecord
from mailsvc.instruments import Instruments, context_from_traceparent

SPAN_NAME = "mail.attempt"


class AttemptTelemetry:
    def __init__(self, instruments: Instruments, provider: ProviderName) -> None:
        self.instruments = instruments
        self.provider = provider
        self._by_provider = {"provider": provider}

    @contextmanager
    def span(self, claim: ClaimedDelivery) -> Iterator[Span | None]:
        """The attempt's span, current while the attempt runs (its logs carry the trace id)."""
        if not self.instruments.tracing:
            yield None
            return
        with self.instruments.tracer.start_as_current_span(
            SPAN_NAME,
            context=context_from_traceparent(claim.traceparent),
            kind=SpanKind.CLIENT,
            attributes={
                "mail.delivery_id": str(claim.delivery_id),
                "mail.attempt_number": claim.attempt_number,
                "mail.provider": self.provider,
                "mail.recipient_count": len(claim.recipients),
            },
            # an exception's message could quote an address: record the type only
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    def finished(self, span: Span | None, record: AttemptRecord, seconds: float, claim: ClaimedDelivery) -> None:
        """Count the attempt; describe its verdict on the span; a 250 ends the delivery's latency."""
        attributes = {"outcome": record.outcome, "provider": self.provider}
        self.instruments.attempts.add(1, attributes)
        if record.outcome == "sent" and claim.submitted_at is not None and claim.source is not None:
            latency = (record.finished_at - claim.submitted_at).total_seconds()
            self.instruments.delivery_latency.record(max(0.0, latency), {"source": claim.source})
        result = record.result
        if result is not None:  # None: expired before anything was sent, nothing to time
            self.instruments.attempt_duration.record(seconds, attributes)
            if result.ambiguous:
                self.instruments.ambiguous_attempts.add(1, self._by_provider)
        if span is None:
            return
        span.set_attribute("mail.attempt.outcome", record.outcome)
        span.set_attribute("mail.delivery.status", record.status)
        if result is not None:
            if result.smtp_code is not None:
                span.set_attribute("smtp.reply_code", result.smtp_code)
            if result.error_class:
                span.set_attribute("error.type", result.error_class)
            span.set_attribute("mail.attempt.ambiguous", result.ambiguous)
            refused = sum(1 for r in result.recipients if not r.accepted)
            if refused:
                span.set_attribute("mail.recipients_refused", refused)
        if record.outcome != "sent":
            span.set_status(Status(StatusCode.ERROR, record.outcome))
