"""Delivery events (SPEC §11): what happened to a delivery, as a value written with the change itself.

Pure: the transitions (`domain/transitions.py`) produce these; the stores insert them in the same
transaction as the status change; the publisher turns stored rows into CloudEvents.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

EventType = Literal[
    "delivery.queued",
    "delivery.suppressed",
    "delivery.deferred",
    "delivery.sent",
    "delivery.dead_lettered",
    "delivery.cancelled",
    "delivery.superseded",
]
EVENT_TYPES: tuple[EventType, ...] = (
    "delivery.queued",
    "delivery.suppressed",
    "delivery.deferred",
    "delivery.sent",
    "delivery.dead_lettered",
    "delivery.cancelled",
    "delivery.superseded",
)


@dataclass(frozen=True, slots=True)
class Event:
    """One event of one delivery; `data` is JSON-ready (strings, numbers, booleans, None, lists, maps)."""

    type: EventType
    data: Mapping[str, Any]


def rfc3339(value: datetime | None) -> str | None:
    """Timestamps in event data: RFC 3339 with offset, as the producer wrote its own."""
    return None if value is None else value.isoformat()
