"""Stream entry id arithmetic the consumer uses to tell a trim of read entries from a gap."""

from __future__ import annotations

import pytest

from mailsvc.domain.stream import MAX_SEQ, START, parse_id, predecessor, successor


@pytest.mark.parametrize(
    ("entry_id", "before"),
    [("1700000000000-5", "1700000000000-4"), ("1700000000000-0", f"1699999999999-{MAX_SEQ}"), ("0-1", START)],
)
def test_predecessor_is_the_greatest_id_below(entry_id: str, before: str) -> None:
    assert predecessor(entry_id) == before
    assert successor(parse_id(before)) == parse_id(entry_id)


def test_successor_carries_into_the_millisecond() -> None:
    assert successor((5, MAX_SEQ)) == (6, 0)
    assert successor(parse_id(START)) == (0, 1)


def test_ids_compare_numerically_not_as_text() -> None:
    assert parse_id("10-0") > parse_id("9-99")
    assert parse_id("1-10") > parse_id("1-9")
