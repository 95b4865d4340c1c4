"""Delivery events (SPEC §11): what happened to a delivery, as a value written with the change itself.

Pure: the transitions (`domain/transitions.py`) produce these; the stores insert them in the same
transaction as the status change; the publisher turns stored rows into CloudEvents.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

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


@dataclass(frozen=True, slots=True, order=True)
class EventPosition:
    """Where an event sits in the feed: its writing transaction, then its sequence number. Readers
    go in this order and only below the visibility horizon (migration 0005), so a position once
    passed can never have an event appear before it."""

    xid: int
    seq: int

    def token(self) -> str:
        """The opaque cursor `GET /events` hands out."""
        return base64.urlsafe_b64encode(f"{self.xid}.{self.seq}".encode()).decode().rstrip("=")

    @classmethod
    def from_token(cls, token: str) -> EventPosition:
        """Raise `ValueError` for anything that is not a cursor we handed out."""
        try:
            xid, _, seq = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii").partition(".")
            position = cls(int(xid), int(seq))
        except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
            raise ValueError("not a cursor of this feed") from exc
        if position.xid < 0 or position.seq < 0:
            raise ValueError("not a cursor of this feed")
        return position


FEED_START = EventPosition(0, 0)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One committed event with what a producer needs to match it to its own request. `data_json`
    and `tags_json` are JSON text as stored: the stream gets them as they are, never re-encoded."""

    position: EventPosition
    event_id: UUID
    delivery_id: UUID
    type: EventType
    data_json: str
    time: datetime
    source: str  # the delivery's: notification | auth | resend
    idempotency_key: str
    tags_json: str
    traceparent: str | None

    @property
    def data(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.data_json)
        return value

    @property
    def tags(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.tags_json)
        return value

    def cloud_event(self) -> dict[str, Any]:
        """CloudEvents 1.0 (SPEC §11), structured JSON mode: `data` and `tags` as objects."""
        return {**self._attributes(), "data": self.data, "traceparent": self.traceparent, "tags": self.tags}

    def stream_fields(self) -> dict[str, str]:
        """The same event as Redis stream fields, one attribute per field (`data`, `tags` as JSON;
        `traceparent` left out when the delivery has no trace)."""
        return _as_dict(self.stream_args())

    def stream_args(self) -> tuple[str, ...]:
        """`stream_fields` as XADD takes them: name, value, name, value… (the publisher packs one
        per event: no dict to build and flatten again)."""
        time = self.time if self.time.tzinfo is UTC else self.time.astimezone(UTC)
        return stream_args(
            event_id=str(self.event_id),
            type=self.type,
            time=time.isoformat()[:-6] + "Z",  # a UTC time's isoformat ends in +00:00
            subject=str(self.delivery_id),
            source=self.source,
            idempotency_key=self.idempotency_key,
            data_json=self.data_json,
            tags_json=self.tags_json,
            traceparent=self.traceparent,
        )

    def _attributes(self) -> dict[str, str]:
        return _as_dict(self.stream_args()[:_ATTRIBUTE_ARGS])


def stream_args(
    *,
    event_id: str,
    type: str,
    time: str,
    subject: str,
    source: str,
    idempotency_key: str,
    data_json: str,
    tags_json: str,
    traceparent: str | None,
) -> tuple[str, ...]:
    """An event's Redis stream fields as XADD takes them, from its values as text: its CloudEvents
    attributes first (`_ATTRIBUTE_ARGS` items), then `data` and `tags` as JSON, then `traceparent`
    only when the delivery has a trace. The one layout of both `StoredEvent` and the publisher's
    store, which formats the values in SQL."""
    args = (
        "specversion", "1.0",
        "id", event_id,
        "source", "mailsvc",
        "type", type,
        "time", time,
        "subject", subject,
        "datacontenttype", "application/json",
        "deliverysource", source,
        "idempotencykey", idempotency_key,
        "data", data_json,
        "tags", tags_json,
    )  # fmt: skip
    return (*args, "traceparent", traceparent) if traceparent else args


_ATTRIBUTE_ARGS = 18  # the nine CloudEvents attributes' names and values, ahead of `data`


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Events ready for the stream, in feed order: each one's XADD fields (`StoredEvent.stream_args`)
    and the position of the last. The publisher needs no more, so its store builds no `StoredEvent`s
    (their UUIDs, times and dataclass were a quarter of its CPU)."""

    fields: Sequence[Sequence[str]]
    last: EventPosition  # the cursor's next value: the last event's (empty: where the read began)

    def __len__(self) -> int:
        return len(self.fields)


def _as_dict(pairs: tuple[str, ...]) -> dict[str, str]:
    """name, value, name, value… → {name: value}"""
    return dict(zip(pairs[::2], pairs[1::2], strict=True))
