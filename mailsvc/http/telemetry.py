"""HTTP server spans and the request-duration metric: route template as name, never bodies."""

from __future__ import annotations

import time

from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailsvc.instruments import Instruments

_PROPAGATOR = TraceContextTextMapPropagator()


class HttpTelemetry:
    def __init__(self, app: ASGIApp, instruments: Instruments) -> None:
        self.app = app
        self.instruments = instruments

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        status_code = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        traceparent = next((v for k, v in scope["headers"] if k == b"traceparent"), None)
        parent = _PROPAGATOR.extract({"traceparent": traceparent.decode("latin-1")}) if traceparent else None
        tracer = self.instruments.tracer
        with tracer.start_as_current_span(
            method, context=parent, kind=SpanKind.SERVER, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", None)
                attributes = {"http.request.method": method, "http.response.status_code": status_code}
                if template:
                    attributes["http.route"] = template
                    span.update_name(f"{method} {template}")
                if span.is_recording():
                    span.set_attributes(attributes)
                    if status_code >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                self.instruments.http_duration.record(time.perf_counter() - started, attributes)
