"""Loops that only one replica runs at a time: lead while holding a lock, stand by otherwise.

The stream consumer and the event publisher are both such loops; each proves its lock while it
leads (`LeaderLock.held`) and returns from its work when it loses it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from mailsvc.waiting import wait_any

log = logging.getLogger("mailsvc.loops")


class LeaderLock(Protocol):
    @property
    def held(self) -> bool: ...

    async def try_acquire(self) -> bool: ...

    async def release(self) -> None: ...

    async def wait_lost(self) -> None: ...


async def lead_or_stand_by(
    lock: LeaderLock,
    stopping: asyncio.Event,
    lead: Callable[[], Awaitable[None]],
    *,
    standby_interval: float,
    unavailable_event: str,
) -> None:
    """Until `stopping`: take the lock and run `lead` while holding it, or wait as a standby.

    The lock is released on the way out whatever happens, so another replica can take over.
    """
    try:
        while not stopping.is_set():
            try:
                acquired = await lock.try_acquire()
            except Exception as exc:  # the database may be down: stay a standby, keep trying
                log.warning(unavailable_event, extra={"error_class": type(exc).__name__})
                acquired = False
            if not acquired:
                await wait_any(stopping, timeout=standby_interval)
                continue
            await lead()
    finally:
        await lock.release()
