"""Alembic environment: runs migrations over the async engine `mailsvc.adapters.postgres` builds."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from mailsvc.adapters.postgres.engine import create_engine

config = context.config


def _migrate(connection: Connection) -> None:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_engine(config.attributes["dsn"], pool_size=1)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_migrate)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run `mailsvc migrate`")
asyncio.run(_run_online())
