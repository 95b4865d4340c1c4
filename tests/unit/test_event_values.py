"""Delivery event values (pure): feed cursors, CloudEvents fields, `GET /events` parameters."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from mailsvc.domain.commands import ValidationFailed
from mailsvc.domain.events import FEED_START, EventPosition, StoredEvent
from mailsvc.domain.operator_query import EventQuery, parse_event_query


def stored(traceparent: str | None = None) -> StoredEvent:
    return StoredEvent(
        position=EventPosition(2**40, 7),
        event_id=uuid.UUID(int=1),
        delivery_id=uuid.UUID(int=2),
        type="delivery.sent",
        data_json=json.dumps({"attempt": 1, "smtp_code": 250, "recipients": [{"address": "é@example.org"}]}),
        time=datetime(2026, 12, 1, 10, 0, tzinfo=timezone(timedelta(hours=2))),
        source="notification",
        idempotency_key="k-1",
        tags_json='{"tenant": "acme"}',
        traceparent=traceparent,
    )


def test_a_position_survives_its_cursor_and_orders_like_the_feed() -> None:
    position = EventPosition(2**40 + 5, 123)
    assert EventPosition.from_token(position.token()) == position
    assert EventPosition(1, 9) < EventPosition(2, 1) < EventPosition(2, 2)
    assert EventPosition(1, 1) > FEED_START


@pytest.mark.parametrize("token", ["", "nope!", "MTIz", "LTEuMg", "YS5i", "\u00e9"])
def test_anything_but_a_handed_out_cursor_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match="not a cursor"):
        EventPosition.from_token(token)


def test_stream_fields_are_one_cloudevents_attribute_each() -> None:
    fields = stored("00-" + "1" * 32 + "-" + "2" * 16 + "-01").stream_fields()
    assert set(fields) == {
        "specversion", "id", "source", "type", "time", "subject", "datacontenttype", "data",
        "traceparent", "deliverysource", "idempotencykey", "tags",
    }  # fmt: skip
    fixed = (fields["specversion"], fields["source"], fields["datacontenttype"])
    assert fixed == ("1.0", "mailsvc", "application/json")
    assert fields["time"] == "2026-12-01T08:00:00Z"
    assert fields["subject"] == str(uuid.UUID(int=2))
    assert json.loads(fields["data"])["recipients"] == [{"address": "é@example.org"}]
    assert json.loads(fields["tags"]) == {"tenant": "acme"}
    assert "traceparent" not in stored().stream_fields()  # no trace: no attribute
    assert stored().cloud_event()["traceparent"] is None


def test_a_utc_time_keeps_its_microseconds_and_ends_in_z() -> None:
    utc = replace(stored(), time=datetime(2026, 12, 1, 10, 0, 0, 120, tzinfo=UTC))
    assert utc.stream_fields()["time"] == "2026-12-01T10:00:00.000120Z"
    assert utc.cloud_event()["time"] == "2026-12-01T10:00:00.000120Z"
    traced = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    assert stored(traced).stream_args()[-2:] == ("traceparent", traced)
    assert None not in stored().stream_args()  # XADD's arguments: no trace, no pair (hiredis takes no None)


def test_event_query_defaults_and_every_problem_at_once() -> None:
    assert parse_event_query({}) == EventQuery(FEED_START, None, (), 100)
    after = EventPosition(9, 9).token()
    query = parse_event_query(
        {"after": [after], "type": ["delivery.sent", "delivery.queued", "delivery.sent"], "limit": ["1000"]}
    )
    assert (query.after, query.types, query.limit) == (EventPosition(9, 9), ("delivery.sent", "delivery.queued"), 1000)
    with pytest.raises(ValidationFailed) as failed:
        parse_event_query({"after": ["x"], "delivery_id": ["7"], "type": ["sent"], "limit": ["0"], "cursor": ["c"]})
    assert sorted(p.field for p in failed.value.problems) == ["after", "cursor", "delivery_id", "limit", "type"]
