"""A session-level PostgreSQL advisory lock on its own connection: one stream consumer at a time.

The lock lives exactly as long as the connection: if this process dies, PostgreSQL releases it
and another replica's consumer takes over.
"""

from __future__ import annotations

import contextlib
import logging

import asyncpg

log = logging.getLogger("mailsvc.lock")


def asyncpg_dsn(dsn: str) -> str:
    return dsn.replace("postgresql+asyncpg://", "postgresql://", 1)


class AdvisoryLock:
    def __init__(self, dsn: str, name: str, *, connect_timeout: float = 5.0) -> None:
        self.dsn = asyncpg_dsn(dsn)
        self.name = name
        self.connect_timeout = connect_timeout
        self._conn: asyncpg.Connection | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def try_acquire(self) -> bool:
        """True when this process now holds the lock (or already did)."""
        if self.held:
            return True
        await self.release()
        conn = await asyncpg.connect(
            self.dsn, timeout=self.connect_timeout, server_settings={"application_name": "mailsvc-lock"}
        )
        try:
            got = await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", self.name)
        except BaseException:
            await conn.close()
            raise
        if not got:
            await conn.close()
            return False
        self._conn = conn
        log.info("lock_acquired", extra={"lock": self.name})
        return True

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
