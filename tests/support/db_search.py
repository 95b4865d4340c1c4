"""Search every text, jsonb and bytea column of every table of a database for a string."""

from __future__ import annotations

import asyncpg

_COLUMNS = """
    SELECT c.table_name, c.column_name, c.data_type
    FROM information_schema.columns c JOIN information_schema.tables t
      ON t.table_schema = c.table_schema AND t.table_name = c.table_name
    WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'
      AND c.data_type IN ('text', 'character varying', 'jsonb', 'json', 'bytea', 'ARRAY')
    ORDER BY c.table_name, c.column_name
"""


async def columns_holding(dsn: str, needle: str) -> list[str]:
    """`table.column` of every column where some row holds `needle` (bytea: its UTF-8 bytes; TOAST
    compression is transparent to SQL, so compressed values are searched as stored)."""
    conn = await asyncpg.connect(dsn)
    try:
        found = []
        for row in await conn.fetch(_COLUMNS):
            table, column, kind = row["table_name"], row["column_name"], row["data_type"]
            if kind == "bytea":
                condition = f'position(CAST($1 AS bytea) IN "{column}") > 0'
                arg: object = needle.encode()
            else:
                condition = f'CAST("{column}" AS text) LIKE $1'
                arg = f"%{needle}%"
            if await conn.fetchval(f'SELECT EXISTS (SELECT 1 FROM "{table}" WHERE {condition})', arg):
                found.append(f"{table}.{column}")
        return found
    finally:
        await conn.close()
