"""JSON-lines logging on stdout, with trace context and masked addresses (SPEC §8)."""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry import trace

_STD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime", "taskName", "color_message"}
)


def mask_address(address: str) -> str:
    """`ann.lee@example.com` → `a***@example.com`; anything without `@` is masked whole."""
    local, at, domain = address.rpartition("@")
    if not at or not local:
        return "***"
    return f"{local[0]}***@{domain}"


# anything shaped like local@domain inside free text (an SMTP reply often quotes the recipient)
_ADDRESS_IN_TEXT = re.compile(r"""[^\s<>()\[\],;:"'@]+@[^\s<>()\[\],;:"'@]+""")


def mask_addresses(text: str | None) -> str | None:
    """Free text (e.g. a server's reply) with every address in it masked like `mask_address`."""
    if text is None or "@" not in text:
        return text
    return _ADDRESS_IN_TEXT.sub(lambda match: mask_address(match.group(0)), text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, trace/span ids, and the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["error_class"] = record.exc_info[0].__name__
            entry["stack"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"warn": "WARNING"}.get(level, level.upper()))
    # uvicorn's own access log would print client addresses and paths unstructured; our
    # HTTP spans and request logs replace it
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
