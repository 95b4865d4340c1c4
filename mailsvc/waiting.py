"""Waiting for "this, or stop": the one place the service races awaitables (a leaf module).

Every loop waits for work *or* its stop signal, and every blocking call must give way to a stop;
hand-written `asyncio.wait(..., FIRST_COMPLETED)` races leak tasks when one side is forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_any(*events: asyncio.Event, timeout: float | None = None) -> bool:
    """Wait until one of `events` is set (True) or `timeout` seconds pass (False)."""
    if any(event.is_set() for event in events):
        return True
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    return bool(done)


async def first_done(work: Awaitable[T], *interrupts: Awaitable[object]) -> T | None:
    """`work`'s result, or None when one of `interrupts` finishes first — then `work` is cancelled
    and awaited, so nothing of it runs on. Every interrupt left over is cancelled too."""
    task = asyncio.ensure_future(work)
    others = [asyncio.ensure_future(interrupt) for interrupt in interrupts]
    try:
        done, _ = await asyncio.wait({task, *others}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        for other in others:
            other.cancel()
        await asyncio.gather(*others, return_exceptions=True)
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None
