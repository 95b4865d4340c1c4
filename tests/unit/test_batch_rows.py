"""A batch's rows as one `unnest` (adapters/postgres/batch_rows.py): which columns go once, and
the statement of each shape. Pure: the rows stored are checked in integration/test_batch_shapes.py."""

from __future__ import annotations

import pytest

from mailsvc.adapters.postgres import batch_rows
from mailsvc.adapters.postgres.batch_rows import SHARED_FROM_ROWS, BatchRows, Column

ROWS = BatchRows(
    "INSERT INTO t (a, b, c) SELECT a, b, c FROM ({rows}) AS r",
    [Column("ids", "a", "uuid"), Column("names", "b", "text", shared=True), Column("counts", "c", "int", shared=True)],
)


IDS = list(range(SHARED_FROM_ROWS))


def column(*values: object) -> list[object]:
    """A column of the batch: `values`, the last one repeated to fill it."""
    return [*values, *[values[-1]] * (SHARED_FROM_ROWS - len(values))]


def test_a_column_the_whole_batch_shares_is_sent_once() -> None:
    statement, params = ROWS.bind({"ids": IDS, "names": column("x"), "counts": column(None)})
    assert params == {"ids": IDS, "names": "x", "counts": None}
    assert "CAST(:names AS text) AS b" in statement.text
    assert "CAST(:counts AS int) AS c" in statement.text
    assert "unnest(CAST(:ids AS uuid[])) AS u(a)" in statement.text


def test_a_column_with_one_different_value_stays_an_array() -> None:
    for counts in (column(None, 5), column(5, None), column(None, None, 5, None), column(5, 6)):
        statement, params = ROWS.bind({"ids": IDS, "names": column("x"), "counts": counts})
        assert params == {"ids": IDS, "names": "x", "counts": counts}
        assert "unnest(CAST(:ids AS uuid[]), CAST(:counts AS int[])) AS u(a, c)" in statement.text


def test_a_column_that_may_not_be_shared_is_always_an_array() -> None:
    statement, params = ROWS.bind({"ids": column(1), "names": column("x"), "counts": column(3)})
    assert params == {"ids": column(1), "names": "x", "counts": 3}
    assert "unnest(CAST(:ids AS uuid[])) AS u(a)" in statement.text


def test_a_small_batch_is_sent_as_arrays() -> None:
    few = SHARED_FROM_ROWS - 1
    statement, params = ROWS.bind({"ids": IDS[:few], "names": ["x"] * few, "counts": [3] * few})
    assert params == {"ids": IDS[:few], "names": ["x"] * few, "counts": [3] * few}
    assert "unnest(CAST(:ids AS uuid[]), CAST(:names AS text[]), CAST(:counts AS int[]))" in statement.text


def test_each_shape_is_built_once() -> None:
    first, _ = ROWS.bind({"ids": IDS, "names": column("x", "y"), "counts": column(1)})
    again, _ = ROWS.bind({"ids": IDS, "names": column("p", "q"), "counts": column(7)})
    assert again is first  # the driver prepares it once per connection


def test_past_the_limit_a_new_shape_goes_as_arrays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_rows, "MAX_SHAPES", 1)
    rows = BatchRows(ROWS.sql, ROWS.columns)
    rows.bind({"ids": IDS, "names": column("x"), "counts": column(1)})
    statement, params = rows.bind({"ids": IDS, "names": column("x", "y"), "counts": column(1)})
    assert params == {"ids": IDS, "names": column("x", "y"), "counts": column(1)}
    assert "unnest(CAST(:ids AS uuid[]), CAST(:names AS text[]), CAST(:counts AS int[]))" in statement.text


def test_one_column_must_stay_an_array() -> None:
    with pytest.raises(ValueError, match="array"):
        BatchRows("{rows}", [Column("xs", "x", "text", shared=True)])
