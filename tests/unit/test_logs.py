"""JSON log lines: trace context inside a span, addresses masked (SPEC §8)."""

from __future__ import annotations

import json
import logging

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from mailsvc.logs import JsonFormatter, mask_address, mask_addresses


def record(message: str, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("mailsvc.test", logging.INFO, __file__, 1, message, None, None)
    entry.__dict__.update(extra)
    return entry


def test_an_address_keeps_its_first_letter_and_domain() -> None:
    assert mask_address("ann.lee@example.com") == "a***@example.com"
    assert mask_address("not-an-address") == "***"


def test_addresses_inside_free_text_are_masked() -> None:
    reply = "5.1.1 <ann.lee@example.com>: no such user; also bob+x@mx.example.org, (carol@ex.io)"
    assert mask_addresses(reply) == "5.1.1 <a***@example.com>: no such user; also b***@mx.example.org, (c***@ex.io)"
    assert mask_addresses("250 2.0.0 OK queued") == "250 2.0.0 OK queued"
    assert mask_addresses(None) is None


def test_a_line_inside_a_span_carries_its_trace_and_span_ids() -> None:
    formatter = JsonFormatter()
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        inside = json.loads(formatter.format(record("attempt_failed", delivery_id="d-1")))
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert (inside["event"], inside["delivery_id"]) == ("attempt_failed", "d-1")
    outside = json.loads(formatter.format(record("idle")))
    assert "trace_id" not in outside
    assert "span_id" not in outside


def test_no_trace_ids_under_a_non_recording_tracer() -> None:
    with trace.NoOpTracer().start_as_current_span("nothing"):
        line = json.loads(JsonFormatter().format(record("quiet")))
    assert "trace_id" not in line
