"""A small OTLP/HTTP receiver on loopback: decodes the protobuf export requests it is sent.

It stands in for an OpenTelemetry Collector (which this machine cannot run) and keeps every span
and metric data point for assertions.
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str = ""
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # (trace_id, span_id)


@dataclass
class ReceivedPoint:
    metric: str
    unit: str
    attributes: dict[str, Any]
    value: float
    count: int | None = None  # histograms
    kind: str = ""  # the OTLP data field: "sum", "gauge", "histogram", ...
    monotonic: bool = False  # sums only: a counter


@dataclass
class OtlpReceiver:
    spans: list[ReceivedSpan] = field(default_factory=list)
    points: list[ReceivedPoint] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> OtlpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.ingest(self.path, body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def ingest(self, path: str, body: bytes) -> None:
        with self.lock:
            self.requests.append(path)
            if path.endswith("/v1/traces"):
                self._traces(body)
            elif path.endswith("/v1/metrics"):
                self._metrics(body)
            elif path.endswith("/v1/logs"):
                ExportLogsServiceRequest.FromString(body)

    def _traces(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            status_code=span.status.code,
                            status_message=span.status.message,
                            events=[(e.name, {a.key: _value(a.value) for a in e.attributes}) for e in span.events],
                            links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        )
                    )

    def _metrics(self, body: bytes) -> None:
        request = ExportMetricsServiceRequest.FromString(body)
        for resource_metrics in request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    data = getattr(metric, kind)
                    monotonic = kind == "sum" and data.is_monotonic
                    for point in data.data_points:
                        attributes = {a.key: _value(a.value) for a in point.attributes}
                        if kind == "histogram":
                            self.points.append(
                                ReceivedPoint(
                                    metric.name, metric.unit, attributes, point.sum, point.count, kind, monotonic
                                )
                            )
                        else:
                            value = point.as_double if point.WhichOneof("value") == "as_double" else point.as_int
                            self.points.append(
                                ReceivedPoint(metric.name, metric.unit, attributes, value, None, kind, monotonic)
                            )

    def spans_named(self, prefix: str) -> list[ReceivedSpan]:
        with self.lock:
            return [s for s in self.spans if s.name.startswith(prefix)]

    def metric_points(self) -> list[ReceivedPoint]:
        with self.lock:
            return list(self.points)

    def metric(self, name: str) -> list[ReceivedPoint]:
        with self.lock:
            return [p for p in self.points if p.metric == name]


def otlp_env(receiver: OtlpReceiver) -> dict[str, str]:
    """`mailsvc serve` variables exporting traces and metrics to `receiver`, quickly enough for a test."""
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
