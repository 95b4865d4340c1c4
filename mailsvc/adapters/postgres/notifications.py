"""LISTEN for "new work" notifications from any replica, on a dedicated connection (not pooled)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from mailsvc.adapters.postgres.advisory_lock import asyncpg_dsn
from mailsvc.adapters.postgres.intake_store import WORK_CHANNEL
from mailsvc.waiting import wait_any

log = logging.getLogger("mailsvc.notifications")
# what a broken or refused connection raises: asyncpg's client-side errors (ConnectionDoesNotExist…)
# are InterfaceErrors, the server's are PostgresErrors
_CONNECTION_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _set_on_termination(event: asyncio.Event, _conn: object) -> None:
    event.set()


class WorkListener:
    """A loop: keeps one LISTEN connection open (reconnecting with backoff) and calls `on_work`."""

    name = "work-listener"

    def __init__(self, dsn: str, on_work: Callable[[], None], *, max_backoff: float = 10.0) -> None:
        self.dsn = asyncpg_dsn(dsn)
        self.on_work = on_work
        self.max_backoff = max_backoff
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    def _notified(self, *_: Any) -> None:
        self.on_work()

    async def run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(
                    self.dsn, timeout=5, server_settings={"application_name": "mailsvc-listen"}
                )
            except _CONNECTION_ERRORS as exc:
                log.warning("listen_connect_failed", extra={"error_class": type(exc).__name__, "retry_in_s": backoff})
                await wait_any(self._stopping, timeout=backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            try:
                conn.add_termination_listener(functools.partial(_set_on_termination, lost))
                # the connection may break before LISTEN is through, like at any other moment
                await conn.add_listener(WORK_CHANNEL, self._notified)
                backoff = 0.5
                self.on_work()  # anything announced while we were not listening
                await wait_any(self._stopping, lost)
                if lost.is_set() and not self._stopping.is_set():
                    log.warning("listen_connection_lost")
            except _CONNECTION_ERRORS as exc:
                log.warning("listen_failed", extra={"error_class": type(exc).__name__, "retry_in_s": backoff})
                await wait_any(self._stopping, timeout=backoff)
                backoff = min(backoff * 2, self.max_backoff)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=2)
