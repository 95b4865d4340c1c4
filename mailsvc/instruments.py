"""The service's traces and metrics instruments, built once in bootstrap and passed down.

Metric names follow OpenTelemetry semantic conventions where one exists
(`http.server.request.duration`) and `mail.*` otherwise. Attributes are low-cardinality only:
never an address or an id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
# seconds, not the SDK's default millisecond-shaped buckets (0, 5, 10, 25, ...), which would put
# nearly every request and attempt in the first bucket
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0)
# submission to the 250: milliseconds when the queue is empty, hours for a retried or scheduled one
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0)


def context_from_traceparent(traceparent: str | None) -> Context | None:
    """The remote parent a W3C `traceparent` names, or None when absent or invalid."""
    if not traceparent:
        return None
    context = _PROPAGATOR.extract({"traceparent": traceparent})
    span_context = trace.get_current_span(context).get_span_context()
    return context if span_context.is_valid else None


def link_to_traceparent(traceparent: str | None) -> trace.Link | None:
    """A link to the span a stored `traceparent` names: how a batch span points at each item's trace."""
    context = context_from_traceparent(traceparent)
    return None if context is None else trace.Link(trace.get_current_span(context).get_span_context())


def current_traceparent(span: trace.Span | None = None) -> str | None:
    """The W3C `traceparent` of `span` (default: the current span), to store with a delivery."""
    span_context = (span or trace.get_current_span()).get_span_context()
    if not span_context.is_valid:
        return None
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{int(span_context.trace_flags):02x}"


class Instruments:
    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.tracing = tracer_provider is not None
        # gauges fed by sampling (due backlog) skip their sampling work when nothing is exported
        self.metering = meter_provider is not None
        self.tracer = (tracer_provider or trace.NoOpTracerProvider()).get_tracer("mailsvc")
        meter = (meter_provider or metrics.NoOpMeterProvider()).get_meter("mailsvc")
        self.commands_consumed = meter.create_counter(
            "mail.commands.consumed", unit="{command}", description="Stream commands consumed, by result"
        )
        self.deliveries_accepted = meter.create_counter(
            "mail.deliveries.accepted", unit="{delivery}", description="Deliveries created, by source"
        )
        self.attempts = meter.create_counter(
            "mail.attempts", unit="{attempt}", description="Delivery attempts, by outcome and provider"
        )
        self.attempt_duration = meter.create_histogram(
            "mail.attempt.duration",
            unit="s",
            description="Duration of one delivery attempt",
            explicit_bucket_boundaries_advisory=_ATTEMPT_BUCKETS,
        )
        self.ambiguous_attempts = meter.create_counter(
            "mail.attempts.ambiguous",
            unit="{attempt}",
            description="Attempts whose connection broke after the final dot of DATA",
        )
        self.deliveries_finished = meter.create_counter(
            "mail.deliveries.finished", unit="{delivery}", description="Deliveries reaching a terminal status"
        )
        self.suppressions_added = meter.create_counter(
            "mail.suppressions.added",
            unit="{address}",
            description="Addresses added to the suppression list, by reason",
        )
        self.retention_deleted = meter.create_counter(
            "mail.retention.deleted", unit="{row}", description="Rows deleted by retention, by table"
        )
        self.http_duration = meter.create_histogram(
            "http.server.request.duration",
            unit="s",
            description="Duration of HTTP server requests",
            explicit_bucket_boundaries_advisory=_HTTP_BUCKETS,
        )
        self.events_published = meter.create_counter(
            "mail.events.published", unit="{event}", description="Delivery events published to the event stream"
        )
        self.delivery_latency = meter.create_histogram(
            "mail.delivery.latency",
            unit="s",
            description="From submission (the command's XADD, or the HTTP acceptance) to the server's 250, by source",
            explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS,
        )
        self._gauges: dict[str, Callable[[], float | None]] = {}
        meter.create_observable_gauge(
            "mail.stream.lag",
            callbacks=[self._observe("stream_lag")],
            unit="{entry}",
            description="Stream entries behind the head (upper bound until the consumer first catches up)",
        )
        meter.create_observable_gauge(
            "mail.queue.due",
            callbacks=[self._observe("due_backlog")],
            unit="{delivery}",
            description="Queued deliveries whose attempt is due now",
        )
        meter.create_observable_gauge(
            "mail.provider.paused",
            callbacks=[self._observe("provider_paused")],
            unit="{paused}",  # not "1": the collector would name it mail_provider_paused_ratio
            description="1 while the provider is paused (SPEC §12: no claims but one probe per interval), else 0",
        )
        meter.create_observable_gauge(
            "mail.events.oldest_unpublished_age",
            callbacks=[self._observe("events_oldest_unpublished_age")],
            unit="s",
            description="Age of the oldest delivery event not yet published (reported by the publishing replica)",
        )

    def watch(self, gauge: str, read: Callable[[], float | None]) -> None:
        """Register the function a gauge reads its value from (`stream_lag`, `due_backlog`,
        `provider_paused`, `events_oldest_unpublished_age`)."""
        self._gauges[gauge] = read

    def _observe(self, gauge: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_: CallbackOptions) -> Iterable[Observation]:
            read = self._gauges.get(gauge)
            value = read() if read is not None else None
            return [] if value is None else [Observation(value)]

        return callback


NO_INSTRUMENTS = Instruments()
