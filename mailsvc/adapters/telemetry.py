"""OpenTelemetry SDK setup from the standard `OTEL_*` variables plus the two stdout switches.

Exporting never blocks the hot path: spans go through a `BatchSpanProcessor` (bounded queue,
background thread), metrics through a periodic reader; a collector that is down costs only
dropped telemetry. With every exporter `none`, the API's no-op providers stay in place.
"""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from mailsvc.settings import TelemetrySettings

log = logging.getLogger("mailsvc.telemetry")


def _otlp_span_exporter(protocol: str) -> SpanExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans

        return GrpcSpans()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans

    return HttpSpans()


def _otlp_metric_exporter(protocol: str) -> Any:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics

        return GrpcMetrics()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetrics

    return HttpMetrics()


# stdout is JSON lines (the logs): console spans and metrics must not spread over many lines
def _one_line_span(span: ReadableSpan) -> str:
    return str(span.to_json(indent=None)) + "\n"


def _one_line_metrics(data: MetricsData) -> str:
    return str(data.to_json(indent=None)) + "\n"


@dataclass
class Telemetry:
    """The SDK providers this process installed (if any); `shutdown()` flushes them."""

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    processors: list[SpanProcessor] = field(default_factory=list)

    def shutdown(self, timeout: float = 3.0) -> None:
        """Flush and stop the exporters, waiting at most `timeout` seconds.

        An unreachable collector must not hold the process past its shutdown: the flush runs in
        a daemon thread that is abandoned at the deadline (the telemetry is dropped).
        """
        providers = [p for p in (self.tracer_provider, self.meter_provider) if p is not None]
        if not providers:
            return
        worker = threading.Thread(target=lambda: [p.shutdown() for p in providers], daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            log.warning("telemetry_flush_abandoned", extra={"timeout_s": timeout})


def setup_telemetry(
    settings: TelemetrySettings,
    *,
    extra_span_processors: list[SpanProcessor] | None = None,
    extra_metric_readers: list[MetricReader] | None = None,
    export_interval_ms: int | None = None,
    install_globally: bool = True,
) -> Telemetry:
    """Install the configured exporters; `export_interval_ms` None: `OTEL_METRIC_EXPORT_INTERVAL`
    (the SDK's own reading of it, default 60 s)."""
    resource = Resource.create({"service.name": settings.service_name})
    processors: list[SpanProcessor] = list(extra_span_processors or [])
    if settings.traces_exporter == "otlp":
        protocol = settings.otlp_traces_protocol or settings.otlp_protocol
        processors.append(BatchSpanProcessor(_otlp_span_exporter(protocol), max_queue_size=8192))
    if settings.traces_exporter == "console" or settings.stdout_traces_enabled:
        processors.append(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stdout, formatter=_one_line_span)))
    readers: list[MetricReader] = list(extra_metric_readers or [])
    if settings.metrics_exporter == "otlp":
        protocol = settings.otlp_metrics_protocol or settings.otlp_protocol
        readers.append(
            PeriodicExportingMetricReader(_otlp_metric_exporter(protocol), export_interval_millis=export_interval_ms)
        )
    if settings.metrics_exporter == "console" or settings.stdout_metrics_enabled:
        readers.append(
            PeriodicExportingMetricReader(
                ConsoleMetricExporter(out=sys.stdout, formatter=_one_line_metrics),
                export_interval_millis=export_interval_ms,
            )
        )
    telemetry = Telemetry(processors=processors)
    if processors:
        telemetry.tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        for processor in processors:
            telemetry.tracer_provider.add_span_processor(processor)
        if install_globally:
            trace.set_tracer_provider(telemetry.tracer_provider)
    if readers:
        telemetry.meter_provider = MeterProvider(resource=resource, metric_readers=readers, shutdown_on_exit=False)
        if install_globally:
            metrics.set_meter_provider(telemetry.meter_provider)
    log.info(
        "telemetry_configured",
        extra={
            "traces": settings.traces_exporter,
            "metrics": settings.metrics_exporter,
            "stdout_traces": settings.stdout_traces_enabled,
            "stdout_metrics": settings.stdout_metrics_enabled,
        },
    )
    return telemetry
