"""A batch's rows as one `unnest`, each column the batch holds one value in sent once.

asyncpg encodes an array parameter element by element (type checks and an encoder call each), so
a 500-row batch of 19 array columns is ~10,000 element encodings on the event loop — while most of
those columns hold one value for the whole batch (its source, `queued`, the event type, the
template) or nothing but NULL (resend of, collapse key, traceparent). Such a column is sent as one
scalar parameter instead (a NULL one as one NULL). The statement's text then depends on which
columns are sent so — the batch's shape: each shape's statement is built once and kept, and it is
still one statement per table per batch. Only a batch of `SHARED_FROM_ROWS` rows or more is
looked at (what a few rows would save is not worth a shape: a trickle of small batches in every
combination would make many), a workload then shows a handful of shapes, and past `MAX_SHAPES`
a new one is sent as arrays only (as before): neither this cache nor the driver's prepared
statements (100 per connection, shared with every other statement) can be flooded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import TextClause, text

SHARED_FROM_ROWS = 8
MAX_SHAPES = 16


@dataclass(frozen=True, slots=True)
class Column:
    param: str  # the statement parameter: a list, one value per row
    alias: str  # the column's name in the rows (`{rows}`)
    type: str  # PostgreSQL type of one value
    shared: bool = False  # sent once, as a scalar, when every row holds the same value


class BatchRows:
    """A statement over a batch's rows: `{rows}` in `sql` stands for a subquery giving one row per
    element of the lists, with the columns' aliases."""

    def __init__(self, sql: str, columns: Sequence[Column]) -> None:
        if all(column.shared for column in columns):
            raise ValueError("at least one column must stay an array: it gives the rows")
        self.sql = sql
        self.columns = tuple(columns)
        self._shapes: dict[tuple[bool, ...], TextClause] = {}

    def bind(self, values: Mapping[str, list[Any]]) -> tuple[TextClause, dict[str, Any]]:
        """The statement for these rows' shape and its parameters (`values`: one list per column's
        `param`, all of the same length)."""
        rows = len(values[self.columns[0].param])
        if rows < SHARED_FROM_ROWS:
            shape = (False,) * len(self.columns)
        else:
            # list.count compares in C (identity first): far cheaper than encoding the elements
            shape = tuple(
                column.shared and values[column.param].count(values[column.param][0]) == rows for column in self.columns
            )
        clause = self._shapes.get(shape)
        if clause is None:
            if len(self._shapes) >= MAX_SHAPES:
                shape = (False,) * len(self.columns)
                clause = self._shapes.get(shape)
            if clause is None:
                clause = self._shapes[shape] = text(self.sql.replace("{rows}", self._rows(shape)))
        params = {
            column.param: values[column.param][0] if once else values[column.param]
            for column, once in zip(self.columns, shape, strict=True)
        }
        return clause, params

    def _rows(self, shape: tuple[bool, ...]) -> str:
        arrays = [column for column, once in zip(self.columns, shape, strict=True) if not once]
        selected = ", ".join(
            f"CAST(:{column.param} AS {column.type}) AS {column.alias}" if once else f"u.{column.alias}"
            for column, once in zip(self.columns, shape, strict=True)
        )
        unnested = ", ".join(f"CAST(:{column.param} AS {column.type}[])" for column in arrays)
        return f"SELECT {selected} FROM unnest({unnested}) AS u({', '.join(column.alias for column in arrays)})"
