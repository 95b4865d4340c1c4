"""Operator query parameters and cursors (pure)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from mailsvc.domain.commands import ValidationFailed
from mailsvc.domain.operator_query import (
    DEFAULT_LIMIT,
    DeliveryFilter,
    Keyset,
    MalformedQuery,
    PageRequest,
    Params,
    decode_cursor,
    encode_cursor,
    parse_dead_letter_query,
    parse_delivery_query,
    parse_include,
    parse_malformed_query,
)
from mailsvc.loops.retention import RetentionPolicy

AT = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)


def problems(params: Params, parse: Callable[[Params], object] = parse_delivery_query) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as caught:
        parse(params)
    return {p.field: p.message for p in caught.value.problems}


def test_cursor_round_trips_to_the_microsecond() -> None:
    position = Keyset(AT.astimezone(timezone(timedelta(hours=-3))), str(uuid.uuid4()))
    cursor = encode_cursor("deliveries", position)
    assert "=" not in cursor
    assert cursor.replace("-", "").replace("_", "").isalnum()
    decoded = decode_cursor("deliveries", cursor)
    assert decoded == Keyset(AT, position.key)
    assert decode_cursor("malformed", encode_cursor("malformed", Keyset(AT, "42"))).key == "42"


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not-a-cursor",
        "!!!",
        encode_cursor("dead_letters", Keyset(AT, str(uuid.uuid4()))),  # another list's cursor
        encode_cursor("deliveries", Keyset(AT, "42")),  # not a uuid
        encode_cursor("malformed", Keyset(AT, "042")),  # not canonical
        "ZHwyMDI2LTExLTIyVDEwOjAwOjAwfA",  # no timezone, no key
    ],
)
def test_foreign_or_forged_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(ValueError, match="cursor"):
        decode_cursor("deliveries", cursor)


def test_no_parameters_mean_the_newest_page() -> None:
    assert parse_delivery_query({}) == (DeliveryFilter(), PageRequest(DEFAULT_LIMIT, None))
    assert parse_dead_letter_query({}) == PageRequest()
    assert parse_malformed_query({"reason": ["invalid_json"]}) == (MalformedQuery("invalid_json"), PageRequest())
    assert parse_malformed_query({"include": ["raw"]}) == (MalformedQuery(include_raw=True), PageRequest())
    assert parse_include({}) is False
    assert parse_include({"include": ["body"]}) is True


def test_every_filter_is_parsed() -> None:
    cursor = encode_cursor("deliveries", Keyset(AT, str(uuid.uuid4())))
    query, page = parse_delivery_query(
        {
            "status": ["sent"],
            "source": ["auth"],
            "template": ["auth.login_code"],
            "recipient": [" Ann@Bücher.example "],
            "tag": ["tenant:acme", "url:https://x.example/a:b"],
            "created_after": ["2026-11-22T10:00:00 03:00"],  # an unencoded "+" arrives as a space
            "created_before": ["2026-11-23T00:00:00Z"],
            "limit": ["500"],
            "cursor": [cursor],
        }
    )
    assert query == DeliveryFilter(
        status="sent",
        source="auth",
        template="auth.login_code",
        recipient="Ann@xn--bcher-kva.example",
        tags={"tenant": "acme", "url": "https://x.example/a:b"},
        created_after=datetime(2026, 11, 22, 7, 0, tzinfo=UTC),
        created_before=datetime(2026, 11, 23, tzinfo=UTC),
    )
    assert page == PageRequest(500, decode_cursor("deliveries", cursor))


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        {
            "status": ["lost"],
            "source": ["auth", "resend"],
            "template": ["Not A Template"],
            "recipient": ["no-at-sign"],
            "tag": ["a:1", "a:2"],
            "created_after": ["2026-11-22"],
            "created_before": ["2026-11-22T10:00:00"],
            "limit": ["0"],
            "cursor": ["x"],
            "sort": ["asc"],
        }
    )
    assert set(found) == {
        "status", "source", "template", "recipient", "tag", "created_after", "created_before", "limit", "cursor",
        "sort",
    }  # fmt: skip
    assert found["source"] == "given more than once"
    assert found["sort"] == "unknown query parameter"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("limit", "501"),
        ("limit", "-1"),
        ("limit", "1e3"),
        ("tag", "novalue"),
        ("tag", ":value"),
        ("recipient", "a@b\x00"),
        ("status", ""),
        ("created_after", "9999-12-31T23:59:59-23:59"),  # past datetime's range once in UTC
    ],
)
def test_out_of_range_values_are_refused(name: str, value: str) -> None:
    assert name in problems({name: [value]})


def test_the_other_lists_accept_only_their_own_parameters() -> None:
    assert problems({"status": ["sent"]}, parse_dead_letter_query) == {"status": "unknown query parameter"}
    assert "reason" in problems({"reason": ["Bad Reason"]}, parse_malformed_query)
    assert "include" in problems({"include": ["attempts"]}, parse_include)


def test_retention_cutoffs_follow_the_given_now() -> None:
    policy = RetentionPolicy(delivery_retention=timedelta(hours=720), malformed_retention=timedelta(hours=168))
    assert policy.delivery_cutoff(AT) == AT - timedelta(days=30)
    assert policy.malformed_cutoff(AT) == AT - timedelta(days=7)
