"""What every background loop is, and the supervisor that keeps each one running."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from mailsvc.waiting import wait_any

log = logging.getLogger("mailsvc.loops")


class Loop(Protocol):
    """A background loop: `run()` works until `stop()` is called, then returns on its own."""

    name: str

    async def run(self) -> None: ...

    def stop(self) -> None: ...


class Supervisor:
    """Restarts a loop that crashes (or returns before being stopped), with capped backoff.

    A loop is never silently gone: each crash is logged with the loop's name and the delay.
    """

    def __init__(self, *, initial_backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.restarts: dict[str, int] = {}

    async def supervise(self, loop: Loop, stopping: asyncio.Event) -> None:
        backoff = self.initial_backoff
        while not stopping.is_set():
            started = time.monotonic()
            try:
                await loop.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("loop_crashed", extra={"loop": loop.name, "restart_in_s": backoff})
            else:
                if stopping.is_set():
                    return
                log.error("loop_exited_unexpectedly", extra={"loop": loop.name, "restart_in_s": backoff})
            if time.monotonic() - started > 60:
                backoff = self.initial_backoff  # it ran fine for a while: this is a fresh failure
            if await wait_any(stopping, timeout=backoff):
                return
            self.restarts[loop.name] = self.restarts.get(loop.name, 0) + 1
            log.info("loop_restarting", extra={"loop": loop.name, "restarts": self.restarts[loop.name]})
            backoff = min(backoff * 2, self.max_backoff)
